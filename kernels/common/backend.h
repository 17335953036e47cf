// backend.h: one device's operations behind one table, chosen once.
//
// The model (host/model/model.c) is written once against this table; the CPU
// backend (kernels/cpu/backend.c) and the CUDA backend (kernels/cuda/backend.c)
// fill it. Every pointer an entry takes is in the backend's memory (from its
// alloc) unless its name ends in _host. Contracts are the CPU's (kernels/cpu/
// cpu.h), which every other backend is tested against (tests/test_backend_ops.c):
// - activations row-major (B, T, C), channel fastest; weights (out, in);
// - backward entries overwrite activation gradients and ADD INTO parameter
//   gradients; reductions run in a fixed order (the same result every run);
// - scratch sizes are in elements of the pointer's type; a size of 0 means the
//   entry needs none (NULL may be passed).
// Failures inside an entry end the job (common/check.h); only alloc reports
// running out of memory, by returning NULL, so the caller can name what did
// not fit.
#ifndef GLIA_BACKEND_H
#define GLIA_BACKEND_H

#include <stddef.h>

#include "common/types.h"

#ifdef __cplusplus
extern "C" {
#endif

// How the AM-SU's astrocyte recurrence runs: one timestep after another, or
// in chunks of matrix products (the same function; docs/AMSU.md).
enum { AMSU_SCAN = 0, AMSU_CHUNK = 1 };

typedef struct Backend {
    const char *name;   // "cpu", "cuda"
    int host_memory;    // 1: its memory is host memory (no copies between host and backend)

    // ---- memory (bytes)
    void *(*alloc)(size_t bytes);  // NULL when it does not fit; last_error() says why
    const char *(*last_error)(void);
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*describe)(char *buf, size_t len);  // "NVIDIA H100 80GB HBM3, 79.2 GiB", "CPU, 2 threads"
    void (*set_matmul)(int mode);             // MATMUL_FP32 / TF32 / BF16 (cuda.h); exact-only backends ignore it
    int (*set_amsu)(int mode);                // AMSU_SCAN or AMSU_CHUNK: 0, or -1 where the backend lacks it
    // bytes per stored spike (the FFN's r of neuron_forward / neuron_backward, the AM-SU's s when
    // AmsuWeights.W_O16 is given): 4, fp32, or 2, bf16 bits in the same float * (exact: 0 or 1), as
    // the CUDA backend in MATMUL_BF16 mode; NULL: 4. With 2 the model multiplies spikes only
    // through the spike_* entries below (else NULL)
    int (*spike_bytes)(void);

    // ---- ops
    // out (M, N) = add + alpha · inp (M, K) @ W (N, K)ᵀ; add (M, N): NULL, out (in place) or another buffer
    void (*matmul_forward)(float *out, const float *inp, const float *W, int M, int K, int N, float alpha,
                           const float *add);
    // dinp (M, K) = alpha · dout @ W (+= with accumulate; skipped if NULL); dW (N, K) += alpha · doutᵀ @ inp
    void (*matmul_backward)(float *dinp, float *dW, const float *dout, const float *inp, const float *W, int M,
                            int K, int N, float alpha, int accumulate);
    // 2-byte spikes: out (M, N) = add + s (M, K) @ W16 (N, K)ᵀ, W16 the weights as bf16; add as above
    void (*spike_matmul_forward)(float *out, const bf16_t *s, const bf16_t *W16, int M, int K, int N,
                                 const float *add);
    // 2-byte spikes: dW (N, K) += doutᵀ @ s (M, K), dout (M, N) converted to bf16 into dout16 (M · N) first
    void (*spike_matmul_dW)(float *dW, bf16_t *dout16, const float *dout, const bf16_t *s, int M, int K, int N);
    // dst (n) = src rounded to bf16, to nearest even (common/bf16.h); NULL where spike_bytes is
    void (*to_bf16)(bf16_t *dst, const float *src, size_t n);
    // out (N, C) = g ⊙ x / sqrt(mean(x²) + eps); rstd (N)
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *g, int N, int C);
    size_t (*rmsnorm_scratch)(int N, int C);  // floats
    // dx (N, C) += ∂L/∂x; dg (C) += ∂L/∂g
    void (*rmsnorm_backward)(float *dx, float *dg, float *scratch, const float *dout, const float *x,
                             const float *g, const float *rstd, int N, int C);
    // x (M, C) = E[tokens[i]]
    void (*embedding_forward)(float *x, const int *tokens, const float *E, int M, int C);
    size_t (*embedding_scratch)(int M);  // ints
    // dE[tokens_host[i]] += dx[i], each token's rows summed in position order
    void (*embedding_backward)(float *dE, const float *dx, const int *tokens_host, int *scratch, int M, int C);
    // the LIF neuron (cpu.h neuron_forward / neuron_backward); current and dcurrent at row stride ld;
    // s holds spike_bytes() per spike (the streaming state s_state is fp32 always);
    // test: CPU only (NULL elsewhere)
    void (*neuron_forward)(float *u, float *s, const float *current, const float *o, const float *a_beta,
                           float *u_state, float *s_state, int B, int T, int N, int ld, const NeuronTestMode *test);
    size_t (*neuron_scratch)(int B, int N);  // floats
    void (*neuron_backward)(float *dcurrent, float *dm, float *da_beta, float *scratch, const float *ds,
                            const float *u, const float *o, const float *s, const float *a_beta, int B, int T,
                            int N, int ld, const NeuronTestMode *test);
    // the AM-SU token mixer of one layer (cpu.h amsu_forward / amsu_backward)
    int (*amsu_head_ok)(int D);            // 1 if it runs heads of size D = C / Nh
    size_t (*amsu_scratch)(AmsuShape sh);  // floats
    void (*amsu_forward)(float *y, AmsuActs *a, const float *z, const AmsuWeights *w, AmsuShape sh,
                         AmsuState *state, const float *add, const NeuronTestMode *test);
    void (*amsu_backward)(float *dz, AmsuGrads *g, float *scratch, const float *dy, const float *z,
                          const AmsuActs *a, const AmsuWeights *w, AmsuShape sh, const NeuronTestMode *test);
    // logits (M, Vp): rows of stride Vp >= V, whose V real entries come first; the pad columns
    // [V, Vp) are masked (never read). losses (M) = −log softmax(row[:V])[target] in nats, 0
    // where target < 0
    void (*xent_forward)(float *losses, const float *logits, const int *targets, int M, int V, int Vp);
    // in place: logits[:, :V] becomes k · (softmax − onehot(target)), the pad columns exactly 0;
    // rows with target < 0 become 0
    void (*xent_backward)(float *logits, const int *targets, float k, int M, int V, int Vp);
    // one AdamW step (decoupled decay, bias correction, step from 1) with gradients g · gscale
    void (*adamw)(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
    double (*grad_norm_sq)(const float *g, size_t n);  // Σ g², fixed order; the result on the host
    // sums_host (N) = Σ over the M rows of x (M, N), of |x| with absval; double, rows in order
    void (*column_sums)(double *sums_host, const float *x, int M, int N, int absval);
    // the same of 2-byte spikes s (M, N), absval 0 (NULL where spike_bytes is)
    void (*spike_column_sums)(double *sums_host, const bf16_t *s, int M, int N);

    // ---- collectives over the ranks of the job (common/dist.h; the identity with one process)
    void (*comm_init)(int rank, int world, int local_rank);  // before the first collective
    void (*allreduce_begin)(float *buf, size_t n);  // Σ over ranks in place; may return before it is done
    void (*allreduce_wait)(void);                   // every reduction begun is done
    void (*reduce_scatter)(float *buf, size_t n);   // buf: world · n; block `rank` gets that block's sum
    void (*allgather)(float *buf, size_t n);        // buf: world · n; every rank's block `rank` to all
} Backend;

const Backend *backend_cpu(void);
// The CUDA backend, or NULL when there is no usable device (kernels/cuda/backend.c;
// defined only in builds with CUDA).
const Backend *backend_cuda(void);

#ifdef __cplusplus
}
#endif

#endif
