// test_cuda_amsu.c: parity of the fused CUDA AM-SU recurrence
// (kernels/cuda/amsu.cu) with the CPU reference (kernels/cpu/):
// - forward, amsu_recurrence_forward_cuda, against astro_forward +
//   neuron_forward, from zero state and streaming (state carried from one
//   call to the next);
// - backward, amsu_recurrence_backward_cuda, against neuron_backward (with
//   dm = ∂L/∂o) + astro_backward, and its determinism.
//
// Shapes cover every supported head size D (8..128) with Nh of 1 to 3 heads,
// odd T spanning several GLIA_CHUNK = 32 checkpoint chunks (1, 7, 32, 33,
// 70), one and three sequences, the astrocyte on and off (forward), and
// checkpoints on and off. Inputs: I, k, v, q ~ N(0, 1), a_lambda ~ N(2, 1),
// a_beta ~ N(0, 0.5), seeded; the backward's ds ~ N(0, 1).
//
// Measures and tolerances (normwise relative error, rel_err in testutil.h):
// - forward o, u, Hckpt, H_state: <= 1e-5. The GPU contracts a·b + c into
//   FMAs and has its own expf, so it agrees with the CPU to about an ulp per
//   operation, not bitwise. With the astrocyte off, o must be exactly 0.
// - forward s: equal, except where the CPU's potential |m| = |u + o − 1| <
//   1e-4, where rounding may legitimately flip a spike. A flip at step t
//   changes that neuron's reset, so its u and s from t + 1 on are excluded
//   from the comparison (their trajectories have rightly diverged); any other
//   spike mismatch, or a spike value other than 0 or 1, fails.
// - backward dI, dk, dv, dq, da_lambda, da_beta: <= 1e-5 each. The backward
//   is fed the CPU forward's activations (u, o, s, Hckpt), so no spike can
//   differ; what remains is rounding: FMA contraction, expf, and the CPU's
//   `omp simd` sums over j (dq, dk, dλ), which it vectorises in another
//   order than the GPU's ascending one. da_lambda and da_beta start from
//   random values, so a kernel that overwrote them instead of adding fails.
// The measured worst errors are logged (cr_log_info; --verbose shows them).
// Device outputs are filled with NaN before each run (the host wrapper, or
// cuda_memset 0xFF here), so an entry the kernel forgot to write fails.
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
#define BWD_TOL 1e-5
#define SPIKE_MARGIN 1e-4f

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

static float *copy_floats(const float *x, size_t n) {
    float *p = alloc_floats(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

// The forward's inputs for B sequences of T steps, C = Nh·D channels.
typedef struct {
    float *I, *k, *v, *q;       // (B, T, C)
    float *a_lambda, *a_beta;   // (C)
} Inputs;

static Inputs make_inputs(int B, int T, int C, TestRng *rng) {
    const size_t n = (size_t)B * T * C;
    Inputs in = {alloc_floats(n), alloc_floats(n), alloc_floats(n),
                 alloc_floats(n), alloc_floats(C), alloc_floats(C)};
    fill_normal(in.I, n, 1.0f, rng);
    fill_normal(in.k, n, 1.0f, rng);
    fill_normal(in.v, n, 1.0f, rng);
    fill_normal(in.q, n, 1.0f, rng);
    fill_normal(in.a_lambda, C, 1.0f, rng);
    for (int c = 0; c < C; c++) in.a_lambda[c] += 2.0f;
    fill_normal(in.a_beta, C, 0.5f, rng);
    return in;
}

static void free_inputs(Inputs *in) {
    free(in->I);
    free(in->k);
    free(in->v);
    free(in->q);
    free(in->a_lambda);
    free(in->a_beta);
}

// Asserts forward parity of (o, u, s) with the CPU's (B, T, C), per the top
// comment: o normwise, s exactly away from the threshold, u normwise up to
// the first legitimate spike flip of each neuron.
static void compare_forward(const char *name, const float *o, const float *u, const float *s,
                            const float *o_ref, const float *u_ref, const float *s_ref, int B,
                            int T, int C, int astro) {
    const size_t n = (size_t)B * T * C;
    if (astro) {
        double err_o = rel_err(o, o_ref, n);
        cr_log_info("%s: o rel err %.2e", name, err_o);
        cr_assert(err_o <= PARITY_TOL, "%s: o rel err %.3e > %.0e", name, err_o, PARITY_TOL);
    } else {
        size_t nonzero = 0;
        for (size_t i = 0; i < n; i++) nonzero += !(o[i] == 0.0f);
        cr_assert_eq(nonzero, 0, "%s: %zu entries of o are not 0 with the astrocyte off", name,
                     nonzero);
    }

    // s and u, neuron by neuron along time, stopping at a legitimate flip
    size_t hard = 0, soft = 0, fired = 0, compared = 0;
    float *u_cmp = copy_floats(u, n);  // the GPU's u, with diverged entries replaced by the CPU's
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
    free(u_cmp);
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
    Inputs in = make_inputs(B, T, C, &rng);

    // CPU reference
    float *o_ref = alloc_floats(n), *u_ref = alloc_floats(n), *s_ref = alloc_floats(n);
    float *H_ref = alloc_floats(nH);
    if (cs.astro)
        astro_forward(o_ref, ckpt ? H_ref : NULL, in.k, in.v, in.q, in.a_lambda, NULL, B, T, C,
                      Nh, C);
    else
        memset(o_ref, 0, n * sizeof(float));
    neuron_forward(u_ref, s_ref, in.I, cs.astro ? o_ref : NULL, in.a_beta, NULL, NULL, B, T, C,
                   C, NULL);

    // GPU; with the astrocyte off, k, v, q, a_lambda must not be needed
    float *o = alloc_floats(n), *u = alloc_floats(n), *s = alloc_floats(n);
    float *H = alloc_floats(nH);
    int rc = amsu_recurrence_forward_cuda_host(
        o, u, s, ckpt ? H : NULL, in.I, cs.astro ? in.k : NULL, cs.astro ? in.v : NULL,
        cs.astro ? in.q : NULL, cs.astro ? in.a_lambda : NULL, in.a_beta, NULL, NULL, NULL, B, T,
        C, Nh, cs.astro);
    cr_assert_eq(rc, 0, "%s: amsu_recurrence_forward_cuda_host returned %d", name, rc);

    if (ckpt) {
        double err_H = rel_err(H, H_ref, nH);
        cr_log_info("%s: Hckpt rel err %.2e", name, err_H);
        cr_assert(err_H <= PARITY_TOL, "%s: Hckpt rel err %.3e > %.0e", name, err_H, PARITY_TOL);
    }
    compare_forward(name, o, u, s, o_ref, u_ref, s_ref, B, T, C, cs.astro);

    free_inputs(&in);
    float *bufs[] = {o_ref, u_ref, s_ref, H_ref, o, u, s, H};
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

// ---- streaming forward ---------------------------------------------------------

// Steps [t0, t0 + Tn) of x (B, T, C) into out (B, Tn, C).
static void slice_steps(float *out, const float *x, int B, int T, int C, int t0, int Tn) {
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * Tn * C, x + ((size_t)b * T + t0) * C,
               (size_t)Tn * C * sizeof(float));
}

// The inverse: out (B, T, C) steps [t0, t0 + Tn) = x (B, Tn, C).
static void place_steps(float *out, const float *x, int B, int T, int C, int t0, int Tn) {
    for (int b = 0; b < B; b++)
        memcpy(out + ((size_t)b * T + t0) * C, x + (size_t)b * Tn * C,
               (size_t)Tn * C * sizeof(float));
}

// A sequence of T1 + T2 steps run as two calls, the state carried from the
// first to the second, from a random initial state; the CPU streams the same
// way. The two calls' outputs, joined, are compared as one sequence; so are
// each call's checkpoints (the first being the state the call started from)
// and the final H state. The final u, s state must be the last step's u, s.
static void check_streaming(int B, int T1, int T2, int Nh, int D, int astro, uint64_t seed) {
    const int C = Nh * D, T = T1 + T2;
    const size_t n = (size_t)B * T * C, nBC = (size_t)B * C;
    const size_t nHst = astro ? (size_t)B * Nh * D * D : 0;
    char name[128];
    snprintf(name, sizeof name, "streaming B=%d T=%d+%d Nh=%d D=%d astro=%d", B, T1, T2, Nh, D,
             astro);

    TestRng rng;
    rng_seed(&rng, seed);
    Inputs in = make_inputs(B, T, C, &rng);
    float *H0 = alloc_floats(nHst), *u0 = alloc_floats(nBC), *s0 = alloc_floats(nBC);
    fill_normal(H0, nHst, 0.5f, &rng);
    fill_normal(u0, nBC, 1.0f, &rng);
    for (size_t i = 0; i < nBC; i++) s0[i] = rng_uniform(&rng) < 0.3f ? 1.0f : 0.0f;

    float *H_cpu = copy_floats(H0, nHst), *u_cpu = copy_floats(u0, nBC);
    float *s_cpu = copy_floats(s0, nBC);
    float *H_gpu = copy_floats(H0, nHst), *u_gpu = copy_floats(u0, nBC);
    float *s_gpu = copy_floats(s0, nBC);
    float *o_ref = alloc_floats(n), *u_ref = alloc_floats(n), *s_ref = alloc_floats(n);
    float *o = alloc_floats(n), *u = alloc_floats(n), *s = alloc_floats(n);

    const int seg_t0[2] = {0, T1}, seg_T[2] = {T1, T2};
    for (int g = 0; g < 2; g++) {
        const int t0 = seg_t0[g], Tn = seg_T[g];
        const size_t m = (size_t)B * Tn * C;
        const size_t nH = astro ? (size_t)B * Nh * glia_nchunks(Tn) * D * D : 0;
        float *I = alloc_floats(m), *k = alloc_floats(m), *v = alloc_floats(m);
        float *q = alloc_floats(m);
        slice_steps(I, in.I, B, T, C, t0, Tn);
        slice_steps(k, in.k, B, T, C, t0, Tn);
        slice_steps(v, in.v, B, T, C, t0, Tn);
        slice_steps(q, in.q, B, T, C, t0, Tn);
        float *o_c = alloc_floats(m), *u_c = alloc_floats(m), *s_c = alloc_floats(m);
        float *o_g = alloc_floats(m), *u_g = alloc_floats(m), *s_g = alloc_floats(m);
        float *Hck_c = alloc_floats(nH), *Hck_g = alloc_floats(nH);

        if (astro)
            astro_forward(o_c, Hck_c, k, v, q, in.a_lambda, H_cpu, B, Tn, C, Nh, C);
        else
            memset(o_c, 0, m * sizeof(float));
        neuron_forward(u_c, s_c, I, astro ? o_c : NULL, in.a_beta, u_cpu, s_cpu, B, Tn, C, C, NULL);

        int rc = amsu_recurrence_forward_cuda_host(
            o_g, u_g, s_g, astro ? Hck_g : NULL, I, k, v, q, in.a_lambda, in.a_beta,
            astro ? H_gpu : NULL, u_gpu, s_gpu, B, Tn, C, Nh, astro);
        cr_assert_eq(rc, 0, "%s: amsu_recurrence_forward_cuda_host returned %d", name, rc);

        if (astro) {
            double err = rel_err(Hck_g, Hck_c, nH);
            cr_log_info("%s: call %d Hckpt rel err %.2e", name, g + 1, err);
            cr_assert(err <= PARITY_TOL, "%s: call %d Hckpt rel err %.3e > %.0e", name, g + 1,
                      err, PARITY_TOL);
        }
        // the u, s state is the call's last step
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++) {
                size_t last = ((size_t)b * Tn + Tn - 1) * C + c, st = (size_t)b * C + c;
                cr_assert(u_gpu[st] == u_g[last] && s_gpu[st] == s_g[last],
                          "%s: call %d: the u, s state of b=%d c=%d is not the last step's",
                          name, g + 1, b, c);
            }
        place_steps(o_ref, o_c, B, T, C, t0, Tn);
        place_steps(u_ref, u_c, B, T, C, t0, Tn);
        place_steps(s_ref, s_c, B, T, C, t0, Tn);
        place_steps(o, o_g, B, T, C, t0, Tn);
        place_steps(u, u_g, B, T, C, t0, Tn);
        place_steps(s, s_g, B, T, C, t0, Tn);
        float *bufs[] = {I, k, v, q, o_c, u_c, s_c, o_g, u_g, s_g, Hck_c, Hck_g};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    }
    if (astro) {
        double err = rel_err(H_gpu, H_cpu, nHst);
        cr_log_info("%s: final H_state rel err %.2e", name, err);
        cr_assert(err <= PARITY_TOL, "%s: final H_state rel err %.3e > %.0e", name, err,
                  PARITY_TOL);
    }
    compare_forward(name, o, u, s, o_ref, u_ref, s_ref, B, T, C, astro);

    free_inputs(&in);
    float *bufs[] = {H0,    u0,    s0,    H_cpu, u_cpu, s_cpu, H_gpu, u_gpu,
                     s_gpu, o_ref, u_ref, s_ref, o,     u,     s};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

// ---- backward ----------------------------------------------------------------------

static float *dev_alloc(size_t n) {
    float *p = cuda_alloc(n * sizeof(float));
    cr_assert_not_null(p, "%s", cuda_last_error_message());
    return p;
}

static float *dev_upload(const float *host, size_t n) {
    float *p = dev_alloc(n);
    cuda_upload(p, host, n * sizeof(float));
    return p;
}

static float *dev_poisoned(size_t n) {  // every float NaN until written
    float *p = dev_alloc(n);
    cuda_memset(p, 0xFF, n * sizeof(float), NULL);
    return p;
}

// A backward problem: the forward's inputs, the CPU forward's activations
// (the ones the GPU backward is fed), ds and the initial parameter gradients.
typedef struct {
    int B, T, C, Nh, D;
    Inputs in;
    float *o, *u, *s, *Hckpt;      // CPU forward
    float *ds;                     // (B, T, C)
    float *da_lambda0, *da_beta0;  // (C): what the gradients are added into
} BwdProblem;

typedef struct {
    float *dI, *dk, *dv, *dq;     // (B, T, C)
    float *da_lambda, *da_beta;   // (C)
} BwdResult;

static BwdProblem make_bwd_problem(int B, int T, int Nh, int D, uint64_t seed) {
    BwdProblem p = {.B = B, .T = T, .C = Nh * D, .Nh = Nh, .D = D};
    const int C = p.C;
    const size_t n = (size_t)B * T * C;
    TestRng rng;
    rng_seed(&rng, seed);
    p.in = make_inputs(B, T, C, &rng);
    p.o = alloc_floats(n);
    p.u = alloc_floats(n);
    p.s = alloc_floats(n);
    p.Hckpt = alloc_floats((size_t)B * Nh * glia_nchunks(T) * D * D);
    astro_forward(p.o, p.Hckpt, p.in.k, p.in.v, p.in.q, p.in.a_lambda, NULL, B, T, C, Nh, C);
    neuron_forward(p.u, p.s, p.in.I, p.o, p.in.a_beta, NULL, NULL, B, T, C, C, NULL);
    p.ds = alloc_floats(n);
    fill_normal(p.ds, n, 1.0f, &rng);
    p.da_lambda0 = alloc_floats(C);
    p.da_beta0 = alloc_floats(C);
    fill_normal(p.da_lambda0, C, 0.1f, &rng);
    fill_normal(p.da_beta0, C, 0.1f, &rng);
    return p;
}

static void free_bwd_problem(BwdProblem *p) {
    free_inputs(&p->in);
    float *bufs[] = {p->o, p->u, p->s, p->Hckpt, p->ds, p->da_lambda0, p->da_beta0};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

static BwdResult alloc_bwd_result(const BwdProblem *p) {
    const size_t n = (size_t)p->B * p->T * p->C;
    return (BwdResult){alloc_floats(n), alloc_floats(n), alloc_floats(n),
                       alloc_floats(n), alloc_floats(p->C), alloc_floats(p->C)};
}

static void free_bwd_result(BwdResult *r) {
    float *bufs[] = {r->dI, r->dk, r->dv, r->dq, r->da_lambda, r->da_beta};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
}

// The CPU reference: neuron_backward (dm = ∂L/∂o) then astro_backward.
static BwdResult bwd_cpu(const BwdProblem *p) {
    const int B = p->B, T = p->T, C = p->C;
    BwdResult r = alloc_bwd_result(p);
    float *dm = alloc_floats((size_t)B * T * C);
    memcpy(r.da_lambda, p->da_lambda0, C * sizeof(float));
    memcpy(r.da_beta, p->da_beta0, C * sizeof(float));
    neuron_backward(r.dI, dm, r.da_beta, p->ds, p->u, p->o, p->s, p->in.a_beta, B, T, C, C, NULL);
    astro_backward(r.dk, r.dv, r.dq, r.da_lambda, dm, p->in.k, p->in.v, p->in.q, p->in.a_lambda,
                   p->Hckpt, B, T, C, p->Nh, C);
    free(dm);
    return r;
}

// The GPU backward on device copies of the problem; outputs and scratch
// start as NaN.
static BwdResult bwd_gpu(const BwdProblem *p) {
    const int B = p->B, T = p->T, C = p->C, Nh = p->Nh;
    const size_t n = (size_t)B * T * C, nH = (size_t)B * Nh * glia_nchunks(T) * p->D * p->D;
    const size_t nscratch = amsu_backward_scratch_floats(B, T, C, Nh);
    cr_assert(nscratch > 0);
    float *d_ds = dev_upload(p->ds, n), *d_u = dev_upload(p->u, n), *d_o = dev_upload(p->o, n);
    float *d_s = dev_upload(p->s, n), *d_k = dev_upload(p->in.k, n);
    float *d_v = dev_upload(p->in.v, n), *d_q = dev_upload(p->in.q, n);
    float *d_H = dev_upload(p->Hckpt, nH);
    float *d_al = dev_upload(p->in.a_lambda, C), *d_ab = dev_upload(p->in.a_beta, C);
    float *d_dal = dev_upload(p->da_lambda0, C), *d_dab = dev_upload(p->da_beta0, C);
    float *d_dI = dev_poisoned(n), *d_dk = dev_poisoned(n), *d_dv = dev_poisoned(n);
    float *d_dq = dev_poisoned(n), *d_scratch = dev_poisoned(nscratch);
    amsu_recurrence_backward_cuda(d_dI, d_dk, d_dv, d_dq, d_dal, d_dab, d_scratch, d_ds, d_u, d_o,
                                  d_s, 4, d_k, d_v, d_q, d_H, d_al, d_ab, B, T, C, Nh, C, NULL);
    cuda_synchronize();
    BwdResult r = alloc_bwd_result(p);
    cuda_download(r.dI, d_dI, n * sizeof(float));
    cuda_download(r.dk, d_dk, n * sizeof(float));
    cuda_download(r.dv, d_dv, n * sizeof(float));
    cuda_download(r.dq, d_dq, n * sizeof(float));
    cuda_download(r.da_lambda, d_dal, C * sizeof(float));
    cuda_download(r.da_beta, d_dab, C * sizeof(float));
    float *bufs[] = {d_ds, d_u,   d_o,   d_s,  d_k,  d_v,  d_q,  d_H,      d_al,
                     d_ab, d_dal, d_dab, d_dI, d_dk, d_dv, d_dq, d_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_free(bufs[i]);
    return r;
}

// Worst error per quantity over the cases run so far (logged at the end).
typedef struct {
    double dI, dk, dv, dq, da_lambda, da_beta;
} BwdErrors;

static double worst(double *slot, double e) {
    if (e > *slot || isnan(e)) *slot = e;
    return e;
}

static void check_bwd_case(int B, int T, int Nh, int D, uint64_t seed, BwdErrors *w) {
    char name[96];
    snprintf(name, sizeof name, "backward B=%d T=%d Nh=%d D=%d", B, T, Nh, D);
    BwdProblem p = make_bwd_problem(B, T, Nh, D, seed);
    BwdResult ref = bwd_cpu(&p), got = bwd_gpu(&p);
    const size_t n = (size_t)B * T * p.C;
    const struct {
        const char *what;
        const float *a, *b;
        size_t n;
        double *slot;
    } q[] = {
        {"dI", got.dI, ref.dI, n, &w->dI},
        {"dk", got.dk, ref.dk, n, &w->dk},
        {"dv", got.dv, ref.dv, n, &w->dv},
        {"dq", got.dq, ref.dq, n, &w->dq},
        {"da_lambda", got.da_lambda, ref.da_lambda, p.C, &w->da_lambda},
        {"da_beta", got.da_beta, ref.da_beta, p.C, &w->da_beta},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        double e = worst(q[i].slot, rel_err(q[i].a, q[i].b, q[i].n));
        cr_log_info("%s: %s rel err %.2e", name, q[i].what, e);
        cr_assert(e <= BWD_TOL, "%s: %s rel err %.3e > %.0e", name, q[i].what, e, BWD_TOL);
    }
    free_bwd_result(&ref);
    free_bwd_result(&got);
    free_bwd_problem(&p);
}

// Every T for one head size: a single sequence and head, then several of each.
static void check_bwd_head_size(int D, int Nh_many) {
    BwdErrors w = {0};
    for (size_t i = 0; i < sizeof TS / sizeof TS[0]; i++) {
        check_bwd_case(1, TS[i], 1, D, 3000 + 10 * D + i, &w);
        check_bwd_case(3, TS[i], Nh_many, D, 4000 + 10 * D + i, &w);
    }
    cr_log_info("backward D=%d worst rel err: dI %.2e dk %.2e dv %.2e dq %.2e da_lambda %.2e "
                "da_beta %.2e",
                D, w.dI, w.dk, w.dv, w.dq, w.da_lambda, w.da_beta);
}

// Two runs of the backward on the same inputs give the same bits.
static void check_bwd_deterministic(int B, int T, int Nh, int D, uint64_t seed) {
    BwdProblem p = make_bwd_problem(B, T, Nh, D, seed);
    BwdResult r1 = bwd_gpu(&p), r2 = bwd_gpu(&p);
    const size_t n = (size_t)B * T * p.C * sizeof(float), nc = (size_t)p.C * sizeof(float);
    cr_assert(memcmp(r1.dI, r2.dI, n) == 0, "D=%d: dI differs between runs", D);
    cr_assert(memcmp(r1.dk, r2.dk, n) == 0, "D=%d: dk differs between runs", D);
    cr_assert(memcmp(r1.dv, r2.dv, n) == 0, "D=%d: dv differs between runs", D);
    cr_assert(memcmp(r1.dq, r2.dq, n) == 0, "D=%d: dq differs between runs", D);
    cr_assert(memcmp(r1.da_lambda, r2.da_lambda, nc) == 0, "D=%d: da_lambda differs", D);
    cr_assert(memcmp(r1.da_beta, r2.da_beta, nc) == 0, "D=%d: da_beta differs", D);
    free_bwd_result(&r1);
    free_bwd_result(&r2);
    free_bwd_problem(&p);
}

#endif  // GLIA_HAVE_CUDA

Test(cuda_amsu, head_size_8) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(8, 3);
#endif
}

Test(cuda_amsu, head_size_16) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(16, 2);
#endif
}

Test(cuda_amsu, head_size_32) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(32, 3);
#endif
}

Test(cuda_amsu, head_size_64) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(64, 2);
#endif
}

Test(cuda_amsu, head_size_128) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_head_size(128, 3);
#endif
}

// Checkpoints not requested: the kernel must still produce o, u, s.
Test(cuda_amsu, without_checkpoints) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_case((Case){.B = 2, .T = 70, .Nh = 3, .D = 32, .astro = 1, .ckpt = 0}, 31);
    check_case((Case){.B = 1, .T = 33, .Nh = 1, .D = 128, .astro = 1, .ckpt = 0}, 32);
#endif
}

// Astrocyte off (FFN neuron, ablation): o ≡ 0, the LIF neuron alone. C need
// not be a multiple of the kernel's block of channels (Nh = 1, D = C here).
Test(cuda_amsu, astro_off) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const int Cs[] = {8, 200, 384};
    for (size_t i = 0; i < sizeof Cs / sizeof Cs[0]; i++)
        for (size_t j = 0; j < sizeof TS / sizeof TS[0]; j++) {
            check_case((Case){.B = 1, .T = TS[j], .Nh = 1, .D = Cs[i], .astro = 0}, 40 + 10 * i + j);
            check_case((Case){.B = 4, .T = TS[j], .Nh = 1, .D = Cs[i], .astro = 0}, 90 + 10 * i + j);
        }
#endif
}

// Streaming: a sequence run in two calls with the state carried over, from
// a random state; split points inside and at chunk boundaries.
Test(cuda_amsu, streaming_state) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_streaming(1, 1, 1, 1, 8, 1, 51);
    check_streaming(3, 7, 33, 3, 8, 1, 52);
    check_streaming(2, 32, 38, 2, 16, 1, 53);
    check_streaming(3, 33, 7, 3, 32, 1, 54);
    check_streaming(2, 5, 29, 2, 64, 1, 55);
    check_streaming(2, 40, 3, 1, 128, 1, 56);
    check_streaming(3, 7, 33, 1, 200, 0, 57);  // astrocyte off: u, s state only
    check_streaming(1, 1, 70, 1, 8, 0, 58);
#endif
}

Test(cuda_amsu, backward_head_size_8) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(8, 3);
#endif
}

Test(cuda_amsu, backward_head_size_16) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(16, 2);
#endif
}

Test(cuda_amsu, backward_head_size_32) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(32, 3);
#endif
}

Test(cuda_amsu, backward_head_size_64) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(64, 2);
#endif
}

Test(cuda_amsu, backward_head_size_128) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_head_size(128, 3);
#endif
}

// No float atomics, fixed reduction orders: the same bits on every run.
Test(cuda_amsu, backward_deterministic) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_bwd_deterministic(3, 70, 3, 32, 61);
    check_bwd_deterministic(2, 33, 2, 128, 62);
#endif
}

// Shapes the fused kernel cannot run are refused before any device work, so
// this runs wherever CUDA is built, GPU or not.
Test(cuda_amsu, rejects_invalid_shapes) {
    test_require_cuda_build();
#ifdef GLIA_HAVE_CUDA
    float x[96] = {0}, out_o[96], out_u[96], out_s[96], st_u[96] = {0};
    // D = 24 (C 48, Nh 2): not a supported head size
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    NULL, NULL, NULL, 1, 2, 48, 2, 1),
                  0);
    // C = 48 not divisible by Nh = 5
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    NULL, NULL, NULL, 1, 2, 48, 5, 1),
                  0);
    // empty sequence
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    NULL, NULL, NULL, 1, 0, 48, 3, 1),
                  0);
    // u_state without s_state
    cr_assert_neq(amsu_recurrence_forward_cuda_host(out_o, out_u, out_s, NULL, x, x, x, x, x, x,
                                                    NULL, st_u, NULL, 1, 2, 48, 3, 1),
                  0);
    cr_assert(amsu_head_size_supported(64) && amsu_head_size_supported(8));
    cr_assert(!amsu_head_size_supported(24) && !amsu_head_size_supported(256));
    // the backward's scratch: none for a shape it refuses
    cr_assert_eq(amsu_backward_scratch_floats(1, 2, 48, 5), 0);
    cr_assert_eq(amsu_backward_scratch_floats(1, 0, 48, 3), 0);
    cr_assert_eq(amsu_backward_scratch_floats(2, 7, 32, 2),
                 (size_t)2 * 2 * (7 + 1) * 16 * 16 + 2 * 2 * 32);
#endif
}

// The backward refuses an unsupported head size (D = 24) with a message and
// exit(1), like every CUDA backend error, before touching any pointer.
Test(cuda_amsu, backward_rejects_invalid_shape, .exit_code = 1) {
#ifdef GLIA_HAVE_CUDA
    amsu_recurrence_backward_cuda(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                  NULL, 4, NULL, NULL, NULL, NULL, NULL, NULL, 1, 2, 48, 2, 48, NULL);
#else
    exit(1);  // nothing to check without CUDA
#endif
}
