// cmd_bench_kernels.c: `glia bench kernels`, the kernel lab of the CUDA
// backend: each kernel checked against the CPU reference, then timed, and
// set against the two ceilings measured in the same run.
//
// Ceilings: the device-to-device copy bandwidth (bytes read + written over
// time, a buffer far larger than L2) and cuBLAS GEMM rates at 4096³: the
// three modes glia's matmuls run in (fp32 storage computed as exact fp32,
// TF32 or bf16; see device.cu) and, as the hardware's matmul limit, bf16
// storage with fp32 accumulation. Each kernel reports
// its median time over --reps timed batches (each batch launches the kernel
// --inner times and synchronises once, so launch gaps are amortised the way
// a training step amortises them), the bytes it must move and the FLOPs it
// must do by the formulas below, and their fractions of the copy bandwidth
// and of the fp32 GEMM rate (the recurrences run on the fp32 cores, not the
// tensor cores). The
// inputs are random (never zeros) and larger than L2 at the default shape,
// SPEC's `124m` layer (B 8, T 1024, C 768, Nh 12, D 64). Then a whole
// training step of the `124m` model at that batch, with TF32 matmuls (the
// training default) and with bf16 ones: tokens/s and model FLOPs
// utilisation (6·params·tokens for the matmuls, plus the recurrence) over
// the bf16-storage GEMM rate. Then the same step again through a timing
// Backend (bench_profile.h; every call synchronised): calls, time, share of
// the step and GEMM rate of each backend entry. --device cpu runs only the
// step (with the CPU's fp32 GEMM rate at 1024^3 as the ceiling), so the
// breakdown works, and is tested, without a GPU.
// The AM-SU runs both ways, the fused per-timestep kernels (scan) and the
// chunked ones (chunk, amsu_chunk.cu), side by side, each with its fraction
// of the memory floor. Correctness first: each AM-SU forward and backward is
// compared with the CPU backend on the same inputs, the forward's spikes by the tests'
// spike-flip rule (bench_check.h: a spike within 1e-4 of θ may flip, and is
// counted apart). A mismatch fails the benchmark (exit 1), but the kernels
// are timed all the same, their rows marked UNCHECKED: a first run on a
// device must bring back the numbers whatever the check says. Each kernel's
// occupancy (blocks per SM, fraction of its warps, registers) comes first.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/bench.h"
#include "cmd/bench_profile.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "cpu/cpu.h"
#include "glia/util.h"
#include "model/model.h"
#include "model/rng.h"

// A whole training step of a named size on `be` (sync: NULL, or waits for the
// device): forward, backward, AdamW; the median of `reps`, then `reps` more
// through the timing Backend. MFU over `peak` FLOP/s (named by peak_name).
static void bench_step(const Backend *be, void (*sync)(void), const char *size, int B, int T, int reps,
                       const char *mode, double peak, const char *peak_name) {
    ModelConfig cfg;
    model_config_named(size, &cfg);
    Model *m = model_new(&cfg);
    model_init(m, 1);
    char err[512];
    if (model_to_backend(m, be, err, sizeof err) ||
        model_alloc_train(m, 0, 1, 0, 0, m->nparams, m->nparams, err, sizeof err))
        fatal("glia bench kernels: %s", err);
    model_alloc_acts(m, B, T);
    int *tok = xmalloc((size_t)B * T * sizeof(int)), *tgt = xmalloc((size_t)B * T * sizeof(int));
    Rng rng;
    rng_init(&rng, 7);
    for (int i = 0; i < B * T; i++) tok[i] = (int)(rng_u64(&rng) % (uint64_t)cfg.V);
    for (int i = 0; i < B * T; i++) tgt[i] = (int)(rng_u64(&rng) % (uint64_t)cfg.V);
    double *t = xmalloc((size_t)(reps + 1) * sizeof(double)), profiled = 0.0;
    for (int r = 0; r <= 2 * reps; r++) {  // the first is the warm-up; the last `reps` are profiled
        if (r == reps + 1) m->be = profile_backend(be, sync);  // the same memory: it forwards to `be`
        double t0 = bench_now();
        if (r > reps) profile_begin();
        model_zero_grad(m);
        model_forward(m, tok, tgt, B, T, NULL);
        model_backward(m, tok, 1.0f);
        model_step(m, 1e-4f, 0.1f, 1.0f, r + 1);
        if (sync) sync();
        if (r > reps) profile_end();
        if (r <= reps) t[r] = bench_now() - t0;
        else profiled += bench_now() - t0;
    }
    m->be = be;
    qsort(t + 1, (size_t)reps, sizeof(double), bench_cmp);
    double sec = t[1 + reps / 2], tokens = (double)B * T;
    int D = cfg.C / cfg.Nh;
    // matmuls 6·N per token (forward 2N, backward 4N) plus the recurrence:
    // forward 5·Nh·D² per token and layer, backward about twice that again
    double flops = 6.0 * (double)m->nparams * tokens +
                   3.0 * 5.0 * cfg.Nh * (double)D * D * cfg.L * tokens;
    printf("step %-6s %s B %d T %d: %8.1f ms  %10.0f tokens/s  %6.2f TFLOP/s  MFU %5.1f%% of the "
           "%s\n",
           size, mode, B, T, sec * 1e3, tokens / sec, flops / sec * 1e-12, 100.0 * flops / sec / peak, peak_name);
    printf("where the time goes: %d step%s through the timing backend, %.1f ms each (every call synchronised):\n",
           reps, reps > 1 ? "s" : "", profiled / reps * 1e3);
    profile_print(profiled);
    printf("headline: %s step (%s matmuls) %.0f tokens/s, MFU %.1f%%\n", size, mode, tokens / sec,
           100.0 * flops / sec / peak);
    free(t);
    free(tok);
    free(tgt);
    model_free(m);
}

#ifdef GLIA_HAVE_CUDA

#include "cmd/bench_check.h"
#include "cuda/cuda.h"

typedef void (*KernelFn)(void *ctx);

// Median seconds of one call, over `reps` batches of `inner` calls.
static double time_it(KernelFn f, void *ctx, int reps, int inner) {
    f(ctx);  // warm-up: module load, handles, first-touch
    cuda_synchronize();
    double *t = xmalloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        for (int i = 0; i < inner; i++) f(ctx);
        cuda_synchronize();
        t[r] = (bench_now() - t0) / inner;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp);
    double med = t[reps / 2];
    free(t);
    return med;
}

static float *dev_random(size_t n, float std, float mean, Rng *rng, float **host_copy) {
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = mean + std * (float)rng_gauss(rng);
    float *d = cuda_alloc(n * sizeof(float));
    if (!d) fatal("glia bench kernels: %s", cuda_last_error_message());
    cuda_upload(d, h, n * sizeof(float));
    if (host_copy) *host_copy = h;
    else free(h);
    return d;
}

static float *dev_zeros(size_t n) {
    float *d = cuda_alloc(n * sizeof(float));
    if (!d) fatal("glia bench kernels: %s", cuda_last_error_message());
    cuda_memset(d, 0, n * sizeof(float), NULL);
    return d;
}

// A device copy of n fp32 values from `h` as bf16 bit patterns (round to
// nearest even; the inputs are finite).
static uint16_t *dev_bf16(const float *h, size_t n) {
    uint16_t *b = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, &h[i], 4);
        b[i] = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    uint16_t *d = cuda_alloc(n * sizeof(uint16_t));
    if (!d) fatal("glia bench kernels: %s", cuda_last_error_message());
    cuda_upload(d, b, n * sizeof(uint16_t));
    free(b);
    return d;
}

static double rel(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]), m = fabs((double)b[i]);
        num = d > num ? d : num;
        den = m > den ? m : den;
    }
    return den > 0 ? num / den : num;
}

// ---- the kernels under test ----------------------------------------------------------

typedef struct {
    int B, T, C, Nh;
    float *I, *k, *v, *q, *a_lambda, *a_beta;  // device inputs
    float *o, *u, *s, *Hckpt;                  // forward outputs
    float *ds, *dI, *dk, *dv, *dq, *dlam, *dbeta, *scratch;  // backward
    float *dm, *part;                                        // the chunked backward's ∂L/∂o (B, T, C), partials (B, C)
    float *copy_src, *copy_dst;
    size_t copy_n;
    float *A, *Bm, *Cm;
    uint16_t *A16, *B16;  // the same operands as bf16 bit patterns
    int gemm_n;
} Lab;

static void k_copy(void *p) {
    Lab *l = p;
    cuda_copy(l->copy_dst, l->copy_src, l->copy_n * sizeof(float), NULL);
}
static void k_gemm(void *p) {
    Lab *l = p;
    matmul_forward_cuda(l->Cm, l->A, l->Bm, l->gemm_n, l->gemm_n, l->gemm_n, 1.0f, 0, NULL);
}
static void k_gemm_bf16(void *p) {
    Lab *l = p;
    matmul_forward_bf16_cuda(l->Cm, l->A16, l->B16, l->gemm_n, l->gemm_n, l->gemm_n, NULL);
}
static void k_amsu_fwd(void *p) {
    Lab *l = p;
    amsu_recurrence_forward_cuda(l->o, l->u, l->s, 4, l->Hckpt, l->I, l->k, l->v, l->q, l->a_lambda,
                                 l->a_beta, NULL, NULL, NULL, l->B, l->T, l->C, l->Nh, l->C, 1, NULL);
}
static void k_amsu_bwd(void *p) {
    Lab *l = p;
    amsu_recurrence_backward_cuda(l->dI, l->dk, l->dv, l->dq, l->dlam, l->dbeta, l->scratch, l->ds,
                                  l->u, l->o, l->s, 4, l->k, l->v, l->q, l->Hckpt, l->a_lambda,
                                  l->a_beta, l->B, l->T, l->C, l->Nh, l->C, NULL);
}
// The chunked AM-SU (amsu_chunk.cu): the forward; the backward as the layer
// runs it, the neuron's (dI, dβ, dm = ∂L/∂o) then the astrocyte's from dm.
static void k_chunk_fwd(void *p) {
    Lab *l = p;
    amsu_chunk_forward_cuda(l->o, l->u, l->s, 4, l->Hckpt, l->I, l->k, l->v, l->q, l->a_lambda, l->a_beta, l->B, l->T,
                            l->C, l->Nh, l->C, NULL);
}
static void k_chunk_bwd(void *p) {
    Lab *l = p;
    neuron_backward_cuda(l->dI, l->dm, l->dbeta, l->part, l->ds, l->u, l->o, l->s, 4, l->a_beta, l->B, l->T, l->C, l->C,
                         NULL);
    amsu_chunk_backward_cuda(l->dk, l->dv, l->dq, l->dlam, l->part, l->dm, l->k, l->v, l->q, l->a_lambda, l->Hckpt,
                             l->B, l->T, l->C, l->Nh, l->C, NULL);
}
static void k_lif_fwd(void *p) {
    Lab *l = p;
    amsu_recurrence_forward_cuda(NULL, l->u, l->s, 4, NULL, l->I, NULL, NULL, NULL, NULL, l->a_beta,
                                 NULL, NULL, NULL, l->B, l->T, l->C, 1, l->C, 0, NULL);
}
static void k_rmsnorm_fwd(void *p) {
    Lab *l = p;
    rmsnorm_forward_cuda(l->o, l->dq, l->I, l->a_beta, l->B * l->T, l->C, NULL);
}

static void row(const char *name, double sec, double bytes, double flops, double bw, double rate) {
    printf("%-30s %10.1f us %9.1f GB/s %6.1f%% of copy %10.2f TFLOP/s %6.1f%% of fp32 GEMM\n", name,
           sec * 1e6, bytes / sec * 1e-9, 100.0 * bytes / sec / bw, flops / sec * 1e-12,
           100.0 * flops / sec / rate);
}

// How each timed kernel fills an SM at this shape (cuda.h, CudaOccupancy).
static void print_occupancy(int D, int C) {
    CudaOccupancy occ[4];
    amsu_occupancy_cuda(occ, D);
    rmsnorm_occupancy_cuda(&occ[3], C);
#ifdef GLIA_CUDA_EMU
    printf("occupancy per SM (emulator: thread and shared-memory limits only, no registers: not meaningful)\n");
#else
    printf("occupancy per SM\n");
#endif
    for (int i = 0; i < 4; i++)
        printf("  %-16s %4d threads %7zu B dyn. smem %4d regs: %2d blocks/SM, %5.1f%% of the SM's warps\n",
               occ[i].name, occ[i].threads, occ[i].smem, occ[i].regs, occ[i].blocks_per_sm,
               100.0 * occ[i].warp_fraction);
}

// An AM-SU forward and backward (the scan's or the chunked kernels) against
// the CPU on the lab's inputs: o and u within 1e-4 (u up to each neuron's
// first legitimate spike flip), spikes by the flip rule, the backward (fed
// the CPU's activations, so no spike can differ) within 1e-4 on dI and dq.
// 0 if all hold.
static int check_amsu(Lab *l, const char *name, void (*fwd)(void *), void (*bwd)(void *), const float *hI,
                      const float *hk, const float *hv, const float *hq, const float *hl, const float *hb,
                      const float *hds) {
    const size_t n = (size_t)l->B * l->T * l->C;
    const int D = l->C / l->Nh;
    const size_t nH = (size_t)l->B * l->Nh * glia_nchunks(l->T) * D * D;
    float *o = xmalloc(n * 4), *u = xmalloc(n * 4), *s = xmalloc(n * 4), *H = xmalloc(nH * 4);
    float *go = xmalloc(n * 4), *gu = xmalloc(n * 4), *gs = xmalloc(n * 4);
    astro_forward(o, H, hk, hv, hq, hl, NULL, l->B, l->T, l->C, l->Nh, l->C);
    neuron_forward(u, s, hI, o, hb, NULL, NULL, l->B, l->T, l->C, l->C, NULL);
    fwd(l);
    cuda_download(go, l->o, n * 4);
    cuda_download(gu, l->u, n * 4);
    cuda_download(gs, l->s, n * 4);
    double eo = rel(go, o, n);
    AmsuFlipCheck fc = bench_amsu_flip_check(gu, gs, u, o, s, l->B, l->T, l->C, BENCH_SPIKE_MARGIN);
    // backward from the CPU's own saved activations, compared on dI and dq
    float *dI = xmalloc(n * 4), *dm = xmalloc(n * 4), *dk = xmalloc(n * 4), *dv = xmalloc(n * 4);
    float *dq = xmalloc(n * 4), *dl = xcalloc((size_t)l->C, 4), *db = xcalloc((size_t)l->C, 4);
    neuron_backward(dI, dm, db, hds, u, o, s, hb, l->B, l->T, l->C, l->C, NULL);
    astro_backward(dk, dv, dq, dl, dm, hk, hv, hq, hl, H, l->B, l->T, l->C, l->Nh, l->C);
    cuda_upload(l->u, u, n * 4);
    cuda_upload(l->o, o, n * 4);
    cuda_upload(l->s, s, n * 4);
    cuda_upload(l->Hckpt, H, nH * 4);
    cuda_memset(l->dlam, 0, (size_t)l->C * 4, NULL);
    cuda_memset(l->dbeta, 0, (size_t)l->C * 4, NULL);
    bwd(l);
    cuda_download(go, l->dI, n * 4);
    cuda_download(gu, l->dq, n * 4);
    double edI = rel(go, dI, n), edq = rel(gu, dq, n);
    int ok = eo <= 1e-4 && fc.err_u <= 1e-4 && fc.mismatches == 0 && edI <= 1e-4 && edq <= 1e-4;
    printf("check vs CPU (%s): %s: forward o %.1e u %.1e, spikes: %zu near-threshold flips (allowed, |m| < %.0e), "
           "%zu mismatches; backward dI %.1e dq %.1e (bound 1e-4)\n", name, ok ? "ok" : "FAILED", eo, fc.err_u, fc.flips,
           (double)BENCH_SPIKE_MARGIN, fc.mismatches, edI, edq);
    float *bufs[] = {o, u, s, H, go, gu, gs, dI, dm, dk, dv, dq, dl, db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    return ok ? 0 : -1;
}

// The CUDA lab at shape (B, T, C, Nh), then the step of `size` (NULL: none).
// 0, 1 when a kernel does not match the CPU, 2 when it cannot run.
static int cuda_lab(long B, long T, long C, long Nh, long reps, long inner, const char *size) {
    if (C % Nh || !amsu_head_size_supported((int)(C / Nh))) {
        fprintf(stderr, "glia bench kernels: head size %ld (C %ld / Nh %ld) is not one the kernels run (8..128)\n",
                C / (Nh ? Nh : 1), C, Nh);
        return 2;
    }
    if (cuda_device_count() == 0) {
        fprintf(stderr, "glia bench kernels: no CUDA device found (--device cpu times the step on the CPU)\n");
        return 2;
    }
    char dn[300];
    cuda_device_describe(dn, sizeof dn);
    printf("device: %s\nshape: B %ld T %ld C %ld Nh %ld (D %ld); median of %ld batches of %ld calls\n",
           dn, B, T, C, Nh, C / Nh, reps, inner);
    print_occupancy((int)(C / Nh), (int)C);

    Lab l = {.B = (int)B, .T = (int)T, .C = (int)C, .Nh = (int)Nh};
    Rng rng;
    rng_init(&rng, 1);
    // ceilings
    l.copy_n = (size_t)1 << 28;  // 1 GiB of floats: far beyond L2
    l.copy_src = dev_random(l.copy_n, 1.0f, 0.0f, &rng, NULL);
    l.copy_dst = dev_zeros(l.copy_n);
    double bw = 2.0 * l.copy_n * 4 / time_it(k_copy, &l, (int)reps, 1);
    cuda_free(l.copy_src);
    cuda_free(l.copy_dst);
    l.gemm_n = 4096;
    size_t gn = (size_t)l.gemm_n * l.gemm_n;
    l.A = dev_random(gn, 1.0f, 0.0f, &rng, NULL);
    l.Bm = dev_random(gn, 1.0f, 0.0f, &rng, NULL);
    l.Cm = dev_zeros(gn);
    const double gflop = 2.0 * gn * l.gemm_n;
    double rate = gflop / time_it(k_gemm, &l, (int)reps, 1);
    matmul_set_mode(MATMUL_TF32);
    double rate_tf32 = gflop / time_it(k_gemm, &l, (int)reps, 1);
    matmul_set_mode(MATMUL_BF16);
    double rate_bf16 = gflop / time_it(k_gemm, &l, (int)reps, 1);
    matmul_set_mode(MATMUL_FP32);
    {
        float *h = xmalloc(gn * sizeof(float));
        cuda_download(h, l.A, gn * sizeof(float));
        l.A16 = dev_bf16(h, gn);
        cuda_download(h, l.Bm, gn * sizeof(float));
        l.B16 = dev_bf16(h, gn);
        free(h);
    }
    double rate_bf16s = gflop / time_it(k_gemm_bf16, &l, (int)reps, 1);
    cuda_free(l.A);
    cuda_free(l.Bm);
    cuda_free(l.Cm);
    cuda_free(l.A16);
    cuda_free(l.B16);
    printf("ceilings: copy %.0f GB/s (read + write); cuBLAS GEMM 4096^3, fp32 storage: fp32 %.1f, "
           "tf32 %.1f, bf16 %.1f TFLOP/s; bf16 storage: %.1f TFLOP/s\n",
           bw * 1e-9, rate * 1e-12, rate_tf32 * 1e-12, rate_bf16 * 1e-12, rate_bf16s * 1e-12);

    // the AM-SU at the layer shape
    const size_t n = (size_t)B * T * C, D = (size_t)(C / Nh);
    const size_t nH = (size_t)B * Nh * glia_nchunks((int)T) * D * D;
    float *hI, *hk, *hv, *hq, *hl, *hb, *hds;
    l.I = dev_random(n, 1.0f, 0.0f, &rng, &hI);
    l.k = dev_random(n, 1.0f, 0.0f, &rng, &hk);
    l.v = dev_random(n, 1.0f, 0.0f, &rng, &hv);
    l.q = dev_random(n, 1.0f, 0.0f, &rng, &hq);
    l.a_lambda = dev_random((size_t)C, 1.0f, 2.0f, &rng, &hl);
    l.a_beta = dev_random((size_t)C, 0.5f, 0.0f, &rng, &hb);
    l.ds = dev_random(n, 1.0f, 0.0f, &rng, &hds);
    l.o = dev_zeros(n), l.u = dev_zeros(n), l.s = dev_zeros(n), l.Hckpt = dev_zeros(nH);
    l.dI = dev_zeros(n), l.dk = dev_zeros(n), l.dv = dev_zeros(n), l.dq = dev_zeros(n);
    l.dlam = dev_zeros((size_t)C), l.dbeta = dev_zeros((size_t)C);
    l.scratch = dev_zeros(amsu_backward_scratch_floats((int)B, (int)T, (int)C, (int)Nh));
    l.dm = dev_zeros(n), l.part = dev_zeros((size_t)B * C);
    static const struct {
        const char *name;
        void (*fwd)(void *), (*bwd)(void *);
    } modes[2] = {{"scan", k_amsu_fwd, k_amsu_bwd}, {"chunk", k_chunk_fwd, k_chunk_bwd}};
    int bad[2];
    for (int m = 0; m < 2; m++) {
        bad[m] = check_amsu(&l, modes[m].name, modes[m].fwd, modes[m].bwd, hI, hk, hv, hq, hl, hb, hds);
        if (bad[m])
            printf("FAILED: the CUDA AM-SU (%s) does not match the CPU; its timings below are marked UNCHECKED\n",
                   modes[m].name);
    }

    printf("%-30s %13s %14s %15s %16s\n", "kernel", "time", "bandwidth", "", "compute");
    double tok_flops = 5.0 * B * T * Nh * (double)D * D;
    // Bytes are the floor's, as docs/CUDA.md counts them, for both modes: the
    // forward reads I k v q (4n), writes o u s (3n) and Hckpt; the backward
    // reads ds u o s k v q (7n) and Hckpt, writes dI dk dv dq (4n). So "% of
    // copy" is each kernel's fraction of the memory floor.
    for (int m = 0; m < 2; m++) {
        char fn[64], bn[64];
        snprintf(fn, sizeof fn, "amsu %s forward%s", modes[m].name, bad[m] ? " UNCHECKED" : "");
        snprintf(bn, sizeof bn, "amsu %s backward%s", modes[m].name, bad[m] ? " UNCHECKED" : "");
        double f = time_it(modes[m].fwd, &l, (int)reps, (int)inner);
        row(fn, f, 4.0 * (7.0 * n + nH), tok_flops, bw, rate);
        double b = time_it(modes[m].bwd, &l, (int)reps, (int)inner);
        row(bn, b, 4.0 * (11.0 * n + nH), 2.0 * tok_flops, bw, rate);
        double floor_s = 4.0 * (18.0 * n + 2.0 * nH) / bw;
        printf("headline: %samsu %s forward+backward %.1f us at B %ld T %ld C %ld (floor by bytes %.1f us: %.0f%% of "
               "it)\n", bad[m] ? "UNCHECKED " : "", modes[m].name, (f + b) * 1e6, B, T, C, floor_s * 1e6,
               100.0 * floor_s / (f + b));
    }
    row("lif forward", time_it(k_lif_fwd, &l, (int)reps, (int)inner), 4.0 * 3.0 * n, 3.0 * n, bw, rate);
    row("rmsnorm forward", time_it(k_rmsnorm_fwd, &l, (int)reps, (int)inner), 4.0 * 2.0 * n, 4.0 * n, bw,
        rate);
    float *bufs[] = {l.I, l.k, l.v, l.q, l.a_lambda, l.a_beta, l.ds, l.o, l.u, l.s, l.Hckpt,
                     l.dI, l.dk, l.dv, l.dq, l.dlam, l.dbeta, l.scratch, l.dm, l.part};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_free(bufs[i]);
    float *hbufs[] = {hI, hk, hv, hq, hl, hb, hds};
    for (size_t i = 0; i < sizeof hbufs / sizeof hbufs[0]; i++) free(hbufs[i]);

    if (size) {
        matmul_set_mode(MATMUL_TF32);
        bench_step(backend_cuda(), cuda_synchronize, size, (int)B, (int)T, reps < 5 ? (int)reps : 5, "tf32",
                   rate_bf16s, "bf16 GEMM rate");
        matmul_set_mode(MATMUL_BF16);
        bench_step(backend_cuda(), cuda_synchronize, size, (int)B, (int)T, reps < 5 ? (int)reps : 5, "bf16",
                   rate_bf16s, "bf16 GEMM rate");
        matmul_set_mode(MATMUL_FP32);
    }
    return bad[0] || bad[1] ? 1 : 0;
}

#endif  // GLIA_HAVE_CUDA

// The CPU backend's fp32 GEMM rate at n³, FLOP/s (median of reps).
static double cpu_gemm_rate(int n, int reps) {
    const size_t nn = (size_t)n * n;
    float *a = xmalloc(3 * nn * sizeof(float)), *b = a + nn, *c = b + nn;
    Rng rng;
    rng_init(&rng, 1);
    for (size_t i = 0; i < 2 * nn; i++) a[i] = (float)rng_gauss(&rng);
    double *t = xmalloc((size_t)reps * sizeof(double));
    for (int r = -1; r < reps; r++) {  // -1: warm-up
        double t0 = bench_now();
        backend_cpu()->matmul_forward(c, a, b, n, n, n, 1.0f, NULL);
        if (r >= 0) t[r] = bench_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp);
    double rate = 2.0 * nn * n / t[reps / 2];
    free(t);
    free(a);
    return rate;
}

int bench_kernels(int argc, char **argv) {
    CliFlag flags[] = {
        {"--batch", "B", "sequences", "8"},
        {"--seq", "T", "tokens per sequence", "1024"},
        {"--width", "C", "layer width", "768"},
        {"--heads", "NH", "astrocyte heads", "12"},
        {"--reps", "N", "timed batches (the median is reported)", "20"},
        {"--inner", "N", "calls per timed batch", "5"},
        {"--step", "SIZE", "also time a whole training step of this named size ('none': skip)", "124m"},
        {"--device", "DEV", "cuda: the kernel lab and the step; cpu: the step only, on the CPU backend", "cuda"},
        {"--threads", "N", "CPU threads (--device cpu; default: all cores)", NULL},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("bench kernels",
                       "The CUDA kernel lab: each kernel checked against the CPU, then timed against\n"
                       "the copy bandwidth and the cuBLAS GEMM rates measured in the same run; then a\n"
                       "training step and where its time goes, entry by entry of the backend.",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long B, T, C, Nh, reps, inner, threads;
    if (cli_int("bench kernels", "--batch", cli_get(flags, nf, "--batch"), 1, 1 << 16, &B) ||
        cli_int("bench kernels", "--seq", cli_get(flags, nf, "--seq"), 1, 1 << 20, &T) ||
        cli_int("bench kernels", "--width", cli_get(flags, nf, "--width"), 1, 1 << 16, &C) ||
        cli_int("bench kernels", "--heads", cli_get(flags, nf, "--heads"), 1, 1 << 16, &Nh) ||
        cli_int("bench kernels", "--reps", cli_get(flags, nf, "--reps"), 1, 10000, &reps) ||
        cli_int("bench kernels", "--inner", cli_get(flags, nf, "--inner"), 1, 10000, &inner))
        return 2;
    const char *size = cli_get(flags, nf, "--step"), *dev = cli_get(flags, nf, "--device");
    ModelConfig cfg;
    if (!strcmp(size, "none")) size = NULL;
    else if (model_config_named(size, &cfg)) {
        fprintf(stderr, "glia bench kernels: --step: '%s' is not a named size\n", size);
        return 2;
    }
    if (!strcmp(dev, "cpu")) {
        if (!size) {
            fprintf(stderr, "glia bench kernels: --device cpu times only the step: --step needs a named size\n");
            return 2;
        }
        if (cli_get(flags, nf, "--threads")) {
            if (cli_int("bench kernels", "--threads", cli_get(flags, nf, "--threads"), 1, 4096, &threads)) return 2;
            cpu_set_threads((int)threads);
        }
        char dn[300];
        backend_cpu()->describe(dn, sizeof dn);
        double rate = cpu_gemm_rate(1024, reps < 5 ? (int)reps : 5);
        printf("device: %s\nceiling: CPU fp32 GEMM 1024^3 %.1f GFLOP/s\n", dn, rate * 1e-9);
        bench_step(backend_cpu(), NULL, size, (int)B, (int)T, reps < 5 ? (int)reps : 5, "fp32", rate,
                   "CPU fp32 GEMM rate");
        return 0;
    }
    if (strcmp(dev, "cuda")) {
        fprintf(stderr, "glia bench kernels: --device: '%s' is not cuda or cpu\n", dev);
        return 2;
    }
#ifdef GLIA_HAVE_CUDA
    return cuda_lab(B, T, C, Nh, reps, inner, size);
#else
    fprintf(stderr, "glia bench kernels: this glia was built without CUDA (no nvcc at build time); --device cpu "
                    "times the step on the CPU\n");
    return 2;
#endif
}
