// test_backend_ops.c: every entry of the backend table (common/backend.h) on
// every backend, against the CPU backend, at several shapes: ggml's
// test-backend-ops for glia. A new op is tested by adding one row to `rows`.
//
// Each row runs one entry on a backend from inputs drawn on the host with a
// fixed seed (uploaded through the table's own memory entries), downloads
// every output, and the outputs of each backend are compared with the CPU's
// in the normwise relative error of testutil.h (rel_err):
// - fp32 matmul mode everywhere; tolerance 1e-5 per output (rounding: FMA
//   contraction, expf, reduction order), 1e-4 for the outputs that sum along
//   whole sequences (the AM-SU and LIF backwards, the embedding backward's
//   long columns) and 0 (bit-equal) for the memory entries and the
//   collectives with one rank;
// - spikes: equal except where the CPU's potential |u + o − θ| < 1e-4, where
//   rounding may flip one (test_cuda_amsu.c's rule); a flip makes the rest of
//   that row's outputs incomparable, and the row says so in the log.
// Outputs are filled with NaN on the backend before each run, so an entry
// that forgets to write one fails. Inputs that are added into (gradients)
// start from random values, so an entry that overwrites instead of adding
// fails too.
//
// The CPU backend is the reference (its own oracles: test_parity.c against
// PyTorch, test_gradcheck.c against finite differences; the cross-entropy's
// here, xent_masks_the_pad_columns, a double softmax); the test runs the
// other backends this glia has (CUDA, or its emulator in a GLIA_CUDA_EMU
// build) and skips, saying so, when there is none.
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"
#include "common/step.h"
#include "testutil.h"

#define TOL 1e-5
#define SEQ_TOL 1e-4
#define SPIKE_MARGIN 1e-4f
#define MAX_OUT 8

typedef struct {  // one backend's outputs of one row at one shape
    const char *name[MAX_OUT];
    float *data[MAX_OUT];
    size_t n[MAX_OUT];
    double tol[MAX_OUT];
    int spikes[MAX_OUT];  // 1: a spike tensor (the flip rule); the outputs after it depend on it
    int count;
} Outputs;

// ---- helpers: host inputs, backend buffers -------------------------------------------

static float *host_normal(size_t n, float std, uint64_t seed) {
    TestRng r;
    rng_seed(&r, seed);
    float *x = malloc((n ? n : 1) * sizeof(float));
    fill_normal(x, n, std, &r);
    return x;
}

static float *up(const Backend *be, const float *host, size_t n) {
    float *d = be->alloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(d, "%s: %s", be->name, be->last_error());
    be->upload(d, host, n * sizeof(float));
    return d;
}

static float *nan_buf(const Backend *be, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float *d = up(be, h, n);
    free(h);
    return d;
}

// Downloads n floats of d as output `name` (the row frees d).
static void emit(Outputs *o, const Backend *be, const char *name, float *d, size_t n, double tol, int spikes) {
    cr_assert_lt(o->count, MAX_OUT);
    float *h = malloc((n ? n : 1) * sizeof(float));
    be->download(h, d, n * sizeof(float));
    o->name[o->count] = name, o->data[o->count] = h, o->n[o->count] = n, o->tol[o->count] = tol;
    o->spikes[o->count++] = spikes;
}

static void outputs_free(Outputs *o) {
    for (int i = 0; i < o->count; i++) free(o->data[i]);
    o->count = 0;
}

// ---- rows ------------------------------------------------------------------------------
// Each runs its entry on `be` at shape number `shape` and emits its outputs.

static void row_memory(const Backend *be, int shape, Outputs *o) {
    size_t n = 1000 + 77 * (size_t)shape;
    float *x = host_normal(n, 1.0f, 1 + shape);
    float *a = up(be, x, n), *b = nan_buf(be, n);
    be->copy(b, a, n * sizeof(float));
    be->zero(a + 10, 100 * sizeof(float));
    emit(o, be, "copy", b, n, 0.0, 0);
    emit(o, be, "zero", a, n, 0.0, 0);
    be->free(a), be->free(b), free(x);
}

static void row_matmul(const Backend *be, int shape, Outputs *o) {
    static const int dims[][3] = {{7, 5, 3}, {64, 32, 48}, {33, 128, 96}};
    const int M = dims[shape][0], K = dims[shape][1], N = dims[shape][2];
    float *x = host_normal((size_t)M * K, 1.0f, 10 + shape), *w = host_normal((size_t)N * K, 0.3f, 20 + shape);
    float *y0 = host_normal((size_t)M * N, 1.0f, 30 + shape), *dy = host_normal((size_t)M * N, 1.0f, 40 + shape);
    float *dx0 = host_normal((size_t)M * K, 1.0f, 50 + shape), *dw0 = host_normal((size_t)N * K, 1.0f, 60 + shape);
    float *X = up(be, x, (size_t)M * K), *W = up(be, w, (size_t)N * K), *Y = nan_buf(be, (size_t)M * N);
    float *Ya = up(be, y0, (size_t)M * N), *DY = up(be, dy, (size_t)M * N);
    float *DX = up(be, dx0, (size_t)M * K), *DW = up(be, dw0, (size_t)N * K), *DX2 = nan_buf(be, (size_t)M * K);
    be->matmul_forward(Y, X, W, M, K, N, 0.5f, NULL);
    be->matmul_forward(Ya, X, W, M, K, N, 1.0f, Ya);
    be->matmul_backward(DX, DW, DY, X, W, M, K, N, 0.5f, 1);
    be->matmul_backward(DX2, NULL, DY, X, W, M, K, N, 1.0f, 0);
    emit(o, be, "out", Y, (size_t)M * N, TOL, 0);
    emit(o, be, "out (accumulate)", Ya, (size_t)M * N, TOL, 0);
    emit(o, be, "dinp (accumulate)", DX, (size_t)M * K, TOL, 0);
    emit(o, be, "dW", DW, (size_t)N * K, TOL, 0);
    emit(o, be, "dinp", DX2, (size_t)M * K, TOL, 0);
    be->free(X), be->free(W), be->free(DY), be->free(Y), be->free(Ya), be->free(DX), be->free(DW), be->free(DX2);
    free(x), free(w), free(y0), free(dy), free(dx0), free(dw0);
}

static void row_rmsnorm(const Backend *be, int shape, Outputs *o) {
    static const int dims[][2] = {{5, 8}, {37, 128}, {64, 768}};
    const int N = dims[shape][0], C = dims[shape][1];
    const size_t nc = (size_t)N * C;
    float *x = host_normal(nc, 2.0f, 70 + shape), *g = host_normal(C, 1.0f, 71 + shape);
    float *dy = host_normal(nc, 1.0f, 72 + shape), *dx0 = host_normal(nc, 1.0f, 73 + shape);
    float *dg0 = host_normal(C, 1.0f, 74 + shape);
    float *X = up(be, x, nc), *G = up(be, g, C), *Y = nan_buf(be, nc), *R = nan_buf(be, N);
    float *DY = up(be, dy, nc), *DX = up(be, dx0, nc), *DG = up(be, dg0, C);
    size_t ns = be->rmsnorm_scratch(N, C);
    float *S = ns ? be->alloc(ns * sizeof(float)) : NULL;
    be->rmsnorm_forward(Y, R, X, G, N, C);
    be->rmsnorm_backward(DX, DG, S, DY, X, G, R, N, C);
    emit(o, be, "out", Y, nc, TOL, 0);
    emit(o, be, "rstd", R, N, TOL, 0);
    emit(o, be, "dx", DX, nc, TOL, 0);
    emit(o, be, "dg", DG, C, TOL, 0);
    if (S) be->free(S);
    be->free(X), be->free(G), be->free(DY), be->free(Y), be->free(R), be->free(DX), be->free(DG);
    free(x), free(g), free(dy), free(dx0), free(dg0);
}

static void row_embedding(const Backend *be, int shape, Outputs *o) {
    static const int dims[][3] = {{9, 16, 5}, {200, 64, 300}, {1024, 32, 7}};  // M, C, V (few V: repeats)
    const int M = dims[shape][0], C = dims[shape][1], V = dims[shape][2];
    int *tok = malloc(M * sizeof(int));
    TestRng r;
    rng_seed(&r, 80 + shape);
    test_random_tokens(tok, M, V, &r);
    float *e = host_normal((size_t)V * C, 1.0f, 81 + shape), *dx = host_normal((size_t)M * C, 1.0f, 82 + shape);
    float *de0 = host_normal((size_t)V * C, 1.0f, 83 + shape);
    int *T = be->alloc(M * sizeof(int));
    be->upload(T, tok, M * sizeof(int));
    float *E = up(be, e, (size_t)V * C), *X = nan_buf(be, (size_t)M * C), *DX = up(be, dx, (size_t)M * C);
    float *DE = up(be, de0, (size_t)V * C);
    size_t ns = be->embedding_scratch(M);
    int *S = ns ? be->alloc(ns * sizeof(int)) : NULL;
    be->embedding_forward(X, T, E, M, C);
    be->embedding_backward(DE, DX, tok, S, M, C);
    emit(o, be, "x", X, (size_t)M * C, 0.0, 0);
    emit(o, be, "dE", DE, (size_t)V * C, SEQ_TOL, 0);
    if (S) be->free(S);
    be->free(T), be->free(E), be->free(DX), be->free(X), be->free(DE);
    free(tok), free(e), free(dx), free(de0);
}

// The FFN neuron (o ≡ 0; the AM-SU's own neuron runs inside amsu_forward),
// from zero and streaming (state in and out). current and dcurrent at row
// stride ld ≥ N (the AM-SU's I in P); dcurrent's padding must stay 0.
static void row_neuron(const Backend *be, int shape, Outputs *o) {
    static const int dims[][4] = {{1, 7, 5, 5}, {3, 40, 64, 67}, {2, 70, 200, 800}};  // B, T, N, ld
    const int B = dims[shape][0], T = dims[shape][1], N = dims[shape][2], ld = dims[shape][3];
    const size_t n = (size_t)B * T * N, np = (size_t)B * T * ld;
    float *cur = host_normal(np, 1.0f, 90 + shape), *ab = host_normal(N, 0.5f, 91 + shape), *zp = calloc(np, 4);
    float *ds = host_normal(n, 1.0f, 92 + shape), *db0 = host_normal(N, 1.0f, 93 + shape);
    float *us = host_normal((size_t)B * N, 1.0f, 94 + shape), *ss = calloc((size_t)B * N, sizeof(float));
    for (int i = 0; i < B * N; i += 3) ss[i] = 1.0f;
    float *CUR = up(be, cur, np), *AB = up(be, ab, N), *U = nan_buf(be, n), *S = nan_buf(be, n);
    float *US = up(be, us, (size_t)B * N), *SS = up(be, ss, (size_t)B * N), *U2 = nan_buf(be, n), *S2 = nan_buf(be, n);
    float *DS = up(be, ds, n), *DC = up(be, zp, np), *DB = up(be, db0, N);
    size_t nsc = be->neuron_scratch(B, N);
    float *SC = nsc ? be->alloc(nsc * sizeof(float)) : NULL;
    be->neuron_forward(U, S, CUR, NULL, AB, NULL, NULL, B, T, N, ld, NULL);
    be->neuron_forward(U2, S2, CUR, NULL, AB, US, SS, B, T, N, ld, NULL);
    be->neuron_backward(DC, NULL, DB, SC, DS, U, NULL, S, AB, B, T, N, ld, NULL);
    emit(o, be, "u", U, n, TOL, 0);
    emit(o, be, "s", S, n, 0.0, 1);
    emit(o, be, "dcurrent", DC, np, SEQ_TOL, 0);
    emit(o, be, "da_beta", DB, N, SEQ_TOL, 0);
    emit(o, be, "u (streaming)", U2, n, TOL, 0);
    emit(o, be, "s (streaming)", S2, n, 0.0, 1);
    emit(o, be, "u_state", US, (size_t)B * N, TOL, 0);
    if (SC) be->free(SC);
    be->free(CUR), be->free(AB), be->free(SS), be->free(DS), be->free(U), be->free(S), be->free(U2), be->free(S2);
    be->free(US), be->free(DC), be->free(DB);
    free(cur), free(ab), free(ds), free(db0), free(us), free(ss), free(zp);
}

// One AM-SU layer forward from zero and its backward. The backward is fed
// the CPU's forward activations (uploaded), so spikes cannot differ there.
static void amsu_case(const Backend *be, int shape, int astro, Outputs *o) {
    static const int dims[][4] = {{1, 9, 16, 2}, {2, 40, 64, 2}, {1, 70, 128, 1}};  // B, T, C, Nh
    const AmsuShape sh = {dims[shape][0], dims[shape][1], dims[shape][2], dims[shape][3], astro};
    const int C = sh.C, D = C / sh.Nh;
    const size_t n = (size_t)sh.B * sh.T * C, cc = (size_t)C * C, na = amsu_acts_size(sh);
    cr_assert(be->amsu_head_ok(D), "the %s backend does not run head size %d", be->name, D);
    float *hw = malloc(5 * cc * sizeof(float)), *dw0 = host_normal(5 * cc + 2 * (size_t)C, 0.1f, 100 + shape);
    for (int i = 0; i < 5; i++) {  // W_I, W_K, W_V, W_Q (W_in), W_O
        float *wi = host_normal(cc, i == 4 ? 0.2f : 1.0f / sqrtf((float)C), 101 + 7 * shape + i);
        memcpy(hw + i * cc, wi, cc * sizeof(float));
        free(wi);
    }
    float *al = host_normal(C, 1.0f, 140 + shape), *ab = host_normal(C, 0.5f, 141 + shape);
    for (int i = 0; i < C; i++) al[i] += 2.0f;
    float *z = host_normal(n, 1.0f, 142 + shape), *dy = host_normal(n, 1.0f, 143 + shape);
    float *W = up(be, hw, 5 * cc);
    AmsuWeights w = {W, W + 4 * cc, astro ? up(be, al, C) : NULL, up(be, ab, C), NULL};
    float *Z = up(be, z, n), *Y = nan_buf(be, n), *ACT = nan_buf(be, na);
    AmsuActs a;
    amsu_acts_bind(&a, sh, ACT);
    be->amsu_forward(Y, &a, Z, &w, sh, NULL, NULL, NULL);
    // the residual add (the model's x_mid = x + AMSU(z)) out of place: x + y to
    // rounding, x left as it was
    float *x = host_normal(n, 1.0f, 144 + shape), *X = up(be, x, n), *YX = nan_buf(be, n);
    be->amsu_forward(YX, &a, Z, &w, sh, NULL, X, NULL);
    float *hy = malloc(n * sizeof(float)), *hyx = malloc(n * sizeof(float)), *hx = malloc(n * sizeof(float));
    be->download(hy, Y, n * sizeof(float)), be->download(hyx, YX, n * sizeof(float));
    be->download(hx, X, n * sizeof(float));
    cr_assert(!memcmp(hx, x, n * sizeof(float)), "%s amsu_forward wrote its add", be->name);
    for (size_t i = 0; i < n; i++) hy[i] += x[i];
    cr_assert(rel_err(hyx, hy, n) <= TOL, "%s amsu_forward with add: rel err %.3g", be->name, rel_err(hyx, hy, n));
    free(hy), free(hyx), free(hx), free(x), be->free(X);
    emit(o, be, "o", a.o, n, TOL, 0);
    emit(o, be, "u", a.u, n, TOL, 0);
    emit(o, be, "s", a.s, n, 0.0, 1);
    emit(o, be, "y", Y, n, TOL, 0);
    emit(o, be, "y (residual add)", YX, n, TOL, 0);
    // the backward on the CPU's activations (rows run the CPU first: see run_row)
    static float *cpu_acts;
    static size_t cpu_na;
    if (be == backend_cpu()) {
        free(cpu_acts);
        cpu_acts = malloc(na * sizeof(float));
        cpu_na = na;
        be->download(cpu_acts, ACT, na * sizeof(float));
    }
    cr_assert_eq(cpu_na, na);
    be->upload(ACT, cpu_acts, na * sizeof(float));
    float *DY = up(be, dy, n), *DZ = nan_buf(be, n), *G = up(be, dw0, 5 * cc + 2 * (size_t)C);
    AmsuGrads g = {G, G + 4 * cc, G + 5 * cc, G + 5 * cc + C};
    size_t ns = be->amsu_scratch(sh);
    float *S = be->alloc((ns ? ns : 1) * sizeof(float));
    be->amsu_backward(DZ, &g, S, DY, Z, &a, &w, sh, NULL);
    emit(o, be, "dz", DZ, n, SEQ_TOL, 0);
    emit(o, be, "weight gradients", G, 5 * cc + 2 * (size_t)C, SEQ_TOL, 0);
    be->free(S), be->free(DY), be->free(Z), be->free(ACT), be->free(Y), be->free(DZ), be->free(G);
    be->free(YX);
    be->free(W);
    if (astro) be->free((float *)w.a_lambda);
    be->free((float *)w.a_beta);
    free(hw), free(dw0), free(al), free(ab), free(z), free(dy);
}
// The astrocyte per timestep and in chunks (set_amsu), each backend against the CPU's same mode.
static void amsu_mode_case(const Backend *be, int shape, int mode, Outputs *o) {
    cr_assert_eq(be->set_amsu(mode), 0, "the %s backend lacks AM-SU mode %d", be->name, mode);
    amsu_case(be, shape, 1, o);
    be->set_amsu(AMSU_CHUNK);  // the default again
}
static void row_amsu_scan(const Backend *be, int shape, Outputs *o) { amsu_mode_case(be, shape, AMSU_SCAN, o); }
static void row_amsu_chunk(const Backend *be, int shape, Outputs *o) { amsu_mode_case(be, shape, AMSU_CHUNK, o); }
static void row_amsu_ablation(const Backend *be, int shape, Outputs *o) { amsu_case(be, shape, 0, o); }

// Logits (M, Vp) whose pad columns hold garbage (the entry never reads them).
static void row_xent(const Backend *be, int shape, Outputs *o) {
    static const int dims[][2] = {{3, 7}, {40, 256}, {5, 50257}};
    const int M = dims[shape][0], V = dims[shape][1], Vp = model_pad_vocab(V);
    float *l = host_normal((size_t)M * Vp, 3.0f, 150 + shape);
    test_fill_pad_columns(l, M, V, Vp);
    int *tg = malloc(M * sizeof(int));
    TestRng r;
    rng_seed(&r, 151 + shape);
    test_random_tokens(tg, M, V, &r);
    tg[M / 2] = -1;  // an unscored position
    float *L = up(be, l, (size_t)M * Vp), *LOSS = nan_buf(be, M);
    int *TG = be->alloc(M * sizeof(int));
    be->upload(TG, tg, M * sizeof(int));
    be->xent_forward(LOSS, L, TG, M, V, Vp);
    be->xent_backward(L, TG, 0.25f, M, V, Vp);
    emit(o, be, "losses", LOSS, M, TOL, 0);
    emit(o, be, "dlogits", L, (size_t)M * Vp, TOL, 0);
    be->free(TG), be->free(L), be->free(LOSS);
    free(l), free(tg);
}

static void row_optimizer(const Backend *be, int shape, Outputs *o) {
    const size_t n = shape == 0 ? 5 : shape == 1 ? 1000 : 300001;
    float *p = host_normal(n, 1.0f, 160 + shape), *g = host_normal(n, 0.1f, 161 + shape);
    float *m = host_normal(n, 0.01f, 162 + shape), *v = host_normal(n, 0.001f, 163 + shape);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *P = up(be, p, n), *G = up(be, g, n), *M = up(be, m, n), *V = up(be, v, n);
    be->adamw(P, G, 0.37f, M, V, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 3 + shape);
    double sq = be->grad_norm_sq(G, n);
    float sqf = (float)sq;
    float *SQ = up(be, &sqf, 1);
    emit(o, be, "params", P, n, TOL, 0);
    emit(o, be, "mom1", M, n, TOL, 0);
    emit(o, be, "mom2", V, n, TOL, 0);
    emit(o, be, "grad_norm_sq", SQ, 1, 1e-6, 0);
    emit(o, be, "gradients (unchanged)", G, n, 0.0, 0);
    be->free(P), be->free(G), be->free(M), be->free(V), be->free(SQ);
    free(p), free(g), free(m), free(v);
}

static void row_column_sums(const Backend *be, int shape, Outputs *o) {
    static const int dims[][2] = {{1, 5}, {300, 64}, {4096, 129}};
    const int M = dims[shape][0], N = dims[shape][1];
    float *x = host_normal((size_t)M * N, 1.0f, 180 + shape);
    float *X = up(be, x, (size_t)M * N);
    double *h = malloc(2 * (size_t)N * sizeof(double));
    be->column_sums(h, X, M, N, 0);
    be->column_sums(h + N, X, M, N, 1);
    float *f = malloc(2 * (size_t)N * sizeof(float));
    for (int i = 0; i < 2 * N; i++) f[i] = (float)h[i];
    float *F = up(be, f, 2 * (size_t)N);  // the results travel as the other outputs do
    emit(o, be, "sums, |sums|", F, 2 * (size_t)N, TOL, 0);
    be->free(X), be->free(F);
    free(x), free(h), free(f);
}

// The collectives with one rank (no MPI in a test process): the identity.
static void row_collectives(const Backend *be, int shape, Outputs *o) {
    const size_t n = 257 * (size_t)(shape + 1);
    float *x = host_normal(n, 1.0f, 170 + shape);
    float *A = up(be, x, n), *R = up(be, x, n), *G = up(be, x, n);
    be->comm_init(0, 1, 0);
    be->allreduce_begin(A, n / 2);
    be->allreduce_begin(A + n / 2, n - n / 2);
    be->allreduce_wait();
    be->reduce_scatter(R, n);
    be->allgather(G, n);
    emit(o, be, "allreduce", A, n, 0.0, 0);
    emit(o, be, "reduce_scatter", R, n, 0.0, 0);
    emit(o, be, "allgather", G, n, 0.0, 0);
    be->free(A), be->free(R), be->free(G);
    free(x);
}

typedef struct {
    const char *name;
    void (*run)(const Backend *be, int shape, Outputs *o);
} Row;

static const Row rows[] = {
    {"memory (copy, zero, upload, download)", row_memory},
    {"matmul_forward, matmul_backward", row_matmul},
    {"rmsnorm_forward, rmsnorm_backward", row_rmsnorm},
    {"embedding_forward, embedding_backward", row_embedding},
    {"neuron_forward, neuron_backward", row_neuron},
    {"amsu_forward, amsu_backward (scan)", row_amsu_scan},
    {"amsu_forward, amsu_backward (chunk)", row_amsu_chunk},
    {"amsu_forward, amsu_backward (astro off)", row_amsu_ablation},
    {"xent_forward, xent_backward", row_xent},
    {"adamw, grad_norm_sq", row_optimizer},
    {"column_sums", row_column_sums},
    {"allreduce, reduce_scatter, allgather (one rank)", row_collectives},
};
#define NSHAPES 3

// The backends to check against the CPU; skips the test when there is none.
static const Backend *other_backend(void) {
    test_require_gpu();  // skips with its reason without CUDA or a device
    const Backend *be = NULL;
#ifdef GLIA_HAVE_CUDA
    be = backend_cuda();
#endif
    cr_assert_not_null(be);
    be->set_matmul(0);  // fp32: the tolerances above are for exact products
    return be;
}

// Compares one row at one shape; spikes with the flip rule.
static void compare(const Row *row, int shape, const Outputs *ref, const Outputs *got, const char *be) {
    cr_assert_eq(ref->count, got->count);
    int flipped = 0;
    for (int k = 0; k < ref->count; k++) {
        const float *a = got->data[k], *b = ref->data[k];
        size_t n = ref->n[k];
        if (flipped) {
            cr_log_info("%s, shape %d: %s not compared after a spike flip near θ", row->name, shape, ref->name[k]);
            continue;
        }
        if (ref->spikes[k]) {
            // the CPU's potential: u is the output before this one, o (when any) the one before that
            const float *u = ref->data[k - 1], *oo = k >= 2 && !strcmp(ref->name[k - 2], "o") ? ref->data[k - 2] : NULL;
            for (size_t i = 0; i < n; i++) {
                cr_assert(a[i] == 0.0f || a[i] == 1.0f, "%s shape %d on %s: %s[%zu] = %g", row->name, shape, be,
                          ref->name[k], i, a[i]);
                if (a[i] == b[i]) continue;
                float m = step_potential(u[i], oo ? oo[i] : 0.0f);
                cr_assert(fabsf(m) < SPIKE_MARGIN, "%s shape %d on %s: %s[%zu] differs with |m| = %g", row->name,
                          shape, be, ref->name[k], i, m);
                flipped = 1;
            }
            continue;
        }
        double e = rel_err(a, b, n);
        cr_assert(e <= ref->tol[k], "%s shape %d on %s: %s rel err %.3g > %.0e", row->name, shape, be,
                  ref->name[k], e, ref->tol[k]);
    }
}

Test(backend_ops, every_entry_on_every_backend, .timeout = 600) {
    const Backend *cpu = backend_cpu(), *be = other_backend();
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++)
        for (int shape = 0; shape < NSHAPES; shape++) {
            Outputs ref = {0}, got = {0};
            rows[r].run(cpu, shape, &ref);  // the CPU first (the AM-SU row's backward reads its activations)
            rows[r].run(be, shape, &got);
            compare(&rows[r], shape, &ref, &got, be->name);
            outputs_free(&ref);
            outputs_free(&got);
        }
}

// matmul_forward's add on one backend (fp32 mode) against a double-precision
// oracle: out = add + alpha · x @ wᵀ with add NULL (none), add = out (in
// place) and add another buffer (out of place, left as it was). Each entry
// within (K + 2) · 2^-24 · S, S = |add| + Σ |alpha · x · w| (fp32
// accumulation in any order).
static void matmul_add_on(const Backend *be) {
    static const int dims[][3] = {{7, 5, 3}, {33, 128, 96}};
    const float alpha = 0.75f;
    for (int d = 0; d < 2; d++) {
        const int M = dims[d][0], K = dims[d][1], N = dims[d][2];
        const size_t mn = (size_t)M * N;
        float *x = host_normal((size_t)M * K, 1.0f, 200 + d), *w = host_normal((size_t)N * K, 0.3f, 210 + d);
        float *add = host_normal(mn, 1.0f, 220 + d);
        float *X = up(be, x, (size_t)M * K), *W = up(be, w, (size_t)N * K), *A = up(be, add, mn);
        float *Y0 = nan_buf(be, mn), *YI = up(be, add, mn), *YO = nan_buf(be, mn);
        be->matmul_forward(Y0, X, W, M, K, N, alpha, NULL);
        be->matmul_forward(YI, X, W, M, K, N, alpha, YI);
        be->matmul_forward(YO, X, W, M, K, N, alpha, A);
        float *got[3], *a_after = malloc(mn * sizeof(float));
        float *dev[3] = {Y0, YI, YO};
        static const char *const what[3] = {"no add", "in place", "out of place"};
        for (int c = 0; c < 3; c++) be->download(got[c] = malloc(mn * sizeof(float)), dev[c], mn * sizeof(float));
        be->download(a_after, A, mn * sizeof(float));
        cr_assert(!memcmp(a_after, add, mn * sizeof(float)), "%s: matmul_forward out of place wrote its add",
                  be->name);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double ref = c ? add[(size_t)i * N + j] : 0.0, S = fabs(ref);
                    for (int k = 0; k < K; k++) {
                        double p = (double)alpha * x[(size_t)i * K + k] * w[(size_t)j * K + k];
                        ref += p, S += fabs(p);
                    }
                    double e = fabs(got[c][(size_t)i * N + j] - ref);
                    cr_assert(e <= (K + 2) * 0x1p-24 * S, "%s matmul_forward (%s) M %d K %d N %d [%d, %d]: %g vs %g",
                              be->name, what[c], M, K, N, i, j, got[c][(size_t)i * N + j], ref);
                }
        for (int c = 0; c < 3; c++) free(got[c]), be->free(dev[c]);
        be->free(X), be->free(W), be->free(A);
        free(x), free(w), free(add), free(a_after);
    }
}

Test(backend_ops, matmul_add_cpu) { matmul_add_on(backend_cpu()); }
Test(backend_ops, matmul_add_other_backend) { matmul_add_on(other_backend()); }

// zero over several MiB (the CPU splits it into 1 MiB pieces over its
// threads), starting and ending inside a piece: exactly the range becomes 0,
// the floats on either side keep their values.
static void zero_large_on(const Backend *be) {
    const size_t n = 3 * ((size_t)1 << 18) + 1000, lo = 7, len = n - 20;  // floats
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = 1.0f + (float)(i % 7);
    float *d = up(be, h, n);
    be->zero(d + lo, len * sizeof(float));
    float *got = malloc(n * sizeof(float));
    be->download(got, d, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        const float want = i >= lo && i < lo + len ? 0.0f : h[i];
        cr_assert(got[i] == want, "%s zero of floats [%zu, %zu): [%zu] is %g, want %g", be->name, lo, lo + len, i,
                  got[i], want);
    }
    be->free(d), free(h), free(got);
}

Test(backend_ops, zero_large_cpu) { zero_large_on(backend_cpu()); }
Test(backend_ops, zero_large_other_backend) { zero_large_on(other_backend()); }

// adamw's gradient factor (model_step's clip) on one backend, against AdamW
// in double on g · gscale: p, m and v within rel_err 1e-6 (each goes through
// a few fp32 roundings, ≈ 5e-7; lr 0.3 makes the update a visible part of p).
// And bitwise: the same as the update with gscale 1 on gradients multiplied
// by gscale beforehand in float (the separate scaling pass it replaces);
// gscale 1 leaves the gradients as they are.
static void adamw_gscale_on(const Backend *be) {
    const size_t n = 3001;
    const float lr = 0.3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gscale = 0.37f;
    const int step = 3;
    float *p = host_normal(n, 1.0f, 230), *g = host_normal(n, 0.1f, 231);
    float *m = host_normal(n, 0.01f, 232), *v = host_normal(n, 0.001f, 233), *gs = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]), gs[i] = g[i] * gscale;
    float *out[2][3];
    for (int c = 0; c < 2; c++) {  // c 0: g with gscale; c 1: gs with 1
        float *P = up(be, p, n), *G = up(be, c ? gs : g, n), *M = up(be, m, n), *V = up(be, v, n);
        be->adamw(P, G, c ? 1.0f : gscale, M, V, n, lr, b1, b2, eps, wd, step);
        float *dev[3] = {P, M, V};
        for (int k = 0; k < 3; k++) be->download(out[c][k] = malloc(n * sizeof(float)), dev[k], n * sizeof(float));
        be->free(P), be->free(G), be->free(M), be->free(V);
    }
    double *want[3], *got = malloc(n * sizeof(double));
    for (int k = 0; k < 3; k++) want[k] = malloc(n * sizeof(double));
    const double c1 = 1.0 - pow(b1, step), c2 = 1.0 - pow(b2, step);
    for (size_t i = 0; i < n; i++) {
        const double gi = (double)g[i] * gscale, mi = b1 * (double)m[i] + (1.0 - b1) * gi;
        const double vi = b2 * (double)v[i] + (1.0 - b2) * gi * gi;
        want[0][i] = p[i] - lr * (mi / c1 / (sqrt(vi / c2) + eps) + wd * (double)p[i]);
        want[1][i] = mi, want[2][i] = vi;
    }
    static const char *const what[3] = {"p", "m", "v"};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < n; i++) got[i] = out[0][k][i];
        double e = rel_err_d(got, want[k], n);
        cr_assert(e <= 1e-6, "%s adamw gscale %g: %s rel err %.3g against the double oracle", be->name, gscale,
                  what[k], e);
        cr_assert(!memcmp(out[0][k], out[1][k], n * sizeof(float)),
                  "%s adamw: %s with gscale %g differs from the update on gradients scaled beforehand", be->name,
                  what[k], gscale);
    }
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < 3; k++) free(out[c][k]);
    for (int k = 0; k < 3; k++) free(want[k]);
    free(got), free(p), free(g), free(m), free(v), free(gs);
}

Test(backend_ops, adamw_gscale_cpu) { adamw_gscale_on(backend_cpu()); }
Test(backend_ops, adamw_gscale_other_backend) { adamw_gscale_on(other_backend()); }

// The cross-entropy entries on every backend this glia has (the CPU always)
// against a naive double-precision softmax over the V real columns
// (test_xent_oracle), with garbage in the pad columns [V, Vp): they must not
// change the loss or the gradient, and the gradient's pad columns are
// exactly 0. Loss: 2e-5 nats per row (test_cuda_ops.c's bound for fp32 sums
// over 50257 entries); dlogits: rel_err 1e-5.
Test(backend_ops, xent_masks_the_pad_columns) {
    static const int dims[][2] = {{3, 7}, {9, 300}, {4, 50257}};  // (M, V); Vp 64, 320, 50304
    const Backend *bes[2] = {backend_cpu(), NULL};
    int nb = 1;
#ifdef GLIA_HAVE_CUDA
    if (test_have_gpu() && (bes[1] = backend_cuda())) nb = 2;
#endif
    for (int s = 0; s < 3; s++) {
        const int M = dims[s][0], V = dims[s][1], Vp = model_pad_vocab(V);
        const size_t n = (size_t)M * Vp;
        float *l = host_normal(n, 2.0f, 170 + s), *loss = malloc(M * sizeof(float)), *dl = malloc(n * sizeof(float));
        test_fill_pad_columns(l, M, V, Vp);
        int *tg = malloc(M * sizeof(int));
        TestRng r;
        rng_seed(&r, 171 + s);
        test_random_tokens(tg, M, V, &r);
        tg[1] = -1;  // an unscored position
        tg[0] = V - 1;  // the last real column is the target: next to the pad
        double *want = malloc(M * sizeof(double)), *dwant = malloc(n * sizeof(double));
        const float k = 0.5f;
        test_xent_oracle(l, tg, M, V, Vp, k, want, dwant);
        for (int b = 0; b < nb; b++) {
            const Backend *be = bes[b];
            float *L = up(be, l, n), *LOSS = nan_buf(be, M);
            int *TG = be->alloc(M * sizeof(int));
            be->upload(TG, tg, M * sizeof(int));
            be->xent_forward(LOSS, L, TG, M, V, Vp);
            be->xent_backward(L, TG, k, M, V, Vp);
            be->download(loss, LOSS, M * sizeof(float));
            be->download(dl, L, n * sizeof(float));
            double *got = malloc(n * sizeof(double));
            for (int i = 0; i < M; i++)
                cr_assert(fabs(loss[i] - want[i]) <= 2e-5, "%s M %d V %d: loss[%d] %.7g, oracle %.7g", be->name, M,
                          V, i, loss[i], want[i]);
            for (size_t i = 0; i < n; i++) got[i] = dl[i];
            double e = rel_err_d(got, dwant, n);
            cr_assert(e <= 1e-5, "%s M %d V %d: dlogits rel err %.3g against the oracle", be->name, M, V, e);
            for (int i = 0; i < M; i++)
                for (int v = V; v < Vp; v++)
                    cr_assert(dl[(size_t)i * Vp + v] == 0.0f, "%s M %d V %d: pad column %d of row %d is %g",
                              be->name, M, V, v, i, dl[(size_t)i * Vp + v]);
            be->free(TG), be->free(L), be->free(LOSS), free(got);
        }
        free(l), free(loss), free(dl), free(tg), free(want), free(dwant);
    }
}

// Whether entry i (a pointer slot from alloc on) is one of the bf16-spike
// entries, which a backend without spike_bytes leaves NULL (backend.h).
static int spike_entry(size_t i) {
    const size_t off[] = {offsetof(Backend, spike_bytes), offsetof(Backend, spike_matmul_forward),
                          offsetof(Backend, spike_matmul_dW), offsetof(Backend, to_bf16),
                          offsetof(Backend, spike_column_sums)};
    for (size_t k = 0; k < sizeof off / sizeof off[0]; k++)
        if (offsetof(Backend, alloc) + i * sizeof(void *) == off[k]) return 1;
    return 0;
}

// The table itself: every entry filled on every backend this glia has (the
// bf16-spike entries all or none).
Test(backend_ops, tables_are_complete) {
    const Backend *bes[2] = {backend_cpu(), NULL};
    int n = 1;
#ifdef GLIA_HAVE_CUDA
    if ((bes[1] = backend_cuda())) n = 2;
#endif
    for (int b = 0; b < n; b++) {
        const void *const *slot = (const void *const *)((const char *)bes[b] + offsetof(Backend, alloc));
        size_t nslots = (sizeof(Backend) - offsetof(Backend, alloc)) / sizeof(void *);
        for (size_t i = 0; i < nslots; i++)
            if (bes[b]->spike_bytes || !spike_entry(i))
                cr_expect_not_null(slot[i], "%s: table entry %zu is empty", bes[b]->name, i);
            else
                cr_expect_null(slot[i], "%s: table entry %zu is set without spike_bytes", bes[b]->name, i);
    }
}
