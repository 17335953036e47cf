// test_amsu_chunk.c: the chunked astrocyte (kernels/cpu/astro_chunk.c)
// mirrored against the per-timestep scan (kernels/cpu/amsu.c), which is
// itself checked against PyTorch (test_parity.c) and finite differences
// (test_gradcheck.c, which also checks the chunked backward directly).
//
// Cases: every decay from λ = 1e-3 to 1 − 2⁻²⁰ (all heads' channels set to
// one value; the CPU computes λ^d by repeated products, so small λ only
// underflows), T below, at and across the chunk length (1, 7, 32, 33, 100,
// the last chunk partial), head sizes 8 and 64, one and two heads, and
// streaming (the state carried from one call into the next, as generation
// does). Inputs k, v, q ~ N(0, 1), seeded.
//
// Measures (normwise relative error, rel_err in testutil.h): forward o,
// the checkpoints Hckpt and the state out, backward dq, dk, dv and da_lambda,
// each ≤ 1e-5 (the chunked sums run in another order; measured worst: o
// 3.3e-7, dq, dk, dv 4.8e-7, da_lambda 2.8e-6 — and 8e-8 at λ = 1e-3, where
// keeping the zero-weight diagonal terms in dλ's position-weighted sums made
// it 8.6e-5). Outputs are filled with NaN first; da_lambda starts from random
// values (it is added into).
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"
#include "cpu/cpu.h"
#include "testutil.h"

#define FWD_TOL 1e-5
#define BWD_TOL 1e-5

typedef struct {
    int B, T, C, Nh;
    double lambda;  // 0: a_lambda ~ N(2, 1) per channel (trained-like values); < 0: mixed (below)
} Case;

static float *nans(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static void check(Case cs, uint64_t seed) {
    const int B = cs.B, T = cs.T, C = cs.C, Nh = cs.Nh, D = C / Nh;
    const size_t n = (size_t)B * T * C, DD = (size_t)D * D, nck = (size_t)B * Nh * glia_nchunks(T) * DD;
    TestRng r;
    rng_seed(&r, seed);
    float *k = malloc(n * 4), *v = malloc(n * 4), *q = malloc(n * 4), *dout = malloc(n * 4), *al = malloc(C * 4);
    fill_normal(k, n, 1.0f, &r);
    fill_normal(v, n, 1.0f, &r);
    fill_normal(q, n, 1.0f, &r);
    fill_normal(dout, n, 1.0f, &r);
    fill_normal(al, C, 1.0f, &r);
    for (int c = 0; c < C; c++) al[c] = cs.lambda > 0 ? (float)log(cs.lambda / (1.0 - cs.lambda)) : al[c] + 2.0f;
    if (cs.lambda < 0)  // every head mixes decays from 1e-3 to 1 − 2⁻²⁰, interleaved channel by channel
        for (int c = 0; c < C; c++) {
            const double lo = log(1e-3 / (1 - 1e-3)), hi = log(1048575.0), f = fmod(c * 0.6180339887, 1.0);
            al[c] = (float)(lo + f * (hi - lo));
        }
    float *o_s = nans(n), *o_c = nans(n), *h_s = nans(nck), *h_c = nans(nck);
    astro_forward(o_s, h_s, k, v, q, al, NULL, B, T, C, Nh, C);
    astro_forward_chunk(o_c, h_c, k, v, q, al, NULL, B, T, C, Nh, C);
    double eo = rel_err(o_c, o_s, n), eh = rel_err(h_c, h_s, nck);
    cr_expect(eo <= FWD_TOL, "λ %g T %d D %d: o rel err %.2e", cs.lambda, T, D, eo);
    cr_expect(eh <= FWD_TOL, "λ %g T %d D %d: Hckpt rel err %.2e", cs.lambda, T, D, eh);

    float *dq[2], *dk[2], *dv[2], *dl[2];
    for (int m = 0; m < 2; m++) {
        dq[m] = nans(n), dk[m] = nans(n), dv[m] = nans(n), dl[m] = malloc(C * 4);
        TestRng r2;
        rng_seed(&r2, seed + 99);
        fill_normal(dl[m], C, 1.0f, &r2);
        (m ? astro_backward_chunk : astro_backward)(dk[m], dv[m], dq[m], dl[m], dout, k, v, q, al, h_s, B, T, C, Nh, C);
    }
    double e[4] = {rel_err(dq[1], dq[0], n), rel_err(dk[1], dk[0], n), rel_err(dv[1], dv[0], n),
                   rel_err(dl[1], dl[0], C)};
    const char *names[4] = {"dq", "dk", "dv", "da_lambda"};
    for (int i = 0; i < 4; i++)
        cr_expect(e[i] <= BWD_TOL, "λ %g T %d D %d: %s rel err %.2e", cs.lambda, T, D, names[i], e[i]);
    cr_log_info("λ %g B %d T %d D %d Nh %d: o %.1e H %.1e dq %.1e dk %.1e dv %.1e dλ %.1e", cs.lambda, B, T, D, Nh,
                eo, eh, e[0], e[1], e[2], e[3]);
    for (int m = 0; m < 2; m++) free(dq[m]), free(dk[m]), free(dv[m]), free(dl[m]);
    free(k), free(v), free(q), free(dout), free(al), free(o_s), free(o_c), free(h_s), free(h_c);
}

// 0.3 and 0.4 sit on either side of λ^31 = 2⁻⁴⁸, where the chunk stops
// splitting a channel's decay across Q̂ and K̂ and forms it pairwise; the
// mixed case has both kinds of channel in every head.
Test(amsu_chunk, every_decay) {
    const double lambdas[] = {1e-3, 0.1, 0.3, 0.4, 0.5, 0.9, 0.999, 1.0 - 1.0 / 1048576.0, -1.0};
    for (size_t i = 0; i < sizeof lambdas / sizeof lambdas[0]; i++) check((Case){2, 100, 16, 2, lambdas[i]}, 1 + i);
}

Test(amsu_chunk, lengths_and_heads) {
    const int Ts[] = {1, 7, 32, 33, 100};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        check((Case){1, Ts[i], 8, 1, 0.0}, 10 + i);
        check((Case){2, Ts[i], 128, 2, 0.0}, 20 + i);
    }
}

// Generation carries H between calls: 20 steps, then 45 more, against one call of 65.
Test(amsu_chunk, streaming_state) {
    const int B = 2, C = 32, Nh = 2, D = C / Nh, T1 = 20, T2 = 45, T = T1 + T2;
    const size_t n = (size_t)B * T * C, hs = (size_t)B * Nh * D * D;
    TestRng r;
    rng_seed(&r, 77);
    float *k = malloc(n * 4), *v = malloc(n * 4), *q = malloc(n * 4), *al = malloc(C * 4);
    fill_normal(k, n, 1.0f, &r);
    fill_normal(v, n, 1.0f, &r);
    fill_normal(q, n, 1.0f, &r);
    fill_normal(al, C, 1.0f, &r);
    float *o_full = nans(n), *H_full = calloc(hs, 4), *H = calloc(hs, 4), *o = nans(n);
    astro_forward(o_full, NULL, k, v, q, al, H_full, B, T, C, Nh, C);
    // the two pieces, each batch-major (B, Tn, C)
    for (int piece = 0; piece < 2; piece++) {
        int t0 = piece ? T1 : 0, Tn = piece ? T2 : T1;
        size_t m = (size_t)B * Tn * C;
        float *kp = malloc(m * 4), *vp = malloc(m * 4), *qp = malloc(m * 4), *op = nans(m);
        for (int b = 0; b < B; b++) {
            size_t src = ((size_t)b * T + t0) * C, dst = (size_t)b * Tn * C;
            memcpy(kp + dst, k + src, (size_t)Tn * C * 4);
            memcpy(vp + dst, v + src, (size_t)Tn * C * 4);
            memcpy(qp + dst, q + src, (size_t)Tn * C * 4);
        }
        astro_forward_chunk(op, NULL, kp, vp, qp, al, H, B, Tn, C, Nh, C);
        for (int b = 0; b < B; b++) memcpy(o + ((size_t)b * T + t0) * C, op + (size_t)b * Tn * C, (size_t)Tn * C * 4);
        free(kp), free(vp), free(qp), free(op);
    }
    double eo = rel_err(o, o_full, n), eh = rel_err(H, H_full, hs);
    cr_expect(eo <= FWD_TOL, "streamed o rel err %.2e", eo);
    cr_expect(eh <= FWD_TOL, "state after 65 steps rel err %.2e", eh);
    free(k), free(v), free(q), free(al), free(o_full), free(H_full), free(H), free(o);
}

// The switch reaches the layer: amsu_forward in chunk mode equals scan mode
// (the layer's spikes read o; at these inputs none sits within rounding of θ).
Test(amsu_chunk, layer_switch) {
    const AmsuShape sh = {2, 40, 32, 2, 1};
    const int C = sh.C;
    const size_t n = (size_t)sh.B * sh.T * C, cc = (size_t)C * C;
    TestRng r;
    rng_seed(&r, 5);
    float *z = malloc(n * 4), *W = malloc(5 * cc * 4), *al = malloc(C * 4), *ab = calloc(C, 4);
    fill_normal(z, n, 1.0f, &r);
    fill_normal(W, 5 * cc, 1.0f / sqrtf((float)C), &r);
    fill_normal(al, C, 1.0f, &r);
    AmsuWeights w = {W, W + 4 * cc, al, ab, NULL};
    float *y[2], *mem[2];
    for (int m = 0; m < 2; m++) {
        cpu_set_amsu(m ? AMSU_CHUNK : AMSU_SCAN);
        mem[m] = nans(amsu_acts_size(sh));
        y[m] = nans(n);
        AmsuActs a;
        amsu_acts_bind(&a, sh, mem[m]);
        amsu_forward(y[m], &a, z, &w, sh, NULL, NULL, NULL);
    }
    cpu_set_amsu(AMSU_SCAN);
    AmsuActs a0, a1;
    amsu_acts_bind(&a0, sh, mem[0]);
    amsu_acts_bind(&a1, sh, mem[1]);
    cr_expect(rel_err(a1.o, a0.o, n) <= FWD_TOL, "o");
    cr_expect_eq(spike_mismatches(a1.s, a0.s, n), 0, "spikes");
    cr_expect(rel_err(y[1], y[0], n) <= FWD_TOL, "y");
    for (int m = 0; m < 2; m++) free(y[m]), free(mem[m]);
    free(z), free(W), free(al), free(ab);
}
