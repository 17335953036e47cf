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
// outᵀ = W · inpᵀ (column-major): one GEMM with W transposed, no copies.
// Operands and results are fp32 in memory; the mode (matmul_set_mode) only
// picks cuBLAS's compute type for cublasGemmEx, so one call site serves all
// three: exact fp32 (CUBLAS_COMPUTE_32F_PEDANTIC, parity with the CPU to
// fp32 rounding), TF32 tensor cores (FAST_TF32: operands rounded to a 10-bit
// mantissa, fp32 accumulation) and bf16 tensor cores (FAST_16BF: operands
// rounded to bf16's 7-bit mantissa inside cuBLAS, fp32 accumulation). Doing
// the bf16 down-conversion in the library keeps fp32 master weights and
// activations without a cast kernel or a second copy of every operand; the
// price is that operands are read at 4 bytes, which only matters for GEMMs
// that are bandwidth-bound. One cuBLAS handle per process, created on first
// use and bound to the stream of each call.
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

// A stream that does not synchronise with the legacy default stream (where
// every kernel of the model runs), so work on it can overlap with them.
extern "C" void *cuda_stream_new(void) {
    cudaStream_t s;
    cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
}

extern "C" void cuda_stream_free(void *stream) {
    if (stream) cuda_check(cudaStreamDestroy((cudaStream_t)stream));
}

extern "C" void *cuda_event_new(void) {
    cudaEvent_t e;
    cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
}

extern "C" void cuda_event_free(void *event) {
    if (event) cuda_check(cudaEventDestroy((cudaEvent_t)event));
}

extern "C" void cuda_event_record(void *event, void *stream) {
    cuda_check(cudaEventRecord((cudaEvent_t)event, (cudaStream_t)stream));
}

extern "C" void cuda_stream_wait(void *stream, void *event) {
    cuda_check(cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)event, 0));
}

extern "C" void cuda_device_describe(char *buf, size_t len) {
    int dev = 0;
    cuda_check(cudaGetDevice(&dev));
    cudaDeviceProp p;
    cuda_check(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, len, "%s, %.1f GiB", p.name, p.totalGlobalMem / 1073741824.0);
}

// ---- matmuls ------------------------------------------------------------------------

static int matmul_mode = MATMUL_FP32;

extern "C" void matmul_set_mode(int mode) { matmul_mode = mode; }

static cublasHandle_t handle(void *stream) {
    static cublasHandle_t h;
    if (!h) cublas_check(cublasCreate(&h));
    cublas_check(cublasSetStream(h, (cudaStream_t)stream));
    return h;
}

// C (m, n) = alpha op(A) op(B) + beta C, column-major, fp32 storage, in the
// compute type of the current mode.
static void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc) {
    cublasComputeType_t ct = matmul_mode == MATMUL_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                             : matmul_mode == MATMUL_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                          : CUBLAS_COMPUTE_32F_PEDANTIC;
    cublas_check(cublasGemmEx(h, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                              &beta, C, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
}

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *W, int M, int K,
                                    int N, float alpha, const float *add, void *stream) {
    // column-major: outᵀ (N, M) = addᵀ + W (N, K as Wᵀ of the stored (K, N)) · inpᵀ (K, M);
    // cublasGemmEx only adds in place
    if (add && add != out) cuda_copy(out, add, (size_t)M * N * sizeof(float), stream);
    gemm(handle(stream), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, alpha, W, K, inp, K, add ? 1.0f : 0.0f,
         out, N);
}

extern "C" void matmul_backward_cuda(float *dinp, float *dW, const float *dout, const float *inp,
                                     const float *W, int M, int K, int N, float alpha,
                                     int accumulate, void *stream) {
    cublasHandle_t h = handle(stream);
    if (dinp)  // dinp (M, K) = alpha · dout (M, N) @ W (N, K); column-major dinpᵀ = Wᵀ · doutᵀ
        gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, alpha, W, K, dout, N, accumulate ? 1.0f : 0.0f,
             dinp, K);
    if (dW)  // dW (N, K) += alpha · doutᵀ (N, M) @ inp (M, K); column-major dWᵀ = inpᵀ · dout
        gemm(h, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, alpha, inp, K, dout, N, 1.0f, dW, K);
}

// The kernel lab's ceiling: the same product with operands stored as bf16
// (2 bytes each), the layout a bf16-storage model would feed cuBLAS.
extern "C" void matmul_forward_bf16_cuda(float *out, const uint16_t *inp, const uint16_t *W, int M,
                                         int K, int N, void *stream) {
    const float one = 1.0f, zero = 0.0f;
    cublas_check(cublasGemmEx(handle(stream), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W,
                              CUDA_R_16BF, K, inp, CUDA_R_16BF, K, &zero, out, CUDA_R_32F, N,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
