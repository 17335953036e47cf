// amsu.cu: the AM-SU recurrence on the GPU, forward: astrocyte calcium
// state, modulation, LIF membrane and spikes of one layer, in one kernel.
//
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
// D is a template parameter (8, 16, 32, 64, 128): the column must sit in
// registers, which needs every index into it known at compile time (fully
// unrolled loops); a run-time D would put it in local memory. ptxas (CUDA
// 13.0, sm_90) reports 64 / 62 / 72 / 124 / 179 registers per thread for
// D = 8 / 16 / 32 / 64 / 128 and no spills. With 64 K registers per SM that
// still fits 2 blocks of D = 128, 8 of D = 64, and for D <= 32 the hardware
// limit of 32 blocks per SM (shared memory is at most 2.5 KB per block). What limits occupancy in
// practice is the grid: B·Nh blocks, often fewer than the 132 SMs of an
// H100 (see below); for D = 8 and 16 a block is also less than a warp.
//
// Cost per launch (fp32 I/O), N = B·T·C:
//   bytes  ≈ 4·N·4 read (I, k, v, q) + 3·N·4 written (o, u, s)
//            + B·Nh·nchunks·D²·4 written (Hckpt)
//   FLOPs  ≈ 5·B·T·Nh·D² (mul + FMA for the calcium update, FMA for o)
// At SPEC's 124m layer (B 8, T 1024, C 768, Nh 12, D 64): 176 MB of
// activations + 50 MB of checkpoints ≈ 75 µs at 3 TB/s; 2.0 GFLOP ≈ 30 µs of
// fp32 FMA. This kernel does not reach either floor at that shape: it has
// only B·Nh = 96 blocks of 64 threads (one per SM at most), and each step is
// a chain of D dependent FMAs for o plus a barrier, so it is latency-bound
// (≈ 1024 steps × a few hundred cycles ≈ 0.2 ms, an estimate to measure).
// The ways below that are SPEC's chunked tensor-core form, or splitting the
// rows i of a column over several threads (which changes the summation order
// from the CPU's, within the parity tolerance).
//
// With astro == 0 there is no astrocyte: a thread per (sequence, channel)
// runs the LIF neuron alone along time and writes o = 0.
#include "common/step.h"
#include "cpu/cpu.h"  // GLIA_CHUNK, glia_nchunks: the checkpoint convention
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <stdint.h>

// ---- kernels ----------------------------------------------------------------------

// One block per (sequence b, head h), flattened as blockIdx.x = b·Nh + h;
// D threads, thread j owns column j of H and neuron c = h·D + j.
template <int D>
__global__ void __launch_bounds__(D)
amsu_recurrence_forward_kernel(float *__restrict__ o,              // (B, T, C)
                               float *__restrict__ u,              // (B, T, C)
                               float *__restrict__ s,              // (B, T, C)
                               float *__restrict__ Hckpt,          // (B, Nh, nch, D, D) or NULL
                               const float *__restrict__ I,        // (B, T, C)
                               const float *__restrict__ k,        // (B, T, C)
                               const float *__restrict__ v,        // (B, T, C)
                               const float *__restrict__ q,        // (B, T, C)
                               const float *__restrict__ a_lambda, // (Nh, D)
                               const float *__restrict__ a_beta,   // (C)
                               int T, int C, int Nh, int nch) {
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
#pragma unroll
    for (int i = 0; i < D; i++) H[i] = 0.0f;
    float u_prev = 0.0f, s_prev = 0.0f;

    // Element (b, t, c) is at base + t·C.
    const size_t base = (size_t)b * T * C + c;
    float *ckpt = Hckpt ? Hckpt + (size_t)bh * nch * D * D + j : nullptr;  // column j, chunk 0

    float k_next = 0.0f, v_next = 0.0f, q_next = 0.0f, I_next = 0.0f;
    if (T > 0) {
        k_next = k[base];
        v_next = v[base];
        q_next = q[base];
        I_next = I[base];
    }
    for (int t = 0; t < T; t++) {
        const size_t off = base + (size_t)t * C;
        const float kt = k_next, vt = v_next, qt = q_next, It = I_next;
        if (t + 1 < T) {  // prefetch step t + 1
            k_next = k[off + C];
            v_next = v[off + C];
            q_next = q[off + C];
            I_next = I[off + C];
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
        s[off] = st;
        u_prev = ut;
        s_prev = st;
    }
}

// astro == 0: a thread per (sequence, channel), flattened as
// blockIdx.x = b·ceil(C / blockDim.x) + channel block. o is written as 0.
__global__ void lif_forward_kernel(float *__restrict__ o,             // (B, T, C)
                                   float *__restrict__ u,             // (B, T, C)
                                   float *__restrict__ s,             // (B, T, C)
                                   const float *__restrict__ I,       // (B, T, C)
                                   const float *__restrict__ a_beta,  // (C)
                                   int T, int C) {
    const int nblk = ceil_div(C, blockDim.x);
    const int b = blockIdx.x / nblk;
    const int c = (blockIdx.x % nblk) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const float beta = step_sigmoid(a_beta[c]);
    const size_t base = (size_t)b * T * C + c;
    float u_prev = 0.0f, s_prev = 0.0f;
    for (int t = 0; t < T; t++) {
        const size_t off = base + (size_t)t * C;
        const float ut = step_membrane(beta, u_prev, 1.0f - s_prev, I[off]);
        const float st = step_spike(step_potential(ut, 0.0f));
        o[off] = 0.0f;
        u[off] = ut;
        s[off] = st;
        u_prev = ut;
        s_prev = st;
    }
}

// ---- launchers ----------------------------------------------------------------------

#define LIF_THREADS 128

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

template <int D>
static void amsu_launch(float *o, float *u, float *s, float *Hckpt, const float *I,
                        const float *k, const float *v, const float *q, const float *a_lambda,
                        const float *a_beta, int B, int T, int C, int Nh, cudaStream_t stream) {
    amsu_recurrence_forward_kernel<D><<<B * Nh, D, 0, stream>>>(
        o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, T, C, Nh, glia_nchunks(T));
    cuda_check(cudaGetLastError());
}

extern "C" void amsu_recurrence_forward_cuda(float *o, float *u, float *s, float *Hckpt,
                                             const float *I, const float *k, const float *v,
                                             const float *q, const float *a_lambda,
                                             const float *a_beta, int B, int T, int C, int Nh,
                                             int astro, void *stream) {
    if (amsu_check_shape("amsu_recurrence_forward_cuda", B, T, C, Nh, astro) != 0) exit(1);
    cudaStream_t st = (cudaStream_t)stream;
    if (!astro) {
        int blocks = B * ceil_div(C, LIF_THREADS);
        lif_forward_kernel<<<blocks, LIF_THREADS, 0, st>>>(o, u, s, I, a_beta, T, C);
        cuda_check(cudaGetLastError());
        return;
    }
    switch (C / Nh) {
    case 8: amsu_launch<8>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, st); break;
    case 16: amsu_launch<16>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, st); break;
    case 32: amsu_launch<32>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, st); break;
    case 64: amsu_launch<64>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, st); break;
    case 128: amsu_launch<128>(o, u, s, Hckpt, I, k, v, q, a_lambda, a_beta, B, T, C, Nh, st); break;
    default: exit(1);  // unreachable: amsu_check_shape rejected it with a message
    }
}

// ---- host-memory wrapper (tests) -------------------------------------------------

static float *device_alloc(size_t n) {
    float *p = nullptr;
    cuda_check(cudaMalloc((void **)&p, n * sizeof(float)));
    return p;
}

static float *device_upload(const float *host, size_t n) {
    float *p = device_alloc(n);
    cuda_check(cudaMemcpy(p, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return p;
}

// An output buffer filled with 0xFF bytes: every float is a NaN until written.
static float *device_alloc_poisoned(size_t n) {
    float *p = device_alloc(n);
    cuda_check(cudaMemset(p, 0xFF, n * sizeof(float)));
    return p;
}

static void device_download(float *host, const float *dev, size_t n) {
    cuda_check(cudaMemcpy(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost));
}

extern "C" int amsu_recurrence_forward_cuda_host(float *o, float *u, float *s, float *Hckpt,
                                                 const float *I, const float *k, const float *v,
                                                 const float *q, const float *a_lambda,
                                                 const float *a_beta, int B, int T, int C,
                                                 int Nh, int astro) {
    if (amsu_check_shape("amsu_recurrence_forward_cuda_host", B, T, C, Nh, astro) != 0)
        return -1;
    const size_t n = (size_t)B * T * C;
    float *d_o = device_alloc_poisoned(n);
    float *d_u = device_alloc_poisoned(n);
    float *d_s = device_alloc_poisoned(n);
    float *d_I = device_upload(I, n);
    float *d_beta = device_upload(a_beta, C);
    float *d_k = nullptr, *d_v = nullptr, *d_q = nullptr, *d_lambda = nullptr, *d_H = nullptr;
    size_t nH = 0;
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
    }
    amsu_recurrence_forward_cuda(d_o, d_u, d_s, d_H, d_I, d_k, d_v, d_q, d_lambda, d_beta, B, T,
                                 C, Nh, astro, nullptr);
    cuda_check(cudaDeviceSynchronize());
    device_download(o, d_o, n);
    device_download(u, d_u, n);
    device_download(s, d_s, n);
    if (d_H) device_download(Hckpt, d_H, nH);
    float *bufs[] = {d_o, d_u, d_s, d_I, d_beta, d_k, d_v, d_q, d_lambda, d_H};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) cuda_check(cudaFree(bufs[i]));
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
