// cuda_common.h: error checking and small helpers shared by every .cu file.
//
// glia treats a failing CUDA or cuBLAS call as a programming or environment
// error that cannot be recovered from in the middle of a forward or backward
// pass, so every call is wrapped in cuda_check / cublas_check, which print
// the call site (file:line) and the library's own error string, and end the
// job (common/check.h). A kernel launch is checked right after it with
// cuda_check(cudaGetLastError()); errors raised while a kernel runs surface
// at the next synchronising call, which is checked too.
//
// This header includes the CUDA runtime and cuBLAS headers, so it is for .cu
// files only; C code talks to the CUDA backend through cuda.h, which needs
// no CUDA header.
#ifndef GLIA_CUDA_COMMON_H
#define GLIA_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/bf16.h"
#include "common/check.h"
#include "cuda/cuda.h"  // CudaOccupancy

static inline const char *cublas_message(cublasStatus_t status) { return cublasGetStatusString(status); }
#define cuda_check(call) GLIA_CHECK("CUDA", cudaError_t, cudaSuccess, cudaGetErrorString, call)
#define cublas_check(call) GLIA_CHECK("cuBLAS", cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublas_message, call)

// Number of blocks of size b needed to cover a items (a >= 0, b > 0).
__host__ __device__ static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ static inline size_t ceil_div_size(size_t a, size_t b) {
    return (a + b - 1) / b;
}

// Spikes as the kernels store them, fp32 or bf16 (exact: 0 or 1). Kernels
// take the bytes per spike SB (4 or 2, backend.h spike_bytes) as their
// template parameter, Spike<SB> its type, and read and write through these.
template <int SB> struct SpikeOf;
template <> struct SpikeOf<4> { typedef float type; };
template <> struct SpikeOf<2> { typedef bf16_t type; };
template <int SB> using Spike = typename SpikeOf<SB>::type;
__host__ __device__ static inline float spike_load(float s) { return s; }
__host__ __device__ static inline float spike_load(bf16_t s) { return glia_from_bf16(s); }
__host__ __device__ static inline void spike_put(float *p, float s) { *p = s; }
__host__ __device__ static inline void spike_put(bf16_t *p, float s) { *p = glia_to_bf16(s); }
// The C entries take the spikes as void * with sb; anything but 4 or 2 ends the job.
static inline void spike_bytes_check(const char *who, int sb) {
    if (sb == 4 || sb == 2) return;
    fprintf(stderr, "%s: %d bytes per spike (4: fp32, 2: bf16)\n", who, sb);
    exit(1);
}

// A kernel's occupancy (cuda.h, CudaOccupancy) at `threads` per block and
// `smem` bytes of dynamic shared memory (opted in above 48 KiB, as its
// launcher does).
template <class F>
static CudaOccupancy occupancy_of(const char *name, F kernel, int threads, size_t smem) {
    CudaOccupancy r = {name, threads, 0, 0, smem, 0.0};
    int dev = 0, max_threads = 0;
    cuda_check(cudaGetDevice(&dev));
    cuda_check(cudaDeviceGetAttribute(&max_threads, cudaDevAttrMaxThreadsPerMultiProcessor, dev));
    cudaFuncAttributes a;
    cuda_check(cudaFuncGetAttributes(&a, kernel));
    if (smem > 48 * 1024)
        cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.blocks_per_sm, kernel, threads, smem));
    r.regs = a.numRegs;
    r.warp_fraction = (double)r.blocks_per_sm * ceil_div(threads, 32) / (max_threads / 32);
    return r;
}

#endif
