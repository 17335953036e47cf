// test_fixtures.c: the committed fixtures (tests/fixtures/*.safetensors) are
// what tools/reference.py produces today.
//
// Every parity test compares glia against those files, so a fixture that no
// longer matches its generator (a reference.py change not followed by a
// regeneration, or a hand-edited file) would silently move the target. This
// runs `reference.py fixtures` into a scratch directory and compares each
// file, tensor by tensor, with the committed one: the same file names, the
// same tensor names and shapes, values within REGEN_TOL (normwise relative,
// rel_err in testutil.h). Measured with Debian's PyTorch 1.13.1: every file
// byte-identical to the committed one. The tolerance leaves room for another
// PyTorch's last bits (float64 arithmetic, rounded to float32 on output);
// the fixtures' own parity tolerances are 1e-5 and above. Without PyTorch
// the test skips, saying so.
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/safetensors.h"
#include "testutil.h"

#define REGEN_TOL 1e-6

static char dir[256];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_fixtures_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
}

static void rm(void) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

// The *.safetensors names in d, sorted; returns the count.
static int list(const char *d, char names[][256], int max) {
    DIR *dp = opendir(d);
    cr_assert(dp, "%s", d);
    int n = 0;
    for (struct dirent *e; (e = readdir(dp));) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors")) {
            cr_assert(n < max);
            snprintf(names[n++], 256, "%s", e->d_name);
        }
    }
    closedir(dp);
    qsort(names, (size_t)n, 256, (int (*)(const void *, const void *))strcmp);
    return n;
}

Test(fixtures, regenerated_fixtures_match_the_committed_ones, .init = mk, .fini = rm, .timeout = 300) {
    const char *py = test_python_torch();
    if (!py) cr_skip_test("PyTorch not installed (tools/setup.sh installs Debian's python3-torch)");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' '%s/../../tools/reference.py' fixtures --dir '%s' > '%s/log.txt' 2>&1", py,
             GLIA_FIXTURES, dir, dir);
    cr_assert_eq(system(cmd), 0, "reference.py fixtures failed: see %s/log.txt", dir);

    static char mine[64][256], theirs[64][256];
    int n = list(GLIA_FIXTURES, mine, 64), m = list(dir, theirs, 64);
    cr_assert_gt(n, 0);
    cr_assert_eq(n, m, "%d committed fixtures, reference.py writes %d", n, m);
    for (int i = 0; i < n; i++) cr_assert_str_eq(mine[i], theirs[i]);

    int tensors = 0;
    for (int i = 0; i < n; i++) {
        char pa[17000], pb[17000], err[ST_ERR_LEN];
        snprintf(pa, sizeof pa, "%s/%s", GLIA_FIXTURES, mine[i]);
        snprintf(pb, sizeof pb, "%s/%s", dir, mine[i]);
        StFile *a = st_load(pa, err);
        cr_assert(a, "%s", err);
        StFile *b = st_load(pb, err);
        cr_assert(b, "%s", err);
        cr_expect_eq(a->n, b->n, "%s: %d tensors committed, %d regenerated", mine[i], a->n, b->n);
        for (int k = 0; k < a->n; k++) {
            const StTensor *ta = &a->tensors[k];
            const StTensor *tb = st_expect(b, ta->name, ta->ndim, ta->shape, err);
            cr_expect(tb, "%s: %s", mine[i], err);
            if (!tb) continue;
            double e = rel_err(tb->data, ta->data, (size_t)ta->numel);
            cr_expect(e <= REGEN_TOL, "%s: tensor '%s': regenerated differs from committed by %.3g > %.0e", mine[i],
                      ta->name, e, REGEN_TOL);
            tensors++;
        }
        st_free(a);
        st_free(b);
    }
    cr_log_info("%d fixture files, %d tensors compared", n, tensors);
}
