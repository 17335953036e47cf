// broken_kernels.cu: kernels that break a rule of the GPU on purpose, one per
// check of the emulator (cuda_runtime.h), and their correct twins; built
// only in a GLIA_CUDA_EMU build, for tests/test_cuda_emu_checks.c. Each
// launcher returns cudaGetLastError() after its launch.
#include <cuda_runtime.h>

// ---- shuffles and votes: masks -------------------------------------------------------

// Every lane of a full warp shuffles with `mask`; broken when the mask leaves lanes out.
__global__ void shfl_mask_kernel(float *out, unsigned mask) {
    float v = (float)threadIdx.x;
    out[threadIdx.x] = __shfl_sync(mask, v, 0);
}

// Lanes at or above `live` exit first; the rest shuffle (or vote) with `mask`.
__global__ void shfl_after_exit_kernel(float *out, unsigned mask, int live, int vote) {
    if ((int)threadIdx.x >= live) return;
    float v = (float)threadIdx.x;
    out[threadIdx.x] = vote ? (float)__ballot_sync(mask, threadIdx.x % 2) : __shfl_xor_sync(mask, v, 1);
}

// Each half-warp shuffles within itself with its own mask: correct.
__global__ void shfl_half_warps_kernel(float *out) {
    const unsigned lane = threadIdx.x % 32u;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    out[threadIdx.x] = __shfl_sync(mask, (float)threadIdx.x, (int)(lane & 16u));
}

// ---- dynamic shared memory above 48 KiB -------------------------------------------------

__global__ void big_smem_kernel(float *out, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = (float)i;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = buf[n - 1];
}

// ---- launch bounds ------------------------------------------------------------------------

__global__ void __launch_bounds__(64) bounded_kernel(float *out) {
    out[threadIdx.x] = 1.0f;
}

// ---- shared-memory races -------------------------------------------------------------------

// Thread t publishes t in s[t], then reads its neighbour's s[(t + shift) % n]; `sync`
// selects what orders the two: 0 nothing (a race), 1 __syncwarp (enough only within a
// warp), 2 __syncthreads.
__global__ void neighbour_kernel(float *out, int shift, int sync) {
    __shared__ float s[64];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = (float)t;
    if (sync == 1) __syncwarp();
    if (sync == 2) __syncthreads();
    out[t] = s[(t + shift) % n];
}

// The same through dynamic shared memory, at byte offset `at`.
__global__ void dynamic_neighbour_kernel(float *out, int at, int sync) {
    extern __shared__ float dyn[];
    float *s = dyn + at / 4;
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = (float)t;
    if (sync) __syncthreads();
    out[t] = s[(t + 1) % n];
}

// Every thread writes s[0] (write after write), or only thread 0 does.
__global__ void all_write_kernel(float *out, int only_first) {
    __shared__ float s0[1];
    if (!only_first || threadIdx.x == 0) s0[0] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s0[0];
}

// Shift left in place: s[t] = s[t + 1]. Broken without the barrier between the
// read of the neighbour and the write over it (write after read).
__global__ void shift_kernel(float *out, int sync) {
    __shared__ float sh[65];
    const int t = threadIdx.x;
    sh[t] = (float)t;
    if (t == 0) sh[blockDim.x] = (float)blockDim.x;
    __syncthreads();
    const float v = sh[t + 1];
    if (sync) __syncthreads();
    sh[t] = v;
    __syncthreads();
    out[t] = sh[t];
}

// After a barrier, thread 0 reads s[1] and thread 1 overwrites it: thread 0
// runs first in either order of the emulator (the barrier's last arrival goes
// on first), so only the write can see the race (write after read).
__global__ void read_then_overwrite_kernel(float *out, int sync) {
    __shared__ float s1[64];
    const int t = threadIdx.x;
    s1[t] = (float)t;
    __syncthreads();
    if (t == 0) out[0] = s1[1];
    if (sync) __syncthreads();
    if (t == 1) s1[1] = -1.0f;
}

// Every thread adds 1 to one shared counter with atomicAdd: not a race.
__global__ void atomic_count_kernel(float *out) {
    __shared__ int count[1];
    if (threadIdx.x == 0) count[0] = 0;
    __syncthreads();
    atomicAdd(&count[0], 1);
    __syncthreads();
    out[threadIdx.x] = (float)count[0];
}

// ---- warp matrix operations (mma.h) ---------------------------------------------------------

// One warp: out (16 × 16) = a (16 × 8, row-major) · b (8 × 16, row-major)
// in TF32, the operands converted with __float_to_tf32 when `round`, else
// as they are. Broken when `diverge`: only lanes 0..15 take part, the others
// wait at __syncthreads.
__global__ void wmma_kernel(float *out, const float *a, const float *b, int round, int diverge) {
    namespace wmma = nvcuda::wmma;
    if (!diverge || threadIdx.x < 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
        wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        wmma::load_matrix_sync(fa, a, 8);
        wmma::load_matrix_sync(fb, b, 16);
        if (round) {
            for (int e = 0; e < fa.num_elements; e++) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
            for (int e = 0; e < fb.num_elements; e++) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        }
        wmma::mma_sync(acc, fa, fb, acc);
        wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
    }
    __syncthreads();
}

extern "C" {

int emu_neighbour(float *out, int threads, int shift, int sync) {
    neighbour_kernel<<<2, threads>>>(out, shift, sync);
    return (int)cudaGetLastError();
}

int emu_dynamic_neighbour(float *out, int at, int sync) {
    dynamic_neighbour_kernel<<<1, 64, at + 64 * sizeof(float)>>>(out, at, sync);
    return (int)cudaGetLastError();
}

int emu_all_write(float *out, int only_first) {
    all_write_kernel<<<1, 64>>>(out, only_first);
    return (int)cudaGetLastError();
}

int emu_shift(float *out, int sync) {
    shift_kernel<<<1, 64>>>(out, sync);
    return (int)cudaGetLastError();
}

int emu_read_then_overwrite(float *out, int sync) {
    read_then_overwrite_kernel<<<1, 64>>>(out, sync);
    return (int)cudaGetLastError();
}

int emu_atomic_count(float *out) {
    atomic_count_kernel<<<2, 64>>>(out);
    return (int)cudaGetLastError();
}

int emu_wmma(float *out, const float *a, const float *b, int round, int diverge) {
    wmma_kernel<<<1, 32>>>(out, a, b, round, diverge);
    return (int)cudaGetLastError();
}

int emu_shfl_mask(float *out, unsigned mask) {
    shfl_mask_kernel<<<1, 32>>>(out, mask);
    return (int)cudaGetLastError();
}

int emu_shfl_after_exit(float *out, unsigned mask, int live, int vote) {
    shfl_after_exit_kernel<<<1, 32>>>(out, mask, live, vote);
    return (int)cudaGetLastError();
}

int emu_shfl_half_warps(float *out) {
    shfl_half_warps_kernel<<<1, 32>>>(out);
    return (int)cudaGetLastError();
}

// smem_bytes of dynamic shared memory; opt_in: set the kernel's attribute first.
int emu_big_smem(float *out, int smem_bytes, int opt_in) {
    if (opt_in) {
        cudaError_t e = cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             smem_bytes);
        if (e != cudaSuccess) return (int)e;
    }
    big_smem_kernel<<<1, 64, smem_bytes>>>(out, smem_bytes / (int)sizeof(float));
    return (int)cudaGetLastError();
}

int emu_bounded(float *out, int threads) {
    bounded_kernel<<<1, threads>>>(out);
    return (int)cudaGetLastError();
}

}  // extern "C"
