// test_bpe.c: the GPT-2 BPE tokenizer (host/io/bpe.c) against tiktoken.
//
// The oracle is tiktoken's gpt2 encoding built from the same ranks file
// (tools/bpe_oracle.py). Committed fixtures hold its token ids for the first
// 4 KB of the KJV and of Tiny Shakespeare and for a Unicode torture text
// (tests/fixtures/bpe_*), so the check runs where tiktoken is absent: the
// text is the ids' bytes concatenated (decoding is a table lookup), and the
// encoder must give back exactly those ids. Where tiktoken is installed, the
// whole KJV, the whole Tiny Shakespeare (when present) and the torture text
// are encoded by both and compared token for token. Every test needs the
// ranks file (tools/fetch_gpt2_ranks.sh) and skips without it.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/bpe.h"
#include "testutil.h"

static Bpe *load_or_skip(void) {
    char err[700];
    Bpe *b = bpe_load_default(err, sizeof err);
    if (!b) cr_skip_test("no GPT-2 ranks file: %s", err);
    return b;
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0, got;
    unsigned char *d = malloc(cap);
    while ((got = fread(d + len, 1, cap - len, f)) > 0)
        if ((len += got) == cap) d = realloc(d, cap *= 2);
    fclose(f);
    *n = len;
    return d;
}

// Whitespace-separated integers of a file (or a command's output with popen).
static int *read_ids(FILE *f, size_t *n) {
    size_t cap = 1024, len = 0;
    int *ids = malloc(cap * sizeof(int));
    int v;
    while (fscanf(f, "%d", &v) == 1) {
        if (len == cap) ids = realloc(ids, (cap *= 2) * sizeof(int));
        ids[len++] = v;
    }
    *n = len;
    return ids;
}

static unsigned char *decode(const Bpe *b, const int *ids, size_t n, size_t *len) {
    size_t cap = 16, k = 0;
    unsigned char *t = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        int l;
        const unsigned char *p = bpe_token_bytes(b, ids[i], &l);
        cr_assert(p, "token %d has no bytes", ids[i]);
        while (k + (size_t)l > cap) t = realloc(t, cap *= 2);
        memcpy(t + k, p, (size_t)l);
        k += (size_t)l;
    }
    *len = k;
    return t;
}

static void assert_same_ids(const int *got, size_t ngot, const int *want, size_t nwant, const char *what) {
    size_t i = 0;
    while (i < ngot && i < nwant && got[i] == want[i]) i++;
    cr_assert(i == ngot && i == nwant, "%s: glia gives %zu tokens, tiktoken %zu; first difference at token %zu (%d vs %d)",
              what, ngot, nwant, i, i < ngot ? got[i] : -1, i < nwant ? want[i] : -1);
}

Test(bpe, sha256_known_answers) {
    // FIPS 180-4's examples: empty, one block, two blocks (56 bytes: the padding spills)
    char hex[65];
    bpe_sha256_hex((const unsigned char *)"", 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    bpe_sha256_hex((const unsigned char *)"abc", 3, hex);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    bpe_sha256_hex((const unsigned char *)m, strlen(m), hex);
    cr_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

Test(bpe, fixtures_match_tiktoken) {
    Bpe *b = load_or_skip();
    const char *names[] = {"bpe_kjv.ids", "bpe_shakespeare.ids", "bpe_torture.ids"};
    for (int k = 0; k < 3; k++) {
        FILE *f = fopen(fixture_path(names[k]), "r");
        cr_assert(f, "cannot open %s", fixture_path(names[k]));
        size_t nwant, n;
        int *want = read_ids(f, &nwant);
        fclose(f);
        cr_assert_gt(nwant, 500, "%s: only %zu ids", names[k], nwant);
        unsigned char *text = decode(b, want, nwant, &n);
        int *got = NULL;
        size_t ngot = 0, cap = 0;
        bpe_encode(b, text, n, &got, &ngot, &cap);
        assert_same_ids(got, ngot, want, nwant, names[k]);
        free(got), free(want), free(text);
    }
    // the torture text as committed is the bytes its ids decode to (the oracle is consistent)
    size_t n, nt, nids;
    unsigned char *text = read_all(fixture_path("bpe_torture.txt"), &n);
    FILE *f = fopen(fixture_path("bpe_torture.ids"), "r");
    int *ids = read_ids(f, &nids);
    fclose(f);
    unsigned char *back = decode(b, ids, nids, &nt);
    cr_assert(text && nt == n && !memcmp(back, text, n), "bpe_torture.ids do not decode to bpe_torture.txt");
    free(text), free(ids), free(back);
    bpe_free(b);
}

Test(bpe, round_trip_and_edges) {
    Bpe *b = load_or_skip();
    // every single byte, invalid UTF-8 included, comes back; empty text is no tokens
    unsigned char all[256 * 3];
    for (int i = 0; i < 256 * 3; i++) all[i] = (unsigned char)(i * 7 + i / 256);
    int *ids = NULL;
    size_t nids = 0, cap = 0, n;
    bpe_encode(b, all, 0, &ids, &nids, &cap);
    cr_assert_eq(nids, 0);
    bpe_encode(b, all, sizeof all, &ids, &nids, &cap);
    unsigned char *back = decode(b, ids, nids, &n);
    cr_assert(n == sizeof all && !memcmp(back, all, n), "bytes 0..255 do not round-trip");
    for (size_t i = 0; i < nids; i++) cr_assert(ids[i] >= 0 && ids[i] < BPE_EOT);
    free(back);
    // tiktoken's ids for a few strings (tiktoken 0.14, gpt2)
    nids = 0;
    bpe_encode(b, (const unsigned char *)"Hello world", 11, &ids, &nids, &cap);
    cr_assert(nids == 2 && ids[0] == 15496 && ids[1] == 995, "Hello world -> %zu tokens", nids);
    int len;
    const unsigned char *eot = bpe_token_bytes(b, BPE_EOT, &len);
    cr_assert(len == 13 && !memcmp(eot, "<|endoftext|>", 13));
    cr_assert_null(bpe_token_bytes(b, BPE_VOCAB, &len));
    cr_assert_null(bpe_token_bytes(b, -1, &len));
    free(ids);
    bpe_free(b);
}

Test(bpe, bad_ranks_file) {
    char err[700], path[] = "/tmp/glia_bpe_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "IQ== 0\nIg== 1\n", 14), 14);
    close(fd);
    cr_assert_null(bpe_load(path, err, sizeof err));
    cr_assert(strstr(err, path) && strstr(err, "sha256") && strstr(err, "fetch_gpt2_ranks.sh"), "%s", err);
    unlink(path);
    cr_assert_null(bpe_load(path, err, sizeof err));
    cr_assert(strstr(err, "cannot open") && strstr(err, "fetch_gpt2_ranks.sh"), "%s", err);
}

// Compares glia and tiktoken (bpe_oracle.py) on a whole file.
static void live_parity(const Bpe *b, const char *path, const char *python) {
    size_t n, nwant;
    unsigned char *text = read_all(path, &n);
    cr_assert(text, "cannot read %s", path);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/../../tools/bpe_oracle.py --ids '%s'", python, GLIA_FIXTURES, path);
    FILE *p = popen(cmd, "r");
    int *want = read_ids(p, &nwant);
    int st = pclose(p);
    cr_assert(st == 0 && nwant > 0, "%s failed (status %d)", cmd, st);
    int *got = NULL;
    size_t ngot = 0, cap = 0, nb;
    bpe_encode(b, text, n, &got, &ngot, &cap);
    assert_same_ids(got, ngot, want, nwant, path);
    unsigned char *back = decode(b, got, ngot, &nb);
    cr_assert(nb == n && !memcmp(back, text, n), "%s: decode(encode(text)) != text", path);
    free(text), free(want), free(got), free(back);
}

// The Python with tiktoken (else the test skips, saying so).
static const char *python_tiktoken(void) {
    const char *py = getenv("GLIA_PYTHON") && *getenv("GLIA_PYTHON") ? getenv("GLIA_PYTHON") : "python3";
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s -c 'import tiktoken' >/dev/null 2>&1", py);
    if (system(cmd) != 0) cr_skip_test("tiktoken is not installed for %s (pip install tiktoken); the fixtures test covers the encoder", py);
    return py;
}

Test(bpe, torture_matches_tiktoken) {
    Bpe *b = load_or_skip();
    live_parity(b, fixture_path("bpe_torture.txt"), python_tiktoken());
    bpe_free(b);
}

Test(bpe, kjv_matches_tiktoken) {
    Bpe *b = load_or_skip();
    const char *py = python_tiktoken();
    char kjv[] = "/tmp/glia_bpe_kjv_XXXXXX", cmd[512];
    int fd = mkstemp(kjv);
    cr_assert(fd >= 0);
    close(fd);
    snprintf(cmd, sizeof cmd, "bible -f gen1:1-rev22:21 2>/dev/null | sed 's/^[^ ]* //' > %s", kjv);
    struct stat st;
    int ok = system(cmd) == 0 && stat(kjv, &st) == 0 && st.st_size > 4000000;
    if (!ok) unlink(kjv), cr_skip_test("the KJV is not installed (Debian: bible-kjv)");
    live_parity(b, kjv, py);
    unlink(kjv);
    bpe_free(b);
}

Test(bpe, tiny_shakespeare_matches_tiktoken) {
    Bpe *b = load_or_skip();
    const char *py = python_tiktoken();
    const char *ts = getenv("GLIA_TINYSHAKESPEARE");
    char tsp[1024];
    snprintf(tsp, sizeof tsp, "%s", ts && *ts ? ts : GLIA_FIXTURES "/../../../shared/data/tinyshakespeare.txt");
    if (access(tsp, R_OK) != 0) cr_skip_test("no Tiny Shakespeare at %s (set GLIA_TINYSHAKESPEARE)", tsp);
    live_parity(b, tsp, py);
    bpe_free(b);
}

Test(bpe, threads_cut_where_no_token_changes) {
    // 200 copies of the KJV fixture (800 KB, several chunks): the threaded
    // encoder's ids equal one pass's
    Bpe *b = load_or_skip();
    FILE *f = fopen(fixture_path("bpe_kjv.ids"), "r");
    size_t nids, n;
    int *ids = read_ids(f, &nids);
    fclose(f);
    unsigned char *one = decode(b, ids, nids, &n);
    unsigned char *text = malloc(n * 200);
    for (int k = 0; k < 200; k++) memcpy(text + k * n, one, n);
    int *serial = NULL;
    size_t ns = 0, cap = 0, np;
    bpe_encode(b, text, n * 200, &serial, &ns, &cap);
    int *par = bpe_encode_parallel(b, text, n * 200, 3, &np, NULL);
    assert_same_ids(par, np, serial, ns, "threaded against one pass");
    free(ids), free(one), free(text), free(serial), free(par);
    bpe_free(b);
}

Test(bpe, prepare_gpt2_writes_tiktokens_ids) {
    Bpe *b = load_or_skip();
    bpe_free(b);
    char dir[] = "/tmp/glia_bpe_prep_XXXXXX", out[4096];
    cr_assert(mkdtemp(dir));
    int rc = glia_run(out, sizeof out, "prepare --tokenizer gpt2 --in %s --out %s --name t --val-frac 0.5",
                      fixture_path("bpe_torture.txt"), dir);
    cr_assert_eq(rc, 0, "%s", out);
    FILE *f = fopen(fixture_path("bpe_torture.ids"), "r");
    size_t nids;
    int *ids = read_ids(f, &nids);
    fclose(f);
    // the shards, concatenated, are <|endoftext|> then the oracle's ids
    size_t k = 0;
    const char *splits[] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/t_%s.bin", dir, splits[s]);
        size_t len;
        unsigned char *d = read_all(path, &len);
        cr_assert(d && len > 1024, "%s", path);
        for (size_t i = 1024; i + 1 < len; i += 2, k++) {
            int tok = d[i] | d[i + 1] << 8;
            int want = k == 0 ? 50256 : ids[k - 1];
            cr_assert_eq(tok, want, "token %zu: %d, expected %d", k, tok, want);
        }
        free(d);
    }
    cr_assert_eq(k, nids + 1);
    free(ids);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
