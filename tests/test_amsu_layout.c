// test_amsu_layout.c: the AM-SU layer's fused input projections (types.h:
// P = z W_inᵀ with rows [I | k | v | q], one GEMM forward and two backward)
// against four separate products computed by naive loops in double.
//
// Forward: I, k, v, q read through AmsuActs' views at row stride 4C (C with
// the astrocyte off) equal z W_Xᵀ, k times 1/sqrt(D). Backward: from the
// recurrence's own gradients dI, dk, dv, dq (neuron_backward and
// astro_backward run again on contiguous copies, row stride C, of the layer's
// saved activations), dz = Σ_X dX W_X (dk times 1/sqrt(D)) and dW_X = dXᵀ z
// must equal what amsu_backward wrote into dz and dW_in; with the astrocyte
// off, W_K, W_V, W_Q's gradients stay untouched. Normwise relative error
// (testutil.h) ≤ 1e-5: fp32 GEMMs against double sums (measured worst 4e-7).
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"  // AMSU_SCAN, AMSU_CHUNK
#include "cpu/cpu.h"
#include "testutil.h"

#define TOL 1e-5

static float *nans(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

// out (M, N) = s · a (M, K) b (N, K)ᵀ, in double, rounded once.
static float *naive_abt(const float *a, const float *b, int M, int K, int N, double s) {
    float *out = malloc((size_t)M * N * sizeof(float));
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) acc += (double)a[(size_t)m * K + k] * b[(size_t)n * K + k];
            out[(size_t)m * N + n] = (float)(s * acc);
        }
    return out;
}

// (M, C) contiguous copy of M rows of C floats at row stride ld.
static float *gather(const float *x, int M, int C, int ld) {
    float *out = malloc((size_t)M * C * sizeof(float));
    for (int m = 0; m < M; m++) memcpy(out + (size_t)m * C, x + (size_t)m * ld, C * sizeof(float));
    return out;
}

static void check_layout(AmsuShape sh, int mode, uint64_t seed) {
    const int B = sh.B, T = sh.T, C = sh.C, M = B * T, nx = sh.astro ? 4 : 1, ld = nx * C;
    const size_t n = (size_t)M * C, cc = (size_t)C * C;
    const double kscale = 1.0 / sqrt((double)(C / sh.Nh));
    cpu_set_amsu(mode);
    TestRng r;
    rng_seed(&r, seed);
    float *z = malloc(n * 4), *dy = malloc(n * 4), *W = malloc(5 * cc * 4), *al = malloc(C * 4), *ab = malloc(C * 4);
    fill_normal(z, n, 1.0f, &r);
    fill_normal(dy, n, 1.0f, &r);
    fill_normal(W, 5 * cc, 1.0f / sqrtf((float)C), &r);  // W_I, W_K, W_V, W_Q, W_O
    fill_normal(al, C, 1.0f, &r);
    fill_normal(ab, C, 0.5f, &r);
    for (int c = 0; c < C; c++) al[c] += 2.0f;
    AmsuWeights w = {W, W + 4 * cc, sh.astro ? al : NULL, ab, NULL};
    float *mem = nans(amsu_acts_size(sh)), *y = nans(n);
    AmsuActs a;
    amsu_acts_bind(&a, sh, mem);
    amsu_forward(y, &a, z, &w, sh, NULL, 0, NULL);

    // forward: each projection through its view, against its own product
    const char *names[4] = {"I", "k", "v", "q"};
    float *views[4] = {a.I, a.k, a.v, a.q}, *got[4], *dX[4];
    cr_assert_eq(a.P, a.I, "P starts with I");
    for (int x = 0; x < nx; x++) {
        got[x] = gather(views[x], M, C, ld);
        float *want = naive_abt(z, W + x * cc, M, C, C, x == 1 ? kscale : 1.0);
        double e = rel_err(got[x], want, n);
        cr_log_info("astro %d mode %d: %s rel err %.1e", sh.astro, mode, names[x], e);
        cr_expect(e <= TOL, "astro %d mode %d: %s = z W_%sᵀ: rel err %.2e", sh.astro, mode, names[x], names[x], e);
        free(want);
    }

    // backward through the layer
    float *G = calloc(5 * cc + 2 * (size_t)C, sizeof(float)), *dz = nans(n);
    float *scratch = nans(amsu_scratch_size(sh));
    AmsuGrads g = {G, G + 4 * cc, G + 5 * cc, G + 5 * cc + C};
    amsu_backward(dz, &g, scratch, dy, z, &a, &w, sh, NULL);

    // the reference: the recurrence's gradients on contiguous copies, then the four products
    float *wot = malloc(cc * 4);  // W_Oᵀ: y = s W_Oᵀ, so ds = dy W_O = dy (W_Oᵀ)ᵀ
    for (int i = 0; i < C; i++)
        for (int j = 0; j < C; j++) wot[(size_t)j * C + i] = W[4 * cc + (size_t)i * C + j];
    float *ds = naive_abt(dy, wot, M, C, C, 1.0);
    free(wot);
    float *dm = malloc(n * 4), *tmp = calloc(2 * (size_t)C, 4);
    for (int x = 0; x < nx; x++) dX[x] = malloc(n * 4);
    neuron_backward(dX[0], dm, tmp, ds, a.u, sh.astro ? a.o : NULL, a.s, ab, B, T, C, C, NULL);
    if (sh.astro) {
        (mode == AMSU_CHUNK ? astro_backward_chunk : astro_backward)(dX[1], dX[2], dX[3], tmp + C, dm, got[1], got[2],
                                                                     got[3], al, a.Hckpt, B, T, C, sh.Nh, C);
        for (size_t i = 0; i < n; i++) dX[1][i] *= (float)kscale;
    }
    double *dzr = calloc(n, sizeof(double));
    for (int x = 0; x < nx; x++) {
        for (int m = 0; m < M; m++)
            for (int o = 0; o < C; o++) {
                const double d = dX[x][(size_t)m * C + o];
                for (int k = 0; k < C; k++) dzr[(size_t)m * C + k] += d * W[x * cc + (size_t)o * C + k];
            }
        float *dXt = malloc(n * 4), *zt = malloc(n * 4);  // dW_X = dXᵀ z as (C, M) · (C, M)ᵀ
        for (int m = 0; m < M; m++)
            for (int c = 0; c < C; c++) {
                dXt[(size_t)c * M + m] = dX[x][(size_t)m * C + c];
                zt[(size_t)c * M + m] = z[(size_t)m * C + c];
            }
        float *dw = naive_abt(dXt, zt, C, M, C, 1.0);
        double e = rel_err(G + x * cc, dw, cc);
        cr_expect(e <= TOL, "astro %d mode %d: dW_%s rel err %.2e", sh.astro, mode, names[x], e);
        free(dXt), free(zt), free(dw);
    }
    float *dzf = malloc(n * 4);
    for (size_t i = 0; i < n; i++) dzf[i] = (float)dzr[i];
    double e = rel_err(dz, dzf, n);
    cr_log_info("astro %d mode %d: dz rel err %.1e", sh.astro, mode, e);
    cr_expect(e <= TOL, "astro %d mode %d: dz rel err %.2e", sh.astro, mode, e);
    for (size_t i = cc; i < 4 * cc && !sh.astro; i++)
        cr_assert_eq(G[i], 0.0f, "astro off: the W_K, W_V, W_Q block of dW_in must stay untouched");

    for (int x = 0; x < nx; x++) free(got[x]), free(dX[x]);
    free(z), free(dy), free(W), free(al), free(ab), free(mem), free(y), free(G), free(dz), free(scratch);
    free(ds), free(dm), free(tmp), free(dzr), free(dzf);
    cpu_set_amsu(AMSU_CHUNK);  // the default again
}

Test(amsu_layout, scan) { check_layout((AmsuShape){2, 40, 32, 2, 1}, AMSU_SCAN, 1); }
Test(amsu_layout, chunk) { check_layout((AmsuShape){2, 40, 32, 2, 1}, AMSU_CHUNK, 2); }
Test(amsu_layout, astro_off) { check_layout((AmsuShape){2, 40, 32, 2, 0}, AMSU_CHUNK, 3); }
