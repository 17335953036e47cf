// bench_profile.c: the timing Backend of bench_profile.h. Untimed entries
// (memory management, sizes, settings) are the inner table's own; each timed
// one syncs, calls through, syncs, and adds its wall time, and for matrix
// products its FLOPs (2·M·K·N per product; the AM-SU's count its W_I..W_O
// projections, not its recurrence).
#include "cmd/bench_profile.h"

#include <stdio.h>

#include "cmd/bench.h"

enum {
    P_UPLOAD, P_DOWNLOAD, P_COPY, P_ZERO, P_MM_FWD, P_MM_BWD, P_RMS_FWD, P_RMS_BWD, P_EMB_FWD, P_EMB_BWD,
    P_LIF_FWD, P_LIF_BWD, P_AMSU_FWD, P_AMSU_BWD, P_XENT_FWD, P_XENT_BWD, P_ADAMW, P_NORM, P_COLSUMS,
    P_AR_BEGIN, P_AR_WAIT, P_RS, P_AG, P_SPIKE_MM_FWD, P_SPIKE_MM_DW, P_TO_BF16, P_SPIKE_COLSUMS, P_N
};
static const char *names[P_N] = {
    "upload", "download", "copy", "zero", "matmul_forward", "matmul_backward", "rmsnorm_forward",
    "rmsnorm_backward", "embedding_forward", "embedding_backward", "neuron_forward", "neuron_backward",
    "amsu_forward", "amsu_backward", "xent_forward", "xent_backward", "adamw", "grad_norm_sq", "column_sums",
    "allreduce_begin", "allreduce_wait", "reduce_scatter", "allgather", "spike_matmul_forward",
    "spike_matmul_dW", "to_bf16", "spike_column_sums"};

static Backend in, prof;
static void (*sync_fn)(void);
static struct {
    long calls;
    double sec, flops;
} acc[P_N];
static double last_end, between;  // when the last timed call (or profile_begin) ended; the time outside calls

static double start(void) {
    double t0 = bench_now();
    between += t0 - last_end;
    if (sync_fn) sync_fn();
    return t0;
}
static void stop(int id, double t0, double flops) {
    if (sync_fn) sync_fn();
    last_end = bench_now();
    acc[id].sec += last_end - t0;
    acc[id].calls++;
    acc[id].flops += flops;
}
#define TIMED(id, flops, call)      \
    do {                            \
        double t0_ = start();       \
        call;                       \
        stop(id, t0_, flops);       \
    } while (0)

static void p_upload(void *d, const void *s, size_t n) { TIMED(P_UPLOAD, 0, in.upload(d, s, n)); }
static void p_download(void *d, const void *s, size_t n) { TIMED(P_DOWNLOAD, 0, in.download(d, s, n)); }
static void p_copy(void *d, const void *s, size_t n) { TIMED(P_COPY, 0, in.copy(d, s, n)); }
static void p_zero(void *p, size_t n) { TIMED(P_ZERO, 0, in.zero(p, n)); }
static void p_mm_fwd(float *out, const float *inp, const float *W, int M, int K, int N, float alpha, const float *add) {
    TIMED(P_MM_FWD, 2.0 * M * K * N, in.matmul_forward(out, inp, W, M, K, N, alpha, add));
}
static void p_mm_bwd(float *dinp, float *dW, const float *dout, const float *inp, const float *W, int M, int K, int N,
                     float alpha, int acc_) {
    TIMED(P_MM_BWD, ((dinp ? 2.0 : 0.0) + (dW ? 2.0 : 0.0)) * M * K * N, in.matmul_backward(dinp, dW, dout, inp, W, M, K, N, alpha, acc_));
}
static void p_rms_fwd(float *out, float *rstd, const float *x, const float *g, int N, int C) {
    TIMED(P_RMS_FWD, 0, in.rmsnorm_forward(out, rstd, x, g, N, C));
}
static void p_rms_bwd(float *dx, float *dg, float *scr, const float *dout, const float *x, const float *g,
                      const float *rstd, int N, int C) {
    TIMED(P_RMS_BWD, 0, in.rmsnorm_backward(dx, dg, scr, dout, x, g, rstd, N, C));
}
static void p_emb_fwd(float *x, const int *tok, const float *E, int M, int C) {
    TIMED(P_EMB_FWD, 0, in.embedding_forward(x, tok, E, M, C));
}
static void p_emb_bwd(float *dE, const float *dx, const int *tok, int *scr, int M, int C) {
    TIMED(P_EMB_BWD, 0, in.embedding_backward(dE, dx, tok, scr, M, C));
}
static void p_lif_fwd(float *u, float *s, const float *cur, const float *o, const float *ab, float *us, float *ss,
                      int B, int T, int N, int ld, const NeuronTestMode *t) {
    TIMED(P_LIF_FWD, 0, in.neuron_forward(u, s, cur, o, ab, us, ss, B, T, N, ld, t));
}
static void p_lif_bwd(float *dc, float *dm, float *dab, float *scr, const float *ds, const float *u, const float *o,
                      const float *s, const float *ab, int B, int T, int N, int ld, const NeuronTestMode *t) {
    TIMED(P_LIF_BWD, 0, in.neuron_backward(dc, dm, dab, scr, ds, u, o, s, ab, B, T, N, ld, t));
}
static double amsu_flops(AmsuShape sh) {  // W_I (W_K W_V W_Q) W_O: (B·T, C) x (C, C) each
    return 2.0 * sh.B * sh.T * sh.C * (double)sh.C * (sh.astro ? 5 : 2);
}
static void p_amsu_fwd(float *y, AmsuActs *a, const float *z, const AmsuWeights *w, AmsuShape sh, AmsuState *st,
                       const float *add, const NeuronTestMode *t) {
    TIMED(P_AMSU_FWD, amsu_flops(sh), in.amsu_forward(y, a, z, w, sh, st, add, t));
}
static void p_amsu_bwd(float *dz, AmsuGrads *g, float *scr, const float *dy, const float *z, const AmsuActs *a,
                       const AmsuWeights *w, AmsuShape sh, const NeuronTestMode *t) {
    TIMED(P_AMSU_BWD, 2.0 * amsu_flops(sh), in.amsu_backward(dz, g, scr, dy, z, a, w, sh, t));
}
static void p_xent_fwd(float *l, const float *lg, const int *tg, int M, int V, int Vp) {
    TIMED(P_XENT_FWD, 0, in.xent_forward(l, lg, tg, M, V, Vp));
}
static void p_xent_bwd(float *lg, const int *tg, float k, int M, int V, int Vp) {
    TIMED(P_XENT_BWD, 0, in.xent_backward(lg, tg, k, M, V, Vp));
}
static void p_adamw(float *p, const float *g, float gs, float *m, float *v, size_t n, float lr, float b1, float b2,
                    float eps, float wd, int step) {
    TIMED(P_ADAMW, 0, in.adamw(p, g, gs, m, v, n, lr, b1, b2, eps, wd, step));
}
static double p_norm(const float *g, size_t n) {
    double r;
    TIMED(P_NORM, 0, r = in.grad_norm_sq(g, n));
    return r;
}
static void p_colsums(double *s, const float *x, int M, int N, int absval) {
    TIMED(P_COLSUMS, 0, in.column_sums(s, x, M, N, absval));
}
static void p_spike_mm_fwd(float *out, const bf16_t *s, const bf16_t *W16, int M, int K, int N, const float *add) {
    TIMED(P_SPIKE_MM_FWD, 2.0 * M * K * N, in.spike_matmul_forward(out, s, W16, M, K, N, add));
}
static void p_spike_mm_dW(float *dW, bf16_t *d16, const float *dout, const bf16_t *s, int M, int K, int N) {
    TIMED(P_SPIKE_MM_DW, 2.0 * M * K * N, in.spike_matmul_dW(dW, d16, dout, s, M, K, N));
}
static void p_to_bf16(bf16_t *d, const float *x, size_t n) { TIMED(P_TO_BF16, 0, in.to_bf16(d, x, n)); }
static void p_spike_colsums(double *sums, const bf16_t *s, int M, int N) {
    TIMED(P_SPIKE_COLSUMS, 0, in.spike_column_sums(sums, s, M, N));
}
static void p_ar_begin(float *b, size_t n) { TIMED(P_AR_BEGIN, 0, in.allreduce_begin(b, n)); }
static void p_ar_wait(void) { TIMED(P_AR_WAIT, 0, in.allreduce_wait()); }
static void p_rs(float *b, size_t n) { TIMED(P_RS, 0, in.reduce_scatter(b, n)); }
static void p_ag(float *b, size_t n) { TIMED(P_AG, 0, in.allgather(b, n)); }

const Backend *profile_backend(const Backend *inner, void (*sync)(void)) {
    in = prof = *inner;
    sync_fn = sync;
    prof.upload = p_upload, prof.download = p_download, prof.copy = p_copy, prof.zero = p_zero;
    prof.matmul_forward = p_mm_fwd, prof.matmul_backward = p_mm_bwd;
    prof.rmsnorm_forward = p_rms_fwd, prof.rmsnorm_backward = p_rms_bwd;
    prof.embedding_forward = p_emb_fwd, prof.embedding_backward = p_emb_bwd;
    prof.neuron_forward = p_lif_fwd, prof.neuron_backward = p_lif_bwd;
    prof.amsu_forward = p_amsu_fwd, prof.amsu_backward = p_amsu_bwd;
    prof.xent_forward = p_xent_fwd, prof.xent_backward = p_xent_bwd;
    prof.adamw = p_adamw, prof.grad_norm_sq = p_norm, prof.column_sums = p_colsums;
    prof.allreduce_begin = p_ar_begin, prof.allreduce_wait = p_ar_wait;
    prof.reduce_scatter = p_rs, prof.allgather = p_ag;
    if (inner->spike_bytes) {  // the bf16-spike entries, where the backend has them
        prof.spike_matmul_forward = p_spike_mm_fwd, prof.spike_matmul_dW = p_spike_mm_dW;
        prof.to_bf16 = p_to_bf16, prof.spike_column_sums = p_spike_colsums;
    }
    profile_reset();
    return &prof;
}

void profile_reset(void) {
    for (int i = 0; i < P_N; i++) acc[i].calls = 0, acc[i].sec = acc[i].flops = 0.0;
    between = 0.0;
}

void profile_begin(void) { last_end = bench_now(); }
void profile_end(void) { between += bench_now() - last_end; }

void profile_print(double wall_s) {
    printf("  %-20s %7s %10s %7s %12s\n", "entry", "calls", "ms", "share", "GEMM TFLOP/s");
    for (int i = 0; i < P_N; i++) {
        if (!acc[i].calls) continue;
        printf("  %-20s %7ld %10.3f %6.2f%%", names[i], acc[i].calls, acc[i].sec * 1e3, 100.0 * acc[i].sec / wall_s);
        if (acc[i].flops > 0) printf(" %12.3f", acc[i].flops / acc[i].sec * 1e-12);
        printf("\n");
    }
    printf("  %-20s %7s %10.3f %6.2f%%\n", "(host, between)", "-", between * 1e3, 100.0 * between / wall_s);
    printf("  (GEMM TFLOP/s: 2·M·K·N per product over the entry's time; amsu_* count only their C x C projections)\n");
}
