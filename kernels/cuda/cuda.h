// cuda.h: the C-callable API of glia's CUDA backend.
//
// The host runtime and the tests are C17 and must build on machines without
// the CUDA toolkit, so this header includes no CUDA header at all: streams
// are passed as `void *` (a cudaStream_t cast to void *; NULL means the
// legacy default stream), and every function has C linkage. Its definitions
// live in kernels/cuda/*.cu and exist only when glia is built with CUDA
// (GLIA_HAVE_CUDA=1); callers guard their calls with that macro.
//
// Unless a name ends in _host, every pointer is a DEVICE pointer to fp32
// data (bf16_t *: bf16 bits), laid out exactly as the CPU backend's (kernels/cpu/cpu.h):
// activations row-major (B, T, C), channel fastest.
#ifndef GLIA_CUDA_API_H
#define GLIA_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

#include "common/types.h"  // AmsuShape, AmsuActs, AmsuWeights, AmsuGrads, AmsuState

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable CUDA devices; 0 when there is none or when the driver or
// runtime reports any error (no driver, driver too old, ...). Never aborts:
// tests use it to decide whether to skip.
int cuda_device_count(void);

// ---- device memory and streams (kernels/cuda/device.cu) ---------------------
// Allocation failures are not programming errors: cuda_alloc returns NULL
// and leaves a one-line description (bytes asked for, bytes free) for
// cuda_last_error_message, so the caller can name what did not fit. Every
// other failure ends the process through cuda_check (file:line).
void *cuda_alloc(size_t bytes);
const char *cuda_last_error_message(void);
void cuda_free(void *p);
void cuda_upload(void *dst, const void *host_src, size_t bytes);     // synchronous
void cuda_download(void *host_dst, const void *src, size_t bytes);   // synchronous
void cuda_copy(void *dst, const void *src, size_t bytes, void *stream);  // device to device
void cuda_memset(void *p, int byte, size_t bytes, void *stream);
void cuda_synchronize(void);
// Streams and events, to overlap communication with compute: a stream that
// does not synchronise with the default stream (NULL, where the model's
// kernels run); an event recorded on one stream that another waits for.
void *cuda_stream_new(void);
void cuda_stream_free(void *stream);
void *cuda_event_new(void);
void cuda_event_free(void *event);
void cuda_event_record(void *event, void *stream);
void cuda_stream_wait(void *stream, void *event);
// The device's name and memory, for messages: "NVIDIA H100 80GB HBM3, 79.2 GiB".
void cuda_device_describe(char *buf, size_t len);

// ---- occupancy (kernels/cuda/amsu.cu, ops.cu) -----------------------------------
// How a kernel fills one SM at the launch shape the backend gives it: the
// blocks resident at once (cudaOccupancyMaxActiveBlocksPerMultiprocessor),
// the fraction of the SM's warp slots they hold, registers per thread. The
// emulator answers from thread and shared-memory limits alone, with no
// registers (0): its numbers are not meaningful.
typedef struct {
    const char *name;
    int threads, regs, blocks_per_sm;
    size_t smem;           // dynamic shared memory per block, bytes
    double warp_fraction;  // blocks_per_sm × warps per block / the SM's warp slots
} CudaOccupancy;
// The AM-SU recurrence forward and backward at head size D (8..128), the LIF forward.
void amsu_occupancy_cuda(CudaOccupancy out[3], int D);
// The RMSNorm forward at width C.
void rmsnorm_occupancy_cuda(CudaOccupancy *out, int C);

// ---- matmuls (cuBLASLt; kernels/cuda/device.cu) -------------------------------
// The compute mode of later matmuls (storage stays fp32 in every mode):
// MATMUL_FP32 (the default): exact fp32 products, parity with the CPU;
// MATMUL_TF32: tensor cores, operands rounded to a 10-bit mantissa;
// MATMUL_BF16: tensor cores, operands rounded to bf16 (7-bit mantissa).
// Both reduced modes accumulate in fp32. Tolerances: docs/CUDA.md.
enum { MATMUL_FP32 = 0, MATMUL_TF32 = 1, MATMUL_BF16 = 2 };
void matmul_set_mode(int mode);
// The CPU backend's contract (cpu.h), on device pointers, fp32 storage:
// out (M, N) = add + alpha · inp (M, K) @ W (N, K)ᵀ; add: NULL, out or another
// buffer (cuBLASLt's C != D: no copy).
void matmul_forward_cuda(float *out, const float *inp, const float *W, int M, int K, int N,
                         float alpha, const float *add, void *stream);
// dinp (M, K) = alpha · dout @ W (added if `accumulate`; skipped if NULL),
// dW (N, K) += alpha · doutᵀ @ inp (skipped if NULL).
void matmul_backward_cuda(float *dinp, float *dW, const float *dout, const float *inp,
                          const float *W, int M, int K, int N, float alpha, int accumulate,
                          void *stream);
// The kernel lab's bf16 ceiling: out (M, N) = inp (M, K) @ W (N, K)ᵀ with
// both operands stored as bf16 bit patterns, fp32 accumulation and output.
void matmul_forward_bf16_cuda(float *out, const uint16_t *inp, const uint16_t *W, int M, int K,
                              int N, void *stream);
// Spike storage (backend.h spike_bytes): 2 (bf16 bits) in MATMUL_BF16 mode,
// else 4 (fp32). The setter exists for tests/test_cuda_model.c only: with it
// on, BF16 mode keeps fp32 spikes (the path before bf16 spikes, its oracle).
int spike_bytes_cuda(void);
void spikes_fp32_for_test_cuda(int on);
// BF16 mode's spike products, spikes s and the weights' mirror W16 stored as bf16:
// out (M, N) = add + s (M, K) @ W16 (N, K)ᵀ (add as matmul_forward_cuda's);
// dW (N, K) += doutᵀ (M, N) @ s (M, K), dout converted into dout16 (M·N) first.
void spike_matmul_forward_cuda(float *out, const bf16_t *s, const bf16_t *W16, int M, int K, int N,
                               const float *add, void *stream);
void spike_matmul_dW_cuda(float *dW, bf16_t *dout16, const float *dout, const bf16_t *s, int M, int K,
                          int N, void *stream);
// dst (n) = src rounded to bf16, to nearest even (common/bf16.h).
void to_bf16_cuda(bf16_t *dst, const float *src, size_t n, void *stream);
// How many GEMM shapes the matmuls' plan cache holds (device.cu): one per
// distinct (transposes, sizes, leading dimensions, types, mode, beta != 0,
// C != D, alignments), each with the heuristic's algorithm chosen once.
int matmul_plans_cuda(void);

// ---- the other model ops (kernels/cuda/ops.cu) ---------------------------------
// Same contracts as their CPU counterparts in cpu.h, on device pointers.
// Parameter gradients are reduced in a fixed order through `scratch` (never
// float atomics), so results do not change from run to run.
void rmsnorm_forward_cuda(float *out, float *rstd, const float *x, const float *g, int N, int C,
                          void *stream);
// dx (N, C) += ∂L/∂x; dg (C) += ∂L/∂g. scratch: rmsnorm_backward_scratch_floats(N, C).
size_t rmsnorm_backward_scratch_floats(int N, int C);
void rmsnorm_backward_cuda(float *dx, float *dg, float *scratch, const float *dout,
                           const float *x, const float *g, const float *rstd, int N, int C,
                           void *stream);
// LIF backward (cpu.h neuron_backward, no test mode): dcurrent (B, T, N),
// row stride ld, overwritten; dm (B, T, N) overwritten unless NULL; da_beta (N) +=; o may
// be NULL (≡ 0). scratch: B·N floats. s: sb bytes per spike, as amsu_recurrence_forward_cuda's.
void neuron_backward_cuda(float *dcurrent, float *dm, float *da_beta, float *scratch,
                          const float *ds, const float *u, const float *o, const void *s, int sb,
                          const float *a_beta, int B, int T, int N, int ld, void *stream);
// x (M, C) = E[tokens[i]] for M device-resident token ids.
void embedding_forward_cuda(float *x, const int *tokens, const float *E, int M, int C,
                            void *stream);
// The deterministic embedding backward. On the host, embedding_backward_plan
// groups the M positions by token: order (M) lists positions sorted by
// (token, position), starts (nuniq + 1) delimits each token's run in order,
// uniq (nuniq) is the token of each run; returns nuniq. Then, on the device,
// dE[uniq[u]] += dx[order[starts[u]]] + ... in that order (the CPU's order).
int embedding_backward_plan(const int *tokens_host, int M, int *order, int *starts, int *uniq);
void embedding_backward_cuda(float *dE, const float *dx, const int *order, const int *starts,
                             const int *uniq, int nuniq, int C, void *stream);
// Cross-entropy over the first V logits of each of M rows of stride Vp (the
// pad columns [V, Vp) are never read): losses (M) = −log softmax(row[:V])[target]
// in nats, 0 where target < 0.
void xent_forward_cuda(float *losses, const float *logits, const int *targets, int M, int V,
                       int Vp, void *stream);
// In place: logits[:, :V] becomes k · (softmax − onehot(target)) and the pad
// columns exactly 0; rows whose target is < 0 become 0.
void xent_backward_cuda(float *logits, const int *targets, float k, int M, int V, int Vp,
                        void *stream);
// cpu.h adamw_update on device pointers.
void adamw_update_cuda(float *p, const float *g, float gscale, float *m, float *v, size_t n,
                       float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                       void *stream);
// Σ g² into *out (one device double), summed in a fixed order.
// scratch: grad_norm_scratch_doubles() doubles.
size_t grad_norm_scratch_doubles(void);
void grad_norm_sq_cuda(double *out, double *scratch, const float *g, size_t n, void *stream);

// sums (N, device doubles) = Σ over the M rows of x (M, N), of |x| with absval.
void column_sums_cuda(double *sums, const float *x, int M, int N, int absval, void *stream);
// The same of bf16 spikes s (M, N) (absval 0).
void spike_column_sums_cuda(double *sums, const bf16_t *s, int M, int N, void *stream);

// 1 if the fused AM-SU kernel supports head size D (8, 16, 32, 64, 128).
int amsu_head_size_supported(int D);

// The AM-SU recurrence of one layer for a whole batch of sequences, fused:
// astrocyte calcium state H and modulation o, then the LIF membrane u and
// spikes s, per SPEC.md.
//   o, u, s  (B, T, C)   outputs; s of sb bytes per spike: 4 fp32, 2 bf16 bits
//                        (BF16 mode's storage, spike_bytes_cuda; the streaming
//                        state s_state is fp32 always)
//   Hckpt    (B, Nh, nchunks(T), D, D) row-major [i][j]: H before the first
//            step of each GLIA_CHUNK-step chunk (cpu.h); may be NULL
//   I        (B, T, C)   synaptic current, row stride ld (a view into P, types.h)
//   k, v, q  (B, T, C)   scaled key, value, query (head h = channels h·D..h·D+D-1),
//                        row stride ld
//   a_lambda (Nh, D)     decay logits, λ = sigmoid(a_lambda)
//   a_beta   (C)         membrane logits, β = sigmoid(a_beta)
//   H_state  (B, Nh, D, D), u_state, s_state (B, C): the recurrent state of
//            streaming inference (cpu.h AmsuState). NULL: every sequence
//            starts from zero (training, prefill); non-NULL: read before
//            step 1 and overwritten with the state after step T. H_state is
//            ignored with astro == 0; u_state and s_state go together.
// D = C / Nh. With astro == 0 (the FFN neuron and SPEC's ablation) o is
// written as zeros, or not at all when NULL, and k, v, q, a_lambda, Hckpt,
// H_state and Nh are ignored (may be NULL / any value). `stream` is a
// cudaStream_t (NULL: default stream); the call is asynchronous with respect
// to the host. Invalid shapes (C % Nh != 0,
// unsupported D, non-positive sizes) print a message and exit(1), like any
// other CUDA backend error; check amsu_head_size_supported() first when D
// comes from user input.
void amsu_recurrence_forward_cuda(float *o, float *u, void *s, int sb, float *Hckpt, const float *I,
                                  const float *k, const float *v, const float *q,
                                  const float *a_lambda, const float *a_beta, float *H_state,
                                  float *u_state, float *s_state, int B, int T, int C, int Nh,
                                  int ld, int astro, void *stream);

// The fused AM-SU backward (astro == 1; the ablation uses neuron_backward_cuda)
// of a forward from zero state, per SPEC.md "Backward pass": given
// ds (B, T, C) = ∂L/∂s and the forward's saved u, o, s, k, v, q, Hckpt,
// writes dI (= ∂L/∂u_t), dk, dv, dq (B, T, C; row stride ld, as k, v, q) and ADDS into da_lambda (Nh, D)
// and da_beta (C), chained through their sigmoids. Neuron c = h·D + i and
// row i of head h's H run in the same thread; the states inside a chunk are
// recomputed from Hckpt. Per-sequence partials of da_lambda and da_beta are
// summed in a fixed order: no float atomics, the same result on every run.
// scratch: amsu_backward_scratch_floats(B, T, C, Nh) floats.
size_t amsu_backward_scratch_floats(int B, int T, int C, int Nh);
void amsu_recurrence_backward_cuda(float *dI, float *dk, float *dv, float *dq, float *da_lambda,
                                   float *da_beta, float *scratch, const float *ds,
                                   const float *u, const float *o, const void *s, int sb,
                                   const float *k, const float *v, const float *q,
                                   const float *Hckpt, const float *a_lambda,
                                   const float *a_beta, int B, int T, int C, int Nh, int ld,
                                   void *stream);

// The same computation on HOST pointers, for tests: allocates device buffers,
// fills the outputs on the device with NaN (so an unwritten entry cannot pass
// a comparison), copies the inputs, runs on the default stream, synchronises,
// copies o, u, s (and Hckpt when non-NULL) back and frees. H_state, u_state
// and s_state are host copies of the streaming state, NULL or read and
// overwritten as in amsu_recurrence_forward_cuda. Returns 0 on
// success and -1, with a message on stderr, when the shape is invalid (this
// check touches no device). CUDA errors still exit(1). I, k, v, q are
// contiguous here (ld = C).
int amsu_recurrence_forward_cuda_host(float *o, float *u, float *s, float *Hckpt,
                                      const float *I, const float *k, const float *v,
                                      const float *q, const float *a_lambda,
                                      const float *a_beta, float *H_state, float *u_state,
                                      float *s_state, int B, int T, int C, int Nh, int astro);


// ---- the chunked AM-SU recurrence (kernels/cuda/amsu_chunk.cu) --------------------
// The same function as amsu_recurrence_forward_cuda from zero state (training,
// prefill), computed in chunks of GLIA_CHUNK steps with matrix products on
// the tensor cores (3xTF32: fp32-level accuracy). Same arguments and Hckpt,
// without the streaming state (I, k, v, q at row stride ld). 1 if it runs head size D.
int amsu_chunk_head_size_supported(int D);
void amsu_chunk_forward_cuda(float *o, float *u, void *s, int sb, float *Hckpt, const float *I, const float *k,
                             const float *v, const float *q, const float *a_lambda, const float *a_beta, int B,
                             int T, int C, int Nh, int ld, void *stream);
// The astrocyte's backward in chunks (cpu.h astro_backward_chunk on device
// pointers): from dout = ∂L/∂o and the forward's Hckpt, writes dk, dv, dq
// (B, T, C; row stride ld, as k, v, q) and ADDS into da_lambda (Nh, D), chained through λ's sigmoid,
// from per-sequence partials summed in a fixed order. The neuron's backward
// (dI, dβ, ∂L/∂o) is neuron_backward_cuda's. scratch: B·C floats. At D = 128
// the tensor cores read Hckpt in place, which needs it 32-byte aligned:
// amsu_chunk_backward_ok says whether it can run (else it exits with a message).
int amsu_chunk_backward_ok(int D, const float *Hckpt);
void amsu_chunk_backward_cuda(float *dk, float *dv, float *dq, float *da_lambda, float *scratch,
                              const float *dout, const float *k, const float *v, const float *q,
                              const float *a_lambda, const float *Hckpt, int B, int T, int C, int Nh,
                              int ld, void *stream);

// ---- the AM-SU token mixer, one layer (kernels/cuda/amsu.cu) -------------------
// cpu.h's amsu_forward / amsu_backward on the GPU: the structs hold device
// pointers (acts carved with amsu_acts_bind from device memory). The forward
// writes y = add + W_O s (add as matmul_forward_cuda's: the residual stream);
// with w->W_O16 (BF16 mode) the spikes a->s are stored as bf16 and multiplied
// with that mirror (spike_matmul_forward_cuda, spike_matmul_dW_cuda);
// state: NULL from zero (Hckpt written), else streaming (Hckpt not written).
// The backward overwrites dz and adds into the parameter gradients.
// scratch: amsu_scratch_floats_cuda(sh) floats.
size_t amsu_scratch_floats_cuda(AmsuShape sh);
// Which recurrence amsu_forward_cuda / amsu_backward_cuda run from zero state:
// AMSU_CHUNK (the default, amsu_chunk.cu) or AMSU_SCAN (common/backend.h).
void amsu_set_mode_cuda(int mode);
void amsu_forward_cuda(float *y, AmsuActs *a, const float *z, const AmsuWeights *w,
                       AmsuShape sh, AmsuState *state, const float *add, void *stream);
void amsu_backward_cuda(float *dz, AmsuGrads *g, float *scratch, const float *dy, const float *z,
                        const AmsuActs *a, const AmsuWeights *w, AmsuShape sh, void *stream);

// ---- collectives (kernels/cuda/nccl.cu) ------------------------------------------
// The GPU side of data parallelism: one NCCL communicator over the ranks of
// the job (world 1 without MPI), each rank on the GPU of its local rank.
// cuda_comm_init selects that device and creates the communicator (rank 0
// makes the ncclUniqueId and broadcasts it over MPI). All buffers are DEVICE
// buffers, reduced in place:
// - cuda_allreduce_begin sums n floats over the ranks on NCCL's own stream,
//   after the work issued so far on the default stream, and returns at once
//   (overlap); cuda_allreduce_wait makes the default stream wait for every
//   reduction begun.
// - cuda_reduce_scatter (world · n floats) leaves in block `rank` that block
//   of the sum; cuda_allgather copies every rank's block `rank` to all ranks.
//   Both on the default stream.
void cuda_comm_init(int rank, int world, int local_rank);
void cuda_allreduce_begin(float *buf, size_t n);
void cuda_allreduce_wait(void);
void cuda_reduce_scatter(float *buf, size_t n);
void cuda_allgather(float *buf, size_t n);
void cuda_comm_free(void);

#ifdef __cplusplus
}
#endif

#endif
