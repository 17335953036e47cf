// test_cuda_amsu_chunk.c: the chunked CUDA AM-SU (kernels/cuda/amsu_chunk.cu)
// against two independent CPU oracles on the same inputs: the per-timestep
// scan (astro_forward, kernels/cpu/amsu.c, checked against PyTorch and finite
// differences) and the CPU's chunked form (astro_forward_chunk, astro_chunk.c),
// each followed by neuron_forward.
//
// Cases: every head size (8 .. 128), T below, at and across the chunk length
// (1, 31, 32, 33, 80: 80 is two whole chunks and a partial one), one and
// several sequences and heads, and decays from λ = 1e-3 to 1 − 2⁻²⁰ (the
// channels of a head spread over that range, or a_lambda ~ N(2, 1)). Inputs
// I, k, v, q ~ N(0, 1), seeded.
//
// Measures and tolerances (normwise relative error, rel_err in testutil.h):
// - o and Hckpt: ≤ 1e-5 against each oracle (the products run in 3xTF32 on
//   the tensor cores, about 21 of fp32's 24 bits, summed in another order);
// - s: equal, except where the oracle's potential |u + o − θ| < 1e-4, where
//   rounding may flip a spike (test_cuda_amsu.c's rule); a flip changes that
//   neuron's reset, so its u and s after it are not compared; u ≤ 1e-5.
// - backward (amsu_chunk_backward_cuda, from dout = ∂L/∂o ~ N(0, 1) and the
//   CPU scan's checkpoints): dq, dk, dv, da_lambda ≤ 1e-5 against
//   astro_backward and astro_backward_chunk; da_lambda starts from random
//   values (it is added into). The oracle for the gradients is this parity:
//   both CPU backwards have their own finite-difference checks
//   (test_gradcheck.c), which run on the CPU backend only (its smooth-spike
//   test mode). The neuron's part (dI, dβ) is neuron_backward_cuda's, checked
//   in the layer by test_backend_ops.c's chunk row. backward_deterministic
//   runs one backward twice: the same bits (no atomics, fixed orders).
// Device outputs start as NaN, so an entry the kernel forgets fails.
//
// Built without CUDA, or without a device, every test skips with its reason.
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif
#include "testutil.h"

#define TOL 1e-5
#define SPIKE_MARGIN 1e-4f

#ifdef GLIA_HAVE_CUDA

typedef struct {
    int B, T, Nh, D;
    int spread;  // 1: λ spread from 1e-3 to 1 − 2⁻²⁰ over each head's channels; 0: a_lambda ~ N(2, 1)
} Case;

static float *host_floats(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(p);
    return p;
}

static float *dev_floats(size_t n) {
    float *p = cuda_alloc((n ? n : 1) * sizeof(float));
    cr_assert_not_null(p, "%s", cuda_last_error_message());
    cuda_memset(p, 0xFF, n * sizeof(float), NULL);  // NaN until written
    return p;
}

static float *dev_copy_of(const float *x, size_t n) {
    float *p = dev_floats(n);
    cuda_upload(p, x, n * sizeof(float));
    return p;
}

static void download(float *host, const float *dev, size_t n) { cuda_download(host, dev, n * sizeof(float)); }

// The decays λ of a head of D channels, from 1e-3 to 1 − 2⁻²⁰, as logits.
static void spread_lambda(float *a_lambda, int Nh, int D) {
    static const double lam[] = {1e-3, 0.02, 0.3, 0.7, 0.95, 0.995, 0.9999, 1.0 - 0x1p-20};
    const int nl = sizeof lam / sizeof lam[0];
    for (int h = 0; h < Nh; h++)
        for (int i = 0; i < D; i++) {
            const double l = lam[(i + h) % nl];
            a_lambda[h * D + i] = (float)log(l / (1.0 - l));
        }
}

typedef struct {
    float *I, *k, *v, *q, *a_lambda, *a_beta;  // (B, T, C) and (C)
} Inputs;

static Inputs make_inputs(Case cs, uint64_t seed) {
    const int C = cs.Nh * cs.D;
    const size_t n = (size_t)cs.B * cs.T * C;
    TestRng r;
    rng_seed(&r, seed);
    Inputs in = {host_floats(n), host_floats(n), host_floats(n), host_floats(n), host_floats(C), host_floats(C)};
    fill_normal(in.I, n, 1.0f, &r);
    fill_normal(in.k, n, 1.0f, &r);
    fill_normal(in.v, n, 1.0f, &r);
    fill_normal(in.q, n, 1.0f, &r);
    fill_normal(in.a_lambda, C, 1.0f, &r);
    for (int c = 0; c < C; c++) in.a_lambda[c] += 2.0f;
    if (cs.spread) spread_lambda(in.a_lambda, cs.Nh, cs.D);
    fill_normal(in.a_beta, C, 0.5f, &r);
    return in;
}

static void free_inputs(Inputs *in) {
    free(in->I), free(in->k), free(in->v), free(in->q), free(in->a_lambda), free(in->a_beta);
}

// o, u, s, Hckpt of one forward.
typedef struct {
    float *o, *u, *s, *H;
} Fwd;

static Fwd fwd_alloc(size_t n, size_t nH) { return (Fwd){host_floats(n), host_floats(n), host_floats(n), host_floats(nH)}; }
static void fwd_free(Fwd *f) { free(f->o), free(f->u), free(f->s), free(f->H); }

// The CPU: the scan's or the chunked astrocyte, then the neuron.
static Fwd fwd_cpu(Case cs, const Inputs *in, int chunked) {
    const int C = cs.Nh * cs.D;
    const size_t n = (size_t)cs.B * cs.T * C, nH = (size_t)cs.B * cs.Nh * glia_nchunks(cs.T) * cs.D * cs.D;
    Fwd f = fwd_alloc(n, nH);
    (chunked ? astro_forward_chunk : astro_forward)(f.o, f.H, in->k, in->v, in->q, in->a_lambda, NULL, cs.B, cs.T, C,
                                                    cs.Nh, C);
    neuron_forward(f.u, f.s, in->I, f.o, in->a_beta, NULL, NULL, cs.B, cs.T, C, C, NULL);
    return f;
}

static Fwd fwd_gpu(Case cs, const Inputs *in) {
    const int C = cs.Nh * cs.D;
    const size_t n = (size_t)cs.B * cs.T * C, nH = (size_t)cs.B * cs.Nh * glia_nchunks(cs.T) * cs.D * cs.D;
    float *dI = dev_copy_of(in->I, n), *dk = dev_copy_of(in->k, n), *dv = dev_copy_of(in->v, n);
    float *dq = dev_copy_of(in->q, n), *dal = dev_copy_of(in->a_lambda, C), *dab = dev_copy_of(in->a_beta, C);
    float *o = dev_floats(n), *u = dev_floats(n), *s = dev_floats(n), *H = dev_floats(nH);
    amsu_chunk_forward_cuda(o, u, s, 4, H, dI, dk, dv, dq, dal, dab, cs.B, cs.T, C, cs.Nh, C, NULL);
    cuda_synchronize();
    Fwd f = fwd_alloc(n, nH);
    download(f.o, o, n), download(f.u, u, n), download(f.s, s, n), download(f.H, H, nH);
    float *bufs[] = {dI, dk, dv, dq, dal, dab, o, u, s, H};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_free(bufs[i]);
    return f;
}

// Asserts got ≈ ref per the top comment; `what` names the oracle.
static void compare_fwd(const char *name, const char *what, const Fwd *got, const Fwd *ref, Case cs) {
    const int C = cs.Nh * cs.D;
    const size_t n = (size_t)cs.B * cs.T * C, nH = (size_t)cs.B * cs.Nh * glia_nchunks(cs.T) * cs.D * cs.D;
    const double eo = rel_err(got->o, ref->o, n), eH = rel_err(got->H, ref->H, nH);
    cr_assert(eo <= TOL, "%s vs %s: o rel err %.3e > %.0e", name, what, eo, TOL);
    cr_assert(eH <= TOL, "%s vs %s: Hckpt rel err %.3e > %.0e", name, what, eH, TOL);
    size_t hard = 0, soft = 0, fired = 0, compared = 0;
    float *u_cmp = host_floats(n);
    memcpy(u_cmp, got->u, n * sizeof(float));
    for (int b = 0; b < cs.B; b++)
        for (int c = 0; c < C; c++) {
            int diverged = 0;
            for (int t = 0; t < cs.T; t++) {
                const size_t x = ((size_t)b * cs.T + t) * C + c;
                if (diverged) {
                    u_cmp[x] = ref->u[x];
                    continue;
                }
                compared++;
                fired += ref->s[x] != 0.0f;
                if (got->s[x] == ref->s[x]) continue;
                const float m = ref->u[x] + ref->o[x] - 1.0f;
                if ((got->s[x] == 0.0f || got->s[x] == 1.0f) && fabsf(m) < SPIKE_MARGIN) {
                    soft++;
                    diverged = 1;
                } else {
                    if (hard < 5)
                        cr_log_error("%s vs %s: spike at b=%d t=%d c=%d: gpu %g cpu %g (m %g)", name, what, b, t,
                                     c, got->s[x], ref->s[x], m);
                    hard++;
                }
            }
        }
    const double eu = rel_err(u_cmp, ref->u, n);
    free(u_cmp);
    cr_log_info("%s vs %s: o %.2e Hckpt %.2e u %.2e, %zu/%zu fired, %zu near-θ flips", name, what, eo, eH, eu,
                fired, compared, soft);
    cr_assert_eq(hard, 0, "%s vs %s: %zu spike mismatches away from θ", name, what, hard);
    cr_assert(eu <= TOL, "%s vs %s: u rel err %.3e > %.0e", name, what, eu, TOL);
    if (n >= 256) cr_assert(fired > 0 && fired < compared, "%s: degenerate spikes", name);
}

static void check_fwd(Case cs, uint64_t seed) {
    char name[96];
    snprintf(name, sizeof name, "B=%d T=%d Nh=%d D=%d%s", cs.B, cs.T, cs.Nh, cs.D, cs.spread ? " λ spread" : "");
    Inputs in = make_inputs(cs, seed);
    Fwd scan = fwd_cpu(cs, &in, 0), chunk = fwd_cpu(cs, &in, 1), got = fwd_gpu(cs, &in);
    compare_fwd(name, "CPU scan", &got, &scan, cs);
    compare_fwd(name, "CPU chunk", &got, &chunk, cs);
    fwd_free(&scan), fwd_free(&chunk), fwd_free(&got);
    free_inputs(&in);
}

static const int TS[] = {1, 31, 32, 33, 80};

// Every T at one sequence and head with λ spread; then several of each,
// across a chunk boundary and over three chunks.
static void check_fwd_head_size(int D, int Nh) {
    for (size_t i = 0; i < sizeof TS / sizeof TS[0]; i++)
        check_fwd((Case){.B = 1, .T = TS[i], .Nh = 1, .D = D, .spread = 1}, 100 + 10 * D + i);
    check_fwd((Case){.B = 2, .T = 33, .Nh = Nh, .D = D, .spread = 0}, 200 + 10 * D);
    check_fwd((Case){.B = 2, .T = 80, .Nh = Nh, .D = D, .spread = 0}, 201 + 10 * D);
}

// ---- backward -------------------------------------------------------------------
// The astrocyte's backward from dout = ∂L/∂o ~ N(0, 1) and the CPU scan's
// checkpoints, against astro_backward (scan) and astro_backward_chunk (CPU
// chunk): dq, dk, dv and da_lambda, which starts from random values (it is
// added into).

typedef struct {
    float *dk, *dv, *dq, *dal;  // (B, T, C) and (C)
} Bwd;

static void bwd_free(Bwd *r) { free(r->dk), free(r->dv), free(r->dq), free(r->dal); }

// The chunked backward on device copies; outputs start as NaN.
static Bwd bwd_gpu(Case cs, const Inputs *in, const float *dout, const float *dal0, const float *H) {
    const int B = cs.B, T = cs.T, Nh = cs.Nh, C = Nh * cs.D;
    const size_t n = (size_t)B * T * C, nH = (size_t)B * Nh * glia_nchunks(T) * cs.D * cs.D;
    float *d_do = dev_copy_of(dout, n), *d_k = dev_copy_of(in->k, n), *d_v = dev_copy_of(in->v, n);
    float *d_q = dev_copy_of(in->q, n), *d_al = dev_copy_of(in->a_lambda, C), *d_H = dev_copy_of(H, nH);
    float *d_dal = dev_copy_of(dal0, C), *d_dk = dev_floats(n), *d_dv = dev_floats(n), *d_dq = dev_floats(n);
    float *d_scr = dev_floats((size_t)B * C);
    amsu_chunk_backward_cuda(d_dk, d_dv, d_dq, d_dal, d_scr, d_do, d_k, d_v, d_q, d_al, d_H, B, T, C, Nh, C, NULL);
    cuda_synchronize();
    Bwd got = {host_floats(n), host_floats(n), host_floats(n), host_floats(C)};
    download(got.dk, d_dk, n), download(got.dv, d_dv, n), download(got.dq, d_dq, n), download(got.dal, d_dal, C);
    float *bufs[] = {d_do, d_k, d_v, d_q, d_al, d_H, d_dal, d_dk, d_dv, d_dq, d_scr};
    for (size_t x = 0; x < sizeof bufs / sizeof bufs[0]; x++) cuda_free(bufs[x]);
    return got;
}

// twice: run the GPU backward a second time and require the same bits.
static void check_bwd(Case cs, uint64_t seed, int twice) {
    const int B = cs.B, T = cs.T, Nh = cs.Nh, D = cs.D, C = Nh * D;
    const size_t n = (size_t)B * T * C, nH = (size_t)B * Nh * glia_nchunks(T) * D * D;
    char name[96];
    snprintf(name, sizeof name, "backward B=%d T=%d Nh=%d D=%d%s", B, T, Nh, D, cs.spread ? " λ spread" : "");
    Inputs in = make_inputs(cs, seed);
    TestRng r;
    rng_seed(&r, seed + 7);
    float *dout = host_floats(n), *dal0 = host_floats(C), *o = host_floats(n), *H = host_floats(nH);
    fill_normal(dout, n, 1.0f, &r);
    fill_normal(dal0, C, 0.1f, &r);
    astro_forward(o, H, in.k, in.v, in.q, in.a_lambda, NULL, B, T, C, Nh, C);
    Bwd ref[2];
    for (int m = 0; m < 2; m++) {
        ref[m] = (Bwd){host_floats(n), host_floats(n), host_floats(n), host_floats(C)};
        memcpy(ref[m].dal, dal0, C * sizeof(float));
        (m ? astro_backward_chunk : astro_backward)(ref[m].dk, ref[m].dv, ref[m].dq, ref[m].dal, dout, in.k, in.v,
                                                    in.q, in.a_lambda, H, B, T, C, Nh, C);
    }
    Bwd got = bwd_gpu(cs, &in, dout, dal0, H);
    if (twice) {
        Bwd again = bwd_gpu(cs, &in, dout, dal0, H);
        cr_assert(!memcmp(got.dq, again.dq, n * sizeof(float)) && !memcmp(got.dk, again.dk, n * sizeof(float)) &&
                      !memcmp(got.dv, again.dv, n * sizeof(float)) && !memcmp(got.dal, again.dal, C * sizeof(float)),
                  "%s: two runs differ (no atomics: the same bits every run)", name);
        bwd_free(&again);
    }
    for (int m = 0; m < 2; m++) {
        const char *what = m ? "CPU chunk" : "CPU scan";
        const double e[4] = {rel_err(got.dq, ref[m].dq, n), rel_err(got.dk, ref[m].dk, n),
                             rel_err(got.dv, ref[m].dv, n), rel_err(got.dal, ref[m].dal, C)};
        static const char *const names[4] = {"dq", "dk", "dv", "da_lambda"};
        cr_log_info("%s vs %s: dq %.2e dk %.2e dv %.2e da_lambda %.2e", name, what, e[0], e[1], e[2], e[3]);
        for (int x = 0; x < 4; x++)
            cr_assert(e[x] <= TOL, "%s vs %s: %s rel err %.3e > %.0e", name, what, names[x], e[x], TOL);
    }
    bwd_free(&got), bwd_free(&ref[0]), bwd_free(&ref[1]);
    free(dout), free(dal0), free(o), free(H);
    free_inputs(&in);
}

static void check_bwd_head_size(int D, int Nh) {
    for (size_t i = 0; i < sizeof TS / sizeof TS[0]; i++)
        check_bwd((Case){.B = 1, .T = TS[i], .Nh = 1, .D = D, .spread = 1}, 500 + 10 * D + i, 0);
    check_bwd((Case){.B = 2, .T = 80, .Nh = Nh, .D = D, .spread = 0}, 600 + 10 * D, 0);
}

#endif  // GLIA_HAVE_CUDA

Test(cuda_amsu_chunk, forward_head_size_8) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_fwd_head_size(8, 3);
#endif
}

Test(cuda_amsu_chunk, forward_head_size_16) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_fwd_head_size(16, 2);
#endif
}

// The larger heads cost the emulator most (each lane computes the whole
// tile): fewer shapes, still across chunk boundaries.
Test(cuda_amsu_chunk, forward_head_size_32) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_fwd((Case){.B = 1, .T = 80, .Nh = 1, .D = 32, .spread = 1}, 332);
    check_fwd((Case){.B = 2, .T = 33, .Nh = 2, .D = 32, .spread = 0}, 333);
#endif
}

Test(cuda_amsu_chunk, forward_head_size_64) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_fwd((Case){.B = 1, .T = 80, .Nh = 1, .D = 64, .spread = 1}, 364);
    check_fwd((Case){.B = 1, .T = 31, .Nh = 2, .D = 64, .spread = 0}, 365);
#endif
}

Test(cuda_amsu_chunk, forward_head_size_128) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_fwd((Case){.B = 1, .T = 33, .Nh = 1, .D = 128, .spread = 1}, 3128);
#endif
}

Test(cuda_amsu_chunk, backward_head_size_8) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(8, 3);
#endif
}

Test(cuda_amsu_chunk, backward_head_size_16) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(16, 2);
#endif
}

Test(cuda_amsu_chunk, backward_head_size_32) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd((Case){.B = 1, .T = 80, .Nh = 1, .D = 32, .spread = 1}, 732, 0);
    check_bwd((Case){.B = 2, .T = 33, .Nh = 2, .D = 32, .spread = 0}, 733, 0);
#endif
}

Test(cuda_amsu_chunk, backward_head_size_64) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd((Case){.B = 1, .T = 80, .Nh = 1, .D = 64, .spread = 1}, 764, 0);
    check_bwd((Case){.B = 1, .T = 31, .Nh = 2, .D = 64, .spread = 0}, 765, 0);
#endif
}

Test(cuda_amsu_chunk, backward_head_size_128) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd((Case){.B = 1, .T = 33, .Nh = 1, .D = 128, .spread = 1}, 7128, 0);
#endif
}

// A head size the kernels lack is refused with a message and exit(1), before any device work.
Test(cuda_amsu_chunk, rejects_unsupported_head_size, .exit_code = 1) {
#ifdef GLIA_HAVE_CUDA
    cr_assert(!amsu_chunk_head_size_supported(24) && amsu_chunk_head_size_supported(64));
    amsu_chunk_forward_cuda(NULL, NULL, NULL, 4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 2, 48, 2, 48, NULL);
#else
    exit(1);  // nothing to check without CUDA
#endif
}

Test(cuda_amsu_chunk, backward_deterministic) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd((Case){.B = 2, .T = 70, .Nh = 2, .D = 16, .spread = 0}, 800, 1);
#endif
}

// At D = 128 the backward's tensor cores read the checkpoints in place: an
// Hckpt not 32-byte aligned is refused (the layer then runs the fused
// backward); smaller heads stage them in shared memory and take any address.
Test(cuda_amsu_chunk, backward_refuses_unaligned_checkpoints_at_128, .exit_code = 1) {
#ifdef GLIA_HAVE_CUDA
    const float *aligned = (const float *)(uintptr_t)256, *off = aligned + 1;
    cr_assert(amsu_chunk_backward_ok(128, aligned) && !amsu_chunk_backward_ok(128, off));
    cr_assert(amsu_chunk_backward_ok(64, off) && amsu_chunk_backward_ok(8, off));
    amsu_chunk_backward_cuda(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, off, 1, 2, 128, 1, 128, NULL);
#else
    exit(1);  // nothing to check without CUDA
#endif
}
