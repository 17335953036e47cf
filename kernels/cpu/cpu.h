// cpu.h: the CPU backend's operations (fp32, OpenMP, CBLAS).
//
// The CPU backend is both glia's fallback and the reference every CUDA
// kernel is tested against, so each op here is written for clarity first and
// follows SPEC.md rule by rule; the per-timestep rules themselves come from
// kernels/common/step.h, which the CUDA kernels include too.
//
// Conventions, shared with the CUDA backend:
// - Activations are row-major (B, T, C): channel fastest, then time.
// - Weights are row-major (out, in); a linear map is out = inp @ Wᵀ.
// - Backward ops overwrite the gradients of activations and ADD INTO the
//   gradients of parameters (so gradient accumulation over micro-batches is
//   free); callers zero parameter gradients when they start a step.
// - Reductions over the batch (parameter gradients of λ and β) are done per
//   sequence into partials, then summed in a fixed order: results do not
//   depend on the number of threads.
#ifndef GLIA_CPU_H
#define GLIA_CPU_H

#include <stddef.h>

#include "common/types.h"  // AmsuShape, AmsuActs, NeuronTestMode, ...

// ---- matmul (CBLAS) --------------------------------------------------------
// Threads for both OpenMP loops and OpenBLAS.
void cpu_set_threads(int n);
// The OpenBLAS core type (OPENBLAS_CORETYPE) that runs faster on this CPU
// than the one OpenBLAS chose, or NULL: OpenBLAS 0.3.21 (Debian 12) does not
// recognise some newer x86 cores and falls back to SSE3 kernels, or to AVX2
// ones on a CPU with AVX-512 (docs/TRAINING.md, "Threads and BLAS").
const char *cpu_blas_better_core(void);
// out (M, N) = add + alpha · inp (M, K) @ W (N, K)ᵀ; add (M, N): NULL for none,
// out itself to accumulate in place, else another buffer (not overlapping out).
void matmul_forward(float *out, const float *inp, const float *W, int M, int K, int N,
                    float alpha, const float *add);
// With dout (M, N) the gradient of out = alpha · inp @ Wᵀ:
// dinp (M, K) = alpha · dout @ W (added to dinp if `accumulate`; skipped if NULL),
// dW (N, K) += alpha · doutᵀ @ inp (skipped if NULL).
void matmul_backward(float *dinp, float *dW, const float *dout, const float *inp,
                     const float *W, int M, int K, int N, float alpha, int accumulate);

// ---- RMSNorm -----------------------------------------------------------------
// out (N, C) = g ⊙ x / sqrt(mean(x²) + 1e-5); rstd (N) saved for the backward.
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *g, int N, int C);
// dx (N, C) += ∂L/∂x;  dg (C) += ∂L/∂g.
void rmsnorm_backward(float *dx, float *dg, const float *dout, const float *x, const float *g,
                      const float *rstd, int N, int C);

// ---- LIF neuron (both mixers; the FFN is the o ≡ 0 case) --------------------
// u_t = β ⊙ u_{t-1} ⊙ (1 − s_{t-1}) + current_t;  s_t = Θ(u_t + o_t − θ).
// o, u, s: (B, T, N); current (B, T, N) at row stride ld (the AM-SU's I in P);
// o may be NULL (≡ 0); a_beta (N), β = sigmoid(a_beta).
// u_state, s_state (B, N): if non-NULL, the membrane and spikes before step 1
// (streaming inference) and, on return, after step T; if NULL both start at 0.
void neuron_forward(float *u, float *s, const float *current, const float *o,
                    const float *a_beta, float *u_state, float *s_state,
                    int B, int T, int N, int ld, const NeuronTestMode *test);
// Given ds (B, T, N) = ∂L/∂s: dcurrent (B, T, N), row stride ld, = ∂L/∂u_t (= ∂L/∂current_t),
// dm (B, T, N) = ∂L/∂m_t (= ∂L/∂o_t; skipped if NULL), da_beta (N) += ∂L/∂a_beta.
void neuron_backward(float *dcurrent, float *dm, float *da_beta, const float *ds,
                     const float *u, const float *o, const float *s, const float *a_beta,
                     int B, int T, int N, int ld, const NeuronTestMode *test);

// ---- astrocyte (the AM-SU's calcium state) ------------------------------------
// Per sequence b and head h (D = C / Nh, channel c = h·D + i):
//   H_t[i,j] = λ_i H_{t-1}[i,j] + (1 − λ_i) k_t[i] v_t[j];  o_t[j] = Σ_i H_t[i,j] q_t[i].
// o: (B, T, C); k, v, q (and dk, dv, dq): (B, T, C) at row stride ld (views
// into types.h's P); a_lambda (Nh, D), λ = sigmoid(a_lambda).
// Hckpt (B, Nh, nchunks, D, D): H before the first step of each chunk, for the
// backward (NULL when no backward follows). H_state (B, Nh, D, D): if
// non-NULL, the state before step 1 and, on return, after step T; else 0.
void astro_forward(float *o, float *Hckpt, const float *k, const float *v, const float *q,
                   const float *a_lambda, float *H_state, int B, int T, int C, int Nh, int ld);
// Given dout (B, T, C) = ∂L/∂o: dk, dv, dq (B, T, C) overwritten; da_lambda (Nh, D) +=.
void astro_backward(float *dk, float *dv, float *dq, float *da_lambda, const float *dout,
                    const float *k, const float *v, const float *q, const float *a_lambda,
                    const float *Hckpt, int B, int T, int C, int Nh, int ld);

// The same recurrence in chunks of GLIA_CHUNK steps as matrix products
// (astro_chunk.c): equal to the above to rounding, the same checkpoints.
void astro_forward_chunk(float *o, float *Hckpt, const float *k, const float *v, const float *q,
                         const float *a_lambda, float *H_state, int B, int T, int C, int Nh, int ld);
void astro_backward_chunk(float *dk, float *dv, float *dq, float *da_lambda, const float *dout,
                          const float *k, const float *v, const float *q, const float *a_lambda,
                          const float *Hckpt, int B, int T, int C, int Nh, int ld);
// Which of the two amsu_forward / amsu_backward use: AMSU_CHUNK (the
// default: the faster, docs/PERF.md) or AMSU_SCAN (common/backend.h).
void cpu_set_amsu(int mode);

// ---- cross-entropy (xent.c) ---------------------------------------------------------
// −log softmax(logits)[target] in nats, over V logits.
double xent_row(const float *logits, int V, int target);
// dlogits (V) = (softmax(logits) − onehot(target)) · k; all zeros when target < 0.
// dlogits may be logits (in place).
void xent_row_backward(float *dlogits, const float *logits, int V, int target, float k);
// Over M rows of stride Vp (V real entries, then pad columns that are never read):
// losses (M) (0 where target < 0); the backward in place on logits (M, Vp), pads set to 0.
void xent_forward(float *losses, const float *logits, const int *targets, int M, int V, int Vp);
void xent_backward(float *logits, const int *targets, float k, int M, int V, int Vp);

// ---- shared by the backwards --------------------------------------------------------
// grad (N) += σ'(a)·Σ_b part[b][n], b ascending: per-sequence partials of a
// parameter behind a sigmoid (λ, β), summed in a fixed order and chained.
void sigmoid_grad_from_partials(float *grad, const float *part, const float *a, int B, int N);

// ---- optimizer -------------------------------------------------------------------
// One AdamW step (decoupled weight decay, bias correction; step counts from 1)
// on n parameters p with gradients g · gscale and moments m, v.
void adamw_update(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
// Σ g², reduced in a fixed order (independent of the thread count).
double grad_norm_sq(const float *g, size_t n);

// Floats of scratch the backward needs.
size_t amsu_scratch_size(AmsuShape sh);

// z (B, T, C) is the already-normalised layer input; y (B, T, C) = add + W_O s,
// add as matmul_forward's (the residual stream: y = x + W_O s, out of place).
// state: NULL to start from zero (training), else read before step 1 and
// written after step T. acts->Hckpt may be NULL when no backward follows.
void amsu_forward(float *y, AmsuActs *acts, const float *z, const AmsuWeights *w, AmsuShape sh,
                  AmsuState *state, const float *add, const NeuronTestMode *test);
// dz (B, T, C) overwritten; parameter gradients added into g.
void amsu_backward(float *dz, AmsuGrads *g, float *scratch, const float *dy, const float *z,
                   const AmsuActs *acts, const AmsuWeights *w, AmsuShape sh,
                   const NeuronTestMode *test);

#endif
