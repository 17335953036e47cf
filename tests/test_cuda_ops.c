// test_cuda_ops.c: parity of the CUDA model ops (kernels/cuda/ops.cu) with
// the CPU reference: rmsnorm_forward / rmsnorm_backward, neuron_backward,
// adamw_update (with its gradient factor), grad_norm_sq (kernels/cpu/), the embedding
// of kernels/cpu/backend.c (written inline here: x = E[token]; dE[token] += dx in
// position order), and the cross-entropy against a naive double-precision
// softmax (testutil.h test_xent_oracle) on rows of stride Vp whose pad
// columns hold garbage: it must not change the loss, and the backward must
// write exactly 0 there.
//
// Every case draws fresh seeded inputs at odd shapes. Outputs that an op
// overwrites are filled with NaN bytes (0xFF) on the device first, so an
// entry it forgot to write fails; outputs it adds into (dx, dg, da_beta, dE)
// start from random values on both sides.
//
// Measures (testutil.h) and tolerances. The GPU contracts a·b + c into FMAs,
// has its own expf / logf, and sums reductions in another order (trees of
// warp shuffles instead of the CPU's left-to-right loops), so most results
// agree to a few ulp per operation, not bitwise:
// - rmsnorm out, rstd, dx, dg; neuron dcurrent, dm, da_beta; xent dlogits:
//   normwise relative error (rel_err) <= 1e-5. The neuron's inputs u, o, s
//   are given (from the CPU forward), so no spike can flip: its backward is a
//   smooth function of them and only rounding differs.
// - AdamW p, m, v: rel_err <= 1e-6: each entry goes through the same few
//   fp32 operations, at most ~4 roundings apart (≈ 5e-7). lr = 0.3 cases
//   make the update a visible part of p, so this also checks the update.
// - xent loss: |gpu − oracle| <= 2e-5 nats per row. The oracle is in double;
//   the GPU in fp32, each of 512 threads over ≤ 99 entries (V = 50257) then a
//   9-level tree, so the sum's relative error is ≤ (99 + 9)·2^-24 ≈ 6.4e-6,
//   which is its absolute error in log(sum); the final log(sum) + max −
//   logit[target], with terms ≤ 16 in these tests, adds ≤ 3 half-ulps of 16
//   (≈ 2.9e-6); expf's ≤ 2 ulp add ≈ 2.4e-7. Total ≤ 1e-5; tolerance 2e-5.
// - grad_norm_sq: relative <= 1e-10. Both sum exact double squares of fp32
//   values in double, in different orders: ≤ n·2^-53 ≈ 3.3e-11 for n = 3e5.
// - embedding forward and backward: rel_err <= 1e-6 (expected exactly 0: a
//   copy, and the same fp32 additions in the same order as the CPU).
// - matmuls (device.cu) in each mode, forward and both halves of the
//   backward, against a double-precision product: every entry within
//   (2.01·u + (K + 2)·2^-24) · S, S = Σ|alpha·a·b| + |beta·c|, where u is
//   the operands' rounding unit: 0 for fp32, 2^-10 for TF32 and 2^-7 for
//   bf16 (truncation, the worst a tensor core's conversion can do; round to
//   nearest halves it). Each product of two rounded operands is off by at
//   most (2u + u²)·|a·b|, and fp32 accumulation of K terms by (K + 2)·2^-24·S.
//   bf16 mode must also show bf16-sized error somewhere (worst normalised
//   error above 2^-12): a mode that silently ran in fp32 would fail.
// - the matmuls' plan cache: one plan per GEMM kind (matmul_plans_cuda), and
//   the emulator's cuBLASLt refuses an algorithm chosen for another kind.
// - bf16 operands (matmul_forward_bf16_cuda) from spikes (0 or 1, exact in
//   bf16) and bf16-rounded weights: the fp32 product of the same values to
//   fp32 accumulation, (K + 2)·2^-24·Σ|s·w|; bit-equal on the emulator.
// - bf16 spikes (BF16 mode's storage): to_bf16_cuda equal to a scalar oracle
//   (nearest by distance in double, ties to even); the spike GEMMs bit-equal
//   to the fp32 entries in BF16 mode on the emulator and within
//   (K + 2)·2^-24·S of a double oracle; the neuron and the whole AM-SU layer
//   with bf16 spikes bit-equal to fp32 spikes (emulator; the layer's test
//   skips on a GPU, whose bf16 and FAST_16BF GEMMs may sum differently).
// - determinism: rmsnorm_backward_cuda and grad_norm_sq_cuda run twice from
//   the same inputs give bit-identical results.
//
// - occupancy (cuda.h, CudaOccupancy): each kernel at the launch shape its
//   launcher uses (D threads for the AM-SU, whose backward takes
//   4·(D·(D + 1) + 32·D + D) bytes of dynamic shared memory; 128 for the
//   LIF; 256 for an RMSNorm row of 768) fits at least one block per SM, and
//   the warp fraction is blocks × warps per block / 64. On the emulator the
//   blocks are exactly the H100 limits' (2048 threads, 32 blocks, 228 KiB
//   with 1 KiB per block) and there are no registers; on a GPU the
//   registers are 1..255.
//
// Built without CUDA, every test skips; with CUDA but no device, too.
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "model/model.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif
#include "testutil.h"

#define TOL 1e-5
#define ADAMW_TOL 1e-6
#define XENT_LOSS_TOL 2e-5
#define NORM_TOL 1e-10
#define EXACT_TOL 1e-6

#ifdef GLIA_HAVE_CUDA

// ---- helpers -----------------------------------------------------------------------------

static void *xalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    cr_assert_not_null(p);
    return p;
}

static float *floats(size_t n) { return xalloc(n * sizeof(float)); }

static void *dev(size_t bytes) {
    void *p = cuda_alloc(bytes);
    cr_assert_not_null(p, "cuda_alloc(%zu): %s", bytes, cuda_last_error_message());
    return p;
}

static void *dev_up(const void *host, size_t bytes) {
    void *p = dev(bytes);
    cuda_upload(p, host, bytes);
    return p;
}

// A device output whose every byte is 0xFF (every float a NaN) until written.
static void *dev_poison(size_t bytes) {
    void *p = dev(bytes);
    cuda_memset(p, 0xFF, bytes, NULL);
    return p;
}

static void down(void *host, const void *d, size_t bytes) {
    cuda_synchronize();
    cuda_download(host, d, bytes);
}

static void check_rel(const char *what, const char *name, const float *got, const float *ref,
                      size_t n, double tol, double *worst) {
    double e = rel_err(got, ref, n);
    cr_log_info("%s %s: rel err %.2e", name, what, e);
    if (worst && (e > *worst || isnan(e))) *worst = e;
    cr_assert(e <= tol, "%s: %s rel err %.3e > %.0e", name, what, e, tol);
}

// ---- matmuls --------------------------------------------------------------------------------

// Worst |got − ref| / S over entries, ref and S in double from the host
// copies; out (M, N) = alpha · a (M, K) @ b (N, K)ᵀ + beta · c.
static double gemm_worst(const float *got, const float *a, const float *b, const float *c,
                         float alpha, float beta, int M, int K, int N, int keep_c_stride) {
    double worst = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = 0.0, S = 0.0;
            for (int k = 0; k < K; k++) {
                double p = (double)alpha * a[(size_t)i * K + k] * b[(size_t)j * K + k];
                ref += p;
                S += fabs(p);
            }
            if (c) {
                double cv = (double)beta * c[(size_t)i * keep_c_stride + j];
                ref += cv;
                S += fabs(cv);
            }
            double e = fabs(got[(size_t)i * N + j] - ref) / (S > 0 ? S : 1.0);
            if (!(e <= worst)) worst = e;  // NaN sticks
        }
    return worst;
}

static void transpose(float *dst, const float *src, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

// One shape in one mode: matmul_forward_cuda (plain, accumulating in place and
// adding another buffer out of place) and
// matmul_backward_cuda (dinp accumulating, dW adding). Returns the worst
// normalised error over all four; asserts each against the mode's bound.
static double matmul_case(int mode, int M, int K, int N, uint64_t seed) {
    static const double unit[] = {0.0, 0x1p-10, 0x1p-7};
    static const char *const names[] = {"fp32", "tf32", "bf16"};
    TestRng rng;
    rng_seed(&rng, seed);
    float *x = floats((size_t)M * K), *w = floats((size_t)N * K), *y0 = floats((size_t)M * N);
    float *dy = floats((size_t)M * N), *dx0 = floats((size_t)M * K), *dw0 = floats((size_t)N * K);
    fill_normal(x, (size_t)M * K, 1.0f, &rng);
    fill_normal(w, (size_t)N * K, 0.3f, &rng);
    fill_normal(y0, (size_t)M * N, 1.0f, &rng);
    fill_normal(dy, (size_t)M * N, 1.0f, &rng);
    fill_normal(dx0, (size_t)M * K, 1.0f, &rng);
    fill_normal(dw0, (size_t)N * K, 1.0f, &rng);
    const float alpha = 0.75f;
    float *d_x = dev_up(x, (size_t)M * K * 4), *d_w = dev_up(w, (size_t)N * K * 4);
    float *d_y = dev_poison((size_t)M * N * 4), *d_dy = dev_up(dy, (size_t)M * N * 4);
    float *d_dx = dev_up(dx0, (size_t)M * K * 4), *d_dw = dev_up(dw0, (size_t)N * K * 4);
    float *got = floats((size_t)(M > N ? M : N) * (K > N ? K : N));

    matmul_set_mode(mode);
    const double bound_fwd = 2.01 * unit[mode] + (K + 2) * 0x1p-24;
    double worst = 0.0, e;
    // forward into a poisoned output, then accumulating onto y0
    matmul_forward_cuda(d_y, d_x, d_w, M, K, N, alpha, NULL, NULL);
    down(got, d_y, (size_t)M * N * 4);
    e = gemm_worst(got, x, w, NULL, alpha, 0.0f, M, K, N, 0);
    cr_assert(e <= bound_fwd, "%s matmul forward M %d K %d N %d: %.3e > %.3e", names[mode], M, K, N, e,
              bound_fwd);
    worst = e > worst ? e : worst;
    cuda_upload(d_y, y0, (size_t)M * N * 4);
    matmul_forward_cuda(d_y, d_x, d_w, M, K, N, alpha, d_y, NULL);
    down(got, d_y, (size_t)M * N * 4);
    e = gemm_worst(got, x, w, y0, alpha, 1.0f, M, K, N, N);
    cr_assert(e <= bound_fwd, "%s matmul forward (accumulate): %.3e > %.3e", names[mode], e, bound_fwd);
    worst = e > worst ? e : worst;
    // out of place: a poisoned output = y0 (another buffer, left as it was) + the product
    float *d_y0 = dev_up(y0, (size_t)M * N * 4);
    cuda_memset(d_y, 0xFF, (size_t)M * N * 4, NULL);
    matmul_forward_cuda(d_y, d_x, d_w, M, K, N, alpha, d_y0, NULL);
    down(got, d_y, (size_t)M * N * 4);
    e = gemm_worst(got, x, w, y0, alpha, 1.0f, M, K, N, N);
    cr_assert(e <= bound_fwd, "%s matmul forward (out of place): %.3e > %.3e", names[mode], e, bound_fwd);
    worst = e > worst ? e : worst;
    down(got, d_y0, (size_t)M * N * 4);
    cr_assert(!memcmp(got, y0, (size_t)M * N * 4), "%s matmul forward (out of place) wrote its add", names[mode]);
    cuda_free(d_y0);

    // backward: dx (M, K) = dx0 + alpha · dy @ w, i.e. dy (M, N) @ (wᵀ) (K, N)ᵀ;
    // dw (N, K) = dw0 + alpha · dyᵀ @ x, i.e. dyᵀ (N, M) @ (xᵀ) (K, M)ᵀ
    matmul_backward_cuda(d_dx, d_dw, d_dy, d_x, d_w, M, K, N, alpha, 1, NULL);
    float *wt = floats((size_t)N * K), *xt = floats((size_t)M * K), *dyt = floats((size_t)M * N);
    transpose(wt, w, N, K);
    transpose(xt, x, M, K);
    transpose(dyt, dy, M, N);
    const double bound_dx = 2.01 * unit[mode] + (N + 2) * 0x1p-24;
    const double bound_dw = 2.01 * unit[mode] + (M + 2) * 0x1p-24;
    down(got, d_dx, (size_t)M * K * 4);
    e = gemm_worst(got, dy, wt, dx0, alpha, 1.0f, M, N, K, K);
    cr_assert(e <= bound_dx, "%s matmul backward dinp: %.3e > %.3e", names[mode], e, bound_dx);
    worst = e > worst ? e : worst;
    down(got, d_dw, (size_t)N * K * 4);
    e = gemm_worst(got, dyt, xt, dw0, alpha, 1.0f, N, M, K, K);
    cr_assert(e <= bound_dw, "%s matmul backward dW: %.3e > %.3e", names[mode], e, bound_dw);
    worst = e > worst ? e : worst;
    matmul_set_mode(MATMUL_FP32);

    float *hb[] = {x, w, y0, dy, dx0, dw0, got, wt, xt, dyt};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) free(hb[i]);
    float *db[] = {d_x, d_w, d_y, d_dy, d_dx, d_dw};
    for (size_t i = 0; i < sizeof db / sizeof db[0]; i++) cuda_free(db[i]);
    return worst;
}

// ---- RMSNorm ---------------------------------------------------------------------------------

// (N, C); N > 256: blocks of the backward take several rows. (The CUDA
// emulator runs a thread per CUDA thread, so the sizes stay modest.)
static const int RMS_SHAPES[][2] = {{1, 8},    {1, 768},  {37, 8},   {37, 48}, {37, 200},
                                    {37, 768}, {130, 8},  {130, 48}, {130, 200}, {300, 48},
                                    {530, 8}};

static void rmsnorm_case(int N, int C, uint64_t seed, double *worst) {
    char name[64];
    snprintf(name, sizeof name, "rmsnorm N=%d C=%d", N, C);
    const size_t nc = (size_t)N * C;
    TestRng rng;
    rng_seed(&rng, seed);
    float *x = floats(nc), *g = floats(C), *dy = floats(nc), *dx0 = floats(nc), *dg0 = floats(C);
    fill_normal(x, nc, 1.5f, &rng);
    fill_normal(g, C, 0.2f, &rng);
    for (int c = 0; c < C; c++) g[c] += 1.0f;
    fill_normal(dy, nc, 1.0f, &rng);
    fill_normal(dx0, nc, 0.5f, &rng);
    fill_normal(dg0, C, 0.5f, &rng);

    // CPU
    float *out_ref = floats(nc), *rstd_ref = floats(N), *dx_ref = floats(nc), *dg_ref = floats(C);
    rmsnorm_forward(out_ref, rstd_ref, x, g, N, C);
    memcpy(dx_ref, dx0, nc * sizeof(float));
    memcpy(dg_ref, dg0, C * sizeof(float));
    rmsnorm_backward(dx_ref, dg_ref, dy, x, g, rstd_ref, N, C);

    // GPU forward
    float *d_x = dev_up(x, nc * 4), *d_g = dev_up(g, C * 4), *d_dy = dev_up(dy, nc * 4);
    float *d_out = dev_poison(nc * 4), *d_rstd = dev_poison(N * 4);
    rmsnorm_forward_cuda(d_out, d_rstd, d_x, d_g, N, C, NULL);
    float *out = floats(nc), *rstd = floats(N);
    down(out, d_out, nc * 4);
    down(rstd, d_rstd, N * 4);
    check_rel("out", name, out, out_ref, nc, TOL, worst);
    check_rel("rstd", name, rstd, rstd_ref, N, TOL, worst);

    // GPU backward, on the CPU's rstd so that only the backward is measured;
    // twice from the same start for determinism
    size_t ns = rmsnorm_backward_scratch_floats(N, C);
    float *d_scratch = dev_poison(ns * 4);
    float *d_rstd_ref = dev_up(rstd_ref, N * 4);
    float *dx[2] = {floats(nc), floats(nc)}, *dg[2] = {floats(C), floats(C)};
    for (int run = 0; run < 2; run++) {
        float *d_dx = dev_up(dx0, nc * 4), *d_dg = dev_up(dg0, C * 4);
        cuda_memset(d_scratch, 0xFF, ns * 4, NULL);
        rmsnorm_backward_cuda(d_dx, d_dg, d_scratch, d_dy, d_x, d_g, d_rstd_ref, N, C, NULL);
        down(dx[run], d_dx, nc * 4);
        down(dg[run], d_dg, C * 4);
        cuda_free(d_dx);
        cuda_free(d_dg);
    }
    check_rel("dx", name, dx[0], dx_ref, nc, TOL, worst);
    check_rel("dg", name, dg[0], dg_ref, C, TOL, worst);
    cr_assert(memcmp(dx[0], dx[1], nc * 4) == 0, "%s: dx differs between two runs", name);
    cr_assert(memcmp(dg[0], dg[1], C * 4) == 0, "%s: dg differs between two runs", name);

    void *dbufs[] = {d_x, d_g, d_dy, d_out, d_rstd, d_scratch, d_rstd_ref};
    for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++) cuda_free(dbufs[i]);
    float *hbufs[] = {x, g, dy, dx0, dg0, out_ref, rstd_ref, dx_ref, dg_ref, out, rstd,
                      dx[0], dx[1], dg[0], dg[1]};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
}

// ---- LIF neuron backward ----------------------------------------------------------------------

static void neuron_case(int B, int T, int N, int with_o, int with_dm, uint64_t seed,
                        double *worst) {
    char name[96];
    snprintf(name, sizeof name, "neuron B=%d T=%d N=%d o=%d dm=%d", B, T, N, with_o, with_dm);
    const size_t n = (size_t)B * T * N;
    TestRng rng;
    rng_seed(&rng, seed);
    float *cur = floats(n), *o = floats(n), *a_beta = floats(N), *ds = floats(n);
    float *dbeta0 = floats(N);
    fill_normal(cur, n, 1.0f, &rng);
    fill_normal(o, n, 0.5f, &rng);
    fill_normal(a_beta, N, 0.5f, &rng);
    fill_normal(ds, n, 1.0f, &rng);
    fill_normal(dbeta0, N, 0.5f, &rng);
    const float *op = with_o ? o : NULL;

    // consistent u, s: the CPU forward from the random currents
    float *u = floats(n), *s = floats(n);
    neuron_forward(u, s, cur, op, a_beta, NULL, NULL, B, T, N, N, NULL);
    size_t fired = 0;
    for (size_t i = 0; i < n; i++) fired += s[i] != 0.0f;

    float *dc_ref = floats(n), *dm_ref = floats(n), *db_ref = floats(N);
    memcpy(db_ref, dbeta0, N * sizeof(float));
    neuron_backward(dc_ref, dm_ref, db_ref, ds, u, op, s, a_beta, B, T, N, N, NULL);

    float *d_ds = dev_up(ds, n * 4), *d_u = dev_up(u, n * 4), *d_s = dev_up(s, n * 4);
    float *d_o = with_o ? dev_up(o, n * 4) : NULL;
    float *d_ab = dev_up(a_beta, N * 4), *d_db = dev_up(dbeta0, N * 4);
    float *d_dc = dev_poison(n * 4), *d_dm = with_dm ? dev_poison(n * 4) : NULL;
    float *d_scratch = dev_poison((size_t)B * N * 4);
    neuron_backward_cuda(d_dc, d_dm, d_db, d_scratch, d_ds, d_u, d_o, d_s, 4, d_ab, B, T, N, N, NULL);
    float *dc = floats(n), *dm = floats(n), *db = floats(N);
    down(dc, d_dc, n * 4);
    down(db, d_db, N * 4);
    cr_log_info("%s: %zu of %zu fired", name, fired, n);
    check_rel("dcurrent", name, dc, dc_ref, n, TOL, worst);
    check_rel("da_beta", name, db, db_ref, N, TOL, worst);
    if (with_dm) {
        down(dm, d_dm, n * 4);
        check_rel("dm", name, dm, dm_ref, n, TOL, worst);
    }
    if (n >= 256)  // spikes must be real for the test to mean something
        cr_assert(fired > 0 && fired < n, "%s: degenerate spikes (%zu of %zu)", name, fired, n);

    void *dbufs[] = {d_ds, d_u, d_s, d_o, d_ab, d_db, d_dc, d_dm, d_scratch};
    for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++) cuda_free(dbufs[i]);
    float *hbufs[] = {cur, o, a_beta, ds, dbeta0, u, s, dc_ref, dm_ref, db_ref, dc, dm, db};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
}

// ---- embedding ---------------------------------------------------------------------------------

static void embedding_case(int M, int C, int V, uint64_t seed, double *worst) {
    char name[64];
    snprintf(name, sizeof name, "embedding M=%d C=%d V=%d", M, C, V);
    const size_t mc = (size_t)M * C, vc = (size_t)V * C;
    TestRng rng;
    rng_seed(&rng, seed);
    int *tok = xalloc(M * sizeof(int));
    for (int i = 0; i < M; i++) tok[i] = (int)(rng_uniform(&rng) * V) % V;
    if (M > 2) tok[M - 1] = tok[0];  // at least one repeated token
    float *E = floats(vc), *dx = floats(mc), *dE0 = floats(vc);
    fill_normal(E, vc, 1.0f, &rng);
    fill_normal(dx, mc, 1.0f, &rng);
    fill_normal(dE0, vc, 1.0f, &rng);

    // reference
    float *x_ref = floats(mc), *dE_ref = floats(vc);
    for (int i = 0; i < M; i++) memcpy(x_ref + (size_t)i * C, E + (size_t)tok[i] * C, C * 4);
    memcpy(dE_ref, dE0, vc * 4);
    for (int i = 0; i < M; i++)
        for (int c = 0; c < C; c++) dE_ref[(size_t)tok[i] * C + c] += dx[(size_t)i * C + c];

    // the plan: runs of one token, positions ascending, tokens ascending
    int *order = xalloc(M * sizeof(int)), *starts = xalloc((M + 1) * sizeof(int));
    int *uniq = xalloc(M * sizeof(int));
    int nuniq = embedding_backward_plan(tok, M, order, starts, uniq);
    cr_assert(nuniq >= 1 && nuniq <= M, "%s: nuniq %d", name, nuniq);
    cr_assert_eq(starts[0], 0);
    cr_assert_eq(starts[nuniq], M);
    for (int u = 0; u < nuniq; u++) {
        cr_assert(starts[u] < starts[u + 1], "%s: empty run %d", name, u);
        if (u > 0) cr_assert(uniq[u - 1] < uniq[u], "%s: tokens not ascending", name);
        for (int p = starts[u]; p < starts[u + 1]; p++) {
            cr_assert_eq(tok[order[p]], uniq[u], "%s: position in the wrong run", name);
            if (p > starts[u]) cr_assert(order[p - 1] < order[p], "%s: positions not ascending", name);
        }
    }

    int *d_tok = dev_up(tok, M * sizeof(int));
    float *d_E = dev_up(E, vc * 4), *d_x = dev_poison(mc * 4);
    embedding_forward_cuda(d_x, d_tok, d_E, M, C, NULL);
    float *x = floats(mc);
    down(x, d_x, mc * 4);
    check_rel("x", name, x, x_ref, mc, EXACT_TOL, worst);

    int *d_order = dev_up(order, M * sizeof(int)), *d_starts = dev_up(starts, (nuniq + 1) * sizeof(int));
    int *d_uniq = dev_up(uniq, nuniq * sizeof(int));
    float *d_dx = dev_up(dx, mc * 4), *d_dE = dev_up(dE0, vc * 4);
    embedding_backward_cuda(d_dE, d_dx, d_order, d_starts, d_uniq, nuniq, C, NULL);
    float *dE = floats(vc);
    down(dE, d_dE, vc * 4);
    check_rel("dE", name, dE, dE_ref, vc, EXACT_TOL, worst);

    void *dbufs[] = {d_tok, d_E, d_x, d_order, d_starts, d_uniq, d_dx, d_dE};
    for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++) cuda_free(dbufs[i]);
    void *hbufs[] = {tok, E, dx, dE0, x_ref, dE_ref, order, starts, uniq, x, dE};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
}

// ---- cross-entropy -----------------------------------------------------------------------------

// logits ~ N(shift, std²) in rows of stride Vp = V rounded up to 64, the pad
// columns garbage; every fifth row (and row 1) is unscored (target −1).
static void xent_case(int M, int V, float std, float shift, uint64_t seed, double *worst_loss,
                      double *worst_grad) {
    char name[96];
    const int Vp = model_pad_vocab(V);
    snprintf(name, sizeof name, "xent M=%d V=%d Vp=%d std=%g shift=%g", M, V, Vp, std, shift);
    const size_t mv = (size_t)M * Vp;
    TestRng rng;
    rng_seed(&rng, seed);
    float *lg = floats(mv);
    fill_normal(lg, mv, std, &rng);
    for (size_t i = 0; i < mv; i++) lg[i] += shift;
    test_fill_pad_columns(lg, M, V, Vp);
    int *tgt = xalloc(M * sizeof(int));
    int scored = 0;
    for (int i = 0; i < M; i++) {
        tgt[i] = (i % 5 == 4 || (i == 1 && M > 2)) ? -1 : (int)(rng_uniform(&rng) * V) % V;
        scored += tgt[i] >= 0;
    }
    const float k = scored ? 0.7f / (float)scored : 0.0f;

    // reference: the naive double-precision softmax over the V real columns
    double *loss_ref = xalloc(M * sizeof(double)), *dl_ref = xalloc(mv * sizeof(double));
    test_xent_oracle(lg, tgt, M, V, Vp, k, loss_ref, dl_ref);

    int *d_tgt = dev_up(tgt, M * sizeof(int));
    float *d_lg = dev_up(lg, mv * 4), *d_loss = dev_poison(M * 4);
    xent_forward_cuda(d_loss, d_lg, d_tgt, M, V, Vp, NULL);
    float *loss = floats(M);
    down(loss, d_loss, M * 4);
    double worst = 0.0;
    for (int i = 0; i < M; i++) {
        double e = fabs((double)loss[i] - loss_ref[i]);
        if (e > worst || isnan(e)) worst = e;
        if (tgt[i] < 0) cr_assert(loss[i] == 0.0f, "%s: unscored row %d has loss %g", name, i, loss[i]);
    }
    cr_log_info("%s: loss abs err %.2e", name, worst);
    if (worst > *worst_loss || isnan(worst)) *worst_loss = worst;
    cr_assert(worst <= XENT_LOSS_TOL, "%s: loss abs err %.3e > %.0e", name, worst, XENT_LOSS_TOL);

    xent_backward_cuda(d_lg, d_tgt, k, M, V, Vp, NULL);
    float *dl = floats(mv);
    down(dl, d_lg, mv * 4);
    double *dl_d = xalloc(mv * sizeof(double));
    for (size_t i = 0; i < mv; i++) dl_d[i] = dl[i];
    double e = rel_err_d(dl_d, dl_ref, mv);
    cr_log_info("%s: dlogits rel err %.2e", name, e);
    if (e > *worst_grad || isnan(e)) *worst_grad = e;
    cr_assert(e <= TOL, "%s: dlogits rel err %.3e > %.0e", name, e, TOL);
    for (int i = 0; i < M; i++)
        for (int v = tgt[i] < 0 ? 0 : V; v < Vp; v++)
            cr_assert(dl[(size_t)i * Vp + v] == 0.0f, "%s: row %d column %d (%s) is %g, not 0", name, i, v,
                      v < V ? "unscored row" : "pad", dl[(size_t)i * Vp + v]);
    free(dl_d);

    cuda_free(d_tgt);
    cuda_free(d_lg);
    cuda_free(d_loss);
    void *hbufs[] = {lg, tgt, loss_ref, dl_ref, loss, dl};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
}

// ---- optimizer, gradient norm --------------------------------------------------------------

static void adamw_case(size_t n, float gscale, float lr, float wd, int step, uint64_t seed, double *worst) {
    char name[96];
    snprintf(name, sizeof name, "adamw n=%zu gscale=%g lr=%g wd=%g step=%d", n, gscale, lr, wd, step);
    TestRng rng;
    rng_seed(&rng, seed);
    float *p = floats(n), *g = floats(n), *m = floats(n), *v = floats(n);
    fill_normal(p, n, 1.0f, &rng);
    fill_normal(g, n, 0.1f, &rng);
    fill_normal(m, n, 0.05f, &rng);
    fill_normal(v, n, 0.05f, &rng);
    for (size_t i = 0; i < n; i++) v[i] *= v[i];  // second moments are >= 0
    if (step == 1) {                              // a first step starts from zero moments
        memset(m, 0, n * 4);
        memset(v, 0, n * 4);
    }
    float *d_p = dev_up(p, n * 4), *d_g = dev_up(g, n * 4), *d_m = dev_up(m, n * 4),
          *d_v = dev_up(v, n * 4);
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    adamw_update(p, g, gscale, m, v, n, lr, b1, b2, eps, wd, step);
    adamw_update_cuda(d_p, d_g, gscale, d_m, d_v, n, lr, b1, b2, eps, wd, step, NULL);
    float *p2 = floats(n), *m2 = floats(n), *v2 = floats(n);
    down(p2, d_p, n * 4);
    down(m2, d_m, n * 4);
    down(v2, d_v, n * 4);
    check_rel("p", name, p2, p, n, ADAMW_TOL, worst);
    check_rel("m", name, m2, m, n, ADAMW_TOL, worst);
    check_rel("v", name, v2, v, n, ADAMW_TOL, worst);
    void *dbufs[] = {d_p, d_g, d_m, d_v};
    for (size_t i = 0; i < 4; i++) cuda_free(dbufs[i]);
    void *hbufs[] = {p, g, m, v, p2, m2, v2};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
}

static void norm_case(size_t n, uint64_t seed, double *worst) {
    char name[64];
    snprintf(name, sizeof name, "grad_norm n=%zu", n);
    TestRng rng;
    rng_seed(&rng, seed);
    float *g = floats(n);
    fill_normal(g, n, 0.3f, &rng);
    float *d_g = dev_up(g, n * 4);

    const double ref = grad_norm_sq(g, n);
    const size_t ns = grad_norm_scratch_doubles();
    double *d_out = dev(sizeof(double)), *d_scratch = dev(ns * sizeof(double));
    double got[2];
    for (int run = 0; run < 2; run++) {
        cuda_memset(d_out, 0xFF, sizeof(double), NULL);
        cuda_memset(d_scratch, 0xFF, ns * sizeof(double), NULL);
        grad_norm_sq_cuda(d_out, d_scratch, d_g, n, NULL);
        down(&got[run], d_out, sizeof(double));
    }
    const double e = ref != 0.0 ? fabs(got[0] - ref) / ref : fabs(got[0]);
    cr_log_info("%s: norm² %.17g vs %.17g, rel err %.2e", name, got[0], ref, e);
    if (e > *worst || isnan(e)) *worst = e;
    cr_assert(e <= NORM_TOL, "%s: grad_norm_sq rel err %.3e > %.0e", name, e, NORM_TOL);
    cr_assert(memcmp(&got[0], &got[1], sizeof(double)) == 0,
              "%s: grad_norm_sq differs between two runs", name);

    cuda_free(d_g);
    cuda_free(d_out);
    cuda_free(d_scratch);
    free(g);
}

#endif  // GLIA_HAVE_CUDA

Test(cuda_ops, rmsnorm) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    double worst = 0.0;
    uint64_t seed = 100;
    for (size_t i = 0; i < sizeof RMS_SHAPES / sizeof RMS_SHAPES[0]; i++)
        rmsnorm_case(RMS_SHAPES[i][0], RMS_SHAPES[i][1], seed++, &worst);
    cr_log_info("rmsnorm: worst rel err %.2e (tolerance %.0e)", worst, TOL);
#endif
}

Test(cuda_ops, matmul_modes) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int shapes[][3] = {{1, 1, 1}, {7, 33, 5}, {64, 48, 96}, {256, 256, 256}};
    for (int mode = MATMUL_FP32; mode <= MATMUL_BF16; mode++) {
        double worst = 0.0;
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            double e = matmul_case(mode, shapes[i][0], shapes[i][1], shapes[i][2], 900 + i);
            worst = e > worst ? e : worst;
        }
        cr_log_info("matmul mode %d: worst normalised error %.2e", mode, worst);
        if (mode == MATMUL_BF16)
            cr_assert(worst > 0x1p-12, "bf16 mode shows no bf16 rounding (worst %.2e): it ran in fp32",
                      worst);
    }
#endif
}

// The plan cache (device.cu): a GEMM of a new kind adds one plan, the same
// kind again none. Each cached plan's algorithm is checked by the emulator's
// cuBLASLt to be the heuristic's answer for exactly that call's descriptors.
Test(cuda_ops, matmul_plan_cache) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    float *x = dev_poison(6 * 7 * 4), *w = dev_poison(3 * 7 * 4), *y = dev_poison(6 * 3 * 4);
    float *r = dev_poison(6 * 3 * 4);
    cuda_memset(x, 0, 6 * 7 * 4, NULL), cuda_memset(w, 0, 3 * 7 * 4, NULL), cuda_memset(r, 0, 6 * 3 * 4, NULL);
    const int n0 = matmul_plans_cuda();
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, NULL, NULL);
    cr_assert_eq(matmul_plans_cuda(), n0 + 1);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 0.5f, NULL, NULL);  // alpha is not part of the kind
    cr_assert_eq(matmul_plans_cuda(), n0 + 1, "the same GEMM again made a new plan");
    matmul_forward_cuda(y, x, w, 6, 7, 3, 1.0f, NULL, NULL);  // another M
    cr_assert_eq(matmul_plans_cuda(), n0 + 2);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, y, NULL);  // beta 1, in place
    cr_assert_eq(matmul_plans_cuda(), n0 + 3);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, r, NULL);  // beta 1, C != D
    cr_assert_eq(matmul_plans_cuda(), n0 + 4);
    matmul_set_mode(MATMUL_TF32);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, NULL, NULL);  // another compute type
    matmul_set_mode(MATMUL_FP32);
    cr_assert_eq(matmul_plans_cuda(), n0 + 5);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, NULL, NULL);
    matmul_forward_cuda(y, x, w, 6, 7, 3, 1.0f, NULL, NULL);
    matmul_forward_cuda(y, x, w, 5, 7, 3, 1.0f, r, NULL);
    cr_assert_eq(matmul_plans_cuda(), n0 + 5, "a GEMM seen before made a new plan");
    float got[18];
    down(got, y, sizeof got);
    for (int i = 0; i < 15; i++) cr_assert_eq(got[i], 0.0f);
    cuda_free(x), cuda_free(w), cuda_free(y), cuda_free(r);
#endif
}

#ifdef GLIA_HAVE_CUDA
// bf16 bits of x, rounded to nearest even (finite x).
static uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
#endif

// Spikes are exact in bf16 (0 or 1), so the W_O and W_2 products on bf16
// operands (matmul_forward_bf16_cuda: cuBLASLt with A and B CUDA_R_16BF, C
// and D fp32) equal the fp32 products of the same spikes and of the weights
// rounded to bf16: within fp32 accumulation, (K + 2)·2^-24·Σ|s·w| per entry,
// of each other and of a double-precision oracle; bit-equal on the emulator,
// which sums both in one order.
Test(cuda_ops, bf16_operands_spikes_exact) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int shapes[][3] = {{66, 64, 64}, {66, 256, 64}, {7, 33, 5}};  // M, K, N: W_O, W_2, odd
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int M = shapes[c][0], K = shapes[c][1], N = shapes[c][2];
        const size_t mk = (size_t)M * K, nk = (size_t)N * K, mn = (size_t)M * N;
        TestRng rng;
        rng_seed(&rng, 1700 + c);
        float *s = floats(mk), *w = floats(nk), *got16 = floats(mn), *got32 = floats(mn);
        uint16_t *s16 = xalloc(mk * 2), *w16 = xalloc(nk * 2);
        fill_normal(w, nk, 0.2f, &rng);
        for (size_t i = 0; i < mk; i++) {
            s[i] = rng_uniform(&rng) < 0.3 ? 1.0f : 0.0f;
            s16[i] = bf16_bits(s[i]);
        }
        for (size_t i = 0; i < nk; i++) {
            w16[i] = bf16_bits(w[i]);
            uint32_t u = (uint32_t)w16[i] << 16;
            memcpy(&w[i], &u, 4);  // the bf16 weight, as fp32
        }
        float *d_s = dev_up(s, mk * 4), *d_w = dev_up(w, nk * 4), *d_y = dev_poison(mn * 4);
        uint16_t *d_s16 = dev_up(s16, mk * 2), *d_w16 = dev_up(w16, nk * 2);
        float *d_y16 = dev_poison(mn * 4);
        matmul_set_mode(MATMUL_FP32);
        matmul_forward_cuda(d_y, d_s, d_w, M, K, N, 1.0f, NULL, NULL);
        matmul_forward_bf16_cuda(d_y16, d_s16, d_w16, M, K, N, NULL);
        down(got32, d_y, mn * 4);
        down(got16, d_y16, mn * 4);
        const double bound = (K + 2) * 0x1p-24;
        double e16 = gemm_worst(got16, s, w, NULL, 1.0f, 0.0f, M, K, N, 0);
        double e32 = gemm_worst(got32, s, w, NULL, 1.0f, 0.0f, M, K, N, 0);
        cr_assert(e16 <= bound && e32 <= bound, "M %d K %d N %d: bf16 operands %.3e, fp32 %.3e > %.3e", M, K, N,
                  e16, e32, bound);
        double worst = 0.0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double S = 0.0;
                for (int k = 0; k < K; k++) S += fabs((double)s[(size_t)i * K + k] * w[(size_t)j * K + k]);
                double e = fabs((double)got16[(size_t)i * N + j] - got32[(size_t)i * N + j]) / (S > 0 ? S : 1.0);
                worst = e > worst || isnan(e) ? e : worst;
            }
        cr_log_info("spikes M %d K %d N %d: bf16 against fp32 operands, worst %.2e", M, K, N, worst);
        cr_assert(worst <= 2 * bound, "M %d K %d N %d: bf16 and fp32 products differ by %.3e", M, K, N, worst);
#ifdef GLIA_CUDA_EMU
        cr_assert(!memcmp(got16, got32, mn * 4), "M %d K %d N %d: not bit-equal on the emulator", M, K, N);
#endif
        cuda_free(d_s), cuda_free(d_w), cuda_free(d_y), cuda_free(d_s16), cuda_free(d_w16), cuda_free(d_y16);
        free(s), free(w), free(got16), free(got32), free(s16), free(w16);
    }
#endif
}

#ifdef GLIA_HAVE_CUDA
static uint32_t f2u(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
static float u2f(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// The bf16 nearest to x by distance in double, ties to the even pattern, and
// past the largest bf16 by half an ulp Inf (IEEE: Inf stands at 2^128); x not NaN.
static uint16_t bf16_oracle(float x) {
    if (isinf(x)) return (uint16_t)(f2u(x) >> 16);
    const uint16_t lo = (uint16_t)(f2u(x) >> 16), hi = (uint16_t)(lo + 1);  // toward zero, one step away
    const double vlo = u2f((uint32_t)lo << 16);
    const double vhi = (hi & 0x7FFF) == 0x7F80 ? copysign(0x1p128, x) : u2f((uint32_t)hi << 16);
    const double dlo = fabs((double)x - vlo), dhi = fabs(vhi - (double)x);
    return dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1) ? hi : lo;
}
#endif

// to_bf16_cuda (common/bf16.h's rounding, which the spike GEMMs' dout and
// the weights' mirror go through) against bf16_oracle: ties at both parities,
// normal and subnormal, overflow to Inf, ±Inf, ±0 and 20000 random bit
// patterns; NaN stays NaN with its sign.
Test(cuda_ops, to_bf16_rounds_to_nearest_even) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const uint32_t special[] = {
        0x00000000, 0x80000000, 0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000,
        0xBF818000, 0x00008000, 0x00018000, 0x00000001, 0x807FFFFF, 0x00FF8000, 0x7F7FFFFF, 0x7F7F8000,
        0x7F7F7FFF, 0xFF7F8000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF};
    const size_t ns = sizeof special / sizeof special[0], n = ns + 20000;
    float *x = floats(n);
    uint16_t *got = xalloc(n * 2);
    TestRng rng;
    rng_seed(&rng, 1900);
    for (size_t i = 0; i < n; i++)
        x[i] = u2f(i < ns ? special[i] : (uint32_t)(rng_uniform(&rng) * 4294967296.0));
    float *d_x = dev_up(x, n * 4);
    uint16_t *d_y = dev_poison(n * 2);
    to_bf16_cuda(d_y, d_x, n, NULL);
    down(got, d_y, n * 2);
    size_t nans = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i])) {
            nans++;
            cr_assert((got[i] & 0x7F80) == 0x7F80 && (got[i] & 0x7F) && (got[i] >> 15) == f2u(x[i]) >> 31,
                      "NaN %08x became %04x", f2u(x[i]), got[i]);
            continue;
        }
        cr_assert_eq(got[i], bf16_oracle(x[i]), "%08x (%.9g): %04x, the oracle %04x", f2u(x[i]), x[i], got[i],
                     bf16_oracle(x[i]));
    }
    cr_assert_geq(nans, 4);
    cuda_free(d_x), cuda_free(d_y);
    free(x), free(got);
#endif
}

// BF16 mode's spike products (spike_matmul_forward_cuda, spike_matmul_dW_cuda:
// spikes and the weights' mirror, or dout, stored as bf16) against the fp32
// entries in BF16 mode on the same values (cuBLASLt rounds the operands to
// bf16 inside the GEMM): bit-equal on the emulator. And against a double
// oracle of the same products with the weights (or dout) rounded by
// bf16_oracle, within fp32 accumulation, (K + 2)·2^-24·S (K: the summed
// dimension), S = Σ|terms| + |addend|.
Test(cuda_ops, spike_matmuls_bf16) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int shapes[][3] = {{66, 64, 64}, {66, 256, 64}, {7, 33, 5}};  // M, K, N: W_O, W_2, odd
    matmul_set_mode(MATMUL_BF16);
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int M = shapes[c][0], K = shapes[c][1], N = shapes[c][2];
        const size_t mk = (size_t)M * K, nk = (size_t)N * K, mn = (size_t)M * N;
        TestRng rng;
        rng_seed(&rng, 1950 + c);
        float *s = floats(mk), *w = floats(nk), *add = floats(mn), *dout = floats(mn), *dW0 = floats(nk);
        float *wr = floats(nk), *doutT = floats(mn), *sT = floats(mk);
        float *y32 = floats(mn), *y16 = floats(mn), *g32 = floats(nk), *g16 = floats(nk);
        fill_normal(w, nk, 0.2f, &rng);
        fill_normal(add, mn, 1.0f, &rng);
        fill_normal(dout, mn, 1.0f, &rng);
        fill_normal(dW0, nk, 0.5f, &rng);
        for (size_t i = 0; i < mk; i++) s[i] = rng_uniform(&rng) < 0.3 ? 1.0f : 0.0f;
        for (size_t i = 0; i < nk; i++) wr[i] = u2f((uint32_t)bf16_oracle(w[i]) << 16);
        float *d_s = dev_up(s, mk * 4), *d_w = dev_up(w, nk * 4), *d_add = dev_up(add, mn * 4);
        float *d_dout = dev_up(dout, mn * 4), *d_g32 = dev_up(dW0, nk * 4), *d_g16 = dev_up(dW0, nk * 4);
        float *d_y32 = dev_poison(mn * 4), *d_y16 = dev_poison(mn * 4);
        uint16_t *d_s16 = dev_poison(mk * 2), *d_w16 = dev_poison(nk * 2), *d_o16 = dev_poison(mn * 2);
        to_bf16_cuda(d_s16, d_s, mk, NULL);
        to_bf16_cuda(d_w16, d_w, nk, NULL);
        matmul_forward_cuda(d_y32, d_s, d_w, M, K, N, 1.0f, d_add, NULL);
        spike_matmul_forward_cuda(d_y16, d_s16, d_w16, M, K, N, d_add, NULL);
        matmul_backward_cuda(NULL, d_g32, d_dout, d_s, d_w, M, K, N, 1.0f, 0, NULL);
        spike_matmul_dW_cuda(d_g16, d_o16, d_dout, d_s16, M, K, N, NULL);
        down(y32, d_y32, mn * 4), down(y16, d_y16, mn * 4);
        down(g32, d_g32, nk * 4), down(g16, d_g16, nk * 4);
        // forward: y = add + s wrᵀ; dW (N, K) = dW0 + doutᵀ s, i.e. a = doutᵀ (N, M) rounded, b = sᵀ (K, M)
        double ef = gemm_worst(y16, s, wr, add, 1.0f, 1.0f, M, K, N, N);
        transpose(doutT, dout, M, N);
        for (size_t i = 0; i < mn; i++) doutT[i] = u2f((uint32_t)bf16_oracle(doutT[i]) << 16);
        transpose(sT, s, M, K);
        double eb = gemm_worst(g16, doutT, sT, dW0, 1.0f, 1.0f, N, M, K, K);
        cr_log_info("spike GEMMs M %d K %d N %d: forward %.2e, dW %.2e", M, K, N, ef, eb);
        cr_assert(ef <= (K + 2) * 0x1p-24, "M %d K %d N %d: forward off by %.3e", M, K, N, ef);
        cr_assert(eb <= (M + 2) * 0x1p-24, "M %d K %d N %d: dW off by %.3e", M, K, N, eb);
#ifdef GLIA_CUDA_EMU
        cr_assert(!memcmp(y16, y32, mn * 4), "M %d K %d N %d: forward not bit-equal to the fp32 entry", M, K, N);
        cr_assert(!memcmp(g16, g32, nk * 4), "M %d K %d N %d: dW not bit-equal to the fp32 entry", M, K, N);
#endif
        void *dbufs[] = {d_s, d_w, d_add, d_dout, d_g32, d_g16, d_y32, d_y16, d_s16, d_w16, d_o16};
        for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++) cuda_free(dbufs[i]);
        float *hbufs[] = {s, w, add, dout, dW0, wr, doutT, sT, y32, y16, g32, g16};
        for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
    }
    matmul_set_mode(MATMUL_FP32);
#endif
}

// The LIF neuron with bf16 spikes (amsu_recurrence_forward_cuda with sb 2 and
// astro 0, neuron_backward_cuda with sb 2) against the fp32-spike kernels from the same
// inputs: spikes equal (bf16 of the fp32 run's), u, the streaming state,
// dcurrent, dm and da_beta bit-equal: only the spikes' storage differs.
Test(cuda_ops, neuron_bf16_spikes) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int shapes[][3] = {{3, 70, 200}, {1, 7, 8}, {2, 33, 384}};  // B, T, N
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int B = shapes[c][0], T = shapes[c][1], N = shapes[c][2], state = c != 1;
        const size_t n = (size_t)B * T * N, bn = (size_t)B * N;
        TestRng rng;
        rng_seed(&rng, 2000 + c);
        float *cur = floats(n), *a_beta = floats(N), *ds = floats(n), *o = floats(n), *db0 = floats(N);
        float *ust = floats(bn), *sst = floats(bn);
        fill_normal(cur, n, 1.0f, &rng);
        fill_normal(a_beta, N, 0.5f, &rng);
        fill_normal(ds, n, 1.0f, &rng);
        fill_normal(o, n, 0.5f, &rng);
        fill_normal(db0, N, 0.5f, &rng);
        fill_normal(ust, bn, 0.5f, &rng);
        for (size_t i = 0; i < bn; i++) sst[i] = rng_uniform(&rng) < 0.4 ? 1.0f : 0.0f;
        float *d_cur = dev_up(cur, n * 4), *d_ab = dev_up(a_beta, N * 4), *d_ds = dev_up(ds, n * 4);
        float *d_o = dev_up(o, n * 4);
        float *d_u[2] = {dev_poison(n * 4), dev_poison(n * 4)}, *d_s32 = dev_poison(n * 4);
        uint16_t *d_s16 = dev_poison(n * 2);
        float *d_ust[2] = {state ? dev_up(ust, bn * 4) : NULL, state ? dev_up(ust, bn * 4) : NULL};
        float *d_sst[2] = {state ? dev_up(sst, bn * 4) : NULL, state ? dev_up(sst, bn * 4) : NULL};
        amsu_recurrence_forward_cuda(NULL, d_u[0], d_s32, 4, NULL, d_cur, NULL, NULL, NULL, NULL, d_ab, NULL, d_ust[0],
                                     d_sst[0], B, T, N, 1, N, 0, NULL);
        amsu_recurrence_forward_cuda(NULL, d_u[1], d_s16, 2, NULL, d_cur, NULL, NULL, NULL, NULL, d_ab, NULL,
                                     d_ust[1], d_sst[1], B, T, N, 1, N, 0, NULL);
        float *u[2] = {floats(n), floats(n)}, *s32 = floats(n);
        uint16_t *s16 = xalloc(n * 2);
        down(u[0], d_u[0], n * 4), down(u[1], d_u[1], n * 4);
        down(s32, d_s32, n * 4), down(s16, d_s16, n * 2);
        size_t fired = 0;
        for (size_t i = 0; i < n; i++) {
            fired += s32[i] != 0.0f;
            cr_assert_eq(s16[i], bf16_oracle(s32[i]), "B %d T %d N %d: spike %zu: %04x, fp32 run %g", B, T, N, i,
                         s16[i], s32[i]);
        }
        cr_assert(fired > 0 && fired < n, "degenerate spikes: %zu of %zu", fired, n);
        cr_assert(!memcmp(u[0], u[1], n * 4), "B %d T %d N %d: u differs", B, T, N);
        if (state) {
            float *a = floats(bn), *b = floats(bn);
            for (int k = 0; k < 2; k++) {
                down(a, k ? d_sst[0] : d_ust[0], bn * 4), down(b, k ? d_sst[1] : d_ust[1], bn * 4);
                cr_assert(!memcmp(a, b, bn * 4), "B %d T %d N %d: the state's %s differs", B, T, N, k ? "s" : "u");
            }
            free(a), free(b);
        }
        // backward, o and dm on (c even) or off, from these u and s
        const int with_o = c % 2 == 0;
        float *d_dc[2] = {dev_poison(n * 4), dev_poison(n * 4)}, *d_dm[2] = {dev_poison(n * 4), dev_poison(n * 4)};
        float *d_db[2] = {dev_up(db0, N * 4), dev_up(db0, N * 4)}, *d_sc = dev_poison(bn * 4);
        neuron_backward_cuda(d_dc[0], with_o ? d_dm[0] : NULL, d_db[0], d_sc, d_ds, d_u[0], with_o ? d_o : NULL,
                             d_s32, 4, d_ab, B, T, N, N, NULL);
        neuron_backward_cuda(d_dc[1], with_o ? d_dm[1] : NULL, d_db[1], d_sc, d_ds, d_u[0], with_o ? d_o : NULL,
                             d_s16, 2, d_ab, B, T, N, N, NULL);
        float *h[2] = {floats(n), floats(n)};
        for (int part = 0; part < 3; part++) {
            if (part == 1 && !with_o) continue;
            float *const *dv = part == 0 ? d_dc : part == 1 ? d_dm : d_db;
            const size_t bytes = (part == 2 ? (size_t)N : n) * 4;
            down(h[0], dv[0], bytes), down(h[1], dv[1], bytes);
            cr_assert(!memcmp(h[0], h[1], bytes), "B %d T %d N %d: %s differs", B, T, N,
                      part == 0 ? "dcurrent" : part == 1 ? "dm" : "da_beta");
        }
        void *dbufs[] = {d_cur, d_ab, d_ds, d_o, d_u[0], d_u[1], d_s32, d_s16, d_ust[0], d_ust[1], d_sst[0],
                         d_sst[1], d_dc[0], d_dc[1], d_dm[0], d_dm[1], d_db[0], d_db[1], d_sc};
        for (size_t i = 0; i < sizeof dbufs / sizeof dbufs[0]; i++) cuda_free(dbufs[i]);
        void *hbufs[] = {cur, a_beta, ds, o, db0, ust, sst, u[0], u[1], s32, s16, h[0], h[1]};
        for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);
    }
#endif
}

#ifdef GLIA_HAVE_CUDA
// One AM-SU layer (amsu_forward_cuda, amsu_backward_cuda) in BF16 mode, run
// k = 0 with fp32 spikes, k = 1 with bf16 spikes and W_O16; what comes back.
typedef struct {
    float *y, *o, *u, *s, *H, *dz, *g, *st;  // s: fp32 spikes (k = 1: its bf16 bits, widened)
} LayerRun;

static void amsu_layer_run(AmsuShape sh, int state, int k, const float *z, const float *Win, const float *WO,
                           const float *al, const float *ab, const float *dy, const float *st0, LayerRun *r) {
    const int M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh), D = C / sh.Nh;
    const size_t mc = (size_t)M * C, cc = (size_t)C * C, nst = (size_t)sh.B * (sh.Nh * D * D + 2 * C);
    const size_t nact = amsu_acts_size(sh), ng = (size_t)ld * C + cc + 2 * (size_t)C;
    float *d_z = dev_up(z, mc * 4), *d_Win = dev_up(Win, (size_t)ld * C * 4), *d_WO = dev_up(WO, cc * 4);
    float *d_al = dev_up(al, C * 4), *d_ab = dev_up(ab, C * 4), *d_dy = dev_up(dy, mc * 4);
    float *d_y = dev_poison(mc * 4), *d_dz = dev_poison(mc * 4), *d_acts = dev_poison(nact * 4);
    float *d_g = dev(ng * 4), *d_sc = dev_poison(amsu_scratch_floats_cuda(sh) * 4), *d_st = dev_up(st0, nst * 4);
    uint16_t *d_WO16 = k ? dev(cc * 2) : NULL;
    cuda_memset(d_g, 0, ng * 4, NULL);
    if (k) to_bf16_cuda(d_WO16, d_WO, cc, NULL);
    AmsuActs a;
    amsu_acts_bind(&a, sh, d_acts);
    AmsuWeights w = {d_Win, d_WO, sh.astro ? d_al : NULL, d_ab, d_WO16};
    AmsuState ss = {sh.astro ? d_st : NULL, d_st + (size_t)sh.B * sh.Nh * D * D,
                    d_st + (size_t)sh.B * sh.Nh * D * D + (size_t)sh.B * C};
    amsu_forward_cuda(d_y, &a, d_z, &w, sh, state ? &ss : NULL, NULL, NULL);
    AmsuGrads g = {d_g, d_g + (size_t)ld * C, sh.astro ? d_g + (size_t)ld * C + cc : NULL,
                   d_g + (size_t)ld * C + cc + C};
    if (!state) amsu_backward_cuda(d_dz, &g, d_sc, d_dy, d_z, &a, &w, sh, NULL);
    const size_t nH = sh.astro ? (size_t)sh.B * sh.Nh * glia_nchunks(sh.T) * D * D : 0;
    r->y = floats(mc), r->o = floats(mc), r->u = floats(mc), r->s = floats(mc), r->H = floats(nH);
    r->dz = floats(mc), r->g = floats(ng), r->st = floats(nst);
    down(r->y, d_y, mc * 4), down(r->o, a.o, mc * 4), down(r->u, a.u, mc * 4), down(r->st, d_st, nst * 4);
    if (k) {
        uint16_t *h = xalloc(mc * 2);
        down(h, a.s, mc * 2);
        for (size_t i = 0; i < mc; i++) r->s[i] = u2f((uint32_t)h[i] << 16);
        free(h);
    } else {
        down(r->s, a.s, mc * 4);
    }
    if (nH && !state) down(r->H, a.Hckpt, nH * 4);
    if (!state) down(r->dz, d_dz, mc * 4), down(r->g, d_g, ng * 4);
    void *b[] = {d_z, d_Win, d_WO, d_al, d_ab, d_dy, d_y, d_dz, d_acts, d_g, d_sc, d_st, d_WO16};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) cuda_free(b[i]);
}
#endif

// The AM-SU layer with its spikes s stored as bf16 (BF16 mode, AmsuWeights.W_O16;
// every kernel that writes or reads s: the per-timestep and chunked forwards,
// the fused and the chunked backward, the ablation's LIF, the streaming path)
// against the same layer with fp32 spikes in BF16 mode: y, o, u, Hckpt, dz and
// every parameter gradient bit-equal, the spikes equal, the streaming state
// bit-equal. One head size (D 16): the spike storage is the same code at every D. Bit-equal on the emulator, where both GEMMs of W_O round the same
// operands to bf16 and sum them in one order.
Test(cuda_ops, amsu_layer_bf16_spikes) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
#ifndef GLIA_CUDA_EMU
    cr_skip_test("bit-identity holds on the emulator; a GPU's bf16 and FAST_16BF kernels may sum differently");
#endif
    static const int cases[][6] = {
        // B, T, C, Nh, astro, state
        {2, 40, 64, 4, 1, 0}, {2, 40, 64, 4, 1, 1}, {2, 40, 64, 4, 0, 0}, {2, 40, 64, 4, 0, 1}};
    matmul_set_mode(MATMUL_BF16);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int mode = AMSU_SCAN; mode <= AMSU_CHUNK; mode++) {
            const AmsuShape sh = {cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4]};
            const int state = cases[c][5], M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh), D = C / sh.Nh;
            if (state && mode == AMSU_CHUNK) continue;  // streaming runs the per-timestep kernel always
            const size_t mc = (size_t)M * C, nst = (size_t)sh.B * (sh.Nh * D * D + 2 * C);
            const size_t ng = (size_t)ld * C + (size_t)C * C + 2 * (size_t)C;
            TestRng rng;
            rng_seed(&rng, 2100 + 10 * c + mode);
            float *z = floats(mc), *Win = floats((size_t)ld * C), *WO = floats((size_t)C * C), *al = floats(C);
            float *ab = floats(C), *dy = floats(mc), *st0 = floats(nst);
            fill_normal(z, mc, 1.0f, &rng);
            fill_normal(Win, (size_t)ld * C, 2.0f / sqrtf((float)C), &rng);
            fill_normal(WO, (size_t)C * C, 0.1f, &rng);
            fill_normal(al, C, 1.0f, &rng);
            fill_normal(ab, C, 0.5f, &rng);
            fill_normal(dy, mc, 1.0f, &rng);
            fill_normal(st0, nst, 0.3f, &rng);
            for (size_t i = nst - (size_t)sh.B * C; i < nst; i++) st0[i] = st0[i] > 0.0f;  // s_state: spikes
            amsu_set_mode_cuda(mode);
            LayerRun r[2];
            for (int k = 0; k < 2; k++) amsu_layer_run(sh, state, k, z, Win, WO, al, ab, dy, st0, &r[k]);
            char name[96];
            snprintf(name, sizeof name, "B %d T %d C %d Nh %d astro %d state %d %s", sh.B, sh.T, C, sh.Nh, sh.astro,
                     state, mode == AMSU_CHUNK ? "chunk" : "scan");
            size_t fired = 0;
            for (size_t i = 0; i < mc; i++) fired += r[0].s[i] != 0.0f;
            cr_assert(fired > mc / 50 && fired < mc, "%s: degenerate spikes (%zu of %zu)", name, fired, mc);
            const size_t nH = sh.astro && !state ? (size_t)sh.B * sh.Nh * glia_nchunks(sh.T) * D * D : 0;
            cr_assert(!memcmp(r[0].s, r[1].s, mc * 4), "%s: spikes differ", name);
            cr_assert(!memcmp(r[0].y, r[1].y, mc * 4), "%s: y differs", name);
            cr_assert(!memcmp(r[0].o, r[1].o, mc * 4), "%s: o differs", name);
            cr_assert(!memcmp(r[0].u, r[1].u, mc * 4), "%s: u differs", name);
            cr_assert(!memcmp(r[0].H, r[1].H, nH * 4), "%s: Hckpt differs", name);
            if (state) {
                cr_assert(!memcmp(r[0].st, r[1].st, nst * 4), "%s: the streaming state differs", name);
            } else {
                cr_assert(!memcmp(r[0].dz, r[1].dz, mc * 4), "%s: dz differs", name);
                for (size_t i = 0; i < ng; i++)
                    cr_assert(!memcmp(&r[0].g[i], &r[1].g[i], 4), "%s: gradient %zu: %g and %g", name, i, r[0].g[i],
                              r[1].g[i]);
            }
            for (int k = 0; k < 2; k++) {
                float *b[] = {r[k].y, r[k].o, r[k].u, r[k].s, r[k].H, r[k].dz, r[k].g, r[k].st};
                for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) free(b[i]);
            }
            float *h[] = {z, Win, WO, al, ab, dy, st0};
            for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) free(h[i]);
        }
    amsu_set_mode_cuda(AMSU_CHUNK);
    matmul_set_mode(MATMUL_FP32);
#endif
}

Test(cuda_ops, neuron_backward) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int Bs[] = {1, 3}, Ts[] = {1, 7, 70}, Ns[] = {8, 200, 384};
    double worst = 0.0;
    uint64_t seed = 200;
    for (size_t i = 0; i < 2; i++)
        for (size_t j = 0; j < 3; j++)
            for (size_t k = 0; k < 3; k++) {
                // o and dm on and off, alternating over the shapes (and both on at B 3, T 70)
                int with_o = (int)((j + k) % 2), with_dm = (int)((i + k) % 2);
                if (Bs[i] == 3 && Ts[j] == 70) with_o = with_dm = 1;
                neuron_case(Bs[i], Ts[j], Ns[k], with_o, with_dm, seed++, &worst);
            }
    neuron_case(2, 33, 200, 0, 0, seed++, &worst);
    cr_log_info("neuron_backward: worst rel err %.2e (tolerance %.0e)", worst, TOL);
#endif
}

Test(cuda_ops, embedding) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int Ms[] = {1, 37, 130}, Cs[] = {8, 48, 200}, Vs[] = {5, 257};
    double worst = 0.0;
    uint64_t seed = 300;
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 3; j++)
            for (size_t k = 0; k < 2; k++) embedding_case(Ms[i], Cs[j], Vs[k], seed++, &worst);
    cr_log_info("embedding: worst rel err %.2e (tolerance %.0e)", worst, EXACT_TOL);
#endif
}

Test(cuda_ops, xent) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int shapes[][2] = {{1, 256},  {1, 257},  {1, 1000}, {37, 256},
                                    {37, 257}, {37, 1000}, {130, 257}};  // (M, V)
    double worst_loss = 0.0, worst_grad = 0.0;
    uint64_t seed = 400;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        xent_case(shapes[i][0], shapes[i][1], 1.0f, 0.0f, seed++, &worst_loss, &worst_grad);
        xent_case(shapes[i][0], shapes[i][1], 3.0f, 2.0f, seed++, &worst_loss, &worst_grad);
    }
    xent_case(3, 50257, 2.0f, 0.0f, seed++, &worst_loss, &worst_grad);  // the 124m vocabulary (Vp 50304)
    xent_case(7, 777, 0.5f, 15.0f, seed++, &worst_loss, &worst_grad);   // large logits: cancellation
    cr_log_info("xent: worst loss abs err %.2e (tolerance %.0e), worst dlogits rel err %.2e "
                "(tolerance %.0e)",
                worst_loss, XENT_LOSS_TOL, worst_grad, TOL);
#endif
}

Test(cuda_ops, adamw) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const size_t ns[] = {1, 37, 1000};
    double worst = 0.0;
    uint64_t seed = 500;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        adamw_case(ns[i], 1.0f, 1e-3f, 0.0f, 1, seed++, &worst);
        adamw_case(ns[i], 0.37f, 0.3f, 0.1f, 7, seed++, &worst);  // a clipped step
    }
    adamw_case(600001, 0.37f, 0.3f, 0.1f, 3, seed++, &worst);  // > 2048 blocks × 256: grid-stride
    cr_log_info("adamw: worst rel err %.2e (tolerance %.0e)", worst, ADAMW_TOL);
#endif
}

Test(cuda_ops, grad_norm) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    // 300001 > 256 blocks × 256 threads × 4: the partial kernel's four-load loop and its tail
    static const size_t ns[] = {1, 300001};
    double worst = 0.0;
    uint64_t seed = 600;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) norm_case(ns[i], seed++, &worst);
    cr_log_info("grad_norm_sq: worst rel err %.2e (tolerance %.0e)", worst, NORM_TOL);
#endif
}

#ifdef GLIA_HAVE_CUDA
static void check_occupancy(const CudaOccupancy *o, const char *name, int threads, size_t smem) {
    cr_expect_str_eq(o->name, name);
    cr_expect_eq(o->threads, threads, "%s: %d threads", name, o->threads);
    cr_expect_eq(o->smem, smem, "%s: %zu B of dynamic shared memory, want %zu", name, o->smem, smem);
    cr_expect_geq(o->blocks_per_sm, 1, "%s: no block fits on an SM", name);
    const double warps = (double)o->blocks_per_sm * ((threads + 31) / 32);
    cr_expect(fabs(o->warp_fraction - warps / 64.0) < 1e-12 && o->warp_fraction <= 1.0,
              "%s: warp fraction %g for %d blocks", name, o->warp_fraction, o->blocks_per_sm);
#ifdef GLIA_CUDA_EMU
    int want = 2048 / ((threads + 31) / 32 * 32);
    if ((int)(228 * 1024 / (smem + 1024)) < want) want = (int)(228 * 1024 / (smem + 1024));
    if (want > 32) want = 32;
    cr_expect_eq(o->blocks_per_sm, want, "%s: %d blocks per SM, the limits allow %d", name, o->blocks_per_sm,
                 want);
    cr_expect_eq(o->regs, 0, "%s: the emulator knows no registers", name);
#else
    cr_expect(o->regs >= 1 && o->regs <= 255, "%s: %d registers", name, o->regs);
#endif
}
#endif

Test(cuda_ops, occupancy) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    for (int D = 8; D <= 128; D *= 2) {
        CudaOccupancy o[3];
        amsu_occupancy_cuda(o, D);
        check_occupancy(&o[0], "amsu forward", D, 0);
        check_occupancy(&o[1], "amsu backward", D, 4 * ((size_t)D * (D + 1) + 32 * D + D));
        check_occupancy(&o[2], "lif forward", 128, 0);
        cr_log_info("D %d: amsu forward %d blocks/SM, backward %d (%d regs)", D, o[0].blocks_per_sm,
                    o[1].blocks_per_sm, o[1].regs);
    }
    CudaOccupancy r;
    rmsnorm_occupancy_cuda(&r, 768);
    check_occupancy(&r, "rmsnorm forward", 256, 0);
#endif
}
