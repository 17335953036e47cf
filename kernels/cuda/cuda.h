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
// data, laid out exactly as the CPU backend's (kernels/cpu/cpu.h):
// activations row-major (B, T, C), channel fastest.
#ifndef GLIA_CUDA_API_H
#define GLIA_CUDA_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable CUDA devices; 0 when there is none or when the driver or
// runtime reports any error (no driver, driver too old, ...). Never aborts:
// tests use it to decide whether to skip.
int cuda_device_count(void);

// 1 if the fused AM-SU kernel supports head size D (8, 16, 32, 64, 128).
int amsu_head_size_supported(int D);

// The AM-SU recurrence of one layer for a whole batch of sequences, fused:
// astrocyte calcium state H and modulation o, then the LIF membrane u and
// spikes s, per SPEC.md, from zero state at t = 0 (training / prefill).
//   o, u, s  (B, T, C)   outputs
//   Hckpt    (B, Nh, nchunks(T), D, D) row-major [i][j]: H before the first
//            step of each GLIA_CHUNK-step chunk (cpu.h); may be NULL
//   I        (B, T, C)   synaptic current
//   k, v, q  (B, T, C)   scaled key, value, query (head h = channels h·D..h·D+D-1)
//   a_lambda (Nh, D)     decay logits, λ = sigmoid(a_lambda)
//   a_beta   (C)         membrane logits, β = sigmoid(a_beta)
// D = C / Nh. With astro == 0 (the FFN neuron and SPEC's ablation) o is
// written as zeros and k, v, q, a_lambda, Hckpt and Nh are ignored (may be
// NULL / any value). `stream` is a cudaStream_t (NULL: default stream); the
// call is asynchronous with respect to the host. Invalid shapes (C % Nh != 0,
// unsupported D, non-positive sizes) print a message and exit(1), like any
// other CUDA backend error; check amsu_head_size_supported() first when D
// comes from user input.
void amsu_recurrence_forward_cuda(float *o, float *u, float *s, float *Hckpt, const float *I,
                                  const float *k, const float *v, const float *q,
                                  const float *a_lambda, const float *a_beta, int B, int T,
                                  int C, int Nh, int astro, void *stream);

// The same computation on HOST pointers, for tests: allocates device buffers,
// fills the outputs on the device with NaN (so an unwritten entry cannot pass
// a comparison), copies the inputs, runs on the default stream, synchronises,
// copies o, u, s (and Hckpt when non-NULL) back and frees. Returns 0 on
// success and -1, with a message on stderr, when the shape is invalid (this
// check touches no device). CUDA errors still exit(1).
int amsu_recurrence_forward_cuda_host(float *o, float *u, float *s, float *Hckpt,
                                      const float *I, const float *k, const float *v,
                                      const float *q, const float *a_lambda,
                                      const float *a_beta, int B, int T, int C, int Nh,
                                      int astro);


// ---- NCCL (kernels/cuda/nccl.cu) ---------------------------------------------
// The GPU side of data parallelism (host/dist.h): one NCCL communicator over
// the ranks of the MPI job (world 1 without MPI), each rank on the GPU of its
// local rank. dist_nccl_init selects that device and creates the
// communicator (rank 0 makes the ncclUniqueId and broadcasts it over MPI);
// dist_nccl_allreduce_sum sums n floats of a DEVICE buffer in place over all
// ranks on `stream` (asynchronous); dist_nccl_free destroys the
// communicator. NCCL errors print file:line and NCCL's message and end the
// job (nccl_check), like every CUDA error.
struct Dist;
void dist_nccl_init(const struct Dist *d);
void dist_nccl_allreduce_sum(float *device_buf, size_t n, void *stream);
void dist_nccl_free(void);

#ifdef __cplusplus
}
#endif

#endif
