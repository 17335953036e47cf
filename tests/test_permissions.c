// test_permissions.c: checkpoints whose files or directories the user may
// not read or write (train --resume, generate, the save of a resumed run).
//
// These only mean something where permissions are enforced: root reads and
// writes anything. As root (containers, CI) every test here is reported as
// skipped, with the reason, rather than passing without checking; run the
// suite as an ordinary user to exercise it.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static char dir[256];
static char out[16384];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_perm_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    char path[400];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(path, 3000), 0, "cannot write %s", path);
}

static void rm(void) {
    test_sh("chmod -R u+rwX '%s' 2>/dev/null", dir);
    cr_assert_eq(test_sh("rm -rf '%s'", dir), 0);
}

TestSuite(permissions, .init = mk, .fini = rm, .timeout = 60);

static void require_permissions(void) {
    if (geteuid() == 0) cr_skip_test("running as root: file permissions are not enforced for root");
}

#define RUN "train --size tiny --batch 4 --seq 16 --threads 1 --quiet --eval-every 0 " \
            "--sample-tokens 0 --steps 6 --ckpt-every 1 --data '%s/corpus.txt'"

// A run stopped after step 2 (checkpoints of steps 1 and 2).
static void stopped_run(const char *name) {
    int st = glia_run(out, sizeof out, RUN " --out '%s/%s' --stop-after 2", dir, dir, name);
    cr_assert_eq(st, 0, "%s", out);
}

static void expect_error(int st, int want, const char *a, const char *b) {
    cr_expect_eq(st, want, "exit %d (want %d): %s", st, want, out);
    cr_expect(strstr(out, a) && strstr(out, b), "want '%s' and '%s' in: %s", a, b, out);
}

Test(permissions, unreadable_model_file) {
    require_permissions();
    stopped_run("noread");
    char ck[400];
    snprintf(ck, sizeof ck, "%s/noread/ckpt/step_00000002", dir);
    cr_assert_eq(test_sh("chmod 000 '%s/model.safetensors'", ck), 0);
    expect_error(glia_run(out, sizeof out, RUN " --resume --out '%s/noread'", dir, dir), 2,
                 "model.safetensors", "Permission denied");
    expect_error(glia_run(out, sizeof out, "generate --ckpt '%s/model.safetensors' --tokens 4", ck), 2,
                 "model.safetensors", "Permission denied");
}

Test(permissions, unwritable_checkpoint_directory) {
    require_permissions();
    stopped_run("nowrite");
    cr_assert_eq(test_sh("chmod 555 '%s/nowrite/ckpt'", dir), 0);
    int st = glia_run(out, sizeof out, RUN " --resume --out '%s/nowrite'", dir, dir);
    cr_assert_eq(test_sh("chmod 755 '%s/nowrite/ckpt'", dir), 0);
    expect_error(st, 1, "step_00000003", "Permission denied");
    cr_expect_eq(test_sh("test -f '%s/nowrite/ckpt/step_00000002/COMPLETE'", dir), 0, "the previous checkpoint is kept");
}
