// test_cuda_amsu.c: parity of the fused CUDA AM-SU forward
// (amsu_recurrence_forward_cuda, kernels/cuda/amsu.cu) with the CPU
// reference (astro_forward + neuron_forward, kernels/cpu/).
//
// Shapes cover every supported head size D (8..128) with Nh of 1 to 3 heads,
// odd T spanning several GLIA_CHUNK = 32 checkpoint chunks, one and several
// sequences, the astrocyte on and off, and checkpoints on and off. Inputs:
// I, k, v, q ~ N(0, 1), a_lambda ~ N(2, 1), a_beta ~ N(0, 0.5), seeded.
//
// Measures and tolerances:
// - o, u, Hckpt: normwise relative error (rel_err, testutil.h) <= 1e-5. The
//   GPU contracts a·b + c into FMAs and has its own expf, so it agrees with
//   the CPU to about an ulp per operation, not bitwise. With the astrocyte
//   off, o must be exactly 0.
// - s: equal, except where the CPU's potential |m| = |u + o − 1| < 1e-4,
//   where rounding may legitimately flip a spike. A flip at step t changes
//   that neuron's reset, so its u and s from t + 1 on are excluded from the
//   comparison (their trajectories have rightly diverged); any other spike
//   mismatch, or a spike value other than 0 or 1, fails.
// The host wrapper fills every device output with NaN before the run, so an
// entry the kernel forgot to write fails these checks.
//
// Built without CUDA, every test skips; with CUDA but no device, the parity
// tests skip and the argument-validation test (which touches no device) runs.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif
#include "testutil.h"

#define PARITY_TOL 1e-5
#define SPIKE_MARGIN 1e-4f

static void require_cuda_build(void) {
#ifndef GLIA_HAVE_CUDA
    cr_skip_test("glia built without CUDA");
#endif
}

static void require_gpu(void) {
    require_cuda_build();
#ifdef GLIA_HAVE_CUDA
    if (cuda_device_count() == 0) cr_skip_test("no CUDA device found");
#endif
}

#ifdef GLIA_HAVE_CUDA

typedef struct {
    int B, T, Nh, D;
    int astro;  // 0: o ≡ 0 (FFN / ablation)
    int ckpt;   // 1: ask for Hckpt (astro only)
} Case;

static float *alloc_floats(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(p);
    return p;
}

// Runs one shape on the CPU reference and on the GPU, and asserts parity.
static void check_case(Case cs, uint64_t seed) {
    const int B = cs.B, T = cs.T, Nh = cs.Nh, D = cs.D, C = Nh * D;
    const size_t n = (size_t)B * T * C;
    const int ckpt = cs.astro && cs.ckpt;
    const size_t nH = ckpt ? (size_t)B * Nh * glia_nchunks(T) * D * D : 0;
    char name[96];
    snprintf(name, sizeof name, "B=%d T=%d Nh=%d D=%d astro=%d ckpt=%d", B, T, Nh, D, cs.astro,
             cs.ckpt);

    TestRng rng;
    rng_seed(&rng, seed);
    float *I = alloc_floats(n), *k = alloc_floats(n), *v = alloc_floats(n), *q = alloc_floats(n);
    float *a_lambda = alloc_floats(C), *a_beta = alloc_floats(C);
    fill_normal(I, n, 1.0f, &rng);
    fill_normal(k, n, 1.0f, &rng);
    fill_normal(v, n, 1.0f, &rng);
    fill_normal(q, n, 1.0f, &rng);
    fill_normal(a_lambda, C, 1.0f, &rng);
    for (int c = 0; c < C; c++) a_lambda[c] += 2.0f;
    fill_normal(a_beta, C, 0.5f, &rng);

    // CPU reference
    float *o_ref = alloc_floats(n), *u_ref = alloc_floats(n), *s_ref = alloc_floats(n);
    float *H_ref = alloc_floats(nH);
    if (cs.astro)
        astro_forward(o_ref, ckpt ? H_ref : NULL, k, v, q, a_lambda, NULL, B, T, C, Nh);
    else
        memset(o_ref, 0, n * sizeof(float));
    neuron_forward(u_ref, s_ref, I, cs.astro ? o_ref : NULL, a_beta, NULL, NULL, B, T, C, NULL);

    // GPU; with the astrocyte off, k, v, q, a_lambda must not be needed
    float *o = alloc_floats(n), *u = alloc_floats(n), *s = alloc_floats(n);
    float *H = alloc_floats(nH);
    int rc = amsu_recurrence_forward_cuda_host(
        o, u, s, ckpt ? H : NULL, I, cs.astro ? k : NULL, cs.astro ? v : NULL,
        cs.astro ? q : NULL, cs.astro ? a_lambda : NULL, a_beta, B, T, C, Nh, cs.astro);
    cr_assert_eq(rc, 0, "%s: amsu_recurrence_forward_cuda_host returned %d", name, rc);

    // o
    if (cs.astro) {
        double err_o = rel_err(o, o_ref, n);
        cr_log_info("%s: o rel err %.2e", name, err_o);
        cr_assert(err_o <= PARITY_TOL, "%s: o rel err %.3e > %.0e", name, err_o, PARITY_TOL);
    } else {
        size_t nonzero = 0;
        for (size_t i = 0; i < n; i++) nonzero += !(o[i] == 0.0f);
        cr_assert_eq(nonzero, 0, "%s: %zu entries of o are not 0 with the astrocyte off", name,
                     nonzero);
    }

    // Hckpt
    if (ckpt) {
        double err_H = rel_err(H, H_ref, nH);
        cr_log_info("%s: Hckpt rel err %.2e", name, err_H);
        cr_assert(err_H <= PARITY_TOL, "%s: Hckpt rel err %.3e > %.0e", name, err_H, PARITY_TOL);
    }

    // s and u, neuron by neuron along time, stopping at a legitimate flip
    size_t hard = 0, soft = 0, fired = 0, compared = 0;
    float *u_cmp = alloc_floats(n);  // the GPU's u, with diverged entries replaced by the CPU's
    memcpy(u_cmp, u, n * sizeof(float));
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < C; c++) {
            int diverged = 0;
            for (int t = 0; t < T; t++) {
                size_t idx = ((size_t)b * T + t) * C + c;
                if (diverged) {
                    u_cmp[idx] = u_ref[idx];
                    continue;
                }
                compared++;
                fired += s_ref[idx] != 0.0f;
                if (s[idx] == s_ref[idx]) continue;
                float m = u_ref[idx] + o_ref[idx] - 1.0f;
                int valid = s[idx] == 0.0f || s[idx] == 1.0f;
                if (valid && fabsf(m) < SPIKE_MARGIN) {
                    soft++;
                    diverged = 1;  // u_t still compares; from t + 1 on it may differ
                } else {
                    if (hard < 5)
                        cr_log_error("%s: spike mismatch at b=%d t=%d c=%d: gpu %g cpu %g (m %g)",
                                     name, b, t, c, s[idx], s_ref[idx], m);
                    hard++;
                }
            }
        }
    }
    double err_u = rel_err(u_cmp, u_ref, n);
    cr_log_info("%s: u rel err %.2e, spikes %zu/%zu fired, %zu near-threshold flips", name,
                err_u, fired, compared, soft);
    cr_assert_eq(hard, 0, "%s: %zu spike mismatches away from the threshold", name, hard);
    cr_assert(err_u <= PARITY_TOL, "%s: u rel err %.3e > %.0e", name, err_u, PARITY_TOL);
    if (n >= 256)  // a test in which no neuron, or every neuron, fires checks little
        cr_assert(fired > 0 && fired < compared, "%s: degenerate spikes (%zu of %zu fired)",
                  name, fired, compared);

    float *bufs[] = {I, k, v, q, a_lambda, a_beta, o_ref, u_ref, s_ref, H_ref, o, u, s, H, u_cmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

static const int TS[] = {1, 7, 32, 33, 70};  // 70 spans three chunks of 32

// Every T for one head size: a single sequence and head, then several of each.
static void check_head_size(int D, int Nh_many) {
    for (size_t i = 0; i < sizeof TS / sizeof TS[0]; i++) {
        check_case((Case){.B = 1, .T = TS[i], .Nh = 1, .D = D, .astro = 1, .ckpt = 1},
                   1000 + 10 * D + i);
        check_case((Case){.B = 3, .T = TS[i], .Nh = Nh_many, .D = D, .astro = 1, .ckpt = 1},
                   2000 + 10 * D + i);
    }
}

#endif  // GLIA_HAVE_CUDA

Test(cuda_amsu, head_size_8) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(8, 3);
#endif
}

Test(cuda_amsu, head_size_16) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(16, 2);
#endif
}

Test(cuda_amsu, head_size_32) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(32, 3);
#endif
}

Test(cuda_amsu, head_size_64) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(64, 2);
#endif
}

Test(cuda_amsu, head_size_128) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(128, 3);
#endif
}

// Checkpoints not requested: the kernel must still produce o, u, s.
Test(cuda_amsu, without_checkpoints) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_case((Case){.B = 2, .T = 70, .Nh = 3, .D = 32, .astro = 1, .ckpt = 0}, 31);
    check_case((Case){.B = 1, .T = 33, .Nh = 1, .D = 128, .astro = 1, .ckpt = 0}, 32);
#endif
}

// Astrocyte off (FFN neuron, ablation): o ≡ 0, the LIF neuron alone. C need
// not be a multiple of the kernel's block of channels (Nh = 1, D = C here).
Test(cuda_amsu, astro_off) {
    require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int Cs[] = {8, 200, 384};
    for (size_t i = 0; i < sizeof Cs / sizeof Cs[0]; i++)
        for (size_t j = 0; j < sizeof TS / sizeof TS[0]; j++) {
            check_case((Case){.B = 1, .T = TS[j], .Nh = 1, .D = Cs[i], .astro = 0}, 40 + 10 * i + j);
            check_case((Case){.B = 4, .T = TS[j], .Nh = 1, .D = Cs[i], .astro = 0}, 90 + 10 * i + j);
        }
#endif
}

// Shapes the fused kernel cannot run are refused before any device work, so
// this runs wherever CUDA is built, GPU or not.
Test(cuda_amsu, rejects_invalid_shapes) {
    require_cuda_build();
#ifdef GLIA_HAVE_CUDA
    float x[96] = {0}, out_o[96], out_u[96], out_s[96];
    // D = 24 (C 48, Nh 2): not a supported head size
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    1, 2, 48, 2, 1),
                  0);
    // C = 48 not divisible by Nh = 5
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    1, 2, 48, 5, 1),
                  0);
    // empty sequence
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    1, 0, 48, 3, 1),
                  0);
    cr_assert(amsu_head_size_supported(64) && amsu_head_size_supported(8));
    cr_assert(!amsu_head_size_supported(24) && !amsu_head_size_supported(256));
#endif
}
