// cuda_runtime.h (emulator): the part of the CUDA runtime glia's kernels use,
// executed on the CPU, so the CUDA backend's code paths run and are checked
// against the CPU reference on machines without a GPU (docs/CUDA.md, "The
// emulator", says what it does and does not prove).
//
// A launch runs the grid's blocks one after the other. Each block runs one
// fiber per CUDA thread (emu.cpp), so __syncthreads is a real barrier and
// `__shared__` variables (function-local statics here) are shared by the
// threads of the block being run, exactly as on a GPU. Warp shuffles
// exchange values through a per-warp buffer between two warp barriers, so
// every thread of the warp must take part (the `0xffffffff` mask glia uses).
// A thread that returns early leaves the block's barriers, like an exited
// thread on the GPU. Launches are synchronous; streams and events are
// accepted and ordered trivially. cudaMalloc fills new memory with 0xFF
// bytes (NaN as floats), so reading memory nobody wrote shows up.
//
// Checks a GPU would fail on (or compute-sanitizer report), made errors
// here: a shuffle, vote or __syncwarp whose mask leaves out the calling lane
// or names a lane that has exited (or lies beyond the block) ends the
// process with a message; a launch asking for more than 48 KiB of dynamic
// shared memory without the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize
// opt-in fails with cudaErrorInvalidValue; a block larger than the kernel's
// __launch_bounds__ (cu2cpp.pl passes the bound to the kernel's entry) fails
// with cudaErrorLaunchOutOfResources and runs nothing; two threads of a
// block touching one shared word with no barrier between them, at least one
// writing, end the process (the race check in emu.cpp, as racecheck reports
// it: __syncthreads orders the block, a warp barrier the lanes of its warp,
// atomics are no race).
//
// GLIA_EMU_MEM_BYTES (environment) caps the bytes cudaMalloc hands out, to
// exercise out-of-memory paths; GLIA_EMU_DEVICES=0 makes the device vanish.
#ifndef GLIA_EMU_CUDA_RUNTIME_H
#define GLIA_EMU_CUDA_RUNTIME_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#define GLIA_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

inline uint3 threadIdx, blockIdx;  // of the fiber being run (emu.cpp)
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNotReady = 600,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
} cudaError_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef struct glia_emu_stream *cudaStream_t;
typedef struct glia_emu_event *cudaEvent_t;
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02

typedef enum { cudaDevAttrMaxThreadsPerMultiProcessor = 39 } cudaDeviceAttr;
struct cudaFuncAttributes {
    size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
    int maxThreadsPerBlock, numRegs;
};

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin;
    int multiProcessorCount, l2CacheSize, major, minor, maxThreadsPerBlock, warpSize;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int d);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> inline cudaError_t cudaMalloc(T **p, size_t bytes) {
    return cudaMalloc(reinterpret_cast<void **>(p), bytes);
}
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
namespace glia_emu {
cudaError_t set_max_dynamic_smem(const void *kernel, int bytes);
// NCCL collectives of several ranks still in flight (libs.cpp): whether
// any is (progressing them), and waiting for all.
bool nccl_busy(void);
void nccl_drain(void);
}
namespace glia_emu {
int occupancy(const void *kernel, int threads, size_t smem);
}
// Occupancy as an H100's thread, block and shared-memory limits allow it,
// with no registers and no static shared memory counted: not meaningful.
template <class F> inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
    memset(a, 0, sizeof *a);
    a->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}
template <class F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, F kernel, int threads, size_t smem) {
    if (threads < 1 || threads > 1024) return cudaErrorInvalidValue;
    *n = glia_emu::occupancy(reinterpret_cast<const void *>(kernel), threads, smem);
    return cudaSuccess;
}
template <class F> inline cudaError_t cudaFuncSetAttribute(F kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
    return glia_emu::set_max_dynamic_smem(reinterpret_cast<const void *>(kernel), value);
}

// ---- device intrinsics ------------------------------------------------------------
void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);
namespace glia_emu {
// Exchange through the warp's buffer: every lane writes, then reads lane
// `src`. Once every live lane has arrived, `mask` is checked (check_mask).
double warp_exchange(double mine, int src, unsigned mask, const char *what);
// The bits of the lanes in `mask` whose `pred` is non-zero (votes).
unsigned warp_ballot(int pred, unsigned mask, const char *what);
// Ends the process with a message when `mask` leaves out the calling lane
// or names a lane that has exited or lies beyond the block (`what` names
// the call). Called when the warp's live lanes have all arrived.
void check_mask(unsigned mask, const char *what);
// At a kernel's entry (cu2cpp.pl): whether the block exceeds the kernel's
// __launch_bounds__ (then the launch's error is set and every thread returns).
bool launch_bounds_exceeded(long max_threads);
// Registers a static __shared__ array for the race check (cu2cpp.pl emits
// the call after the declaration); returns true.
bool shared_static(const void *p, size_t bytes, const char *name);
}  // namespace glia_emu
template <class T> inline T __shfl_sync(unsigned m, T v, int src, int width = 32) {
    int lane = (int)(threadIdx.x % 32u), base = lane / width * width;
    return (T)glia_emu::warp_exchange((double)v, base + src % width, m, "__shfl_sync");
}
template <class T> inline T __shfl_xor_sync(unsigned m, T v, int mask, int width = 32) {
    int lane = (int)(threadIdx.x % 32u);
    int src = lane ^ mask;
    if (src / width != lane / width) src = lane;
    return (T)glia_emu::warp_exchange((double)v, src, m, "__shfl_xor_sync");
}
template <class T> inline T __shfl_down_sync(unsigned m, T v, unsigned delta, int width = 32) {
    int lane = (int)(threadIdx.x % 32u);
    int src = lane + (int)delta;
    if (src / width != lane / width) src = lane;
    return (T)glia_emu::warp_exchange((double)v, src, m, "__shfl_down_sync");
}
inline unsigned __ballot_sync(unsigned m, int pred) { return glia_emu::warp_ballot(pred, m, "__ballot_sync"); }
inline int __any_sync(unsigned m, int pred) { return glia_emu::warp_ballot(pred, m, "__any_sync") != 0; }
inline int __all_sync(unsigned m, int pred) { return glia_emu::warp_ballot(!pred, m, "__all_sync") == 0; }
// Atomics (emu.cpp, outside the race check's view: an atomic is no race)
int atomicAdd(int *p, int v);
unsigned atomicAdd(unsigned *p, unsigned v);
float atomicAdd(float *p, float v);
double atomicAdd(double *p, double v);
template <class T> inline T __ldg(const T *p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// the SM clock, here in nanoseconds of the monotonic clock (a spin on it waits as long)
long long clock64(void);
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- launching --------------------------------------------------------------------
namespace glia_emu {
void run_grid(dim3 grid, dim3 block, size_t smem, const void *kernel, const std::function<void()> &body);
void *dynamic_smem(void);

template <class... P> struct Bound {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t smem;
    void operator()(P... args) const {
        void (*k)(P...) = kernel;
        run_grid(grid, block, smem, reinterpret_cast<const void *>(k), [=]() { k(args...); });
    }
};
struct Launch {
    dim3 grid, block;
    size_t smem;
    Launch(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
    template <class... P> Bound<P...> of(void (*k)(P...)) const { return {k, grid, block, smem}; }
};
}  // namespace glia_emu

#include "mma.h"  // nvcuda::wmma (warp matrix operations)

#endif
