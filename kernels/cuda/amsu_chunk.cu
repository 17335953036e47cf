// amsu_chunk.cu: the AM-SU recurrence in chunks of matrix products on the
// GPU (docs/CUDA.md, "The chunked AM-SU on the GPU", design (a)): the same
// function as amsu.cu's fused per-timestep kernel, which stays the reference
// and runs streaming (state in and out) and AMSU_SCAN.
//
// One block per (sequence b, head h), max(D, 32) threads (one warp per 32
// channels: the neurons need D, the tiles have work for about that many),
// walking the chunks of L = GLIA_CHUNK steps in order, with the math of
// kernels/cpu/astro_chunk.c (its header derives every formula). Per chunk,
// with its incoming state S (D × D, fp32, shared memory):
//   1. Hckpt[chunk] = S (the scan's checkpoints: either backward reads them);
//   2. q, k' = (1 − λ) ⊙ k, v of the chunk's rows into shared memory (rows
//      past T are zeros, so a short last chunk, and T < L, need no case);
//   3. A[τ,σ] = Σ_i q_τ[i] k'_σ[i] λ_i^{τ−σ} (σ ≤ τ), pairwise in fp32 on the
//      CUDA cores, like the CPU (L²·D/2 multiply-adds);
//   4. o = A V + Q̃ S on the tensor cores (Q̃ = q ⊙ λ^{τ+1});
//   5. S ← diag(λ^L) S + K̄ᵀ V on the tensor cores (K̄ = k' ⊙ λ^{L−1−σ});
//   6. the chunk's membrane steps of neuron c = h·D + j by thread j, from o
//      in shared memory (step.h's rules, as the scan), writing o, u, s.
// Every power of λ is a table pw[d][i] = λ_i^d, d = 0..L, built by repeated
// products (the CPU's): no negative exponent, so every λ in (0, 1) works;
// a small λ only underflows to the zero it is.
//
// Tensor cores: WMMA m16n16k8 with TF32 operands and fp32 accumulators, in
// the 3xTF32 split: a = a_hi + a_lo (both TF32), a·b ≈ a_hi·b_hi + a_hi·b_lo
// + a_lo·b_hi, which carries about 21 of fp32's 24 bits. Plain TF32 (10-bit
// mantissa) in o would flip spikes near θ far more often than fp32 does; the
// kernel is bound by memory, so it affords three times the tensor FLOPs.
// Tiles are 16 wide: a head of D = 8 is zero-padded to DT = 16 in shared
// memory. Fragments are only loaded, split, multiplied and stored, element
// by element alike (the rule the emulator's tests/cuda_emu/mma.h states).
//
// Registers, shared memory and the cost model: docs/CUDA.md.
#include <mma.h>

#include "common/step.h"
#include "common/types.h"  // GLIA_CHUNK, glia_nchunks: the checkpoint convention
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <stdint.h>
#include <type_traits>

namespace wmma = nvcuda::wmma;

// Threads of a block for head size D: one per neuron, at least a warp.
template <int D> struct Chunk {
    static constexpr int threads = D < 32 ? 32 : D, warps = threads / 32;
};
enum { LC = GLIA_CHUNK };
static_assert(LC % 16 == 0, "the chunk must be a whole number of 16-row tiles");

typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> FragC;

// The high TF32 part of every element of f, and the TF32 rounding of the rest into lo.
template <class F> __device__ __forceinline__ void split_tf32(F &hi, F &lo) {
#pragma unroll
    for (int e = 0; e < hi.num_elements; e++) {
        const float x = hi.x[e], h = wmma::__float_to_tf32(x);
        hi.x[e] = h;
        lo.x[e] = wmma::__float_to_tf32(x - h);
    }
}

// acc += a (16 × K) · b (K × 16) in 3xTF32, K a multiple of 8. a and b are in
// the layouts LA, LB with leading dimensions lda, ldb (floats).
template <class LA, class LB>
__device__ __forceinline__ void mma3(FragC &acc, const float *a, int lda, const float *b, int ldb, int K) {
    constexpr bool a_row = std::is_same<LA, wmma::row_major>::value;
    constexpr bool b_row = std::is_same<LB, wmma::row_major>::value;
    for (int k = 0; k < K; k += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> ah, al;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> bh, bl;
        wmma::load_matrix_sync(ah, a + (a_row ? k : (size_t)k * lda), lda);
        wmma::load_matrix_sync(bh, b + (b_row ? (size_t)k * ldb : k), ldb);
        split_tf32(ah, al);
        split_tf32(bh, bl);
        wmma::mma_sync(acc, al, bh, acc);  // the small terms first
        wmma::mma_sync(acc, ah, bl, acc);
        wmma::mma_sync(acc, ah, bh, acc);
    }
}

// Tile width: WMMA's 16, or D.
__host__ __device__ constexpr int chunk_dt(int D) { return D < 16 ? 16 : D; }

// Row stride of the transposed copies of k' and of the powers (DT × KT): one
// more than L, so a warp writing a column or reading a row hits 32 banks.
enum { KT = LC + 1 };

// The chunk's A[τ,σ] = Σ_i q_τ[i] k'_σ[i] λ_i^{τ−σ} (σ ≤ τ, else 0), pairwise
// in fp32, ascending i, the CPU's product order. A warp takes one row τ and
// lane σ: q_τ[i] is a broadcast, k' and the powers come from their
// transposes Kt[i][σ] and pwT[i][d], so the 32 lanes read 32 banks.
template <int D, int DT>
__device__ __forceinline__ void chunk_form_A(float *A, const float *Q, const float *Kt, const float *pwT, int tid) {
    for (int x = tid; x < LC * LC; x += Chunk<D>::threads) {
        const int tau = x / LC, sg = x % LC;
        float acc = 0.0f;
        if (sg <= tau) {
#pragma unroll 8
            for (int i = 0; i < D; i++) acc += Q[tau * DT + i] * Kt[i * KT + sg] * pwT[i * KT + tau - sg];
        }
        A[x] = acc;
    }
}

// Floats of dynamic shared memory of the forward: S (DT²), pw ((L+1)·DT),
// λ (DT), q, k', v, o (L·DT each), A (L²), Kt and pwT (DT·KT each). Every part
// a multiple of 8 floats, so every tile starts 32-byte aligned as WMMA needs.
__host__ __device__ constexpr int chunk_fwd_smem_floats(int D) {
    return chunk_dt(D) * chunk_dt(D) + (LC + 1) * chunk_dt(D) + chunk_dt(D) + 4 * LC * chunk_dt(D) + LC * LC +
           2 * chunk_dt(D) * KT;
}

// One block per (sequence b, head h), blockIdx.x = b·Nh + h; Chunk<D>::threads
// threads. See the top comment.
// SB: bytes per stored spike (cuda_common.h).
template <int D, int SB>
__global__ void __launch_bounds__(Chunk<D>::threads)
amsu_chunk_forward_kernel(float *__restrict__ o,              // (B, T, C)
                          float *__restrict__ u,              // (B, T, C)
                          Spike<SB> *__restrict__ s,          // (B, T, C)
                          float *__restrict__ Hckpt,          // (B, Nh, nch, D, D) or NULL
                          const float *__restrict__ I,        // (B, T, C), row stride ld
                          const float *__restrict__ k,        // (B, T, C), row stride ld
                          const float *__restrict__ v,        // (B, T, C), row stride ld
                          const float *__restrict__ q,        // (B, T, C), row stride ld
                          const float *__restrict__ a_lambda, // (Nh, D)
                          const float *__restrict__ a_beta,   // (C)
                          int T, int C, int Nh, int nch, int ld) {
    constexpr int DT = chunk_dt(D), NTC = DT / 16;  // tile columns of a (·, DT) matrix
    constexpr int NT = Chunk<D>::threads, NW = Chunk<D>::warps;
    const int bh = blockIdx.x, b = bh / Nh, h = bh % Nh;
    const int tid = threadIdx.x, warp = tid / 32;

    extern __shared__ __align__(32) float chunk_smem[];
    float *S = chunk_smem;           // (DT, DT): the state entering the chunk
    float *pw = S + DT * DT;         // (L + 1, DT): pw[d][i] = λ_i^d
    float *lam = pw + (LC + 1) * DT; // (DT): λ_i, 0 in the padding
    float *Q = lam + DT;             // (L, DT): q, then Q̃ = q ⊙ λ^{τ+1}
    float *K = Q + LC * DT;          // (L, DT): k', then K̄ = k' ⊙ λ^{L−1−σ}
    float *V = K + LC * DT;          // (L, DT)
    float *O = V + LC * DT;          // (L, DT): o of the chunk
    float *A = O + LC * DT;          // (L, L)
    float *Kt = A + LC * LC;         // (DT, KT): k' transposed
    float *pwT = Kt + DT * KT;       // (DT, KT): pw transposed

    for (int x = tid; x < DT * DT; x += NT) S[x] = 0.0f;
    if (tid < DT) {
        const float l = tid < D ? step_sigmoid(a_lambda[h * D + tid]) : 0.0f;
        lam[tid] = l;
        float p = 1.0f;
        pw[tid] = pwT[tid * KT] = p;
        for (int d = 1; d <= LC; d++) pw[d * DT + tid] = pwT[tid * KT + d] = p = p * l;
    }
    const int c = h * D + tid;  // thread tid < D: neuron c
    const float beta = tid < D ? step_sigmoid(a_beta[c]) : 0.0f;
    float u_prev = 0.0f, s_prev = 0.0f;
    const size_t head = (size_t)b * T * C + (size_t)h * D;    // (b, t, h·D + x) at head + t·C + x
    const size_t phead = (size_t)b * T * ld + (size_t)h * D;  // ... of I, k, v, q at phead + t·ld + x
    __syncthreads();

    for (int ch = 0; ch < nch; ch++) {
        const int t0 = ch * LC, len = min(LC, T - t0);
        // 1. the checkpoint, coalesced
        if (Hckpt) {
            float *dst = Hckpt + ((size_t)bh * nch + ch) * D * D;
            for (int x = tid; x < D * D; x += NT) dst[x] = S[(x / D) * DT + x % D];
        }
        // 2. the chunk's rows, zeros past T and in the padding
        for (int x = tid; x < LC * DT; x += NT) {
            const int tau = x / DT, i = x % DT;
            float qq = 0.0f, kk = 0.0f, vv = 0.0f;
            if (tau < len && i < D) {
                const size_t g = phead + (size_t)(t0 + tau) * ld + i;
                qq = q[g];
                kk = (1.0f - lam[i]) * k[g];
                vv = v[g];
            }
            Q[x] = qq, K[x] = kk, V[x] = vv;
            Kt[i * KT + tau] = kk;
        }
        __syncthreads();
        // 3. A, pairwise
        chunk_form_A<D, DT>(A, Q, Kt, pwT, tid);
        __syncthreads();
        // Q̃ and K̄ in place (row σ ≥ len of K is zero: no power needed)
        for (int x = tid; x < LC * DT; x += NT) {
            const int tau = x / DT, i = x % DT;
            Q[x] *= pw[(tau + 1) * DT + i];
            if (tau < len) K[x] *= pw[(len - 1 - tau) * DT + i];
        }
        __syncthreads();
        // 4. o = A V + Q̃ S, one 16 × 16 tile of o per warp at a time
        for (int tile = warp; tile < (LC / 16) * NTC; tile += NW) {
            const int r0 = tile / NTC * 16, c0 = tile % NTC * 16;
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            mma3<wmma::row_major, wmma::row_major>(acc, A + r0 * LC, LC, V + c0, DT, LC);
            mma3<wmma::row_major, wmma::row_major>(acc, Q + r0 * DT, DT, S + c0, DT, DT);
            wmma::store_matrix_sync(O + r0 * DT + c0, acc, DT, wmma::mem_row_major);
        }
        __syncthreads();  // every read of S for o is done
        // 5. S ← diag(λ^len) S + K̄ᵀ V, each warp on its own tiles of S
        const float *pL = pw + len * DT;
        for (int tile = warp; tile < NTC * NTC; tile += NW) {
            const int r0 = tile / NTC * 16, c0 = tile % NTC * 16;
            float *St = S + r0 * DT + c0;
            for (int e = tid % 32; e < 256; e += 32) St[(e / 16) * DT + e % 16] *= pL[r0 + e / 16];
            __syncwarp();
            FragC acc;
            wmma::load_matrix_sync(acc, St, DT, wmma::mem_row_major);
            mma3<wmma::col_major, wmma::row_major>(acc, K + r0, DT, V + c0, DT, LC);
            wmma::store_matrix_sync(St, acc, DT, wmma::mem_row_major);
        }
        // 6. the chunk's membrane steps of neuron c (o is complete since the barrier above)
        if (tid < D) {
            for (int tau = 0; tau < len; tau++) {
                const size_t g = head + (size_t)(t0 + tau) * C + tid;
                const float ot = O[tau * DT + tid];
                const float ut = step_membrane(beta, u_prev, 1.0f - s_prev, I[phead + (size_t)(t0 + tau) * ld + tid]);
                const float st = step_spike(step_potential(ut, ot));
                o[g] = ot;
                u[g] = ut;
                spike_put(s + g, st);
                u_prev = ut;
                s_prev = st;
            }
        }
        __syncthreads();  // S complete; Q, K, V, O, A free for the next chunk
    }
}

// Floats of dynamic shared memory of the backward: dS (DT²), S (DT², only
// for D < 128: at D = 128 the fragments of S are read from Hckpt itself, to
// stay under the 227 KB a block may have), pw ((L+1)·DT), λ (DT), q, k', K̄,
// v, dO, X (L·DT each), A and dA (L² each), Kt and pwT (DT·KT each).
__host__ __device__ constexpr bool chunk_bwd_s_shared(int D) { return D < 128; }
__host__ __device__ constexpr int chunk_bwd_smem_floats(int D) {
    return (chunk_bwd_s_shared(D) ? 2 : 1) * chunk_dt(D) * chunk_dt(D) + (LC + 1) * chunk_dt(D) + chunk_dt(D) +
           6 * LC * chunk_dt(D) + 2 * LC * LC + 2 * chunk_dt(D) * KT;
}

// The chunked astrocyte backward (astro_chunk.c's astro_backward_chunk): one
// block per (sequence b, head h), the chunks from the last, dS = ∂L/∂S_next
// in shared memory. Per chunk, with its checkpoint S:
//   dA = (dO Vᵀ) masked;  dv = Aᵀ dO + K̄ dS                  (tensor cores)
//   X = dO Sᵀ;  dq = Σ_{σ<τ} dA[τ,σ] k'_σ λ^{τ−σ} + dA[τ,τ] k'_τ + λ^{τ+1} ⊙ X
//   X = V dSᵀ;  dk' = Σ_{u>τ} dA[u,τ] q_u λ^{u−τ} + dA[τ,τ] q_τ + λ^{L−1−τ} ⊙ X
//   X = Q̃ (each entry written by the thread that read it)
//   dS ← diag(λ^L) dS + Q̃ᵀ dO                                 (tensor cores)
// and thread i (i < D) accumulates λ_i·∂L/∂λ_i's position-weighted sums and
// Σ k dk' over the chunks (the CPU's formula; the intra-chunk diagonal stays
// out of the weighted sums). dlam_part (B, C) gets ∂L/∂λ per sequence.
template <int D>
__global__ void __launch_bounds__(Chunk<D>::threads, 1)
amsu_chunk_backward_kernel(float *__restrict__ dk,              // (B, T, C), row stride ld
                           float *__restrict__ dv,              // (B, T, C), row stride ld
                           float *__restrict__ dq,              // (B, T, C), row stride ld
                           float *__restrict__ dlam_part,       // (B, C)
                           const float *__restrict__ dout,      // (B, T, C): ∂L/∂o
                           const float *__restrict__ k,         // (B, T, C), row stride ld
                           const float *__restrict__ v,         // (B, T, C), row stride ld
                           const float *__restrict__ q,         // (B, T, C), row stride ld
                           const float *__restrict__ a_lambda,  // (Nh, D)
                           const float *__restrict__ Hckpt,     // (B, Nh, nch, D, D)
                           int T, int C, int Nh, int nch, int ld) {
    constexpr int DT = chunk_dt(D), NTC = DT / 16;
    constexpr int NT = Chunk<D>::threads, NW = Chunk<D>::warps;
    constexpr bool kS = chunk_bwd_s_shared(D);
    const int bh = blockIdx.x, b = bh / Nh, h = bh % Nh;
    const int tid = threadIdx.x, warp = tid / 32;

    extern __shared__ __align__(32) float chunk_smem[];
    float *dS = chunk_smem;                          // (DT, DT)
    float *Ss = dS + DT * DT;                        // (DT, DT) when kS
    float *pw = Ss + (kS ? DT * DT : 0);             // (L + 1, DT)
    float *lam = pw + (LC + 1) * DT;                 // (DT)
    float *Q = lam + DT;                             // (L, DT): q
    float *K = Q + LC * DT;                          // (L, DT): k'
    float *Kb = K + LC * DT;                         // (L, DT): K̄
    float *V = Kb + LC * DT;                         // (L, DT)
    float *dO = V + LC * DT;                         // (L, DT)
    float *X = dO + LC * DT;                         // (L, DT): dv, dO Sᵀ, V dSᵀ, Q̃ in turn
    float *A = X + LC * DT;                          // (L, L)
    float *dA = A + LC * LC;                         // (L, L)
    float *Kt = dA + LC * LC;                        // (DT, KT): k' transposed
    float *pwT = Kt + DT * KT;                       // (DT, KT): pw transposed

    for (int x = tid; x < DT * DT; x += NT) dS[x] = 0.0f;
    if (tid < DT) {
        const float l = tid < D ? step_sigmoid(a_lambda[h * D + tid]) : 0.0f;
        lam[tid] = l;
        float p = 1.0f;
        pw[tid] = pwT[tid * KT] = p;
        for (int d = 1; d <= LC; d++) pw[d * DT + tid] = pwT[tid * KT + d] = p = p * l;
    }
    float wsum = 0.0f, direct = 0.0f;  // thread i < D: λ_i·∂L/∂λ_i's weighted sums, Σ k dk'
    const size_t head = (size_t)b * T * C + (size_t)h * D;    // dout at head + t·C + x
    const size_t phead = (size_t)b * T * ld + (size_t)h * D;  // k, v, q and grads at phead + t·ld + x
    __syncthreads();

    for (int ch = nch - 1; ch >= 0; ch--) {
        const int t0 = ch * LC, len = min(LC, T - t0);
        const float *ck = Hckpt + ((size_t)bh * nch + ch) * D * D;
        const float *S = kS ? Ss : ck;
        const int ldS = kS ? DT : D;
        // 1. the chunk's rows and its checkpoint, zeros past T and in the padding
        for (int x = tid; x < LC * DT; x += NT) {
            const int tau = x / DT, i = x % DT;
            float qq = 0.0f, kk = 0.0f, vv = 0.0f, dd = 0.0f;
            if (tau < len && i < D) {
                const size_t g = phead + (size_t)(t0 + tau) * ld + i;
                qq = q[g];
                kk = (1.0f - lam[i]) * k[g];
                vv = v[g];
                dd = dout[head + (size_t)(t0 + tau) * C + i];
            }
            Q[x] = qq, K[x] = kk, V[x] = vv, dO[x] = dd;
            Kt[i * KT + tau] = kk;
            Kb[x] = tau < len ? kk * pw[(len - 1 - tau) * DT + i] : 0.0f;
        }
        if (kS)
            for (int x = tid; x < DT * DT; x += NT)
                Ss[x] = x / DT < D && x % DT < D ? ck[(x / DT) * D + x % DT] : 0.0f;
        __syncthreads();
        // 2. A, pairwise (as the forward)
        chunk_form_A<D, DT>(A, Q, Kt, pwT, tid);
        __syncthreads();
        // 3. dA = dO Vᵀ (4 tiles), then dv = Aᵀ dO + K̄ dS into X
        for (int tile = warp; tile < 4 + (LC / 16) * NTC; tile += NW) {
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            if (tile < 4) {
                const int r0 = tile / 2 * 16, c0 = tile % 2 * 16;
                mma3<wmma::row_major, wmma::col_major>(acc, dO + r0 * DT, DT, V + c0 * DT, DT, DT);
                wmma::store_matrix_sync(dA + r0 * LC + c0, acc, LC, wmma::mem_row_major);
            } else {
                const int r0 = (tile - 4) / NTC * 16, c0 = (tile - 4) % NTC * 16;
                mma3<wmma::col_major, wmma::row_major>(acc, A + r0, LC, dO + c0, DT, LC);
                mma3<wmma::row_major, wmma::row_major>(acc, Kb + r0 * DT, DT, dS + c0, DT, DT);
                wmma::store_matrix_sync(X + r0 * DT + c0, acc, DT, wmma::mem_row_major);
            }
        }
        __syncthreads();
        for (int x = tid; x < len * D; x += NT)
            dv[phead + (size_t)(t0 + x / D) * ld + x % D] = X[(x / D) * DT + x % D];
        __syncthreads();
        // 4. X = dO Sᵀ; then dq, row by row, in thread i's column
        for (int tile = warp; tile < (LC / 16) * NTC; tile += NW) {
            const int r0 = tile / NTC * 16, c0 = tile % NTC * 16;
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            mma3<wmma::row_major, wmma::col_major>(acc, dO + r0 * DT, DT, S + c0 * ldS, ldS, DT);
            wmma::store_matrix_sync(X + r0 * DT + c0, acc, DT, wmma::mem_row_major);
        }
        __syncthreads();
        const int i = tid;
        if (i < D) {
            for (int tau = 0; tau < len; tau++) {
                float gq = 0.0f;
                for (int sg = 0; sg < tau; sg++) gq += dA[tau * LC + sg] * K[sg * DT + i] * pw[(tau - sg) * DT + i];
                const float qi = Q[tau * DT + i], inter = pw[(tau + 1) * DT + i] * X[tau * DT + i];
                dq[phead + (size_t)(t0 + tau) * ld + i] = gq + dA[tau * LC + tau] * K[tau * DT + i] + inter;
                wsum += (float)tau * qi * gq + (float)(tau + 1) * qi * inter;
            }
        }
        __syncthreads();
        // 5. X = V dSᵀ; then dk', dk, and the state's term of dλ; X becomes Q̃
        for (int tile = warp; tile < (LC / 16) * NTC; tile += NW) {
            const int r0 = tile / NTC * 16, c0 = tile % NTC * 16;
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            mma3<wmma::row_major, wmma::col_major>(acc, V + r0 * DT, DT, dS + c0 * DT, DT, DT);
            wmma::store_matrix_sync(X + r0 * DT + c0, acc, DT, wmma::mem_row_major);
        }
        __syncthreads();
        if (i < D) {
            const float one_m_lam = 1.0f - lam[i];
            for (int tau = 0; tau < len; tau++) {
                float gk = 0.0f;
                for (int u = tau + 1; u < len; u++) gk += dA[u * LC + tau] * Q[u * DT + i] * pw[(u - tau) * DT + i];
                const float kp = K[tau * DT + i], qi = Q[tau * DT + i];
                const float state = pw[(len - 1 - tau) * DT + i] * X[tau * DT + i];
                const float dkp = gk + dA[tau * LC + tau] * qi + state;
                const size_t g = phead + (size_t)(t0 + tau) * ld + i;
                dk[g] = one_m_lam * dkp;
                wsum += -(float)tau * kp * gk + (float)(len - 1 - tau) * kp * state;
                direct += k[g] * dkp;
                X[tau * DT + i] = qi * pw[(tau + 1) * DT + i];  // Q̃, in the entry this thread alone reads
            }
            float acc = 0.0f;  // L λ^L Σ_j S[i,j] dS[i,j], j from i on (lanes on distinct banks)
            for (int jj = 0; jj < D; jj++) {
                const int j = (i + jj) % D;
                acc += S[i * ldS + j] * dS[i * DT + j];
            }
            wsum += (float)len * pw[len * DT + i] * acc;
        }
        __syncthreads();  // X is Q̃: zero past len and in the padding, as V dSᵀ was there
        // 6. dS ← diag(λ^len) dS + Q̃ᵀ dO, each warp on its own tiles
        const float *pL = pw + len * DT;
        for (int tile = warp; tile < NTC * NTC; tile += NW) {
            const int r0 = tile / NTC * 16, c0 = tile % NTC * 16;
            float *St = dS + r0 * DT + c0;
            for (int e = tid % 32; e < 256; e += 32) St[(e / 16) * DT + e % 16] *= pL[r0 + e / 16];
            __syncwarp();
            FragC acc;
            wmma::load_matrix_sync(acc, St, DT, wmma::mem_row_major);
            mma3<wmma::col_major, wmma::row_major>(acc, X + r0, DT, dO + c0, DT, LC);
            wmma::store_matrix_sync(St, acc, DT, wmma::mem_row_major);
        }
        __syncthreads();
    }
    if (tid < D) dlam_part[(size_t)b * C + h * D + tid] = wsum / lam[tid] - direct;
}

// da_lambda[c] += σ'(a_λ[c])·Σ_b dlam_part[b][c], b ascending (the CPU's order).
__global__ void chunk_lambda_grads_kernel(float *__restrict__ da_lambda,        // (C)
                                          const float *__restrict__ dlam_part,  // (B, C)
                                          const float *__restrict__ a_lambda,   // (C)
                                          int B, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float t = 0.0f;
    for (int b = 0; b < B; b++) t += dlam_part[(size_t)b * C + c];
    da_lambda[c] += step_sigmoid_grad(t, step_sigmoid(a_lambda[c]));
}

// ---- launchers ----------------------------------------------------------------------

extern "C" int amsu_chunk_head_size_supported(int D) { return amsu_head_size_supported(D); }

// 0 if the shape can run; otherwise prints why (prefixed by `who`) and returns -1.
static int chunk_check_shape(const char *who, int B, int T, int C, int Nh) {
    if (B <= 0 || T <= 0 || C <= 0 || Nh <= 0 || C % Nh != 0) {
        fprintf(stderr, "%s: need positive B, T, C and Nh with C %% Nh == 0 (got B=%d T=%d C=%d Nh=%d)\n", who, B,
                T, C, Nh);
        return -1;
    }
    if (!amsu_chunk_head_size_supported(C / Nh)) {
        fprintf(stderr, "%s: head size D=%d is not supported; the chunked kernels run D = 8, 16, 32, 64, 128\n",
                who, C / Nh);
        return -1;
    }
    if ((int64_t)B * Nh > INT32_MAX) {
        fprintf(stderr, "%s: too many (sequence, head) pairs (B=%d, Nh=%d)\n", who, B, Nh);
        return -1;
    }
    return 0;
}

template <int D, int SB>
static void chunk_forward_launch(float *o, float *u, Spike<SB> *s, float *Hckpt, const float *I, const float *k,
                                 const float *v, const float *q, const float *a_lambda, const float *a_beta, int B,
                                 int T, int C, int Nh, int ld, cudaStream_t stream) {
    const int smem = chunk_fwd_smem_floats(D) * (int)sizeof(float);
    if (smem > 48 * 1024)
        cuda_check(cudaFuncSetAttribute(amsu_chunk_forward_kernel<D, SB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        smem));
    amsu_chunk_forward_kernel<D, SB><<<B * Nh, Chunk<D>::threads, smem, stream>>>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, T, C, Nh, glia_nchunks(T), ld);
    cuda_check(cudaGetLastError());
}

template <int SB>
static void chunk_forward(float *o, float *u, Spike<SB> *s, float *Hckpt, const float *I, const float *k,
                          const float *v, const float *q, const float *a_lambda, const float *a_beta, int B, int T,
                          int C, int Nh, int ld, void *stream) {
    if (chunk_check_shape("amsu_chunk_forward_cuda", B, T, C, Nh) != 0) exit(1);
    cudaStream_t st = (cudaStream_t)stream;
#define CHUNK_FWD(D_) chunk_forward_launch<D_, SB>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, ld, st)
    switch (C / Nh) {
    case 8: CHUNK_FWD(8); break;
    case 16: CHUNK_FWD(16); break;
    case 32: CHUNK_FWD(32); break;
    case 64: CHUNK_FWD(64); break;
    case 128: CHUNK_FWD(128); break;
    default: exit(1);  // unreachable: chunk_check_shape rejected it with a message
    }
#undef CHUNK_FWD
}

extern "C" void amsu_chunk_forward_cuda(float *o, float *u, void *s, int sb, float *Hckpt, const float *I,
                                        const float *k, const float *v, const float *q, const float *a_lambda,
                                        const float *a_beta, int B, int T, int C, int Nh, int ld, void *stream) {
    spike_bytes_check("amsu_chunk_forward_cuda", sb);
    if (sb == 2)
        chunk_forward<2>(o, u, (bf16_t *)s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, ld, stream);
    else
        chunk_forward<4>(o, u, (float *)s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, ld, stream);
}

template <int D>
static void chunk_backward_launch(float *dk, float *dv, float *dq, float *dlam_part, const float *dout,
                                  const float *k, const float *v, const float *q, const float *a_lambda,
                                  const float *Hckpt, int B, int T, int C, int Nh, int ld, cudaStream_t stream) {
    const int smem = chunk_bwd_smem_floats(D) * (int)sizeof(float);
    if (smem > 48 * 1024)
        cuda_check(cudaFuncSetAttribute(amsu_chunk_backward_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        smem));
    amsu_chunk_backward_kernel<D><<<B * Nh, Chunk<D>::threads, smem, stream>>>(dk, dv, dq, dlam_part, dout, k, v, q, a_lambda, Hckpt, T, C, Nh, glia_nchunks(T), ld);
    cuda_check(cudaGetLastError());
}

extern "C" int amsu_chunk_backward_ok(int D, const float *Hckpt) {
    return chunk_bwd_s_shared(D) || ((uintptr_t)Hckpt & 31u) == 0;
}

extern "C" void amsu_chunk_backward_cuda(float *dk, float *dv, float *dq, float *da_lambda, float *scratch,
                                         const float *dout, const float *k, const float *v, const float *q,
                                         const float *a_lambda, const float *Hckpt, int B, int T, int C, int Nh,
                                         int ld, void *stream) {
    if (chunk_check_shape("amsu_chunk_backward_cuda", B, T, C, Nh) != 0) exit(1);
    if (!amsu_chunk_backward_ok(C / Nh, Hckpt)) {
        fprintf(stderr, "amsu_chunk_backward_cuda: Hckpt must be 32-byte aligned at D = %d\n", C / Nh);
        exit(1);
    }
    cudaStream_t st = (cudaStream_t)stream;
#define CHUNK_BWD(D_) \
    chunk_backward_launch<D_>(dk, dv, dq, scratch, dout, k, v, q, a_lambda, Hckpt, B, T, C, Nh, ld, st)
    switch (C / Nh) {
    case 8: CHUNK_BWD(8); break;
    case 16: CHUNK_BWD(16); break;
    case 32: CHUNK_BWD(32); break;
    case 64: CHUNK_BWD(64); break;
    case 128: CHUNK_BWD(128); break;
    default: exit(1);  // unreachable: chunk_check_shape rejected it with a message
    }
#undef CHUNK_BWD
    chunk_lambda_grads_kernel<<<ceil_div(C, 256), 256, 0, st>>>(da_lambda, scratch, a_lambda, B, C);
    cuda_check(cudaGetLastError());
}
