// test_checkpoint.c: training checkpoints (train_ckpt.h): CRC-32C, resuming
// bit for bit, surviving SIGKILL at random moments, a one-line error for
// every kind of bad checkpoint, and a save that fails on a full disk leaving
// the previous checkpoint resumable. Runs `glia` (GLIA_BIN) as a user would.
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/crc32c.h"
#include "glia/safetensors.h"
#include "testutil.h"
#include "train/train_ckpt.h"

static char dir[256];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_ckpt_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    char path[512], cmd[1200];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(path, 6000), 0, "cannot write %s", path);
    snprintf(cmd, sizeof cmd, "'%s' prepare --in '%s' --out '%s/shards' > /dev/null", GLIA_BIN, path, dir);
    cr_assert_eq(system(cmd), 0);
}

static void rm(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "chmod -R u+rwx '%s'; rm -rf '%s'", dir, dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(checkpoint, .init = mk, .fini = rm, .timeout = 300);

// The flags of every run here, less --out and --steps: tiny, one thread,
// checkpoints every step.
#define RUN_FLAGS "train --device cpu --size tiny --batch 4 --seq 16 --warmup 3 --threads 1 --quiet --eval-every 0 --sample-tokens 0 --ckpt-every 1"

static char out_text[16384], err_text[16384];

static void slurp(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    size_t got = f ? fread(buf, 1, n - 1, f) : 0;
    buf[got] = 0;
    if (f) fclose(f);
}

// Runs `prefix 'glia' args` through the shell; stdout and stderr are kept in
// out_text and err_text. Returns the exit status.
static int run_glia_with(const char *prefix, const char *fmt, ...) {
    char args[3000], cmd[4096], out[300], err[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(out, sizeof out, "%s/stdout.txt", dir);
    snprintf(err, sizeof err, "%s/stderr.txt", dir);
    snprintf(cmd, sizeof cmd, "%s '%s' %s > '%s' 2> '%s'", prefix, GLIA_BIN, args, out, err);
    int st = system(cmd);
    slurp(out, out_text, sizeof out_text);
    slurp(err, err_text, sizeof err_text);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
#define run_glia(...) run_glia_with("", __VA_ARGS__)

static void expect_error_status(int status, int want, const char *a, const char *b) {
    cr_expect_eq(status, want, "exit status %d, expected %d: %s", status, want, err_text);
    cr_expect(strstr(err_text, a), "error should mention '%s': %s", a, err_text);
    if (b) cr_expect(strstr(err_text, b), "error should mention '%s': %s", b, err_text);
    const char *nl = strchr(err_text, '\n');
    cr_expect(nl && nl[1] == 0, "error should be one line: %s", err_text);
}
#define expect_error(status, a, b) expect_error_status(status, 2, a, b)


// A run of `steps` steps that never stopped, in dir/<name>.
static void reference_run(const char *name, int steps) {
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/%s' --steps %d", dir, dir, name, steps), 0,
                 "%s", err_text);
}

static void expect_same_run(const char *a, const char *b, int steps) {
    double *la = malloc((size_t)(steps + 1) * sizeof *la), *lb = malloc((size_t)(steps + 1) * sizeof *lb);
    cr_assert(la && lb);
    cr_assert_eq(read_losses(a, la, steps + 1), steps);
    cr_assert_eq(read_losses(b, lb, steps + 1), steps, "metrics.jsonl of the resumed run reads as one run");
    for (int i = 0; i < steps; i++) cr_expect_eq(la[i], lb[i], "step %d: %.6f vs %.6f", i + 1, la[i], lb[i]);
    free(la);
    free(lb);
    cr_expect_eq(test_sh("cmp -s '%s/model.safetensors' '%s/model.safetensors'", a, b), 0,
                 "the final model files differ");
}

// ---- CRC-32C ---------------------------------------------------------------------------

Test(checkpoint, crc32c_known_answer) {
    cr_expect_eq(crc32c("123456789", 9), 0xE3069283u);
    cr_expect_eq(crc32c("", 0), 0u);
    // 32 zero bytes: RFC 3720 (iSCSI) B.4
    unsigned char zeros[32] = {0};
    cr_expect_eq(crc32c(zeros, 32), 0x8A9136AAu);
    // continuing a CRC is the CRC of the concatenation
    cr_expect_eq(crc32c_update(crc32c("12345", 5), "6789", 4), 0xE3069283u);
}

// ---- resuming ----------------------------------------------------------------------

Test(checkpoint, resume_is_bit_identical) {
    reference_run("full", 12);
    char b[300];
    snprintf(b, sizeof b, "%s/parted", dir);
    // stop after step 5 as if killed right after that save, then resume
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s' --steps 12 --stop-after 5", dir, b), 0,
                 "%s", err_text);
    cr_assert_eq(test_sh("test -f '%s/ckpt/step_00000005/COMPLETE'", b), 0);
    // --keep 3 (default): steps 3, 4, 5 remain
    cr_expect_neq(test_sh("test -e '%s/ckpt/step_00000002'", b), 0, "old checkpoints are deleted");
    cr_expect_eq(test_sh("test -f '%s/ckpt/step_00000003/COMPLETE'", b), 0);
    // the options come from the checkpoint: none but the run's own flags given
    cr_assert_eq(run_glia("train --device cpu --resume --out '%s' --data '%s/shards' --threads 1 --quiet --eval-every 0 "
                          "--sample-tokens 0 --ckpt-every 4 --keep 1", b, dir), 0, "%s", err_text);
    cr_expect(strstr(out_text, "resuming from") && strstr(out_text, "step_00000005"), "%s", out_text);
    char full[300];
    snprintf(full, sizeof full, "%s/full", dir);
    expect_same_run(full, b, 12);
    cr_expect_eq(test_sh("test -f '%s/ckpt/step_00000012/COMPLETE' && test ! -e '%s/ckpt/step_00000008'", b, b), 0,
                 "--keep 1 keeps only the newest");
    // resuming a finished run has nothing to do
    cr_expect_eq(run_glia("train --device cpu --resume-from '%s' --out '%s' --data '%s/shards' --threads 1 --quiet "
                          "--sample-tokens 0", b, b, dir), 0, "%s", err_text);
    cr_expect(strstr(out_text, "nothing to do"), "%s", out_text);
    expect_same_run(full, b, 12);
}

// Every complete checkpoint under out/ckpt loads and verifies; returns how many.
static int verify_complete_checkpoints(const char *out) {
    char ck[400], d[700], path[800], err[CKPT_ERR_LEN];
    snprintf(ck, sizeof ck, "%s/ckpt", out);
    DIR *dd = opendir(ck);
    if (!dd) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd))) {
        if (strncmp(e->d_name, "step_", 5)) continue;
        snprintf(d, sizeof d, "%s/%s", ck, e->d_name);
        snprintf(path, sizeof path, "%s/COMPLETE", d);
        if (access(path, F_OK)) continue;
        float *m1, *m2;
        long step;
        Model *m = train_ckpt_load(d, NULL, &m1, &m2, &step, err);
        cr_expect(m, "a complete checkpoint does not load: %s", err);
        if (m) n++;
        model_free(m);
        free(m1);
        free(m2);
    }
    closedir(dd);
    return n;
}

Test(checkpoint, survives_sigkill) {
    const int steps = 40;
    reference_run("calm", steps);
    char out[300], shards[300], steps_s[16];
    snprintf(out, sizeof out, "%s/killed", dir);
    snprintf(shards, sizeof shards, "%s/shards", dir);
    snprintf(steps_s, sizeof steps_s, "%d", steps);
    TestRng rng;
    rng_seed(&rng, 2024);
    int kills = 0, finished = 0;
    for (int attempt = 0; attempt < 40 && !finished; attempt++) {
        int resume = verify_complete_checkpoints(out) > 0;
        char *argv[] = {GLIA_BIN, "train", "--device", "cpu", "--size", "tiny", "--batch", "4", "--seq", "16", "--warmup", "3",
                        "--threads", "1", "--quiet", "--eval-every", "0", "--sample-tokens", "0",
                        "--ckpt-every", "1", "--steps", steps_s, "--data", shards, "--out", out,
                        resume ? "--resume" : NULL, NULL};
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            int fd = open("/dev/null", O_WRONLY);
            dup2(fd, 1);
            dup2(fd, 2);
            execv(GLIA_BIN, argv);
            _exit(127);
        }
        int st;
        if (kills < 15) {
            long ms = 20 + (long)(rng_uniform(&rng) * 280);
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            if (waitpid(pid, &st, WNOHANG) == 0) {
                kill(pid, SIGKILL);
                cr_assert_eq(waitpid(pid, &st, 0), pid);
                if (WIFSIGNALED(st)) {
                    kills++;
                    continue;
                }
            }
        } else {
            cr_assert_eq(waitpid(pid, &st, 0), pid);
        }
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "glia train failed (status %d)", st);
        finished = 1;
    }
    cr_assert(finished);
    cr_expect_gt(kills, 0, "the run was never killed");
    cr_log_info("killed %d times", kills);
    cr_expect_gt(verify_complete_checkpoints(out), 0);
    char calm[300];
    snprintf(calm, sizeof calm, "%s/calm", dir);
    expect_same_run(calm, out, steps);
}

// ---- bad checkpoints ------------------------------------------------------------------

// A finished 3-step run to damage copies of: dir/good.
static void good_run(void) {
    char p[400];
    snprintf(p, sizeof p, "%s/good/ckpt/step_00000003/COMPLETE", dir);
    if (access(p, F_OK) == 0) return;
    reference_run("good", 3);
}

// A fresh copy of the good run in dir/<name>; returns the newest checkpoint.
static const char *copy_good(const char *name) {
    static char ck[400];
    good_run();
    cr_assert_eq(test_sh("rm -rf '%s/%s' && cp -r '%s/good' '%s/%s'", dir, name, dir, dir, name), 0);
    snprintf(ck, sizeof ck, "%s/%s/ckpt/step_00000003", dir, name);
    return ck;
}

static int resume(const char *name, const char *extra) {
    return run_glia("train --device cpu --resume --out '%s/%s' --data '%s/shards' --threads 1 --quiet --sample-tokens 0 %s",
                    dir, name, dir, extra ? extra : "");
}

static void flip_byte(const char *path, long from_end) {
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    cr_assert_eq(fseek(f, -from_end, SEEK_END), 0);
    int c = fgetc(f);
    cr_assert_eq(fseek(f, -from_end, SEEK_END), 0);
    fputc(c ^ 0x10, f);
    fclose(f);
}

// Rewrites a safetensors file with the metadata entry `key` renamed to
// new_key (NULL: deleted) and given `value` (NULL: its own), CRCs kept.
static void rewrite_meta_entry(const char *path, const char *key, const char *new_key, const char *value) {
    char err[ST_ERR_LEN];
    StFile *f = st_load(path, err);
    cr_assert(f, "%s", err);
    cr_assert(st_meta(f, key), "%s: no metadata '%s'", path, key);
    StWriter *w = st_writer_new();
    for (int i = 0; i < f->nmeta; i++) {
        if (strcmp(f->meta_keys[i], key)) st_writer_meta(w, f->meta_keys[i], f->meta_values[i]);
        else if (new_key) st_writer_meta(w, new_key, value ? value : f->meta_values[i]);
    }
    for (int i = 0; i < f->n; i++) st_writer_add(w, f->tensors[i].name, f->tensors[i].ndim, f->tensors[i].shape, f->tensors[i].data);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    st_free(f);
}

// Rewrites a safetensors file with one metadata value changed (kept CRCs).
static void rewrite_meta(const char *path, const char *key, const char *value) {
    rewrite_meta_entry(path, key, key, value);
}

static void recomplete(const char *ck) {
    char err[CKPT_ERR_LEN];
    cr_assert_eq(train_ckpt_write_complete(ck, 3, err), 0, "%s", err);
}

Test(checkpoint, truncated_file) {
    const char *ck = copy_good("trunc");
    cr_assert_eq(test_sh("truncate -s -100 '%s/state.rank0.safetensors'", ck), 0);
    expect_error(resume("trunc", NULL), "state.rank0.safetensors", "truncated");
    // a truncated model file, as glia generate sees it
    cr_assert_eq(test_sh("truncate -s -100 '%s/model.safetensors'", ck), 0);
    expect_error(run_glia("generate --device cpu --ckpt '%s/model.safetensors'", ck), "model.safetensors", "truncated");
}

Test(checkpoint, bit_flip_names_the_tensor) {
    const char *ck = copy_good("flip");
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    flip_byte(path, 10);  // in the last tensor's data: norm_f
    expect_error(resume("flip", NULL), "model.safetensors", "tensor 'norm_f': CRC32C mismatch");
    expect_error(run_glia("generate --device cpu --ckpt '%s'", path), "model.safetensors", "tensor 'norm_f': CRC32C mismatch");
    expect_error(run_glia("eval --device cpu --ckpt '%s'", path), "model.safetensors", "CRC32C mismatch");
    ck = copy_good("flip2");
    snprintf(path, sizeof path, "%s/state.rank0.safetensors", ck);
    flip_byte(path, 10);
    expect_error(resume("flip2", NULL), "state.rank0.safetensors", "tensor 'v.norm_f': CRC32C mismatch");
}

Test(checkpoint, wrong_format_or_version) {
    const char *ck = copy_good("fmt");
    char path[600];
    snprintf(path, sizeof path, "%s/state.rank0.safetensors", ck);
    rewrite_meta(path, "format", "glia-something-else");
    recomplete(ck);
    expect_error(resume("fmt", NULL), "state.rank0.safetensors", "not a glia training state file");
    expect_error(run_glia("generate --device cpu --ckpt '%s'", path), "state.rank0.safetensors", "not a glia model file");

    ck = copy_good("ver");
    snprintf(path, sizeof path, "%s/state.rank0.safetensors", ck);
    rewrite_meta(path, "ckpt_version", "2");
    recomplete(ck);
    expect_error(resume("ver", NULL), "state.rank0.safetensors", "ckpt_version 2");

    ck = copy_good("mver");
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    rewrite_meta(path, "model_version", "7");
    recomplete(ck);
    expect_error(resume("mver", NULL), "model.safetensors", "model_version 7");
    expect_error(run_glia("generate --device cpu --ckpt '%s'", path), "model.safetensors", "model_version 7");

    // a tokenizer that does not fit the vocabulary (a byte model claiming GPT-2 BPE)
    ck = copy_good("tok");
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    rewrite_meta(path, "tokenizer", "gpt2");
    expect_error(run_glia("generate --device cpu --ckpt '%s'", path), "model.safetensors",
                 "metadata tokenizer 'gpt2' does not fit a vocabulary of 256");

    // not a safetensors file at all
    ck = copy_good("magic");
    cr_assert_eq(test_sh("head -c 4000 /dev/urandom > '%s/model.safetensors'", ck), 0);
    recomplete(ck);
    expect_error(resume("magic", NULL), "model.safetensors", NULL);
    // and a COMPLETE that is not one: the checkpoint is incomplete, so the older one is used
    ck = copy_good("badcomplete");
    cr_assert_eq(test_sh("echo garbage > '%s/COMPLETE'", ck), 0);
    cr_expect_eq(resume("badcomplete", NULL), 0, "%s", err_text);
    cr_expect(strstr(out_text, "step_00000002"), "resumes from the older checkpoint: %s", out_text);
}

Test(checkpoint, config_and_options_must_match) {
    copy_good("cfg");
    expect_error(resume("cfg", "--size small"), "model.safetensors", "does not match the requested one");
    expect_error(resume("cfg", "--width 64"), "model.safetensors", "does not match the requested one");
    expect_error(resume("cfg", "--batch 8"), "--batch 8 differs from 4", "step_00000003");
    expect_error(resume("cfg", "--steps 50"), "--steps 50 differs from 3", NULL);
    expect_error(resume("cfg", "--lr 0.5"), "--lr 0.5 differs", NULL);
    // the same values given again are fine
    cr_expect_eq(resume("cfg", "--size tiny --batch 4 --steps 3 --seq 16"), 0, "%s", err_text);
    // a fresh run (no --resume) into the directory of a saved run is refused,
    // and the saved run is untouched
    expect_error(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/cfg' --steps 2", dir, dir), "cfg/ckpt",
                 "earlier run");
    cr_expect_eq(test_sh("test -f '%s/cfg/ckpt/step_00000003/COMPLETE'", dir), 0, "the saved run is intact");
}

Test(checkpoint, empty_directory_missing_unreadable) {
    const char *ck = copy_good("empty");
    cr_assert_eq(test_sh(": > '%s/model.safetensors'", ck), 0);
    expect_error(resume("empty", NULL), "model.safetensors", "empty");
    expect_error(run_glia("generate --device cpu --ckpt '%s/model.safetensors'", ck), "model.safetensors", "0 bytes");

    ck = copy_good("isdir");
    cr_assert_eq(test_sh("rm '%s/model.safetensors' && mkdir '%s/model.safetensors'", ck, ck), 0);
    expect_error(resume("isdir", NULL), "model.safetensors", "is a directory");
    expect_error(run_glia("generate --device cpu --ckpt '%s'", ck), "step_00000003", "is a directory");

    expect_error(run_glia("generate --device cpu --ckpt '%s/none.safetensors'", dir), "none.safetensors", "No such file");
    expect_error(resume("nowhere", NULL), "nowhere/ckpt", "no checkpoint to resume from");
    cr_assert_eq(test_sh("mkdir -p '%s/hollow/ckpt/step_00000004'", dir), 0);  // only an incomplete one
    expect_error(resume("hollow", NULL), "hollow/ckpt", "no complete checkpoint");
    ck = copy_good("gone");
    cr_assert_eq(test_sh("rm '%s/state.rank0.safetensors'", ck), 0);
    expect_error(resume("gone", NULL), "state.rank0.safetensors", "No such file");
    // unreadable files: tests/test_permissions.c (it skips, saying so, as root)
}

// ---- failing saves ---------------------------------------------------------------------

Test(checkpoint, full_disk_keeps_the_previous_checkpoint) {
    reference_run("whole", 6);
    char b[300];
    snprintf(b, sizeof b, "%s/disk", dir);
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s' --steps 6 --stop-after 2", dir, b), 0,
                 "%s", err_text);
    // a file-size limit far below a model file: the save of step 3 fails
    // with EFBIG (glia ignores SIGXFSZ, which would kill it silently)
    int st = run_glia_with("ulimit -f 16;", "train --device cpu --resume --out '%s' --data '%s/shards' --threads 1 --quiet "
                           "--eval-every 0 --sample-tokens 0 --ckpt-every 1", b, dir);
    expect_error_status(st, 1, "cannot save the checkpoint of step 3", "File too large");
    cr_expect_neq(test_sh("test -e '%s/ckpt/step_00000003/COMPLETE'", b), 0, "no COMPLETE for the failed save");
    cr_expect_eq(test_sh("test -f '%s/ckpt/step_00000002/COMPLETE'", b), 0, "the previous checkpoint is kept");
    // ... and it resumes into the run that never failed
    cr_assert_eq(run_glia("train --device cpu --resume --out '%s' --data '%s/shards' --threads 1 --quiet --eval-every 0 "
                          "--sample-tokens 0 --ckpt-every 1", b, dir), 0, "%s", err_text);
    cr_expect(strstr(out_text, "step_00000002"), "%s", out_text);
    char whole[300];
    snprintf(whole, sizeof whole, "%s/whole", dir);
    expect_same_run(whole, b, 6);
    // an unwritable checkpoint directory: tests/test_permissions.c (it skips, saying so, as root)
}

// ---- checksums every tensor must carry (issue 14) -----------------------------------

// A file that declares checksums must have one for every tensor, each naming
// a tensor: a key damaged by one byte used to switch that tensor's check off.
Test(checkpoint, damaged_checksum_key_is_refused) {
    const char *ck = copy_good("crckey");
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    rewrite_meta_entry(path, "crc32c.norm_f", "crc32c.norm_g", NULL);  // one byte
    recomplete(ck);
    expect_error(run_glia("generate --device cpu --ckpt '%s'", path), "model.safetensors", "'crc32c.norm_g'");
    expect_error(resume("crckey", NULL), "model.safetensors", "'crc32c.norm_g'");
    // a checksum missing for one tensor while the others have theirs
    ck = copy_good("crcgone");
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    rewrite_meta_entry(path, "crc32c.blocks.0.W_I", NULL, NULL);
    recomplete(ck);
    expect_error(run_glia("eval --device cpu --ckpt '%s'", path), "tensor 'blocks.0.W_I'", "'crc32c.blocks.0.W_I' (its checksum) is missing");
    // the same in a state file
    ck = copy_good("crcstate");
    snprintf(path, sizeof path, "%s/state.rank0.safetensors", ck);
    rewrite_meta_entry(path, "crc32c.m.norm_f", "crc32c.m.norm_F", NULL);
    recomplete(ck);
    expect_error(resume("crcstate", NULL), "state.rank0.safetensors", "'crc32c.m.norm_F'");
}

// ---- the run lock ------------------------------------------------------------------------

// Starts `glia ARGS...` (NULL-terminated) in the background, stdout and
// stderr into dir/bg.out; returns its PID.
static pid_t spawn_glia(char *const argv[]) {
    char log[300];
    snprintf(log, sizeof log, "%s/bg.out", dir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(GLIA_BIN, argv);
        _exit(127);
    }
    return pid;
}

// Waits (up to 60 s) until out/metrics.jsonl has at least `lines` lines;
// 0, or -1 when the process `pid` ended first or time ran out.
static int wait_for_steps(pid_t pid, const char *out, int lines) {
    char path[400], buf[1 << 16];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    for (int i = 0; i < 6000; i++) {
        slurp(path, buf, sizeof buf);
        int n = 0;
        for (char *c = buf; *c; c++) n += *c == '\n';
        if (n >= lines) return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return -1;
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    return -1;
}

Test(checkpoint, run_lock_refuses_a_second_trainer) {
    char out[300], shards[300];
    snprintf(out, sizeof out, "%s/locked", dir);
    snprintf(shards, sizeof shards, "%s/shards", dir);
    // a long run (stopped by SIGKILL below; --max-seconds bounds it if the test dies)
    char *argv[] = {GLIA_BIN, "train", "--device", "cpu", "--size", "tiny", "--batch", "4", "--seq", "16", "--threads", "1", "--quiet",
                    "--eval-every", "0", "--sample-tokens", "0", "--ckpt-every", "0", "--steps", "10000000",
                    "--max-seconds", "120", "--data", shards, "--out", out, NULL};
    pid_t pid = spawn_glia(argv);
    cr_assert_eq(wait_for_steps(pid, out, 2), 0, "the first trainer did not start");
    char want[64];
    snprintf(want, sizeof want, "PID %ld", (long)pid);
    // a second trainer, fresh or resuming, is refused naming the holder
    expect_error(run_glia(RUN_FLAGS " --data '%s' --out '%s' --steps 5", shards, out), out, want);
    expect_error(run_glia(RUN_FLAGS " --data '%s' --out '%s' --steps 5 --resume auto", shards, out), "in use", want);
    int st;
    cr_expect_eq(waitpid(pid, &st, WNOHANG), 0, "the first trainer must still run");
    // the kernel releases the lock of a process that dies, however it dies
    kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st), "the first trainer ended before it was killed (status %d)", st);
    cr_expect_eq(run_glia(RUN_FLAGS " --data '%s' --out '%s' --steps 3", shards, out), 0,
                 "the lock of a killed trainer must be free: %s", err_text);
}

// ---- --resume auto -------------------------------------------------------------------------

Test(checkpoint, resume_auto_fresh_then_continues) {
    reference_run("straight", 10);
    char b[300];
    snprintf(b, sizeof b, "%s/auto", dir);
    // a directory that does not exist yet: a fresh run
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s' --steps 10 --stop-after 4 --resume auto", dir, b), 0,
                 "%s", err_text);
    cr_expect(strstr(out_text, "starting a fresh run"), "%s", out_text);
    // the same command line again continues from step 4
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s' --steps 10 --resume auto", dir, b), 0, "%s", err_text);
    cr_expect(strstr(out_text, "resuming from") && strstr(out_text, "step_00000004"), "%s", out_text);
    char straight[300];
    snprintf(straight, sizeof straight, "%s/straight", dir);
    expect_same_run(straight, b, 10);
    // an empty directory is fresh too
    cr_assert_eq(test_sh("mkdir -p '%s/emptyrun'", dir), 0);
    cr_expect_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/emptyrun' --steps 2 --resume auto", dir, dir), 0,
                 "%s", err_text);
    cr_expect(strstr(out_text, "starting a fresh run"), "%s", out_text);
    // ambiguous: a model file whose checkpoints are gone (only an incomplete one)
    copy_good("orphan");
    cr_assert_eq(test_sh("cd '%s/orphan/ckpt' && rm step_00000003/COMPLETE && rm -r step_00000001 step_00000002", dir), 0);
    expect_error(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/orphan' --steps 3 --resume auto", dir, dir),
                 "--resume auto", "model.safetensors");
    // ambiguous: a directory of something else
    cr_assert_eq(test_sh("mkdir -p '%s/other' && echo hello > '%s/other/notes.txt'", dir, dir), 0);
    expect_error(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/other' --steps 3 --resume auto", dir, dir),
                 "--resume auto", "notes.txt");
    cr_expect_eq(test_sh("test -f '%s/other/notes.txt'", dir), 0, "nothing is touched");
    // --init starts the run the first time only; the same command line then resumes
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s/inited' --steps 4 --stop-after 2 "
                              "--resume auto --init '%s/model.safetensors'", dir, dir, straight), 0, "%s", err_text);
        cr_expect(strstr(out_text, i ? "resuming from" : "starting a fresh run"), "%s", out_text);
    }
}

// Resume restores --data and the options that do not change the arithmetic.
Test(checkpoint, resume_restores_data_and_options) {
    reference_run("ref8", 8);
    char b[300];
    snprintf(b, sizeof b, "%s/opts", dir);
    cr_assert_eq(run_glia("train --device cpu --size tiny --batch 4 --seq 16 --warmup 3 --threads 1 --quiet --sample-tokens 0 "
                          "--data '%s/shards' --out '%s' --steps 8 --stop-after 3 --ckpt-every 1 --eval-every 2 "
                          "--eval-batches 1 --keep 2", dir, b), 0, "%s", err_text);
    // a contradicting --data is refused, the run untouched
    expect_error(run_glia("train --device cpu --resume --out '%s' --data '%s/corpus.txt' --threads 1", b, dir), "--data",
                 "differs from");
    // no --data, --ckpt-every, --eval-every, --keep: all from the checkpoint
    cr_assert_eq(run_glia("train --device cpu --resume --out '%s' --threads 1 --quiet --sample-tokens 0", b), 0, "%s", err_text);
    cr_expect(strstr(out_text, "/shards"), "the stored data is used: %s", out_text);
    char ref[300];
    snprintf(ref, sizeof ref, "%s/ref8", dir);
    expect_same_run(ref, b, 8);
    // --ckpt-every 1 and --keep 2 restored: steps 7 and 8 (the defaults would keep 3 and save only step 8)
    cr_expect_eq(test_sh("test -f '%s/ckpt/step_00000007/COMPLETE' && test -f '%s/ckpt/step_00000008/COMPLETE' && "
                    "test $(ls '%s/ckpt' | wc -l) -eq 2", b, b, b), 0, "--ckpt-every 1 --keep 2 are restored");
    // --eval-every 2 restored: evaluations at steps 4, 6 and 8 after the resume
    cr_expect_eq(test_sh("grep -q '\"step\": 6, \"val_loss\"' '%s/metrics.jsonl'", b), 0, "--eval-every 2 is restored");
    // the same --data given again is fine
    cr_expect_eq(run_glia("train --device cpu --resume --out '%s' --data '%s/shards' --threads 1 --quiet", b, dir), 0, "%s", err_text);
}

// ---- SIGTERM, SIGINT ----------------------------------------------------------------------

// SIGTERM mid-run: the step finishes, a checkpoint is saved, exit status 75;
// a second signal during that changes nothing; resuming finishes the run bit
// for bit as if it had never stopped.
static void signal_then_resume(const char *name, int sig, int second) {
    const int steps = 1500;
    char out[300], shards[300], steps_s[16], ref[300];
    snprintf(ref, sizeof ref, "%s/ref_sig", dir);
    if (access(ref, F_OK) != 0)
        cr_assert_eq(run_glia("train --device cpu --size tiny --batch 4 --seq 16 --warmup 3 --threads 1 --quiet --eval-every 500 "
                              "--eval-batches 1 --sample-tokens 0 --ckpt-every 1000 --data '%s/shards' --out '%s' "
                              "--steps %d", dir, ref, steps), 0, "%s", err_text);
    snprintf(out, sizeof out, "%s/%s", dir, name);
    snprintf(shards, sizeof shards, "%s/shards", dir);
    snprintf(steps_s, sizeof steps_s, "%d", steps);
    char *argv[] = {GLIA_BIN, "train", "--device", "cpu", "--size", "tiny", "--batch", "4", "--seq", "16", "--warmup", "3", "--threads",
                    "1", "--quiet", "--eval-every", "500", "--eval-batches", "1", "--sample-tokens", "0",
                    "--ckpt-every", "1000", "--steps", steps_s, "--data", shards, "--out", out, NULL};
    pid_t pid = spawn_glia(argv);
    cr_assert_eq(wait_for_steps(pid, out, 20), 0, "the trainer did not start");
    kill(pid, sig);
    if (second) kill(pid, second);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    char log[300];
    snprintf(log, sizeof log, "%s/bg.out", dir);
    slurp(log, out_text, sizeof out_text);
    cr_assert(WIFEXITED(st), "glia train died of signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    cr_assert_eq(WEXITSTATUS(st), 75, "exit status %d: %s", WEXITSTATUS(st), out_text);
    // (with two signals either may be the first handled: the threads race)
    cr_expect(strstr(out_text, second ? "stopped by SIG" : sig == SIGTERM ? "stopped by SIGTERM" : "stopped by SIGINT"),
              "%s", out_text);
    double loss[2048];
    int n = read_losses(out, loss, 2048);
    cr_assert(n > 20 && n < steps, "stopped after %d steps", n);
    cr_expect_eq(test_sh("test -f '%s/ckpt/step_%08d/COMPLETE'", out, n), 0, "the checkpoint of the last step, %d", n);
    cr_expect_eq(verify_complete_checkpoints(out), n >= 1000 ? 2 : 1);
    cr_expect_neq(test_sh("test -e '%s/sample.txt'", out), 0, "an interrupted run samples nothing");
    cr_assert_eq(run_glia("train --device cpu --resume auto --out '%s' --threads 1 --quiet", out), 0, "%s", err_text);
    expect_same_run(ref, out, steps);
}

Test(checkpoint, sigterm_saves_exits_75_and_resumes_bit_identical) {
    signal_then_resume("term", SIGTERM, 0);
}

Test(checkpoint, sigint_then_a_second_signal_still_saves) {
    signal_then_resume("int2", SIGINT, SIGTERM);
}

// ---- stale temporary files -----------------------------------------------------------------

// Temporary files of saves that were killed (NAME.tmp.<pid>) are deleted at
// the next save; other files are not.
Test(checkpoint, stale_temporary_files_removed_at_save) {
    char b[300];
    snprintf(b, sizeof b, "%s/stale", dir);
    cr_assert_eq(run_glia(RUN_FLAGS " --data '%s/shards' --out '%s' --steps 4 --stop-after 2", dir, b), 0, "%s",
                 err_text);
    cr_assert_eq(test_sh("cd '%s' && touch model.safetensors.tmp.999999 metrics.jsonl.tmp.12 keep.tmp.txt "
                    "ckpt/COMPLETE.tmp.4242 ckpt/step_00000002/state.rank0.safetensors.tmp.31337", b), 0);
    cr_assert_eq(run_glia("train --device cpu --resume --out '%s' --steps 4 --threads 1 --quiet --sample-tokens 0", b), 0, "%s",
                 err_text);
    cr_expect_eq(test_sh("cd '%s' && test ! -e model.safetensors.tmp.999999 && test ! -e metrics.jsonl.tmp.12 && "
                    "test ! -e ckpt/COMPLETE.tmp.4242 && test ! -e ckpt/step_00000002/state.rank0.safetensors.tmp.31337",
                    b), 0, "stale temporary files remain");
    cr_expect_eq(test_sh("test -f '%s/keep.tmp.txt'", b), 0, "a file that is not a temporary of a save stays");
}
