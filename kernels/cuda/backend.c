// backend.c: the CUDA backend's table (common/backend.h): device memory,
// the kernels of cuda.h on the default stream, cuBLASLt for the matmuls and
// NCCL for the collectives. Every entry is asynchronous with respect to the
// host except the copies to the host and grad_norm_sq, which return values.
// The wrappers below only drop the stream argument (everything runs on the
// default stream, in order) and keep the scratch the CPU does not need.
#include <stdio.h>
#include <stdlib.h>

#include "common/backend.h"
#include "cuda/cuda.h"
#include "glia/util.h"

static void dev_copy(void *dst, const void *src, size_t bytes) { cuda_copy(dst, src, bytes, NULL); }
static void dev_zero(void *p, size_t bytes) { cuda_memset(p, 0, bytes, NULL); }

// Training and prefill run the chunked kernels (amsu_chunk.cu) or the fused
// per-timestep ones (amsu.cu); streaming always runs the latter.
static int dev_amsu(int mode) {
    if (mode != AMSU_SCAN && mode != AMSU_CHUNK) return -1;
    amsu_set_mode_cuda(mode);
    return 0;
}

static void mm_fwd(float *out, const float *inp, const float *W, int M, int K, int N, float alpha,
                   const float *add) {
    matmul_forward_cuda(out, inp, W, M, K, N, alpha, add, NULL);
}
static void mm_bwd(float *dinp, float *dW, const float *dout, const float *inp, const float *W, int M, int K,
                   int N, float alpha, int acc) {
    matmul_backward_cuda(dinp, dW, dout, inp, W, M, K, N, alpha, acc, NULL);
}
static void spike_mm_fwd(float *out, const bf16_t *s, const bf16_t *W16, int M, int K, int N, const float *add) {
    spike_matmul_forward_cuda(out, s, W16, M, K, N, add, NULL);
}
static void spike_mm_dW(float *dW, bf16_t *dout16, const float *dout, const bf16_t *s, int M, int K, int N) {
    spike_matmul_dW_cuda(dW, dout16, dout, s, M, K, N, NULL);
}
static void to_bf16(bf16_t *dst, const float *src, size_t n) { to_bf16_cuda(dst, src, n, NULL); }
static void rms_fwd(float *out, float *rstd, const float *x, const float *g, int N, int C) {
    rmsnorm_forward_cuda(out, rstd, x, g, N, C, NULL);
}
static void rms_bwd(float *dx, float *dg, float *scratch, const float *dout, const float *x, const float *g,
                    const float *rstd, int N, int C) {
    rmsnorm_backward_cuda(dx, dg, scratch, dout, x, g, rstd, N, C, NULL);
}
static void emb_fwd(float *x, const int *tokens, const float *E, int M, int C) {
    embedding_forward_cuda(x, tokens, E, M, C, NULL);
}
static size_t emb_scratch(int M) { return 3 * (size_t)M + 1; }  // order, starts, uniq
// The plan (positions grouped by token, in order) is made on the host, where
// the tokens are, then each token's rows are summed on the device in that order.
static void emb_bwd(float *dE, const float *dx, const int *tokens_host, int *scratch, int M, int C) {
    int *plan = xmalloc(emb_scratch(M) * sizeof(int));
    int *order = plan, *starts = order + M, *uniq = starts + M + 1;
    int nuniq = embedding_backward_plan(tokens_host, M, order, starts, uniq);
    int *d_order = scratch, *d_starts = d_order + M, *d_uniq = d_starts + M + 1;
    cuda_upload(d_order, order, (size_t)M * sizeof(int));
    cuda_upload(d_starts, starts, (size_t)(nuniq + 1) * sizeof(int));
    cuda_upload(d_uniq, uniq, (size_t)nuniq * sizeof(int));
    free(plan);
    embedding_backward_cuda(dE, dx, d_order, d_starts, d_uniq, nuniq, C, NULL);
}

static void no_test_mode(const NeuronTestMode *test, const char *what) {
    if (test) fatal("%s: the gradient-check test mode runs on the CPU backend only", what);
}
// The FFN neuron (o ≡ 0): the fused recurrence without the astrocyte. The
// AM-SU's own neuron, which reads o, runs inside amsu_forward.
static void lif_fwd(float *u, float *s, const float *current, const float *o, const float *a_beta, float *u_state,
                    float *s_state, int B, int T, int N, int ld, const NeuronTestMode *test) {
    no_test_mode(test, "neuron_forward");
    if (o) fatal("neuron_forward on the GPU: o must be NULL (the AM-SU neuron runs inside amsu_forward)");
    amsu_recurrence_forward_cuda(NULL, u, s, spike_bytes_cuda(), NULL, current, NULL, NULL, NULL, NULL, a_beta, NULL,
                                 u_state, s_state, B, T, N, 1, ld, 0, NULL);
}
static size_t lif_scratch(int B, int N) { return (size_t)B * N; }
static void lif_bwd(float *dcurrent, float *dm, float *da_beta, float *scratch, const float *ds, const float *u,
                    const float *o, const float *s, const float *a_beta, int B, int T, int N, int ld,
                    const NeuronTestMode *test) {
    no_test_mode(test, "neuron_backward");
    neuron_backward_cuda(dcurrent, dm, da_beta, scratch, ds, u, o, s, spike_bytes_cuda(), a_beta, B, T, N, ld, NULL);
}
static void amsu_fwd(float *y, AmsuActs *a, const float *z, const AmsuWeights *w, AmsuShape sh, AmsuState *state,
                     const float *add, const NeuronTestMode *test) {
    no_test_mode(test, "amsu_forward");
    amsu_forward_cuda(y, a, z, w, sh, state, add, NULL);
}
static void amsu_bwd(float *dz, AmsuGrads *g, float *scratch, const float *dy, const float *z, const AmsuActs *a,
                     const AmsuWeights *w, AmsuShape sh, const NeuronTestMode *test) {
    no_test_mode(test, "amsu_backward");
    amsu_backward_cuda(dz, g, scratch, dy, z, a, w, sh, NULL);
}
static void xent_fwd(float *losses, const float *logits, const int *targets, int M, int V, int Vp) {
    xent_forward_cuda(losses, logits, targets, M, V, Vp, NULL);
}
static void xent_bwd(float *logits, const int *targets, float k, int M, int V, int Vp) {
    xent_backward_cuda(logits, targets, k, M, V, Vp, NULL);
}
static void adamw(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, int step) {
    adamw_update_cuda(p, g, gscale, m, v, n, lr, beta1, beta2, eps, wd, step, NULL);
}
static double norm_sq(const float *g, size_t n) {
    static double *dev;  // the result and the fixed-order partials, kept for the process
    if (!dev && !(dev = cuda_alloc((1 + grad_norm_scratch_doubles()) * sizeof(double))))
        fatal("GPU out of memory for the gradient norm: %s", cuda_last_error_message());
    grad_norm_sq_cuda(dev, dev + 1, g, n, NULL);
    double sq;
    cuda_download(&sq, dev, sizeof sq);
    return sq;
}
// x: fp32 (s NULL) or bf16 spikes s
static void col_sums_of(double *sums_host, const float *x, const bf16_t *s, int M, int N, int absval) {
    double *dev = cuda_alloc((N > 0 ? (size_t)N : 1) * sizeof(double));
    if (!dev) fatal("GPU out of memory for %d column sums: %s", N, cuda_last_error_message());
    if (s) spike_column_sums_cuda(dev, s, M, N, NULL);
    else column_sums_cuda(dev, x, M, N, absval, NULL);
    cuda_download(sums_host, dev, (size_t)N * sizeof(double));
    cuda_free(dev);
}
static void col_sums(double *sums_host, const float *x, int M, int N, int absval) {
    col_sums_of(sums_host, x, NULL, M, N, absval);
}
static void spike_col_sums(double *sums_host, const bf16_t *s, int M, int N) {
    col_sums_of(sums_host, NULL, s, M, N, 0);
}

static const Backend cuda = {
    .name = "cuda",
    .host_memory = 0,
    .alloc = cuda_alloc,
    .last_error = cuda_last_error_message,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = dev_copy,
    .zero = dev_zero,
    .describe = cuda_device_describe,
    .set_matmul = matmul_set_mode,
    .set_amsu = dev_amsu,
    .spike_bytes = spike_bytes_cuda,
    .matmul_forward = mm_fwd,
    .matmul_backward = mm_bwd,
    .spike_matmul_forward = spike_mm_fwd,
    .spike_matmul_dW = spike_mm_dW,
    .to_bf16 = to_bf16,
    .rmsnorm_forward = rms_fwd,
    .rmsnorm_scratch = rmsnorm_backward_scratch_floats,
    .rmsnorm_backward = rms_bwd,
    .embedding_forward = emb_fwd,
    .embedding_scratch = emb_scratch,
    .embedding_backward = emb_bwd,
    .neuron_forward = lif_fwd,
    .neuron_scratch = lif_scratch,
    .neuron_backward = lif_bwd,
    .amsu_head_ok = amsu_head_size_supported,
    .amsu_scratch = amsu_scratch_floats_cuda,
    .amsu_forward = amsu_fwd,
    .amsu_backward = amsu_bwd,
    .xent_forward = xent_fwd,
    .xent_backward = xent_bwd,
    .adamw = adamw,
    .grad_norm_sq = norm_sq,
    .column_sums = col_sums,
    .spike_column_sums = spike_col_sums,
    .comm_init = cuda_comm_init,
    .allreduce_begin = cuda_allreduce_begin,
    .allreduce_wait = cuda_allreduce_wait,
    .reduce_scatter = cuda_reduce_scatter,
    .allgather = cuda_allgather,
};

const Backend *backend_cuda(void) { return cuda_device_count() > 0 ? &cuda : NULL; }
