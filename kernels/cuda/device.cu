// device.cu: device memory, copies and the cuBLAS matmuls of the CUDA backend.
//
// The host runtime is C and includes no CUDA header (cuda.h), so the few
// runtime calls it needs are wrapped here with C linkage. Allocation is the
// one failure a user can cause and fix (a model or batch too large for the
// card), so cuda_alloc reports it instead of ending the process; every
// other CUDA or cuBLAS error ends it with file:line (cuda_common.h).
//
// Matmuls keep the CPU backend's row-major contract (cpu.h). cuBLAS is
// column-major, and a row-major (M, N) matrix is the column-major (N, M)
// matrix with the same bytes, so out = inp @ Wᵀ (row-major) is
// outᵀ = W · inpᵀ (column-major): one Sgemm with W transposed, no copies.
// Operands and results are fp32. By default cuBLAS runs in pedantic math
// mode (no TF32), so parity with the CPU holds to fp32 rounding;
// matmul_set_tf32(1) lets it use the tensor cores' TF32 mode (fp32 storage,
// 10-bit mantissa products, fp32 accumulation), several times the fp32 rate
// at about 1e-3 relative error. One cuBLAS handle per process, created on
// first use and bound to the stream of each call.
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <string.h>

static char alloc_error[256];

extern "C" void *cuda_alloc(size_t bytes) {
    void *p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err == cudaSuccess) return p;
    (void)cudaGetLastError();  // an allocation failure does not poison the context
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        free_b = total_b = 0;
    }
    snprintf(alloc_error, sizeof alloc_error,
             "cannot allocate %.2f GiB on the GPU (%.2f GiB free of %.2f GiB): %s",
             bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0,
             cudaGetErrorString(err));
    return nullptr;
}

extern "C" const char *cuda_last_error_message(void) { return alloc_error; }

extern "C" void cuda_free(void *p) {
    if (p) cuda_check(cudaFree(p));
}

extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

extern "C" void cuda_copy(void *dst, const void *src, size_t bytes, void *stream) {
    if (bytes)
        cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
}

extern "C" void cuda_memset(void *p, int byte, size_t bytes, void *stream) {
    if (bytes) cuda_check(cudaMemsetAsync(p, byte, bytes, (cudaStream_t)stream));
}

extern "C" void cuda_synchronize(void) { cuda_check(cudaDeviceSynchronize()); }

extern "C" void cuda_device_describe(char *buf, size_t len) {
    int dev = 0;
    cuda_check(cudaGetDevice(&dev));
    cudaDeviceProp p;
    cuda_check(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, len, "%s, %.1f GiB", p.name, p.totalGlobalMem / 1073741824.0);
}

// ---- matmuls ------------------------------------------------------------------------

static int use_tf32;

extern "C" void matmul_set_tf32(int on) { use_tf32 = on != 0; }

static cublasHandle_t handle(void *stream) {
    static cublasHandle_t h;
    static int mode = -1;
    if (!h) cublas_check(cublasCreate(&h));
    if (mode != use_tf32) {
        cublas_check(cublasSetMathMode(h, use_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
        mode = use_tf32;
    }
    cublas_check(cublasSetStream(h, (cudaStream_t)stream));
    return h;
}

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *W, int M, int K,
                                    int N, float alpha, int accumulate, void *stream) {
    const float beta = accumulate ? 1.0f : 0.0f;
    // column-major: outᵀ (N, M) = W (N, K as Wᵀ of the stored (K, N)) · inpᵀ (K, M)
    cublas_check(cublasSgemm(handle(stream), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, W, K,
                             inp, K, &beta, out, N));
}

extern "C" void matmul_backward_cuda(float *dinp, float *dW, const float *dout, const float *inp,
                                     const float *W, int M, int K, int N, float alpha,
                                     int accumulate, void *stream) {
    cublasHandle_t h = handle(stream);
    if (dinp) {  // dinp (M, K) = alpha · dout (M, N) @ W (N, K); column-major dinpᵀ = Wᵀ · doutᵀ
        const float beta = accumulate ? 1.0f : 0.0f;
        cublas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, &alpha, W, K, dout, N,
                                 &beta, dinp, K));
    }
    if (dW) {  // dW (N, K) += alpha · doutᵀ (N, M) @ inp (M, K); column-major dWᵀ = inpᵀ · dout
        const float one = 1.0f;
        cublas_check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, &alpha, inp, K, dout, N,
                                 &one, dW, K));
    }
}
