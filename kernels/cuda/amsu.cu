// amsu.cu: the AM-SU recurrence on the GPU, forward and backward: astrocyte
// calcium state, modulation, LIF membrane and spikes of one layer, each
// direction in one kernel.
//
// ---- forward --------------------------------------------------------------------
// Why it is built this way (SPEC.md, "Limits"): for one sequence b and head
// h, the columns of the astrocyte state H (D x D) are independent. Column j
// is updated with the whole k_t and its own v_t[j], and the modulation
// o_t[j] = Σ_i H_t[i][j] q_t[i] reads only that column. So a block runs one
// (b, h) pair for the whole sequence, thread j owns column j of H in D
// registers, and at every step
//   1. thread j loads k_t[j], q_t[j], v_t[j], I_t[j] (one coalesced row of
//      the head's D channels per tensor) and stages (1 − λ_j)·k_t[j] and
//      q_t[j] in shared memory, where every thread reads them as broadcasts,
//      four rows per 16-byte load;
//   2. updates its column, H[i][j] = λ_i H[i][j] + (1 − λ_i) k_t[i] v_t[j],
//      and accumulates o_t[j] over ascending i (the CPU's order, astro_step
//      in kernels/cpu/amsu.c), with no cross-thread reduction;
//   3. runs neuron c = h·D + j of the LIF layer on the same registers: the
//      astrocyte never depends on the neurons, and o_t[j] is exactly the
//      modulation neuron c needs at step t, so o, u and s are produced in
//      one pass and o never makes a round trip through memory before use.
// The per-entry rules come from common/step.h, shared with the CPU backend.
// The staging buffers are double-buffered on t & 1, so one __syncthreads per
// step suffices: a thread writing buffer t & 1 at step t has passed step
// t − 1's barrier, after which nobody reads that buffer again until step t's.
// The next step's four inputs are loaded before the current step's
// arithmetic, so their memory latency overlaps it.
//
// Streaming inference passes the recurrent state in and out (H_state,
// u_state, s_state): thread j loads column j of H_state and the u, s of its
// neuron before step 1 instead of zeros, and stores them back after step T;
// both accesses are coalesced over j. Nothing else changes, so a sequence
// run in pieces computes the same thing as in one call (the checkpoint of a
// piece's first chunk is the state it started from, as on the CPU).
//
// D is a template parameter (8, 16, 32, 64, 128): the column must sit in
// registers, which needs every index into it known at compile time.
//
// With astro == 0 there is no astrocyte: a thread per (sequence, channel)
// runs the LIF neuron alone along time and writes o = 0 (unless o is NULL).
//
// ---- backward -------------------------------------------------------------------
// The CPU reference is neuron_backward (kernels/cpu/lif.c, with dm = ∂L/∂o)
// followed by astro_backward (kernels/cpu/amsu.c); this kernel computes the
// same recursions in one pass, backward in time:
//   dm_t = ds_t σ'(m_t),  du_t = dm_t + β keep_{t+1} du_{t+1},  dI_t = du_t,
//   dβ += du_t u_{t−1} keep_t,  do_t = dm_t,
//   G_t = q_t do_tᵀ + diag(λ) G_{t+1}            (G = total ∂L/∂H_t)
//   dq_t[i] = Σ_j H_t[i,j] do_t[j],  dk_t[i] = (1 − λ_i) Σ_j G_t[i,j] v_t[j],
//   dv_t[j] = Σ_i (1 − λ_i) G_t[i,j] k_t[i],
//   dλ_i += Σ_j G_t[i,j] (H_{t−1}[i,j] − k_t[i] v_t[j]).
// Where the forward owns columns, the backward owns ROWS: one block per
// (sequence b, head h), D threads, thread i owns row i of H and of G, and
// neuron c = h·D + i. With rows, dq_t[i], dk_t[i] and the dλ_i term are sums
// along the thread's own row, and the calcium update of row i needs only
// k_t[i] and λ_i of its own plus the shared v_t. Only dv_t[j] crosses
// threads: every thread writes its row of contributions (1 − λ_i) k_t[i]
// G_t[i,j] into a shared D × (D + 1) array (the pad puts a thread's row
// writes and a column's reads on distinct banks), and after a barrier thread
// j sums column j over ascending i, the CPU's order. And neuron c's dm_t is
// exactly do_t[i], which every thread then needs whole: it is staged in
// shared memory, read back as 16-byte broadcasts. Two barriers per step:
// after staging do_t (before the row work reads it) and after the row
// contributions (before the column sums); the next step's writes of do_t
// and of the contributions come after one of these, so one buffer of each
// suffices.
//
// The forward keeps H only at the start of each GLIA_CHUNK-step chunk
// (Hckpt, (B, Nh, nchunks, D, D) [i][j]). Chunks are walked from the last to
// the first; per chunk
//   1. the block stages the chunk's rows of v (GLIA_CHUNK × D, shared) and
//      the checkpoint, transposed through the dv array so that both global
//      reads are coalesced;
//   2. thread i recomputes its row of H for every step of the chunk with the
//      forward's rule (step_calcium, so the same expression as the forward
//      and the CPU) into the block's region of `scratch`, laid out
//      [τ][j][i] (i fastest) so a warp's stores and loads are coalesced; a
//      thread reads back only what it wrote itself, so H needs no barrier;
//   3. the block walks the chunk backward, one step at a time as above.
// G stays in registers across chunks. dβ and dλ of neuron / row c are
// accumulated per sequence in registers (in the CPU's order: steps
// descending) and stored as per-sequence partials; a second small kernel sums
// them over b in ascending order, chains them through the sigmoids and adds
// them into da_beta and da_lambda. No float atomics: the result is the same on
// every run.
//
// scratch: amsu_backward_scratch_floats floats, the H recompute of each block's
// chunk (at (b·Nh + h)·(L+1)·D², entry (τ, i, j) at (τ·D + j)·D + i, L =
// min(T, GLIA_CHUNK)), then the dβ and dλ partials (B, C) each.
//
// Registers, shared memory, bytes and FLOPs of both kernels at the model's
// shapes: docs/CUDA.md, "The fused per-timestep kernel".
#include "common/backend.h"  // AMSU_SCAN, AMSU_CHUNK
#include "common/step.h"
#include "common/types.h"  // GLIA_CHUNK, glia_nchunks: the checkpoint convention
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <stdint.h>

// ---- kernels ----------------------------------------------------------------------

// One block per (sequence b, head h), flattened as blockIdx.x = b·Nh + h;
// D threads, thread j owns column j of H and neuron c = h·D + j.
// SB: bytes per stored spike (cuda_common.h); the streaming state stays fp32.
template <int D, int SB>
__global__ void __launch_bounds__(D)
amsu_recurrence_forward_kernel(float *__restrict__ o,              // (B, T, C)
                               float *__restrict__ u,              // (B, T, C)
                               Spike<SB> *__restrict__ s,          // (B, T, C)
                               float *__restrict__ Hckpt,          // (B, Nh, nch, D, D) or NULL
                               const float *__restrict__ I,        // (B, T, C), row stride ld
                               const float *__restrict__ k,        // (B, T, C), row stride ld
                               const float *__restrict__ v,        // (B, T, C), row stride ld
                               const float *__restrict__ q,        // (B, T, C), row stride ld
                               const float *__restrict__ a_lambda, // (Nh, D)
                               const float *__restrict__ a_beta,   // (C)
                               float *__restrict__ H_state,        // (B, Nh, D, D) or NULL
                               float *__restrict__ u_state,        // (B, C) or NULL
                               float *__restrict__ s_state,        // (B, C) or NULL
                               int T, int C, int Nh, int nch, int ld) {
    const int bh = blockIdx.x, b = bh / Nh, h = bh % Nh;
    const int j = threadIdx.x;
    const int c = h * D + j;  // this thread's channel; also its index into a_lambda (Nh, D)

    // Read back as float4 (one 16-byte broadcast load per 4 rows), hence the alignment.
    __shared__ __align__(16) float lam_s[D];    // λ_i of the head
    __shared__ __align__(16) float gk_s[2][D];  // (1 − λ_i)·k_t[i], double-buffered on t & 1
    __shared__ __align__(16) float q_s[2][D];   // q_t[i], double-buffered on t & 1

    const float lam_j = step_sigmoid(a_lambda[c]);
    const float beta = step_sigmoid(a_beta[c]);
    lam_s[j] = lam_j;  // published by the first barrier inside the loop

    float H[D];  // column j of H: H[i] = H[i][j]
    float *Hst = H_state ? H_state + (size_t)bh * D * D + j : nullptr;  // column j of the state
    if (Hst) {
#pragma unroll
        for (int i = 0; i < D; i++) H[i] = Hst[(size_t)i * D];
    } else {
#pragma unroll
        for (int i = 0; i < D; i++) H[i] = 0.0f;
    }
    const size_t sc = (size_t)b * C + c;  // this neuron in u_state, s_state (B, C)
    float u_prev = u_state ? u_state[sc] : 0.0f, s_prev = s_state ? s_state[sc] : 0.0f;

    // Element (b, t, c) is at base + t·C (o, u, s) and pbase + t·ld (I, k, v, q).
    const size_t base = (size_t)b * T * C + c, pbase = (size_t)b * T * ld + c;
    float *ckpt = Hckpt ? Hckpt + (size_t)bh * nch * D * D + j : nullptr;  // column j, chunk 0

    float k_next = 0.0f, v_next = 0.0f, q_next = 0.0f, I_next = 0.0f;
    if (T > 0) {
        k_next = k[pbase];
        v_next = v[pbase];
        q_next = q[pbase];
        I_next = I[pbase];
    }
    for (int t = 0; t < T; t++) {
        const size_t off = base + (size_t)t * C, pin = pbase + (size_t)(t + 1) * ld;
        const float kt = k_next, vt = v_next, qt = q_next, It = I_next;
        if (t + 1 < T) {  // prefetch step t + 1
            k_next = k[pin];
            v_next = v[pin];
            q_next = q[pin];
            I_next = I[pin];
        }
        // Checkpoint: H before the first step of each chunk (coalesced over j).
        if (ckpt && t % GLIA_CHUNK == 0) {
            float *dst = ckpt + (size_t)(t / GLIA_CHUNK) * D * D;
#pragma unroll
            for (int i = 0; i < D; i++) dst[(size_t)i * D] = H[i];
        }
        const int buf = t & 1;
        gk_s[buf][j] = (1.0f - lam_j) * kt;
        q_s[buf][j] = qt;
        __syncthreads();

        // Astrocyte: update column j and read out o_t[j], ascending i, four
        // rows per 16-byte shared load of λ, (1 − λ)·k and q.
        const float4 *lam4 = reinterpret_cast<const float4 *>(lam_s);
        const float4 *gk4 = reinterpret_cast<const float4 *>(gk_s[buf]);
        const float4 *q4 = reinterpret_cast<const float4 *>(q_s[buf]);
        float ot = 0.0f;
#pragma unroll
        for (int i4 = 0; i4 < D / 4; i4++) {
            const float4 l = lam4[i4], g = gk4[i4], qq = q4[i4];
            float *h4 = H + 4 * i4;
            h4[0] = step_calcium(l.x, h4[0], g.x, vt);
            ot += h4[0] * qq.x;
            h4[1] = step_calcium(l.y, h4[1], g.y, vt);
            ot += h4[1] * qq.y;
            h4[2] = step_calcium(l.z, h4[2], g.z, vt);
            ot += h4[2] * qq.z;
            h4[3] = step_calcium(l.w, h4[3], g.w, vt);
            ot += h4[3] * qq.w;
        }
        // Neuron c: membrane with hard reset, potential, spike.
        const float ut = step_membrane(beta, u_prev, 1.0f - s_prev, It);
        const float st = step_spike(step_potential(ut, ot));
        o[off] = ot;
        u[off] = ut;
        spike_put(s + off, st);
        u_prev = ut;
        s_prev = st;
    }
    // The state after step T, for the next call of a streaming sequence.
    if (Hst) {
#pragma unroll
        for (int i = 0; i < D; i++) Hst[(size_t)i * D] = H[i];
    }
    if (u_state) {
        u_state[sc] = u_prev;
        s_state[sc] = s_prev;
    }
}

// astro == 0: a thread per (sequence, channel), flattened as
// blockIdx.x = b·ceil(C / blockDim.x) + channel block. o is written as 0
// (the FFN passes none: NULL). SB: bytes per stored spike (cuda_common.h;
// the streaming state s_state stays fp32).
template <int SB>
__global__ void lif_forward_kernel(float *__restrict__ o,             // (B, T, C) or NULL
                                   float *__restrict__ u,             // (B, T, C)
                                   Spike<SB> *__restrict__ s,         // (B, T, C)
                                   const float *__restrict__ I,       // (B, T, C), row stride ld
                                   const float *__restrict__ a_beta,  // (C)
                                   float *__restrict__ u_state,       // (B, C) or NULL
                                   float *__restrict__ s_state,       // (B, C) or NULL
                                   int T, int C, int ld) {
    const int nblk = ceil_div(C, blockDim.x);
    const int b = blockIdx.x / nblk;
    const int c = (blockIdx.x % nblk) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const float beta = step_sigmoid(a_beta[c]);
    const size_t base = (size_t)b * T * C + c;
    const size_t sc = (size_t)b * C + c;  // this neuron in u_state, s_state (B, C)
    float u_prev = u_state ? u_state[sc] : 0.0f, s_prev = s_state ? s_state[sc] : 0.0f;
    for (int t = 0; t < T; t++) {
        const size_t off = base + (size_t)t * C;
        const float ut = step_membrane(beta, u_prev, 1.0f - s_prev, I[((size_t)b * T + t) * ld + c]);
        const float st = step_spike(step_potential(ut, 0.0f));
        if (o) o[off] = 0.0f;
        u[off] = ut;
        spike_put(s + off, st);
        u_prev = ut;
        s_prev = st;
    }
    if (u_state) {
        u_state[sc] = u_prev;
        s_state[sc] = s_prev;
    }
}

// Columns per slice of the recompute when H_t does not stay in registers (D = 128).
#define AMSU_BWD_SLICE 32

// Floats of dynamic shared memory of the backward kernel: the dv
// contributions D × (D + 1) (also the checkpoint's staging), the chunk's v
// rows GLIA_CHUNK × D and do_t (D). Every part starts 16-byte aligned
// (D is a multiple of 4, so D·(D + 1) is too).
static constexpr int amsu_bwd_smem_floats(int D) {
    return D * (D + 1) + GLIA_CHUNK * D + D;
}

// One block per (sequence b, head h), flattened as blockIdx.x = b·Nh + h;
// D threads, thread i owns row i of H and G and neuron c = h·D + i. See the
// top comment. L = min(T, GLIA_CHUNK): H recompute rows per block, minus one.
template <int D, int SB>
__global__ void __launch_bounds__(D)
amsu_recurrence_backward_kernel(float *__restrict__ dI,              // (B, T, C), row stride ld
                                float *__restrict__ dk,              // (B, T, C), row stride ld
                                float *__restrict__ dv,              // (B, T, C), row stride ld
                                float *__restrict__ dq,              // (B, T, C), row stride ld
                                float *__restrict__ Hrec,            // (B·Nh, L+1, D, D) [τ][j][i]
                                float *__restrict__ dbeta_part,      // (B, C)
                                float *__restrict__ dlam_part,       // (B, C)
                                const float *__restrict__ ds,        // (B, T, C)
                                const float *__restrict__ u,         // (B, T, C)
                                const float *__restrict__ o,         // (B, T, C)
                                const Spike<SB> *__restrict__ s,     // (B, T, C)
                                const float *__restrict__ k,         // (B, T, C), row stride ld
                                const float *__restrict__ v,         // (B, T, C), row stride ld
                                const float *__restrict__ q,         // (B, T, C), row stride ld
                                const float *__restrict__ Hckpt,     // (B, Nh, nch, D, D) [i][j]
                                const float *__restrict__ a_lambda,  // (Nh, D)
                                const float *__restrict__ a_beta,    // (C)
                                int T, int C, int Nh, int nch, int L, int ld) {
    // H_t stays in registers through the walk (see the top comment).
    constexpr bool kHReg = D <= 64;
    constexpr int DP = D + 1;  // padded row of red
    const int bh = blockIdx.x, b = bh / Nh, h = bh % Nh;
    const int i = threadIdx.x;
    const int c = h * D + i;  // this thread's neuron; also its index into a_lambda (Nh, D)

    extern __shared__ __align__(16) float amsu_bwd_smem[];
    float *red = amsu_bwd_smem;                // (D, D + 1): (1 − λ_i) k_t[i] G_t[i, j]
    float *v_s = red + D * DP;                 // (GLIA_CHUNK, D): v of the chunk's steps
    float *do_s = v_s + GLIA_CHUNK * D;        // (D): do_t = dm_t of the head
    const float4 *do4 = reinterpret_cast<const float4 *>(do_s);

    const float lam = step_sigmoid(a_lambda[c]);
    const float one_m_lam = 1.0f - lam;
    const float beta = step_sigmoid(a_beta[c]);

    float G[D];  // row i of G = ∂L/∂H_t
#pragma unroll
    for (int j = 0; j < D; j++) G[j] = 0.0f;
    [[maybe_unused]] float Hrow[kHReg ? D : 1];  // row i of H_t (kHReg only)
    float du_next = 0.0f, keep_next = 0.0f, dbeta = 0.0f, dlam = 0.0f;

    const size_t base = (size_t)b * T * C + c;      // element (b, t, c) at base + t·C
    const size_t pbase = (size_t)b * T * ld + c;    // ... of I, k, v, q and grads at pbase + t·ld
    const size_t head = (size_t)b * T * ld + h * D; // (b, t, h·D + x) of v at head + t·ld + x
    const size_t DD = (size_t)D * D;
    float *Hs = Hrec + (size_t)bh * (L + 1) * DD + i;  // (τ, i, j) at Hs[τ·DD + j·D]

    // Neuron c's inputs of the step about to run (prefetched one step ahead):
    // u_t, o_t, ds_t, q_t, k_t and, for t > 0, u_{t−1}, s_{t−1}.
    int t = T - 1;
    float n_u = u[base + (size_t)t * C], n_o = o[base + (size_t)t * C];
    float n_ds = ds[base + (size_t)t * C], n_q = q[pbase + (size_t)t * ld];
    float n_k = k[pbase + (size_t)t * ld];
    float n_up = t > 0 ? u[base + (size_t)(t - 1) * C] : 0.0f;
    float n_sp = t > 0 ? spike_load(s[base + (size_t)(t - 1) * C]) : 0.0f;

    for (int ch = nch - 1; ch >= 0; ch--) {
        const int t0 = ch * GLIA_CHUNK, len = min(GLIA_CHUNK, T - t0);
        // 1. Stage the chunk's v rows and its checkpoint (into red, padded
        // rows). Thread x writes column x of red and of v_s only. No barrier
        // is needed before: since the previous step's second barrier nobody
        // reads v_s, and column x of red is read only by thread x (its
        // column sum, which it has finished).
        for (int tau = 0; tau < len; tau++)
            v_s[tau * D + i] = v[head + (size_t)(t0 + tau) * ld + i];
        const float *ck = Hckpt + ((size_t)bh * nch + ch) * DD;
#pragma unroll 4
        for (int r = 0; r < D; r++) red[r * DP + i] = ck[(size_t)r * D + i];
        __syncthreads();

        // 2. Recompute row i of H before every step of the chunk (τ = 0..len−1)
        // and, for D = 128, after its last step (τ = len).
        if constexpr (kHReg) {
#pragma unroll
            for (int j = 0; j < D; j++) Hrow[j] = red[i * DP + j];
            for (int tau = 0; tau < len; tau++) {
                float *dst = Hs + (size_t)tau * DD;
                const float gk = one_m_lam * k[pbase + (size_t)(t0 + tau) * ld];
                const float4 *v4 = reinterpret_cast<const float4 *>(v_s + tau * D);
#pragma unroll
                for (int j4 = 0; j4 < D / 4; j4++) {
                    const float4 vv = v4[j4];
                    float *h4 = Hrow + 4 * j4;
                    dst[(size_t)(4 * j4 + 0) * D] = h4[0];
                    dst[(size_t)(4 * j4 + 1) * D] = h4[1];
                    dst[(size_t)(4 * j4 + 2) * D] = h4[2];
                    dst[(size_t)(4 * j4 + 3) * D] = h4[3];
                    h4[0] = step_calcium(lam, h4[0], gk, vv.x);
                    h4[1] = step_calcium(lam, h4[1], gk, vv.y);
                    h4[2] = step_calcium(lam, h4[2], gk, vv.z);
                    h4[3] = step_calcium(lam, h4[3], gk, vv.w);
                }
            }
            // Hrow now holds H after the chunk's last step: H_t of the walk's first t.
        } else {
            for (int j0 = 0; j0 < D; j0 += AMSU_BWD_SLICE) {
                float hs[AMSU_BWD_SLICE];
#pragma unroll
                for (int jj = 0; jj < AMSU_BWD_SLICE; jj++) hs[jj] = red[i * DP + j0 + jj];
                for (int tau = 0; tau <= len; tau++) {
                    float *dst = Hs + (size_t)tau * DD + (size_t)j0 * D;
#pragma unroll
                    for (int jj = 0; jj < AMSU_BWD_SLICE; jj++) dst[(size_t)jj * D] = hs[jj];
                    if (tau == len) break;
                    const float gk = one_m_lam * k[pbase + (size_t)(t0 + tau) * ld];
                    const float4 *v4 = reinterpret_cast<const float4 *>(v_s + tau * D + j0);
#pragma unroll
                    for (int j4 = 0; j4 < AMSU_BWD_SLICE / 4; j4++) {
                        const float4 vv = v4[j4];
                        float *h4 = hs + 4 * j4;
                        h4[0] = step_calcium(lam, h4[0], gk, vv.x);
                        h4[1] = step_calcium(lam, h4[1], gk, vv.y);
                        h4[2] = step_calcium(lam, h4[2], gk, vv.z);
                        h4[3] = step_calcium(lam, h4[3], gk, vv.w);
                    }
                }
            }
        }

        // 3. Walk the chunk backward.
        for (; t >= t0; t--) {
            const int tau = t - t0;
            const size_t off = base + (size_t)t * C, poff = pbase + (size_t)t * ld;
            const float ut = n_u, ot = n_o, ds_t = n_ds, qi = n_q, ki = n_k;
            const float u_prev = n_up, s_prev = n_sp;
            if (t > 0) {  // prefetch step t − 1
                const size_t pre = off - C;
                n_u = u_prev;
                n_o = o[pre];
                n_ds = ds[pre];
                n_q = q[poff - ld];
                n_k = k[poff - ld];
                if (t > 1) {
                    n_up = u[pre - C];
                    n_sp = spike_load(s[pre - C]);
                } else {
                    n_up = 0.0f;
                    n_sp = 0.0f;
                }
            }
            // Neuron c (lif.c neuron_backward): keep_t = 1 − s_{t−1}, and
            // u_{−1} = 0, keep_0 = 1 (zero start).
            const float dmt = step_spike_grad(ds_t, step_potential(ut, ot));
            const float du = step_membrane_grad(dmt, beta, keep_next, du_next);
            const float keep = t > 0 ? step_keep(s_prev) : 1.0f;
            dbeta += step_beta_grad(du, u_prev, keep);
            dI[poff] = du;
            du_next = du;
            keep_next = keep;
            do_s[i] = dmt;
            __syncthreads();

            // Row i of the astrocyte (amsu.c astro_backward), ascending j.
            const float gk = one_m_lam * ki;
            const float *hp = Hs + (size_t)tau * DD;  // H_{t−1}, row i: hp[j·D]
            const float *hc = hp + DD;                // H_t, row i (D = 128 only)
            const float4 *v4 = reinterpret_cast<const float4 *>(v_s + tau * D);
            float *red_i = red + i * DP;
            float sq = 0.0f, sk = 0.0f, sl = 0.0f;
#pragma unroll
            for (int j4 = 0; j4 < D / 4; j4++) {
                const float4 d4 = do4[j4], vv = v4[j4];
                const float dj[4] = {d4.x, d4.y, d4.z, d4.w};
                const float vj[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = 4 * j4 + e;
                    float hcur;
                    if constexpr (kHReg) hcur = Hrow[j];
                    else hcur = hc[(size_t)j * D];
                    const float hprev = hp[(size_t)j * D];
                    const float g = step_calcium_grad(lam, G[j], qi, dj[e]);
                    G[j] = g;
                    sq += hcur * dj[e];
                    sk += g * vj[e];
                    sl += step_lambda_grad(g, hprev, ki, vj[e]);
                    red_i[j] = g * gk;
                    if constexpr (kHReg) Hrow[j] = hprev;  // H_t of step t − 1
                }
            }
            dq[poff] = sq;
            dk[poff] = one_m_lam * sk;
            dlam += sl;
            __syncthreads();

            // dv_t for column j = i: ascending rows.
            float acc = 0.0f;
#pragma unroll 8
            for (int r = 0; r < D; r++) acc += red[r * DP + i];
            dv[poff] = acc;
        }
    }
    dbeta_part[(size_t)b * C + c] = dbeta;
    dlam_part[(size_t)b * C + c] = dlam;
}

// da_beta[c] += σ'(a_β[c])·Σ_b dbeta_part[b][c] and da_lambda[c] likewise,
// b ascending (the CPU's order). One thread per channel c of the C.
__global__ void amsu_param_grads_kernel(float *__restrict__ da_lambda,        // (Nh, D) = (C)
                                        float *__restrict__ da_beta,          // (C)
                                        const float *__restrict__ dlam_part,  // (B, C)
                                        const float *__restrict__ dbeta_part, // (B, C)
                                        const float *__restrict__ a_lambda,   // (C)
                                        const float *__restrict__ a_beta,     // (C)
                                        int B, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float tl = 0.0f, tb = 0.0f;
    for (int b = 0; b < B; b++) {
        tl += dlam_part[(size_t)b * C + c];
        tb += dbeta_part[(size_t)b * C + c];
    }
    const float lam = step_sigmoid(a_lambda[c]), beta = step_sigmoid(a_beta[c]);
    da_lambda[c] += step_sigmoid_grad(tl, lam);  // chain through λ = sigmoid(a_λ)
    da_beta[c] += step_sigmoid_grad(tb, beta);   // chain through β = sigmoid(a_β)
}

// ---- launchers ----------------------------------------------------------------------

#define LIF_THREADS 128
#define PARAM_THREADS 256

extern "C" int amsu_head_size_supported(int D) {
    return D == 8 || D == 16 || D == 32 || D == 64 || D == 128;
}

// 0 if the shape can run; otherwise prints why (prefixed by `who`) and
// returns -1. Touches no device.
static int amsu_check_shape(const char *who, int B, int T, int C, int Nh, int astro) {
    if (B <= 0 || T <= 0 || C <= 0) {
        fprintf(stderr, "%s: B, T and C must be positive (got B=%d T=%d C=%d)\n", who, B, T, C);
        return -1;
    }
    if (!astro) {
        if ((int64_t)B * ceil_div(C, LIF_THREADS) > INT32_MAX) {
            fprintf(stderr, "%s: too many sequences (B=%d)\n", who, B);
            return -1;
        }
        return 0;
    }
    if (Nh <= 0 || C % Nh != 0) {
        fprintf(stderr, "%s: C=%d is not a positive multiple of Nh=%d\n", who, C, Nh);
        return -1;
    }
    int D = C / Nh;
    if (!amsu_head_size_supported(D)) {
        fprintf(stderr,
                "%s: head size D=%d (C=%d / Nh=%d) is not supported; "
                "the fused kernel supports D = 8, 16, 32, 64, 128\n",
                who, D, C, Nh);
        return -1;
    }
    if ((int64_t)B * Nh > INT32_MAX) {
        fprintf(stderr, "%s: too many (sequence, head) pairs (B=%d, Nh=%d)\n", who, B, Nh);
        return -1;
    }
    return 0;
}

// u_state and s_state are given together or not at all.
static int amsu_check_state(const char *who, const float *u_state, const float *s_state) {
    if ((u_state == nullptr) != (s_state == nullptr)) {
        fprintf(stderr, "%s: u_state and s_state must both be given or both be NULL\n", who);
        return -1;
    }
    return 0;
}

template <int D, int SB>
static void amsu_launch(float *o, float *u, Spike<SB> *s, float *Hckpt, const float *I,
                        const float *k, const float *v, const float *q, const float *a_lambda,
                        const float *a_beta, float *H_state, float *u_state, float *s_state,
                        int B, int T, int C, int Nh, int ld, cudaStream_t stream) {
    amsu_recurrence_forward_kernel<D, SB><<<B * Nh, D, 0, stream>>>(
        o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, H_state, u_state, s_state, T, C, Nh,
        glia_nchunks(T), ld);
    cuda_check(cudaGetLastError());
}

template <int SB>
static void recurrence_forward(const char *who, float *o, float *u, Spike<SB> *s, float *Hckpt, const float *I,
                               const float *k, const float *v, const float *q, const float *a_lambda,
                               const float *a_beta, float *H_state, float *u_state, float *s_state, int B, int T,
                               int C, int Nh, int ld, int astro, void *stream) {
    if (amsu_check_shape(who, B, T, C, Nh, astro) != 0) exit(1);
    if (amsu_check_state(who, u_state, s_state) != 0) exit(1);
    cudaStream_t st = (cudaStream_t)stream;
    if (!astro) {
        int blocks = B * ceil_div(C, LIF_THREADS);
        lif_forward_kernel<SB><<<blocks, LIF_THREADS, 0, st>>>(o, u, s, I, a_beta, u_state, s_state,
                                                           T, C, ld);
        cuda_check(cudaGetLastError());
        return;
    }
#define AMSU_FWD(D_)                                                                      \
    amsu_launch<D_, SB>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, H_state, u_state, s_state, \
                    B, T, C, Nh, ld, st)
    switch (C / Nh) {
    case 8: AMSU_FWD(8); break;
    case 16: AMSU_FWD(16); break;
    case 32: AMSU_FWD(32); break;
    case 64: AMSU_FWD(64); break;
    case 128: AMSU_FWD(128); break;
    default: exit(1);  // unreachable: amsu_check_shape rejected it with a message
    }
#undef AMSU_FWD
}

extern "C" void amsu_recurrence_forward_cuda(float *o, float *u, void *s, int sb, float *Hckpt,
                                             const float *I, const float *k, const float *v,
                                             const float *q, const float *a_lambda,
                                             const float *a_beta, float *H_state,
                                             float *u_state, float *s_state, int B, int T,
                                             int C, int Nh, int ld, int astro, void *stream) {
    static const char *who = "amsu_recurrence_forward_cuda";
    spike_bytes_check(who, sb);
    if (sb == 2)
        recurrence_forward<2>(who, o, u, (bf16_t *)s, Hckpt, I, k, v, q, a_lambda, a_beta, H_state, u_state,
                              s_state, B, T, C, Nh, ld, astro, stream);
    else
        recurrence_forward<4>(who, o, u, (float *)s, Hckpt, I, k, v, q, a_lambda, a_beta, H_state, u_state,
                              s_state, B, T, C, Nh, ld, astro, stream);
}

// Where the dβ partials start in the backward's scratch: after the H
// recompute region, B·Nh·(L + 1)·D² floats (see the top comment).
static size_t amsu_bwd_partials_offset(int B, int T, int C, int Nh) {
    const size_t D = (size_t)(C / Nh);
    const size_t L = T < GLIA_CHUNK ? (size_t)T : GLIA_CHUNK;
    return (size_t)B * Nh * (L + 1) * D * D;
}

// 0 for a shape the backward cannot run (it refuses it with a message).
extern "C" size_t amsu_backward_scratch_floats(int B, int T, int C, int Nh) {
    if (B <= 0 || T <= 0 || C <= 0 || Nh <= 0 || C % Nh != 0) return 0;
    return amsu_bwd_partials_offset(B, T, C, Nh) + 2 * (size_t)B * C;
}

template <int D, int SB>
static void amsu_backward_launch(float *dI, float *dk, float *dv, float *dq, float *scratch,
                                 const float *ds, const float *u, const float *o, const Spike<SB> *s,
                                 const float *k, const float *v, const float *q,
                                 const float *Hckpt, const float *a_lambda, const float *a_beta,
                                 int B, int T, int C, int Nh, int ld, cudaStream_t stream) {
    const int L = T < GLIA_CHUNK ? T : GLIA_CHUNK;
    float *Hrec = scratch;
    float *dbeta_part = scratch + amsu_bwd_partials_offset(B, T, C, Nh);
    float *dlam_part = dbeta_part + (size_t)B * C;
    const int smem = amsu_bwd_smem_floats(D) * (int)sizeof(float);
    if (smem > 48 * 1024)
        cuda_check(cudaFuncSetAttribute(amsu_recurrence_backward_kernel<D, SB>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    amsu_recurrence_backward_kernel<D, SB><<<B * Nh, D, smem, stream>>>(
        dI, dk, dv, dq, Hrec, dbeta_part, dlam_part, ds, u, o, s, k, v, q, Hckpt, a_lambda,
        a_beta, T, C, Nh, glia_nchunks(T), L, ld);
    cuda_check(cudaGetLastError());
}

template <int SB>
static void recurrence_backward(float *dI, float *dk, float *dv, float *dq, float *da_lambda, float *da_beta,
                                float *scratch, const float *ds, const float *u, const float *o, const Spike<SB> *s,
                                const float *k, const float *v, const float *q, const float *Hckpt,
                                const float *a_lambda, const float *a_beta, int B, int T, int C, int Nh, int ld,
                                void *stream) {
    if (amsu_check_shape("amsu_recurrence_backward_cuda", B, T, C, Nh, 1) != 0) exit(1);
    cudaStream_t st = (cudaStream_t)stream;
#define AMSU_BWD(D_)                                                                        \
    amsu_backward_launch<D_, SB>(dI, dk, dv, dq, scratch, ds, u, o, s, k, v, q, Hckpt, a_lambda, \
                             a_beta, B, T, C, Nh, ld, st)
    switch (C / Nh) {
    case 8: AMSU_BWD(8); break;
    case 16: AMSU_BWD(16); break;
    case 32: AMSU_BWD(32); break;
    case 64: AMSU_BWD(64); break;
    case 128: AMSU_BWD(128); break;
    default: exit(1);  // unreachable: amsu_check_shape rejected it with a message
    }
#undef AMSU_BWD
    const float *dbeta_part = scratch + amsu_bwd_partials_offset(B, T, C, Nh);
    const float *dlam_part = dbeta_part + (size_t)B * C;
    amsu_param_grads_kernel<<<ceil_div(C, PARAM_THREADS), PARAM_THREADS, 0, st>>>(
        da_lambda, da_beta, dlam_part, dbeta_part, a_lambda, a_beta, B, C);
    cuda_check(cudaGetLastError());
}

extern "C" void amsu_recurrence_backward_cuda(float *dI, float *dk, float *dv, float *dq,
                                              float *da_lambda, float *da_beta, float *scratch,
                                              const float *ds, const float *u, const float *o,
                                              const void *s, int sb, const float *k, const float *v,
                                              const float *q, const float *Hckpt,
                                              const float *a_lambda, const float *a_beta, int B,
                                              int T, int C, int Nh, int ld, void *stream) {
    spike_bytes_check("amsu_recurrence_backward_cuda", sb);
    if (sb == 2)
        recurrence_backward<2>(dI, dk, dv, dq, da_lambda, da_beta, scratch, ds, u, o, (const bf16_t *)s, k, v, q,
                               Hckpt, a_lambda, a_beta, B, T, C, Nh, ld, stream);
    else
        recurrence_backward<4>(dI, dk, dv, dq, da_lambda, da_beta, scratch, ds, u, o, (const float *)s, k, v, q,
                               Hckpt, a_lambda, a_beta, B, T, C, Nh, ld, stream);
}

template <int D> static void amsu_occupancy_at(CudaOccupancy out[3]) {
    out[0] = occupancy_of("amsu forward", amsu_recurrence_forward_kernel<D, 4>, D, 0);
    out[1] = occupancy_of("amsu backward", amsu_recurrence_backward_kernel<D, 4>, D,
                          amsu_bwd_smem_floats(D) * sizeof(float));
}

extern "C" void amsu_occupancy_cuda(CudaOccupancy out[3], int D) {
    switch (D) {
    case 8: amsu_occupancy_at<8>(out); break;
    case 16: amsu_occupancy_at<16>(out); break;
    case 32: amsu_occupancy_at<32>(out); break;
    case 64: amsu_occupancy_at<64>(out); break;
    case 128: amsu_occupancy_at<128>(out); break;
    default:
        fprintf(stderr, "amsu_occupancy_cuda: head size %d is not one the kernels run (8..128)\n", D);
        exit(1);
    }
    out[2] = occupancy_of("lif forward", lif_forward_kernel<4>, LIF_THREADS, 0);
}

// ---- the layer ------------------------------------------------------------------------
// The AM-SU token mixer around the recurrence, as kernels/cpu/amsu.c builds it:
// projections I, k, v, q of the normalised input (one cuBLAS GEMM into P,
// types.h), the fused recurrence, and y = W_O s; the backward in reverse. Same contracts as the
// CPU's amsu_forward / amsu_backward (cpu.h), on device pointers.

// AMSU_CHUNK (amsu_chunk.cu) or AMSU_SCAN for training and prefill; streaming
// (a state in and out) always runs the fused per-timestep kernel.
static int amsu_mode = AMSU_CHUNK;
extern "C" void amsu_set_mode_cuda(int mode) { amsu_mode = mode; }

// The key scale 1/sqrt(D) of SPEC's k on the k columns of P (forward) and of
// dP (backward): x, M rows of C at row stride ld, times sc. One thread per
// element, rows of C consecutive threads (coalesced).
__global__ void scale_rows_kernel(float *__restrict__ x, int M, int C, int ld, float sc) {
    const size_t n = (size_t)M * C, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride)
        x[e / C * ld + e % C] *= sc;
}

static void scale_rows_cuda(float *x, int M, int C, int ld, float sc, void *stream) {
    const size_t n = (size_t)M * C;
    if (n == 0) return;
    const size_t blocks = ceil_div_size(n, PARAM_THREADS);
    scale_rows_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), PARAM_THREADS, 0, (cudaStream_t)stream>>>(
        x, M, C, ld, sc);
    cuda_check(cudaGetLastError());
}

extern "C" size_t amsu_scratch_floats_cuda(AmsuShape sh) {
    const size_t btc = (size_t)sh.B * sh.T * sh.C, btp = (size_t)sh.B * sh.T * amsu_ld(sh);
    size_t rec = sh.astro ? amsu_backward_scratch_floats(sh.B, sh.T, sh.C, sh.Nh)
                          : (size_t)sh.B * sh.C;  // neuron_backward_cuda's partials
    const size_t chunk = btc + (size_t)sh.B * sh.C;  // dm, then the partials of dβ and of dλ in turn
    return btc + btp + (rec > chunk ? rec : chunk);  // ds, dP, then the recurrence's scratch
}

extern "C" void amsu_forward_cuda(float *y, AmsuActs *a, const float *z, const AmsuWeights *w,
                                  AmsuShape sh, AmsuState *state, const float *add, void *stream) {
    const int M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh);
    matmul_forward_cuda(a->P, z, w->W_in, M, C, ld, 1.0f, nullptr, stream);  // [I | k | v | q] = z W_inᵀ
    if (sh.astro) scale_rows_cuda(a->k, M, C, ld, 1.0f / sqrtf((float)(C / sh.Nh)), stream);
    const int sb = w->W_O16 ? 2 : 4;  // bytes per stored spike: bf16 with the W_O mirror (BF16 mode)
    if (sh.astro && !state && amsu_mode == AMSU_CHUNK)
        amsu_chunk_forward_cuda(a->o, a->u, a->s, sb, a->Hckpt, a->I, a->k, a->v, a->q, w->a_lambda, w->a_beta,
                                sh.B, sh.T, C, sh.Nh, ld, stream);
    else
        amsu_recurrence_forward_cuda(a->o, a->u, a->s, sb, state ? nullptr : a->Hckpt, a->I, a->k, a->v, a->q,
                                     w->a_lambda, w->a_beta, state ? state->H : nullptr,
                                     state ? state->u : nullptr, state ? state->s : nullptr, sh.B, sh.T, C,
                                     sh.Nh, ld, sh.astro, stream);
    if (sb == 2) spike_matmul_forward_cuda(y, (const bf16_t *)a->s, w->W_O16, M, C, C, add, stream);
    else matmul_forward_cuda(y, a->s, w->W_O, M, C, C, 1.0f, add, stream);
}

extern "C" void amsu_backward_cuda(float *dz, AmsuGrads *g, float *scratch, const float *dy,
                                   const float *z, const AmsuActs *a, const AmsuWeights *w,
                                   AmsuShape sh, void *stream) {
    const int M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh);
    const size_t btc = (size_t)M * C;
    // dP (M, ld): [dI | dk | dv | dq], the projections' gradients in P's layout
    float *ds = scratch, *dP = ds + btc, *dk = dP + C, *dv = dP + 2 * C, *dq = dP + 3 * C;
    float *rec = dP + (size_t)M * ld;
    const int sb = w->W_O16 ? 2 : 4;  // bytes per stored spike: bf16 with the W_O mirror (BF16 mode)
    if (sb == 2) {  // y = s W_Oᵀ; dy as bf16 in rec, free until the recurrence's backward
        matmul_backward_cuda(ds, nullptr, dy, nullptr, w->W_O, M, C, C, 1.0f, 0, stream);
        spike_matmul_dW_cuda(g->dW_O, (bf16_t *)rec, dy, (const bf16_t *)a->s, M, C, C, stream);
    } else {
        matmul_backward_cuda(ds, g->dW_O, dy, a->s, w->W_O, M, C, C, 1.0f, 0, stream);  // y = s W_Oᵀ
    }
    // chunked: the neuron, then the astrocyte from dm = ∂L/∂o; the fused
    // backward where the chunked one cannot read this Hckpt in place (it
    // reads the same checkpoints, so it follows either forward)
    if (sh.astro && amsu_mode == AMSU_CHUNK && amsu_chunk_backward_ok(C / sh.Nh, a->Hckpt)) {
        float *dm = rec, *part = dm + btc;
        neuron_backward_cuda(dP, dm, g->da_beta, part, ds, a->u, a->o, a->s, sb, w->a_beta, sh.B, sh.T, C, ld,
                             stream);
        amsu_chunk_backward_cuda(dk, dv, dq, g->da_lambda, part, dm, a->k, a->v, a->q,
                                 w->a_lambda, a->Hckpt, sh.B, sh.T, C, sh.Nh, ld, stream);
    } else if (sh.astro)
        amsu_recurrence_backward_cuda(dP, dk, dv, dq, g->da_lambda, g->da_beta, rec, ds, a->u,
                                      a->o, a->s, sb, a->k, a->v, a->q, a->Hckpt, w->a_lambda,
                                      w->a_beta, sh.B, sh.T, C, sh.Nh, ld, stream);
    else
        neuron_backward_cuda(dP, nullptr, g->da_beta, rec, ds, a->u, nullptr, a->s, sb, w->a_beta,
                             sh.B, sh.T, C, ld, stream);
    if (sh.astro) scale_rows_cuda(dk, M, C, ld, 1.0f / sqrtf((float)(C / sh.Nh)), stream);
    // [I | k | v | q] = z W_inᵀ
    matmul_backward_cuda(dz, g->dW_in, dP, z, w->W_in, M, C, ld, 1.0f, 0, stream);
}

// ---- host-memory wrapper (tests) -------------------------------------------------
// Built on device.cu's C API (cuda_alloc, cuda_upload, ...), like any caller.

static float *device_alloc_poisoned(size_t n) {  // every float a NaN until written
    float *p = (float *)cuda_alloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "amsu_recurrence_forward_cuda_host: %s\n", cuda_last_error_message());
        exit(1);
    }
    cuda_memset(p, 0xFF, n * sizeof(float), nullptr);
    return p;
}

static float *device_upload(const float *host, size_t n) {
    float *p = device_alloc_poisoned(n);
    cuda_upload(p, host, n * sizeof(float));
    return p;
}

extern "C" int amsu_recurrence_forward_cuda_host(float *o, float *u, float *s, float *Hckpt,
                                                 const float *I, const float *k, const float *v,
                                                 const float *q, const float *a_lambda,
                                                 const float *a_beta, float *H_state,
                                                 float *u_state, float *s_state, int B, int T,
                                                 int C, int Nh, int astro) {
    static const char *who = "amsu_recurrence_forward_cuda_host";
    if (amsu_check_shape(who, B, T, C, Nh, astro) != 0) return -1;
    if (amsu_check_state(who, u_state, s_state) != 0) return -1;
    const size_t n = (size_t)B * T * C, nBC = (size_t)B * C;
    float *d_o = device_alloc_poisoned(n);
    float *d_u = device_alloc_poisoned(n);
    float *d_s = device_alloc_poisoned(n);
    float *d_I = device_upload(I, n);
    float *d_beta = device_upload(a_beta, C);
    float *d_k = nullptr, *d_v = nullptr, *d_q = nullptr, *d_lambda = nullptr, *d_H = nullptr;
    float *d_Hst = nullptr, *d_ust = nullptr, *d_sst = nullptr;
    size_t nH = 0, nHst = 0;
    if (astro) {
        const size_t D = (size_t)(C / Nh);
        d_k = device_upload(k, n);
        d_v = device_upload(v, n);
        d_q = device_upload(q, n);
        d_lambda = device_upload(a_lambda, C);
        if (Hckpt) {
            nH = (size_t)B * Nh * glia_nchunks(T) * D * D;
            d_H = device_alloc_poisoned(nH);
        }
        if (H_state) {
            nHst = (size_t)B * Nh * D * D;
            d_Hst = device_upload(H_state, nHst);
        }
    }
    if (u_state) {
        d_ust = device_upload(u_state, nBC);
        d_sst = device_upload(s_state, nBC);
    }
    amsu_recurrence_forward_cuda(d_o, d_u, d_s, 4, d_H, d_I, d_k, d_v, d_q, d_lambda, d_beta, d_Hst,
                                 d_ust, d_sst, B, T, C, Nh, C, astro, nullptr);
    cuda_synchronize();
    const size_t f = sizeof(float);
    cuda_download(o, d_o, n * f);
    cuda_download(u, d_u, n * f);
    cuda_download(s, d_s, n * f);
    if (d_H) cuda_download(Hckpt, d_H, nH * f);
    if (d_Hst) cuda_download(H_state, d_Hst, nHst * f);
    if (d_ust) {
        cuda_download(u_state, d_ust, nBC * f);
        cuda_download(s_state, d_sst, nBC * f);
    }
    float *bufs[] = {d_o, d_u,      d_s, d_I,   d_beta, d_k,   d_v,
                     d_q, d_lambda, d_H, d_Hst, d_ust,  d_sst};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cuda_free(bufs[i]);
    return 0;
}

// ---- devices ----------------------------------------------------------------------

extern "C" int cuda_device_count(void) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear it: "no device" is an answer here, not a failure
        return 0;
    }
    return n > 0 ? n : 0;
}
