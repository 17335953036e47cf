// ops.cu: the CUDA backend's model ops other than the matmuls and the AM-SU
// recurrence: RMSNorm, the LIF neuron's backward, the embedding, the
// cross-entropy, AdamW and the gradient norm.
//
// Why it is built this way:
// - Every op computes the CPU reference's expressions (kernels/cpu/*.c,
//   kernels/cpu/backend.c), written with the same parentheses and the per-step rules
//   of common/step.h, so the two backends differ only by the summation order
//   of reductions, FMA contraction and the device's expf / logf (about an
//   ulp each). The tests (tests/test_cuda_ops.c) hold them to that.
// - Results must not change from run to run: no float atomics anywhere.
//   Every reduction has a fixed shape (a per-thread sequential sum over a
//   fixed set of elements, then a butterfly of warp shuffles, then the warps'
//   sums), and parameter gradients are summed in two launches: per-block or
//   per-sequence partials into `scratch`, then one thread per parameter adds
//   its partials in index order and ADDS the total into the gradient (cpu.h:
//   parameter gradients accumulate). The grids of those reductions depend on
//   the shape only, never on the device.
// - Rows (RMSNorm, cross-entropy, embedding rows) get one block each, its
//   threads striding over the row, so consecutive threads touch consecutive
//   channels (coalesced) and the row's statistics are a block reduction.
//   The cross-entropy row (V up to 50304) is read once for its statistics
//   (an online max and sum of exponentials per thread, merged exactly: the
//   block's max first, then each thread rescales its sum to it before the
//   block sum) and once more for the gradient, written in place.
// - The LIF backward is a recurrence backward in time: one thread per
//   (sequence, channel), like lif_forward_kernel in amsu.cu, with the next
//   step's loads issued before the current step's arithmetic.
// - Elementwise ops (AdamW, scaling) use grid-stride loops over a capped
//   grid.
// - The embedding backward is made deterministic on the host:
//   embedding_backward_plan sorts positions by (token, position), so one
//   block per distinct token adds its positions' rows in the CPU's order
//   with no two blocks writing the same row of dE.
//
// Launches are asynchronous on the caller's stream; each is checked with
// cuda_check(cudaGetLastError()).
#include "common/step.h"
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define ROW_THREADS 256        // RMSNorm and embedding rows: at most this many threads per block
#define XENT_THREADS 512       // cross-entropy rows of V >= XENT_WIDE (256 below)
#define XENT_WIDE 8192
#define RMS_BWD_BLOCKS 256     // RMSNorm backward: at most this many blocks, i.e. dg partials
#define LIF_THREADS 128        // LIF backward: channels per block
#define ELEM_THREADS 256       // elementwise ops
#define ELEM_MAX_BLOCKS 2048   // grid-stride cap (an H100 holds 1056 such blocks at once)
#define NORM_BLOCKS 256        // gradient norm: fixed grid, one double partial per block
#define NORM_THREADS 256
#define FINISH_THREADS 256     // the fixed-order sums of partials, one thread per parameter

// ---- reductions ----------------------------------------------------------------------
// Butterflies of xor shuffles: every lane of the warp takes part and ends with
// the same value (a + b == b + a and fmax are exact), so the sums' order is
// fixed by the lane numbering.

template <class T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffff, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, off));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, every thread calling);
// every thread gets the same result: each warp's butterfly, then warp 0's
// over the warps' sums, broadcast through buf[0]. buf: 32 entries of shared
// memory, free for reuse once this returns (the leading barrier guards
// earlier uses). Warp 0 has read all of buf before lane 0 overwrites buf[0]:
// the shuffles in between synchronise the warp.
template <class T> __device__ __forceinline__ T block_sum(T v, T *buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T r = warp_sum(lane < nwarps ? buf[lane] : (T)0);
        if (lane == 0) buf[0] = r;
    }
    __syncthreads();
    return buf[0];
}

__device__ __forceinline__ float block_max(float v, float *buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float r = warp_max(lane < nwarps ? buf[lane] : -FLT_MAX);
        if (lane == 0) buf[0] = r;
    }
    __syncthreads();
    return buf[0];
}

// Threads for a block striding over a row of n entries: a multiple of 32,
// from 32 to cap.
static int row_threads(int n, int cap) {
    int t = ceil_div(n, 32) * 32;
    return t < 32 ? 32 : (t > cap ? cap : t);
}

static int elem_blocks(size_t n) {
    size_t b = ceil_div_size(n, ELEM_THREADS);
    return (int)(b < ELEM_MAX_BLOCKS ? b : ELEM_MAX_BLOCKS);
}

// ---- RMSNorm ---------------------------------------------------------------------------

// One block per row n.
__global__ void rmsnorm_forward_kernel(float *__restrict__ out,        // (N, C)
                                       float *__restrict__ rstd,       // (N)
                                       const float *__restrict__ x,    // (N, C)
                                       const float *__restrict__ g,    // (C)
                                       int C) {
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    const float *xr = x + row * C;
    float *yr = out + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / (float)C + GLIA_RMS_EPS);
    for (int c = threadIdx.x; c < C; c += blockDim.x) yr[c] = g[c] * (xr[c] * r);
    if (threadIdx.x == 0) rstd[row] = r;
}

// Block k handles rows k, k + gridDim.x, ...: dx += the row's gradient, and
// the block's Σ over its rows of dy ⊙ x̂ goes to dg_part row k. Thread i owns
// channels i, i + blockDim.x, ... of that sum in dynamic shared memory, so it
// needs no barrier.
__global__ void rmsnorm_backward_kernel(float *__restrict__ dx,           // (N, C)
                                        float *__restrict__ dg_part,      // (gridDim.x, C)
                                        const float *__restrict__ dout,   // (N, C)
                                        const float *__restrict__ x,      // (N, C)
                                        const float *__restrict__ g,      // (C)
                                        const float *__restrict__ rstd,   // (N)
                                        int N, int C) {
    extern __shared__ float dg_s[];  // (C)
    __shared__ float red[32];
    for (int c = threadIdx.x; c < C; c += blockDim.x) dg_s[c] = 0.0f;
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xr = x + (size_t)n * C;
        const float *dyr = dout + (size_t)n * C;
        float *dxr = dx + (size_t)n * C;
        const float r = rstd[n];
        float dot = 0.0f;  // Σ_c dx̂_c · x̂_c
        for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dyr[c] * g[c] * xr[c] * r;
        dot = block_sum(dot, red);
        const float mean_dot = dot / (float)C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float xhat = xr[c] * r;
            dxr[c] += r * (dyr[c] * g[c] - xhat * mean_dot);
            dg_s[c] += dyr[c] * xhat;
        }
    }
    float *part = dg_part + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) part[c] = dg_s[c];
}

// dst[c] += Σ_k part[k][c] over k = 0..nparts-1 in order; one thread per c.
__global__ void add_partials_kernel(float *__restrict__ dst,          // (C)
                                    const float *__restrict__ part,   // (nparts, C)
                                    int nparts, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float total = 0.0f;
    for (int k = 0; k < nparts; k++) total += part[(size_t)k * C + c];
    dst[c] += total;
}

static int rmsnorm_backward_blocks(int N) { return N < RMS_BWD_BLOCKS ? N : RMS_BWD_BLOCKS; }

extern "C" void rmsnorm_forward_cuda(float *out, float *rstd, const float *x, const float *g,
                                     int N, int C, void *stream) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<N, row_threads(C, ROW_THREADS), 0, (cudaStream_t)stream>>>(out, rstd, x, g, C);
    cuda_check(cudaGetLastError());
}

extern "C" void rmsnorm_occupancy_cuda(CudaOccupancy *out, int C) {
    *out = occupancy_of("rmsnorm forward", rmsnorm_forward_kernel, row_threads(C, ROW_THREADS), 0);
}

extern "C" size_t rmsnorm_backward_scratch_floats(int N, int C) {
    if (N <= 0 || C <= 0) return 0;
    return (size_t)rmsnorm_backward_blocks(N) * C;
}

extern "C" void rmsnorm_backward_cuda(float *dx, float *dg, float *scratch, const float *dout,
                                      const float *x, const float *g, const float *rstd, int N,
                                      int C, void *stream) {
    if (N <= 0 || C <= 0) return;
    cudaStream_t st = (cudaStream_t)stream;
    const int blocks = rmsnorm_backward_blocks(N);
    const size_t smem = (size_t)C * sizeof(float);
    if (smem > 48 * 1024)  // beyond the default limit: opt in (up to 227 KB on an H100)
        cuda_check(cudaFuncSetAttribute(rmsnorm_backward_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    rmsnorm_backward_kernel<<<blocks, row_threads(C, ROW_THREADS), smem, st>>>(dx, scratch, dout, x, g, rstd, N, C);
    cuda_check(cudaGetLastError());
    add_partials_kernel<<<ceil_div(C, FINISH_THREADS), FINISH_THREADS, 0, st>>>(dg, scratch, blocks, C);
    cuda_check(cudaGetLastError());
}

// ---- LIF neuron backward -----------------------------------------------------------------

// A thread per (sequence b, channel c), flattened as blockIdx.x = b·nblk +
// channel block, walking t = T-1 .. 0 (kernels/cpu/lif.c neuron_backward:
// keep_next = 1 − s_t is 0 before the last step, since du_{T+1} = 0 anyway).
// Step t needs ds_t, o_t, u_t (carried from step t+1, where it was u_{t-1}),
// u_{t-1} and s_{t-1}; step t-1's four loads are issued first.
// SB: bytes per stored spike (cuda_common.h).
template <int SB>
__global__ void lif_backward_kernel(float *__restrict__ dcurrent,      // (B, T, N), row stride ld
                                    float *__restrict__ dm,            // (B, T, N) or NULL
                                    float *__restrict__ dbeta_part,    // (B, N)
                                    const float *__restrict__ ds,      // (B, T, N)
                                    const float *__restrict__ u,       // (B, T, N)
                                    const float *__restrict__ o,       // (B, T, N) or NULL
                                    const Spike<SB> *__restrict__ s,   // (B, T, N)
                                    const float *__restrict__ a_beta,  // (N)
                                    int T, int N, int ld) {
    const int nblk = ceil_div(N, blockDim.x);
    const int b = blockIdx.x / nblk;
    const int c = (blockIdx.x % nblk) * blockDim.x + threadIdx.x;
    if (c >= N) return;
    const float beta = step_sigmoid(a_beta[c]);
    const size_t base = (size_t)b * T * N + c;  // element (b, t, c) is at base + t·N
    float du_next = 0.0f, keep_next = 0.0f, dbeta = 0.0f;
    // step T-1's inputs
    size_t off = base + (size_t)(T - 1) * N;
    float ds_t = ds[off], o_t = o ? o[off] : 0.0f, u_t = u[off];
    float u_p = T > 1 ? u[off - N] : 0.0f, s_p = T > 1 ? spike_load(s[off - N]) : 0.0f;  // step t-1's u, s
    for (int t = T - 1; t >= 0; t--, off -= N) {
        float ds_n = 0.0f, o_n = 0.0f, u_pn = 0.0f, s_pn = 0.0f;  // prefetch for step t-1
        if (t >= 1) {
            ds_n = ds[off - N];
            o_n = o ? o[off - N] : 0.0f;
        }
        if (t >= 2) {
            u_pn = u[off - 2 * (size_t)N];
            s_pn = spike_load(s[off - 2 * (size_t)N]);
        }
        const float m = step_potential(u_t, o_t);
        const float dmt = step_spike_grad(ds_t, m);
        const float du = step_membrane_grad(dmt, beta, keep_next, du_next);
        float keep = 1.0f, u_prev = 0.0f;
        if (t > 0) {
            keep = step_keep(s_p);
            u_prev = u_p;
        }
        dbeta += step_beta_grad(du, u_prev, keep);
        dcurrent[((size_t)b * T + t) * ld + c] = du;
        if (dm) dm[off] = dmt;
        du_next = du;
        keep_next = keep;
        u_t = u_p;
        ds_t = ds_n, o_t = o_n, u_p = u_pn, s_p = s_pn;
    }
    dbeta_part[(size_t)b * N + c] = dbeta;
}

// da_beta[c] += (Σ_b part[b][c], b in order) · β(1 − β): the CPU's chaining.
__global__ void lif_dbeta_kernel(float *__restrict__ da_beta,       // (N)
                                 const float *__restrict__ part,    // (B, N)
                                 const float *__restrict__ a_beta,  // (N)
                                 int B, int N) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    float total = 0.0f;
    const float beta = step_sigmoid(a_beta[c]);
    for (int b = 0; b < B; b++) total += part[(size_t)b * N + c];
    da_beta[c] += step_sigmoid_grad(total, beta);
}

template <int SB>
static void neuron_backward_launch(float *dcurrent, float *dm, float *da_beta, float *scratch, const float *ds,
                                   const float *u, const float *o, const Spike<SB> *s, const float *a_beta, int B, int T,
                                   int N, int ld, void *stream) {
    if (B <= 0 || T <= 0 || N <= 0) return;
    if ((int64_t)B * ceil_div(N, LIF_THREADS) > INT32_MAX) {
        fprintf(stderr, "neuron_backward_cuda: too many sequences (B=%d)\n", B);
        exit(1);
    }
    cudaStream_t st = (cudaStream_t)stream;
    const int blocks = B * ceil_div(N, LIF_THREADS);
    lif_backward_kernel<SB><<<blocks, LIF_THREADS, 0, st>>>(dcurrent, dm, scratch, ds, u, o, s, a_beta, T, N, ld);
    cuda_check(cudaGetLastError());
    lif_dbeta_kernel<<<ceil_div(N, FINISH_THREADS), FINISH_THREADS, 0, st>>>(da_beta, scratch, a_beta, B, N);
    cuda_check(cudaGetLastError());
}

extern "C" void neuron_backward_cuda(float *dcurrent, float *dm, float *da_beta, float *scratch,
                                     const float *ds, const float *u, const float *o, const void *s, int sb,
                                     const float *a_beta, int B, int T, int N, int ld, void *stream) {
    spike_bytes_check("neuron_backward_cuda", sb);
    if (sb == 2)
        neuron_backward_launch<2>(dcurrent, dm, da_beta, scratch, ds, u, o, (const bf16_t *)s, a_beta, B, T, N,
                                  ld, stream);
    else
        neuron_backward_launch<4>(dcurrent, dm, da_beta, scratch, ds, u, o, (const float *)s, a_beta, B, T, N, ld,
                                  stream);
}

// ---- embedding ---------------------------------------------------------------------------

// One block per position i: x[i] = E[tokens[i]].
__global__ void embedding_forward_kernel(float *__restrict__ x,            // (M, C)
                                         const int *__restrict__ tokens,   // (M)
                                         const float *__restrict__ E,      // (V, C)
                                         int C) {
    const size_t i = blockIdx.x;
    const float *e = E + (size_t)tokens[i] * C;
    float *xr = x + i * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) xr[c] = e[c];
}

// One block per distinct token (run u of the plan): dE[uniq[u]] += the dx
// rows of its positions, in position order, each channel in one register.
__global__ void embedding_backward_kernel(float *__restrict__ dE,          // (V, C)
                                          const float *__restrict__ dx,    // (M, C)
                                          const int *__restrict__ order,   // (M)
                                          const int *__restrict__ starts,  // (nuniq + 1)
                                          const int *__restrict__ uniq,    // (nuniq)
                                          int C) {
    const int u = blockIdx.x;
    const int lo = starts[u], hi = starts[u + 1];
    float *row = dE + (size_t)uniq[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = row[c];
        for (int p = lo; p < hi; p++) acc += dx[(size_t)order[p] * C + c];
        row[c] = acc;
    }
}

extern "C" void embedding_forward_cuda(float *x, const int *tokens, const float *E, int M, int C,
                                       void *stream) {
    if (M <= 0 || C <= 0) return;
    embedding_forward_kernel<<<M, row_threads(C, ROW_THREADS), 0, (cudaStream_t)stream>>>(x, tokens, E, C);
    cuda_check(cudaGetLastError());
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

// Host only. Token ids are >= 0 (they index E): the key (token << 32 | position)
// sorts by token, then position.
extern "C" int embedding_backward_plan(const int *tokens_host, int M, int *order, int *starts,
                                       int *uniq) {
    starts[0] = 0;
    if (M <= 0) return 0;
    uint64_t *key = (uint64_t *)malloc((size_t)M * sizeof(uint64_t));
    if (!key) {
        fprintf(stderr, "embedding_backward_plan: out of memory (M=%d)\n", M);
        exit(1);
    }
    for (int i = 0; i < M; i++) key[i] = (uint64_t)(uint32_t)tokens_host[i] << 32 | (uint32_t)i;
    qsort(key, (size_t)M, sizeof(uint64_t), compare_u64);
    int nuniq = 0;
    for (int i = 0; i < M; i++) {
        const int tok = (int)(key[i] >> 32);
        order[i] = (int)(key[i] & 0xffffffffu);
        if (i == 0 || tok != (int)(key[i - 1] >> 32)) {
            starts[nuniq] = i;
            uniq[nuniq] = tok;
            nuniq++;
        }
    }
    starts[nuniq] = M;
    free(key);
    return nuniq;
}

extern "C" void embedding_backward_cuda(float *dE, const float *dx, const int *order,
                                        const int *starts, const int *uniq, int nuniq, int C,
                                        void *stream) {
    if (nuniq <= 0 || C <= 0) return;
    embedding_backward_kernel<<<nuniq, row_threads(C, ROW_THREADS), 0, (cudaStream_t)stream>>>(dE, dx, order, starts, uniq, C);
    cuda_check(cudaGetLastError());
}

// ---- cross-entropy -------------------------------------------------------------------------

// The softmax statistics of one row, for the whole block: *mx = max_v lg[v],
// *sum = Σ_v exp(lg[v] − mx), identical in every thread. Each thread keeps a
// running max and a sum of exponentials relative to it over its entries
// (rescaled when the max grows); then the block's max, each thread's sum
// rescaled to it, and the block's sum. Initialised with −FLT_MAX, not −inf,
// so an empty or all −inf thread contributes exp(finite) · 0 = 0, not NaN.
__device__ __forceinline__ void row_softmax_stats(const float *__restrict__ lg,  // (V)
                                                  int V, float *red, float *mx, float *sum) {
    float m = -FLT_MAX, s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = lg[v];
        if (x > m) {
            s = s * expf(m - x) + 1.0f;
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    const float M = block_max(m, red);
    s *= expf(m - M);
    *sum = block_sum(s, red);
    *mx = M;
}

// One block per row: losses[row] = log Σ exp(lg − max) + max − lg[target]
// over the row's V real entries (kernels/cpu/xent.c xent_row), 0 where
// target < 0. The pad columns [V, Vp) are never read.
__global__ void xent_forward_kernel(float *__restrict__ losses,         // (M)
                                    const float *__restrict__ logits,   // (M, Vp)
                                    const int *__restrict__ targets,    // (M)
                                    int V, int Vp) {
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    const int target = targets[row];
    if (target < 0) {  // the whole block leaves together
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }
    const float *lg = logits + row * Vp;
    float mx, sum;
    row_softmax_stats(lg, V, red, &mx, &sum);
    if (threadIdx.x == 0) losses[row] = logf(sum) + mx - lg[target];
}

// One block per row, in place: lg[:V] = k · (softmax − onehot(target))
// (kernels/cpu/xent.c xent_backward) and lg[V:Vp] = 0 (never read); rows with
// target < 0 become 0. Every read of the statistics pass is behind the
// reductions' barriers before any write, and the write pass reads and writes
// only the thread's own entries.
__global__ void xent_backward_kernel(float *__restrict__ logits,        // (M, Vp)
                                     const int *__restrict__ targets,   // (M)
                                     float k, int V, int Vp) {
    __shared__ float red[32];
    const size_t row = blockIdx.x;
    const int target = targets[row];
    float *lg = logits + row * Vp;
    if (target < 0) {
        for (int v = threadIdx.x; v < Vp; v += blockDim.x) lg[v] = 0.0f;
        return;
    }
    float mx, sum;
    row_softmax_stats(lg, V, red, &mx, &sum);
    const float inv = 1.0f / sum;
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        float d = v < V ? expf(lg[v] - mx) * inv * k : 0.0f;
        if (v == target) d -= k;
        lg[v] = d;
    }
}

static int xent_threads(int V) { return row_threads(V, V >= XENT_WIDE ? XENT_THREADS : 256); }

extern "C" void xent_forward_cuda(float *losses, const float *logits, const int *targets, int M,
                                  int V, int Vp, void *stream) {
    if (M <= 0 || V <= 0) return;
    xent_forward_kernel<<<M, xent_threads(V), 0, (cudaStream_t)stream>>>(losses, logits, targets, V, Vp);
    cuda_check(cudaGetLastError());
}

extern "C" void xent_backward_cuda(float *logits, const int *targets, float k, int M, int V, int Vp,
                                   void *stream) {
    if (M <= 0 || V <= 0) return;
    xent_backward_kernel<<<M, xent_threads(V), 0, (cudaStream_t)stream>>>(logits, targets, k, V, Vp);
    cuda_check(cudaGetLastError());
}

// ---- optimizer -----------------------------------------------------------------------------

// kernels/cpu/adamw.c adamw_update, element by element; c1, c2 are the bias
// corrections 1 − β1^step, 1 − β2^step, computed on the host as the CPU does.
__global__ void adamw_kernel(float *__restrict__ p,        // (n)
                             const float *__restrict__ g,  // (n)
                             float gscale,
                             float *__restrict__ m,        // (n)
                             float *__restrict__ v,        // (n)
                             size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float c1, float c2) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = g[i] * gscale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float mhat = mi / c1, vhat = vi / c2;
        const float pi = p[i];
        p[i] = pi - lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * pi);
    }
}

extern "C" void adamw_update_cuda(float *p, const float *g, float gscale, float *m, float *v,
                                  size_t n, float lr, float beta1, float beta2, float eps,
                                  float weight_decay, int step, void *stream) {
    if (n == 0) return;
    const float c1 = 1.0f - powf(beta1, (float)step), c2 = 1.0f - powf(beta2, (float)step);
    adamw_kernel<<<elem_blocks(n), ELEM_THREADS, 0, (cudaStream_t)stream>>>(p, g, gscale, m, v, n, lr, beta1,
                                                                             beta2, eps, weight_decay, c1, c2);
    cuda_check(cudaGetLastError());
}

// Σ g² of the elements i ≡ this thread (mod the grid's threads), ascending,
// in double (each g² is exact in double); then the block's sum into part.
// Four loads are issued per iteration; the additions keep the simple loop's order.
__global__ void grad_norm_partial_kernel(double *__restrict__ part,      // (gridDim.x)
                                         const float *__restrict__ g,    // (n)
                                         size_t n) {
    __shared__ double red[32];
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    double acc = 0.0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const double a = g[i], b = g[i + stride], c = g[i + 2 * stride], d = g[i + 3 * stride];
        acc += a * a;
        acc += b * b;
        acc += c * c;
        acc += d * d;
    }
    for (; i < n; i += stride) {
        const double a = g[i];
        acc += a * a;
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// One block: *out = the sum of the nparts partials, in a fixed order.
__global__ void grad_norm_final_kernel(double *__restrict__ out,          // (1)
                                       const double *__restrict__ part,   // (nparts)
                                       int nparts) {
    __shared__ double red[32];
    double acc = 0.0;
    for (int k = threadIdx.x; k < nparts; k += blockDim.x) acc += part[k];
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) *out = acc;
}

extern "C" size_t grad_norm_scratch_doubles(void) { return NORM_BLOCKS; }

extern "C" void grad_norm_sq_cuda(double *out, double *scratch, const float *g, size_t n,
                                  void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    grad_norm_partial_kernel<<<NORM_BLOCKS, NORM_THREADS, 0, st>>>(scratch, g, n);
    cuda_check(cudaGetLastError());
    grad_norm_final_kernel<<<1, NORM_THREADS, 0, st>>>(out, scratch, NORM_BLOCKS);
    cuda_check(cudaGetLastError());
}

// ---- column sums (spike statistics) ------------------------------------------------
// sums[n] = Σ_m |x[m][n]| (or Σ_m x[m][n]), one thread per column n, m
// ascending, in double: the CPU backend's order and precision (kernels/cpu/backend.c).
// XB: bytes per element, 4 (fp32) or 2 (bf16 spikes, cuda_common.h).
template <int XB>
__global__ void column_sums_kernel(double *__restrict__ sums,         // (N)
                                   const Spike<XB> *__restrict__ x,  // (M, N)
                                   int M, int N, int absval) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    double acc = 0.0;
    for (int m = 0; m < M; m++) {
        const float v = spike_load(x[(size_t)m * N + n]);
        acc += absval ? fabs((double)v) : (double)v;
    }
    sums[n] = acc;
}

extern "C" void column_sums_cuda(double *sums, const float *x, int M, int N, int absval, void *stream) {
    if (N <= 0) return;
    column_sums_kernel<4><<<ceil_div(N, ELEM_THREADS), ELEM_THREADS, 0, (cudaStream_t)stream>>>(sums, x, M, N, absval);
    cuda_check(cudaGetLastError());
}

extern "C" void spike_column_sums_cuda(double *sums, const bf16_t *s, int M, int N, void *stream) {
    if (N <= 0) return;
    column_sums_kernel<2><<<ceil_div(N, ELEM_THREADS), ELEM_THREADS, 0, (cudaStream_t)stream>>>(sums, s, M, N, 0);
    cuda_check(cudaGetLastError());
}

// ---- bf16 conversion (BF16 mode's spike GEMMs, the weights' mirror) ----------------
__global__ void to_bf16_kernel(bf16_t *__restrict__ dst,       // (n)
                               const float *__restrict__ src,  // (n)
                               size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = glia_to_bf16(src[i]);
}

extern "C" void to_bf16_cuda(bf16_t *dst, const float *src, size_t n, void *stream) {
    if (n == 0) return;
    to_bf16_kernel<<<elem_blocks(n), ELEM_THREADS, 0, (cudaStream_t)stream>>>(dst, src, n);
    cuda_check(cudaGetLastError());
}
