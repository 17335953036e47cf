// test_data.c: token shards, datasets, batches and byte-level corpora
// (host/io/data.h), and `glia prepare` as a user runs it.
//
// Shards are built by hand where a test needs a broken one, so each way a
// file can be wrong (truncated, padded, empty, wrong magic or version, too
// few tokens, a directory, unreadable) is checked to give one line that
// names the file and the problem. The sampler is checked by its properties
// rather than by fixed positions: reproducible, different per step, split
// across ranks without changing the batch, never crossing a shard, and
// reaching every valid window; shards with disjoint, consecutive token values
// make "crosses a shard" and "is not a contiguous window" visible in the
// tokens themselves.
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/data.h"  // host/ is not on the include path
#include "testutil.h"

static char tmpdir[256];
static char output[8192];  // stdout + stderr of the last glia run

static void make_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/glia_data_XXXXXX", base && *base ? base : "/tmp");
    cr_assert(mkdtemp(tmpdir), "mkdtemp failed");
}

static void remove_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(data, .init = make_tmpdir, .fini = remove_tmpdir);

// A path under the test's directory (a few rotating buffers).
static const char *tmp(const char *fmt, ...) {
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

// A raw shard: the given header fields, then `ntok` tokens (0, 1, 2, ...),
// then `extra` zero bytes.
static void write_raw_shard(const char *path, int32_t magic, int32_t version, int32_t count,
                            size_t ntok, size_t extra) {
    size_t n = SHARD_HEADER_INTS * 4 + ntok * 2 + extra;
    unsigned char *buf = calloc(n, 1);
    int32_t header[SHARD_HEADER_INTS] = {magic, version, count};
    memcpy(buf, header, sizeof header);
    uint16_t *tok = (uint16_t *)(buf + sizeof header);
    for (size_t i = 0; i < ntok; i++) tok[i] = (uint16_t)i;
    write_bytes(path, buf, n);
    free(buf);
}

// A shard of `n` consecutive tokens starting at `start`.
static void write_seq_shard(const char *path, int start, size_t n) {
    uint16_t *tok = malloc(n * sizeof *tok);
    for (size_t i = 0; i < n; i++) tok[i] = (uint16_t)(start + (int)i);
    char err[DATA_ERR_LEN];
    cr_assert_eq(shard_write(path, tok, n, err), 0, "%s", err);
    free(tok);
}

// shard_open fails with a one-line error naming the file and all `words`.
static void expect_bad_shard(const char *path, const char *words) {
    Shard s;
    char err[DATA_ERR_LEN] = "";
    cr_expect_neq(shard_open(&s, path, err), 0, "%s should be rejected", path);
    cr_expect_eq(strncmp(err, path, strlen(path)), 0, "error should start with the path: %s", err);
    cr_expect(strstr(err, words), "error should say '%s', got: %s", words, err);
    cr_expect(!strchr(err, '\n'), "error should be one line: %s", err);
    cr_expect_null(s.map);
}

// ---- shards ---------------------------------------------------------------------

// Number of entries in the test's directory.
static int dir_entries(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "exit $(ls -A '%s' | wc -l)", tmpdir);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(data, shard_round_trip) {
    TestRng r;
    rng_seed(&r, 1);
    size_t n = 1000;
    uint16_t tok[1000];
    for (size_t i = 0; i < n; i++) tok[i] = (uint16_t)(rng_uniform(&r) * 65536.0f);
    tok[0] = 65535;  // the whole uint16 range survives
    char err[DATA_ERR_LEN];
    const char *path = tmp("x_train.bin");
    cr_assert_eq(shard_write(path, tok, n, err), 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq((size_t)st.st_size, 1024 + 2 * n, "file size");

    Shard s;
    cr_assert_eq(shard_open(&s, path, err), 0, "%s", err);
    cr_expect_eq(s.ntok, n);
    cr_expect_str_eq(s.path, path);
    cr_expect_eq(memcmp(s.tokens, tok, sizeof tok), 0, "tokens differ after the round trip");
    shard_close(&s);
    cr_expect_null(s.map);
    shard_close(&s);  // closing twice is harmless

    // Rewriting replaces the file whole, and leaves no temporary behind.
    cr_assert_eq(shard_write(path, tok + 500, 2, err), 0, "%s", err);
    cr_assert_eq(shard_open(&s, path, err), 0, "%s", err);
    cr_expect_eq(s.ntok, 2);
    cr_expect_eq(s.tokens[1], tok[501]);
    shard_close(&s);
    cr_expect_eq(dir_entries(), 1, "a temporary file was left behind");
}

Test(data, shard_write_failure_leaves_nothing) {
    uint16_t tok[4] = {1, 2, 3, 4};
    char err[DATA_ERR_LEN];
    // A directory where the shard should go: the rename fails after the data
    // was written; the temporary file must go and the directory stay.
    const char *path = tmp("in_the_way.bin");
    cr_assert_eq(mkdir(path, 0755), 0);
    cr_expect_neq(shard_write(path, tok, 4, err), 0);
    cr_expect(strstr(err, path), "error names the file: %s", err);
    struct stat st;
    cr_expect(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "the directory is untouched");
    cr_expect_eq(dir_entries(), 1, "a temporary file was left behind");

    // A missing directory: nothing is created.
    cr_expect_neq(shard_write(tmp("no/such/dir/x.bin"), tok, 4, err), 0);
    cr_expect(strstr(err, "no/such/dir/x.bin"), "%s", err);
    cr_expect_eq(dir_entries(), 1);

    // Too few tokens for a shard that could be read back.
    cr_expect_neq(shard_write(tmp("one.bin"), tok, 1, err), 0);
    cr_expect(strstr(err, "1 tokens"), "%s", err);
    cr_expect_eq(dir_entries(), 1);

    // An existing good shard survives a failed rewrite.
    const char *good = tmp("good.bin");
    cr_assert_eq(shard_write(good, tok, 4, err), 0, "%s", err);
    cr_expect_neq(shard_write(good, tok, 1, err), 0);
    Shard s;
    cr_assert_eq(shard_open(&s, good, err), 0, "%s", err);
    cr_expect_eq(s.ntok, 4);
    shard_close(&s);
}

Test(data, bad_shards) {
    char path[512];
    snprintf(path, sizeof path, "%s", tmp("trunc_train.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 1000, 998, 0);
    expect_bad_shard(path, "truncated: header says 1000 tokens, file holds 998");

    snprintf(path, sizeof path, "%s", tmp("odd.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 1000, 999, 1);
    expect_bad_shard(path, "truncated");

    snprintf(path, sizeof path, "%s", tmp("pad.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 1000, 1001, 0);
    expect_bad_shard(path, "padded: header says 1000 tokens, file holds 1001");

    snprintf(path, sizeof path, "%s", tmp("stray.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 1000, 1000, 1);
    expect_bad_shard(path, "padded");

    snprintf(path, sizeof path, "%s", tmp("empty.bin"));
    write_bytes(path, "", 0);
    expect_bad_shard(path, "empty");

    snprintf(path, sizeof path, "%s", tmp("short_header.bin"));
    write_bytes(path, "not a shard at all", 18);
    expect_bad_shard(path, "truncated");

    snprintf(path, sizeof path, "%s", tmp("magic.bin"));
    write_raw_shard(path, 20240326, SHARD_VERSION, 10, 10, 0);
    expect_bad_shard(path, "magic");

    snprintf(path, sizeof path, "%s", tmp("version.bin"));
    write_raw_shard(path, SHARD_MAGIC, 2, 10, 10, 0);
    expect_bad_shard(path, "version 2");

    snprintf(path, sizeof path, "%s", tmp("header_only.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 0, 0, 0);
    expect_bad_shard(path, "too few tokens");

    snprintf(path, sizeof path, "%s", tmp("one.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 1, 1, 0);
    expect_bad_shard(path, "too few tokens");

    snprintf(path, sizeof path, "%s", tmp("negative.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, -5, 4, 0);
    expect_bad_shard(path, "token count");

    snprintf(path, sizeof path, "%s", tmp("dir.bin"));
    cr_assert_eq(mkdir(path, 0755), 0);
    expect_bad_shard(path, "directory");

    snprintf(path, sizeof path, "%s", tmp("missing.bin"));
    expect_bad_shard(path, "cannot open");
}

// A shard without read permission: only where permissions are enforced.
Test(data, shard_unreadable) {
    if (geteuid() == 0) cr_skip_test("running as root: root reads any file, whatever its mode");
    char path[512];
    snprintf(path, sizeof path, "%s", tmp("locked.bin"));
    write_raw_shard(path, SHARD_MAGIC, SHARD_VERSION, 10, 10, 0);
    cr_assert_eq(chmod(path, 0), 0);
    expect_bad_shard(path, "cannot open");
}

// ---- datasets --------------------------------------------------------------------

Test(data, dataset_open_empty_dir) {
    Dataset d;
    char err[DATA_ERR_LEN];
    write_bytes(tmp("notes.txt"), "hi", 2);
    write_seq_shard(tmp("x_val.bin"), 0, 10);
    cr_expect_neq(dataset_open(&d, tmpdir, "train", err), 0);
    char want[600];
    snprintf(want, sizeof want, "%s: no *_train*.bin shards (the split a word of the name: NAME_train.bin)", tmpdir);
    cr_expect_str_eq(err, want);
    cr_expect_eq(d.nshards, 0);
    cr_expect_null(d.shards);
    // the split is a word of the name: a corpus called "eval" has no val shard in eval_train.bin
    write_seq_shard(tmp("eval_train.bin"), 0, 10);
    cr_expect_eq(dataset_open(&d, tmpdir, "val", err), 0, "%s", err);
    cr_expect_eq(d.nshards, 1, "only x_val.bin is a val shard, not eval_train.bin");
    dataset_close(&d);

    cr_expect_neq(dataset_open(&d, tmp("nonexistent"), "train", err), 0);
    cr_expect(strstr(err, "nonexistent"), "%s", err);
}

Test(data, dataset_open_sorted) {
    // Created out of order, with decoys: not .bin, the other split, a
    // directory with a matching name.
    write_seq_shard(tmp("d_train_001.bin"), 100, 500);
    write_seq_shard(tmp("d_train_000.bin"), 0, 90);
    write_seq_shard(tmp("d_val_000.bin"), 1000, 50);
    write_bytes(tmp("d_train_002.bin.bak"), "x", 1);
    write_bytes(tmp("train_notes.txt"), "x", 1);
    cr_assert_eq(mkdir(tmp("sub_train.bin"), 0755), 0);

    Dataset d;
    char err[DATA_ERR_LEN];
    cr_assert_eq(dataset_open(&d, tmpdir, "train", err), 0, "%s", err);
    cr_assert_eq(d.nshards, 2);
    cr_expect_str_eq(d.shards[0].path, tmp("d_train_000.bin"));
    cr_expect_str_eq(d.shards[1].path, tmp("d_train_001.bin"));
    cr_expect_eq(d.total, 590);
    cr_expect_eq(d.max_token, 599);
    dataset_close(&d);
    cr_expect_eq(d.nshards, 0);

    cr_assert_eq(dataset_open(&d, tmpdir, "val", err), 0, "%s", err);
    cr_expect_eq(d.nshards, 1);
    cr_expect_eq(d.total, 50);
    cr_expect_eq(d.max_token, 1049);
    dataset_close(&d);

    // One bad shard fails the whole dataset, naming it.
    write_raw_shard(tmp("d_train_003.bin"), SHARD_MAGIC, SHARD_VERSION, 100, 99, 0);
    cr_expect_neq(dataset_open(&d, tmpdir, "train", err), 0);
    cr_expect(strstr(err, "d_train_003.bin: truncated"), "%s", err);
    cr_expect_eq(d.nshards, 0);
}

Test(data, check_seq) {
    write_seq_shard(tmp("a_train.bin"), 0, 90);
    write_seq_shard(tmp("b_train.bin"), 100, 500);
    Dataset d;
    char err[DATA_ERR_LEN];
    cr_assert_eq(dataset_open(&d, tmpdir, "train", err), 0, "%s", err);
    cr_expect_eq(dataset_check_seq(&d, 89, err), 0, "%s", err);
    cr_expect_neq(dataset_check_seq(&d, 90, err), 0);
    cr_expect(strstr(err, "a_train.bin: holds 90 tokens"), "%s", err);
    cr_expect_neq(dataset_check_seq(&d, 0, err), 0);
    dataset_close(&d);
}

// Two shards: a_train.bin = 0..89 and b_train.bin = 100..599.
static void open_two_shards(Dataset *d) {
    write_seq_shard(tmp("a_train.bin"), 0, 90);
    write_seq_shard(tmp("b_train.bin"), 100, 500);
    char err[DATA_ERR_LEN];
    cr_assert_eq(dataset_open(d, tmpdir, "train", err), 0, "%s", err);
}

#define SEQ 16
#define BATCH 64

Test(data, sample_properties) {
    Dataset d;
    open_two_shards(&d);
    int in[BATCH * SEQ], tg[BATCH * SEQ], in2[BATCH * SEQ], tg2[BATCH * SEQ];

    dataset_sample(&d, 42, 7, 0, BATCH, SEQ, in, tg);
    dataset_sample(&d, 42, 7, 0, BATCH, SEQ, in2, tg2);
    cr_expect_eq(memcmp(in, in2, sizeof in), 0, "same arguments, different batch");
    cr_expect_eq(memcmp(tg, tg2, sizeof tg), 0);

    for (int j = 0; j < BATCH; j++) {
        const int *x = in + j * SEQ, *y = tg + j * SEQ;
        // Every window is a contiguous run of one shard (shard a holds
        // 0..89, shard b 100..599: a window across them would jump 89 -> 100).
        cr_expect((x[0] <= 89 - SEQ) || (x[0] >= 100 && x[0] <= 599 - SEQ),
                  "window %d starts at token %d, outside the valid starts", j, x[0]);
        for (int t = 0; t < SEQ; t++) {
            cr_expect_eq(y[t], x[t] + 1, "targets are inputs shifted by one");
            if (t) cr_expect_eq(x[t], x[t - 1] + 1, "window %d is not contiguous", j);
        }
    }

    dataset_sample(&d, 42, 8, 0, BATCH, SEQ, in2, tg2);
    cr_expect_neq(memcmp(in, in2, sizeof in), 0, "a new step should draw a new batch");
    dataset_sample(&d, 43, 7, 0, BATCH, SEQ, in2, tg2);
    cr_expect_neq(memcmp(in, in2, sizeof in), 0, "a new seed should draw a new batch");

    // Ranks: sequences [0, 4) are [0, 2) followed by [2, 4).
    int a[4 * SEQ], at[4 * SEQ], b[4 * SEQ], bt[4 * SEQ];
    dataset_sample(&d, 42, 7, 0, 4, SEQ, a, at);
    dataset_sample(&d, 42, 7, 0, 2, SEQ, b, bt);
    dataset_sample(&d, 42, 7, 2, 2, SEQ, b + 2 * SEQ, bt + 2 * SEQ);
    cr_expect_eq(memcmp(a, b, sizeof a), 0, "a batch split across ranks differs");
    cr_expect_eq(memcmp(at, bt, sizeof at), 0);
    cr_expect_eq(memcmp(a, in, sizeof a), 0, "a batch's head depends on the batch size");
    dataset_close(&d);
}

Test(data, sample_reaches_every_window) {
    // 74 + 484 = 558 valid starts; 40000 draws miss one with probability
    // about 558·exp(−72), and the draw is a fixed function of the seed.
    Dataset d;
    open_two_shards(&d);
    static unsigned char seen[600];
    int in[BATCH * SEQ], tg[BATCH * SEQ];
    for (int step = 0; step < 625; step++) {
        dataset_sample(&d, 1234, (uint64_t)step, 0, BATCH, SEQ, in, tg);
        for (int j = 0; j < BATCH; j++) seen[in[j * SEQ]] = 1;
    }
    int missing = 0;
    for (int s = 0; s <= 89 - SEQ; s++) missing += !seen[s];
    for (int s = 100; s <= 599 - SEQ; s++) missing += !seen[s];
    cr_expect_eq(missing, 0, "%d valid starts were never drawn", missing);
    cr_expect(seen[0] && seen[89 - SEQ] && seen[100] && seen[599 - SEQ], "shard edges");
    dataset_close(&d);
}

Test(data, windows) {
    Dataset d;
    open_two_shards(&d);
    // floor(90/17) + floor(500/17) = 5 + 29
    cr_assert_eq(dataset_windows(&d, SEQ), 34);
    int in[BATCH * SEQ], tg[BATCH * SEQ];
    cr_expect_eq(dataset_window(&d, 0, 4, SEQ, in, tg), 4);
    for (int j = 0; j < 4; j++)
        for (int t = 0; t < SEQ; t++) {
            cr_expect_eq(in[j * SEQ + t], j * (SEQ + 1) + t);
            cr_expect_eq(tg[j * SEQ + t], j * (SEQ + 1) + t + 1);
        }
    // Windows 4..7: the last of shard a, then the first three of shard b
    // (shard a's tail 85..89 is skipped).
    cr_expect_eq(dataset_window(&d, 4, 4, SEQ, in, tg), 4);
    cr_expect_eq(in[0], 4 * (SEQ + 1));
    for (int j = 1; j < 4; j++) {
        cr_expect_eq(in[j * SEQ], 100 + (j - 1) * (SEQ + 1));
        cr_expect_eq(tg[j * SEQ + SEQ - 1], 100 + (j - 1) * (SEQ + 1) + SEQ);
    }
    // The end: 34 = 8·4 + 2.
    cr_expect_eq(dataset_window(&d, 32, 4, SEQ, in, tg), 2);
    cr_expect_eq(in[SEQ], 100 + 28 * (SEQ + 1));
    cr_expect_eq(dataset_window(&d, 34, 4, SEQ, in, tg), 0);
    cr_expect_eq(dataset_window(&d, 4000, 4, SEQ, in, tg), 0);
    // a window that starts anywhere: 5..7 are shard b's first three
    cr_expect_eq(dataset_window(&d, 5, 3, SEQ, in, tg), 3);
    cr_expect_eq(in[0], 100);
    // All windows in one call, and one window per call, agree.
    int all[34 * SEQ], allt[34 * SEQ];
    cr_expect_eq(dataset_window(&d, 0, 34, SEQ, all, allt), 34);
    for (size_t w = 0; w < 34; w++) {
        cr_expect_eq(dataset_window(&d, w, 1, SEQ, in, tg), 1);
        cr_expect_eq(memcmp(in, all + w * SEQ, SEQ * sizeof(int)), 0, "window %zu", w);
        cr_expect_eq(memcmp(tg, allt + w * SEQ, SEQ * sizeof(int)), 0, "window %zu", w);
    }
    dataset_close(&d);
}

// ---- byte-level corpora ------------------------------------------------------------

Test(data, prepare_bytes_splits) {
    unsigned char text[1000];
    for (int i = 0; i < 1000; i++) text[i] = (unsigned char)(i * 7 + 3);
    char err[DATA_ERR_LEN], dir[512];
    snprintf(dir, sizeof dir, "%s", tmp("made/by/prepare"));
    cr_assert_eq(prepare_bytes(text, 1000, 0.1, dir, "t", err), 0, "%s", err);
    Dataset tr, va;
    cr_assert_eq(dataset_open(&tr, dir, "train", err), 0, "%s", err);
    cr_assert_eq(dataset_open(&va, dir, "val", err), 0, "%s", err);
    cr_expect_eq(tr.total, 900);
    cr_expect_eq(va.total, 100);
    for (int i = 0; i < 900; i++) cr_expect_eq(tr.shards[0].tokens[i], text[i], "byte %d", i);
    for (int i = 0; i < 100; i++) cr_expect_eq(va.shards[0].tokens[i], text[900 + i]);
    cr_expect_eq(tr.max_token, 255);
    dataset_close(&tr);
    dataset_close(&va);

    // floor(10 · 0.75) = 7 train, 3 val.
    cr_assert_eq(prepare_bytes(text, 10, 0.25, dir, "small", err), 0, "%s", err);
    Shard s;
    cr_assert_eq(shard_open(&s, tmp("made/by/prepare/small_val.bin"), err), 0, "%s", err);
    cr_expect_eq(s.ntok, 3);
    shard_close(&s);

    // Too short for two tokens in each split; bad arguments.
    cr_expect_eq(prepare_bytes(text, 3, 0.1, dir, "x", err), 2);
    cr_expect(strstr(err, "too short"), "%s", err);
    cr_expect_eq(prepare_bytes(text, 10, 0.1, dir, "x", err), 2);  // 9 + 1
    cr_expect(strstr(err, "9 train and 1 val"), "%s", err);
    cr_expect_eq(prepare_bytes(text, 11, 0.1, dir, "x", err), 0, "%s", err);  // 9 + 2
    cr_expect_eq(prepare_bytes(text, 100, 0.0, dir, "x", err), 2);
    cr_expect_eq(prepare_bytes(text, 100, 1.0, dir, "x", err), 2);
    cr_expect_eq(prepare_bytes(text, 100, 0.1, dir, "a/b", err), 2);
    // A file where the directory should be: an environment failure.
    write_bytes(tmp("afile"), "x", 1);
    cr_expect_eq(prepare_bytes(text, 100, 0.1, tmp("afile/sub"), "x", err), 1);
    cr_expect(strstr(err, "afile: exists and is not a directory"), "%s", err);
}

// ---- the glia command ------------------------------------------------------------

#define run_glia(...) glia_run(output, sizeof output, __VA_ARGS__)

static void expect_one_line_error(int status, int want, const char *what) {
    cr_expect_eq(status, want, "exit status %d, output: %s", status, output);
    cr_expect(strstr(output, "glia prepare"), "error names the command: %s", output);
    cr_expect(strstr(output, what), "error should mention '%s', got: %s", what, output);
    const char *nl = strchr(output, '\n');
    cr_expect(nl && nl[1] == 0, "error should be one line, got: %s", output);
}

Test(data, cli_prepare) {
    const char *text = "It was the best of times, it was the worst of times.\n";
    char in[512];
    snprintf(in, sizeof in, "%s", tmp("dickens.txt"));
    write_bytes(in, text, strlen(text));
    int st = run_glia("prepare --in '%s' --out '%s'", in, tmp("out"));
    cr_assert_eq(st, 0, "glia prepare failed: %s", output);
    cr_expect(strstr(output, "47 tokens"), "train count (floor(53 · 0.9) = 47): %s", output);
    cr_expect(strstr(output, "6 tokens"), "val count: %s", output);
    cr_expect(strstr(output, tmp("out/dickens_train.bin")), "names the file: %s", output);
    Shard s;
    char err[DATA_ERR_LEN];
    cr_assert_eq(shard_open(&s, tmp("out/dickens_train.bin"), err), 0, "%s", err);
    cr_expect_eq(s.ntok, 47);
    cr_expect_eq(s.tokens[0], 'I');
    shard_close(&s);
    cr_assert_eq(shard_open(&s, tmp("out/dickens_val.bin"), err), 0, "%s", err);
    cr_expect_eq(s.ntok, 6);
    shard_close(&s);

    st = run_glia("prepare --in '%s' --out '%s' --name tale --val-frac 0.5", in, tmp("out"));
    cr_assert_eq(st, 0, "%s", output);
    cr_assert_eq(shard_open(&s, tmp("out/tale_val.bin"), err), 0, "%s", err);
    cr_expect_eq(s.ntok, 27);
    shard_close(&s);

    expect_one_line_error(run_glia("prepare --in '%s'", in), 2, "--out is required");
    expect_one_line_error(run_glia("prepare --in '%s' --out '%s'", tmp("none.txt"), tmp("out")),
                          2, "none.txt: cannot open");
    expect_one_line_error(run_glia("prepare --in '%s' --out '%s' --val-frac 0", in, tmp("out")),
                          2, "--val-frac");
    write_bytes(tmp("tiny.txt"), "abc", 3);
    expect_one_line_error(run_glia("prepare --in '%s' --out '%s'", tmp("tiny.txt"), tmp("out")),
                          2, "too short");
    expect_one_line_error(run_glia("prepare --in '%s' --out '%s/sub'", in, in), 1,
                          "not a directory");
}

// ---- the default corpus ------------------------------------------------------------

Test(data, cache_dir) {
    char dir[512];
    setenv("GLIA_DATA", "/data/glia", 1);
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    setenv("HOME", "/home/u", 1);
    data_cache_dir(dir, sizeof dir);
    cr_expect_str_eq(dir, "/data/glia");
    unsetenv("GLIA_DATA");
    data_cache_dir(dir, sizeof dir);
    cr_expect_str_eq(dir, "/xdg/glia");
    unsetenv("XDG_CACHE_HOME");
    data_cache_dir(dir, sizeof dir);
    cr_expect_str_eq(dir, "/home/u/.cache/glia");
}

Test(data, corpus_default, .timeout = 120) {
    if (system("command -v bible > /dev/null 2>&1") != 0)
        cr_skip_test("the 'bible' command (Debian's bible-kjv) is not installed");
    setenv("GLIA_DATA", tmpdir, 1);
    char dir[512], err[DATA_ERR_LEN];
    cr_assert_eq(corpus_default(dir, sizeof dir, err), 0, "%s", err);
    cr_expect_str_eq(dir, tmp("kjv"));
    Dataset tr, va;
    cr_assert_eq(dataset_open(&tr, dir, "train", err), 0, "%s", err);
    cr_assert_eq(dataset_open(&va, dir, "val", err), 0, "%s", err);
    // About 4.1 MB of verse text: 0.9 of it for training, 0.1 for validation.
    cr_expect(tr.total > 3500000 && tr.total < 4500000, "train holds %zu tokens", tr.total);
    double ratio = (double)va.total / (double)tr.total;
    cr_expect(ratio > 0.105 && ratio < 0.117, "val/train = %.4f, expected about 1/9", ratio);
    cr_expect(tr.max_token < 128, "the KJV text is ASCII (max token %d)", tr.max_token);
    // References are gone: the text starts with the first verse's words.
    const char *start = "In the beginning God created the heaven and the earth.\n";
    for (size_t i = 0; i < strlen(start); i++)
        cr_expect_eq(tr.shards[0].tokens[i], (uint16_t)start[i], "byte %zu", i);
    cr_expect_eq(va.shards[0].tokens[va.total - 1], '\n');
    size_t va_total = va.total;
    dataset_close(&tr);
    dataset_close(&va);

    // A second call finds the prepared shards and leaves them alone.
    struct stat before, after;
    cr_assert_eq(stat(tmp("kjv/kjv_train.bin"), &before), 0);
    cr_assert_eq(corpus_default(dir, sizeof dir, err), 0, "%s", err);
    cr_assert_eq(stat(tmp("kjv/kjv_train.bin"), &after), 0);
    cr_expect_eq(before.st_ino, after.st_ino, "the corpus was prepared again");

    // A damaged shard is noticed and the corpus prepared afresh.
    cr_assert_eq(truncate(tmp("kjv/kjv_val.bin"), 2000), 0);
    cr_assert_eq(corpus_default(dir, sizeof dir, err), 0, "%s", err);
    Shard s;
    cr_assert_eq(shard_open(&s, tmp("kjv/kjv_val.bin"), err), 0, "%s", err);
    cr_expect_eq(s.ntok, va_total);
    shard_close(&s);
}

// Runs corpus_default with a stand-in `bible` (NULL: none) alone on PATH.
static int corpus_with_fake_bible(const char *script, char *dir, size_t dir_len,
                                  char err[DATA_ERR_LEN]) {
    const char *old = getenv("PATH");
    char *saved = strdup(old ? old : "/usr/bin:/bin");
    cr_assert_eq(mkdir(tmp("bin"), 0755), 0);
    if (script) {
        write_bytes(tmp("bin/bible"), script, strlen(script));
        cr_assert_eq(chmod(tmp("bin/bible"), 0755), 0);
    }
    setenv("PATH", tmp("bin"), 1);
    setenv("GLIA_DATA", tmpdir, 1);
    int rc = corpus_default(dir, dir_len, err);
    setenv("PATH", saved, 1);
    free(saved);
    return rc;
}

Test(data, corpus_default_without_bible) {
    char dir[512], err[DATA_ERR_LEN];
    cr_expect_neq(corpus_with_fake_bible(NULL, dir, sizeof dir, err), 0);
    cr_expect_str_eq(err,
                     "default corpus: the 'bible' command was not found; install Debian's "
                     "bible-kjv and bible-kjv-text (tools/setup.sh does) or pass --data");
    cr_expect_eq(dir_entries(), 1, "nothing but bin/ should be created");
}

Test(data, corpus_default_bible_fails) {
    char dir[512], err[DATA_ERR_LEN];
    cr_expect_neq(corpus_with_fake_bible("#!/bin/sh\necho 'Ge1:1 In the beginning'\nexit 3\n", dir, sizeof dir, err), 0);
    cr_expect(strstr(err, "failed (exit status 3)"), "%s", err);
    cr_expect(strstr(err, "bible-kjv-text"), "%s", err);
}

Test(data, corpus_default_bible_too_short) {
    char dir[512], err[DATA_ERR_LEN];
    cr_expect_neq(corpus_with_fake_bible("#!/bin/sh\necho 'Ge1:1 In the beginning'\n", dir, sizeof dir, err), 0);
    cr_expect(strstr(err, "gave only 17 bytes"), "%s", err);
    cr_expect_eq(dir_entries(), 1, "nothing but bin/ should be created");
}
