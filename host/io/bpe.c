// bpe.c: GPT-2 byte-level BPE (see bpe.h): the ranks file, the PCRE2
// pre-tokenizer, rank-ordered merges, and the SHA-256 that checks the file.
//
// Tokens live in one byte blob (off[id], len[id]); an open-addressing table
// maps bytes to ids. GPT-2's pattern is spelled with an explicit White_Space
// class instead of \s, so PCRE2 and tiktoken's regex agree on which
// characters are spaces whatever PCRE2's own idea of \s is.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "io/bpe.h"

#include <errno.h>
#include <omp.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/util.h"
#include "io/data.h"

#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char *GPT2_PATTERN =
    "'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";
#define HASH_BITS 17  // table of 131072 slots for 50257 tokens

struct Bpe {
    unsigned char *blob;  // (total) every token's bytes
    uint32_t off[BPE_VOCAB], len[BPE_VOCAB];
    int32_t *table;       // (1 << HASH_BITS) token id or -1
    pcre2_code *re;
};

// ---- SHA-256 (FIPS 180-4) --------------------------------------------------------

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void bpe_sha256_hex(const unsigned char *data, size_t n, char hex[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t i = 0;
    for (; i + 64 <= n; i += 64) sha256_block(h, data + i);
    unsigned char last[128] = {0};
    size_t rest = n - i, tail = rest < 56 ? 64 : 128;
    memcpy(last, data + i, rest);
    last[rest] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int k = 0; k < 8; k++) last[tail - 1 - k] = (unsigned char)(bits >> (8 * k));
    for (size_t k = 0; k < tail; k += 64) sha256_block(h, last + k);
    for (int k = 0; k < 8; k++) snprintf(hex + 8 * k, 9, "%08x", h[k]);
}

// ---- the ranks file ------------------------------------------------------------------

static uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t x = 1469598103934665603ull;  // FNV-1a
    for (size_t i = 0; i < n; i++) x = (x ^ p[i]) * 1099511628211ull;
    return x ^ (x >> 29);
}

static int lookup(const Bpe *b, const unsigned char *p, size_t n) {
    size_t mask = ((size_t)1 << HASH_BITS) - 1;
    for (size_t s = hash_bytes(p, n) & mask;; s = (s + 1) & mask) {
        int32_t id = b->table[s];
        if (id < 0) return -1;
        if (b->len[id] == n && !memcmp(b->blob + b->off[id], p, n)) return id;
    }
}

static int b64_value(int c) {
    return c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
           : c == '+' ? 62 : c == '/' ? 63 : -1;
}

// Decodes standard base64 (with '=' padding) from s[0..n) into out; -1 if malformed.
static int b64_decode(const char *s, size_t n, unsigned char *out) {
    if (n == 0 || n % 4) return -1;
    int len = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0, pad++;
            } else {
                if (pad) return -1;
                v[k] = b64_value((unsigned char)s[i + k]);
                if (v[k] < 0) return -1;
            }
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[len++] = (unsigned char)(x >> 16);
        if (pad < 2) out[len++] = (unsigned char)(x >> 8);
        if (pad < 1) out[len++] = (unsigned char)x;
    }
    return len;
}

void bpe_free(Bpe *b) {
    if (!b) return;
    free(b->blob);
    free(b->table);
    pcre2_code_free(b->re);
    free(b);
}

static Bpe *load_fail(Bpe *b, unsigned char *data, char *err, size_t n, const char *path, const char *fmt, long v) {
    char why[200];
    snprintf(why, sizeof why, fmt, v);
    snprintf(err, n, "%.400s: %s", path, why);
    free(data);
    bpe_free(b);
    return NULL;
}

Bpe *bpe_load(const char *path, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "%.400s: cannot open the GPT-2 BPE ranks (%s); %s provides it", path, strerror(errno),
                 BPE_FETCH_HINT);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0, got;
    unsigned char *data = xmalloc(cap);
    while ((got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap && n < ((size_t)64 << 20)) {
            unsigned char *t = realloc(data, cap * 2);
            if (!t) fatal("bpe: out of memory for %zu bytes", cap * 2);
            data = t, cap *= 2;
        } else if (n == cap) {
            break;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return load_fail(NULL, data, err, err_len, path, "cannot read the file", 0);
    char hex[65];
    bpe_sha256_hex(data, n, hex);
    if (strcmp(hex, BPE_RANKS_SHA256) != 0) {
        snprintf(err, err_len, "%.400s: sha256 %.16s... is not that of GPT-2's ranks (%.16s...); %s replaces it", path,
                 hex, BPE_RANKS_SHA256, BPE_FETCH_HINT);
        free(data);
        return NULL;
    }
    Bpe *b = xcalloc(1, sizeof(Bpe));
    b->blob = xmalloc(n + 16);
    b->table = xmalloc(sizeof(int32_t) << HASH_BITS);
    memset(b->table, 0xff, sizeof(int32_t) << HASH_BITS);
    size_t used = 0, line = 0;
    int count = 0;
    for (size_t i = 0; i < n; line++) {
        const char *s = (const char *)data + i;
        const char *nl = memchr(s, '\n', n - i), *sp = memchr(s, ' ', n - i);
        size_t end = nl ? (size_t)(nl - s) : n - i;
        if (!sp || (size_t)(sp - s) >= end) return load_fail(b, data, err, err_len, path, "line %ld: no space", (long)line + 1);
        size_t blen = (size_t)(sp - s);
        int len = blen <= 512 ? b64_decode(s, blen, b->blob + used) : -1;
        long rank = 0;
        int digits = 0;
        for (const char *d = sp + 1; d < s + end; d++, digits++) {
            if (*d < '0' || *d > '9' || digits > 6) return load_fail(b, data, err, err_len, path, "line %ld: bad rank", (long)line + 1);
            rank = rank * 10 + (*d - '0');
        }
        if (len <= 0 || !digits) return load_fail(b, data, err, err_len, path, "line %ld: bad token", (long)line + 1);
        if (rank != count) return load_fail(b, data, err, err_len, path, "line %ld: ranks are not 0, 1, 2, ... in order", (long)line + 1);
        if (lookup(b, b->blob + used, (size_t)len) >= 0) return load_fail(b, data, err, err_len, path, "line %ld: token listed twice", (long)line + 1);
        b->off[count] = (uint32_t)used, b->len[count] = (uint32_t)len;
        size_t mask = ((size_t)1 << HASH_BITS) - 1, slot = hash_bytes(b->blob + used, (size_t)len) & mask;
        while (b->table[slot] >= 0) slot = (slot + 1) & mask;
        b->table[slot] = count++;
        used += (size_t)len;
        i += end + 1;
        if (count > BPE_EOT) break;
    }
    free(data);
    if (count != BPE_EOT) return load_fail(b, NULL, err, err_len, path, "%ld ranks, not 50256", count);
    memcpy(b->blob + used, "<|endoftext|>", 13);
    b->off[BPE_EOT] = (uint32_t)used, b->len[BPE_EOT] = 13;
    int code;
    PCRE2_SIZE at;
    b->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &code, &at, NULL);
    if (!b->re) fatal("bpe: the GPT-2 pattern does not compile (PCRE2 error %d at %zu)", code, (size_t)at);
    pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE);  // without JIT (unsupported CPU) it interprets
    return b;
}

void bpe_default_path(char *path, size_t len) {
    char dir[4096];
    data_cache_dir(dir, sizeof dir);
    snprintf(path, len, "%.4000s/%s", dir, BPE_RANKS_FILE);
}

Bpe *bpe_load_default(char *err, size_t err_len) {
    char path[4200];
    bpe_default_path(path, sizeof path);
    return bpe_load(path, err, err_len);
}

const unsigned char *bpe_token_bytes(const Bpe *b, int id, int *len) {
    if (id < 0 || id >= BPE_VOCAB) return NULL;
    *len = (int)b->len[id];
    return b->blob + b->off[id];
}

// ---- encoding -------------------------------------------------------------------------

static void push(int **out, size_t *nout, size_t *cap, int tok) {
    if (*nout == *cap) {
        *cap = *cap ? 2 * *cap : 1024;
        int *t = realloc(*out, *cap * sizeof(int));
        if (!t) fatal("bpe: out of memory for %zu tokens", *cap);
        *out = t;
    }
    (*out)[(*nout)++] = tok;
}

// One piece: the whole piece if it is a token, else pairs merged lowest
// rank first (leftmost on ties), as tiktoken's byte_pair_merge.
static void encode_piece(const Bpe *b, const unsigned char *p, size_t n, int **out, size_t *nout, size_t *cap) {
    int id = lookup(b, p, n);
    if (id >= 0) return push(out, nout, cap, id);
    enum { SMALL = 128 };
    size_t st_small[SMALL + 1];
    int rk_small[SMALL + 1];
    size_t *start = n < SMALL ? st_small : xmalloc((n + 1) * sizeof(size_t));
    int *rank = n < SMALL ? rk_small : xmalloc((n + 1) * sizeof(int));
    size_t m = n + 1;  // boundaries; part i is p[start[i] .. start[i+1])
    for (size_t i = 0; i < m; i++) start[i] = i;
    // rank[i]: rank of parts i and i+1 merged, INT32_MAX when not a token
#define PAIR_RANK(i) ((i) + 2 < m ? lookup(b, p + start[i], start[(i) + 2] - start[i]) : -1)
    for (size_t i = 0; i + 1 < m; i++) {
        int r = PAIR_RANK(i);
        rank[i] = r < 0 ? INT32_MAX : r;
    }
    while (m > 2) {
        size_t best = 0;
        for (size_t i = 1; i + 2 < m; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == INT32_MAX) break;
        memmove(start + best + 1, start + best + 2, (m - best - 2) * sizeof(size_t));
        memmove(rank + best + 1, rank + best + 2, (m - best - 2) * sizeof(int));
        m--;
        int r = PAIR_RANK(best);
        rank[best] = r < 0 ? INT32_MAX : r;
        if (best > 0) {
            r = PAIR_RANK(best - 1);
            rank[best - 1] = r < 0 ? INT32_MAX : r;
        }
    }
#undef PAIR_RANK
    for (size_t i = 0; i + 1 < m; i++) {
        int t = lookup(b, p + start[i], start[i + 1] - start[i]);
        if (t < 0) fatal("bpe: a piece's part is no token (ranks file inconsistent)");
        push(out, nout, cap, t);
    }
    if (start != st_small) free(start), free(rank);
}

// Length of the valid UTF-8 character at p[0..n) (Python's strict decoder:
// no overlongs, no surrogates, nothing past U+10FFFF), 0 when invalid.
static int utf8_char(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xC2 || c > 0xF4) return 0;
    int need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if ((size_t)need > n) return 0;
    for (int k = 1; k < need; k++)
        if ((p[k] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] > 0x9F) return 0;  // surrogate
    if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
    if (c == 0xF4 && p[1] > 0x8F) return 0;  // past U+10FFFF
    return need;
}

void bpe_encode(const Bpe *b, const unsigned char *text, size_t n, int **out, size_t *nout, size_t *cap) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(b->re, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_jit_stack *js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!md || !mc || !js) fatal("bpe: out of memory for PCRE2's match data");
    pcre2_jit_stack_assign(mc, NULL, js);
    size_t i = 0;
    while (i < n) {
        size_t a = i;  // the valid run [a, i)
        while (i < n) {
            if (text[i] < 0x80) {
                i++;
                continue;
            }
            int k = utf8_char(text + i, n - i);
            if (!k) break;
            i += (size_t)k;
        }
        for (size_t at = a; at < i;) {
            int rc = pcre2_match(b->re, text + a, i - a, at - a, PCRE2_NO_UTF_CHECK, md, mc);
            if (rc < 0) fatal("bpe: the GPT-2 pattern failed to match (PCRE2 error %d)", rc);
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            if (ov[0] != at - a || ov[1] <= ov[0]) fatal("bpe: the GPT-2 pattern skipped text");
            encode_piece(b, text + a + ov[0], ov[1] - ov[0], out, nout, cap);
            at = a + ov[1];
        }
        if (i < n) push(out, nout, cap, lookup(b, text + i, 1)), i++;  // a byte of no valid character
    }
    pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
}

// ---- a whole text on many threads --------------------------------------------------------

// A cut before text[i] changes no token: text[i-2] and text[i] are ASCII
// non-space characters and text[i-1] a newline, so the newline is a piece of
// its own with or without what follows, and no piece reaches across it.
static int safe_cut(const unsigned char *t, size_t i) {
    return t[i - 1] == '\n' && t[i - 2] > ' ' && t[i - 2] < 0x7F && t[i] > ' ' && t[i] < 0x7F;
}

int *bpe_encode_parallel(const Bpe *b, const unsigned char *text, size_t n, int threads, size_t *ntok,
                         void (*progress)(size_t done, size_t total)) {
    const size_t CHUNK = (size_t)1 << 18;
    size_t maxc = n / CHUNK + 2, nc = 0;
    size_t *cut = xmalloc((maxc + 1) * sizeof(size_t));
    cut[nc++] = 0;
    for (size_t t = CHUNK; t < n; t += CHUNK) {
        size_t j = t > cut[nc - 1] + 2 ? t : cut[nc - 1] + 2;
        while (j < n && j < t + CHUNK && !safe_cut(text, j)) j++;
        if (j < n && j < t + CHUNK) cut[nc++] = j;
    }
    cut[nc] = n;
    int **outs = xcalloc(nc, sizeof(int *));
    size_t *nout = xcalloc(nc, sizeof(size_t)), *cap = xcalloc(nc, sizeof(size_t));
    size_t done = 0;
    if (threads < 1) threads = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (size_t c = 0; c < nc; c++) {
        bpe_encode(b, text + cut[c], cut[c + 1] - cut[c], &outs[c], &nout[c], &cap[c]);
        size_t now;
#pragma omp atomic capture
        now = done += cut[c + 1] - cut[c];
        if (progress && omp_get_thread_num() == 0) progress(now, n);
    }
    size_t total = 0;
    for (size_t c = 0; c < nc; c++) total += nout[c];
    int *all = xmalloc((total ? total : 1) * sizeof(int));
    for (size_t c = 0, k = 0; c < nc; c++) {
        if (nout[c]) memcpy(all + k, outs[c], nout[c] * sizeof(int));
        k += nout[c];
        free(outs[c]);
    }
    if (progress) progress(n, n);
    free(outs), free(nout), free(cap), free(cut);
    *ntok = total;
    return all;
}
