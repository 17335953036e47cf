// device.cu: device memory, copies and the cuBLASLt matmuls of the CUDA backend.
//
// The host runtime is C and includes no CUDA header (cuda.h), so the few
// runtime calls it needs are wrapped here with C linkage. Allocation is the
// one failure a user can cause and fix (a model or batch too large for the
// card), so cuda_alloc reports it instead of ending the process; every
// other CUDA or cuBLAS error ends it with file:line (cuda_common.h).
//
// Matmuls keep the CPU backend's row-major contract (cpu.h). cuBLASLt is
// column-major, and a row-major (M, N) matrix is the column-major (N, M)
// matrix with the same bytes, so out = inp @ Wᵀ (row-major) is
// outᵀ = W · inpᵀ (column-major): one GEMM with W transposed, no copies.
// The residual add is the GEMM's C: out = add + inp @ Wᵀ reads add (C) and
// writes out (D), so no copy of the residual stream either. Operands and
// results are fp32 in memory; the mode (matmul_set_mode) only picks the
// compute type, so one call site serves all three: exact fp32
// (CUBLAS_COMPUTE_32F_PEDANTIC, parity with the CPU to fp32 rounding), TF32
// tensor cores (FAST_TF32: operands rounded to a 10-bit mantissa, fp32
// accumulation) and bf16 tensor cores (FAST_16BF: operands rounded to bf16's
// 7-bit mantissa inside cuBLASLt, fp32 accumulation).
//
// One cuBLASLt handle and one 32 MiB workspace per process, made at the
// first matmul and released at exit; the workspace is shared, so matmuls
// run on one stream at a time (the model's default stream) from one host
// thread. Each distinct GEMM (GemmKey) gets its descriptors and the
// heuristic's first choice of algorithm once, kept in a small cache.
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#include <cublasLt.h>
#include <stdint.h>
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
static int spikes_fp32_forced;  // spikes_fp32_for_test_cuda

extern "C" void matmul_set_mode(int mode) { matmul_mode = mode; }

// In BF16 mode the GEMMs round their operands to bf16 anyway and a spike
// (0 or 1) is exact in bf16, so spikes are stored as bf16 there (docs/CUDA.md).
extern "C" int spike_bytes_cuda(void) { return matmul_mode == MATMUL_BF16 && !spikes_fp32_forced ? 2 : 4; }
extern "C" void spikes_fp32_for_test_cuda(int on) { spikes_fp32_forced = on; }

// One GEMM as cuBLASLt sees it, D (m, n) = alpha op(A) op(B) + beta C in
// column-major, and the key of the plan cache. The pointer facts the
// heuristic cannot see (beta != 0, C != D, each pointer's alignment: the
// largest power of two up to 256 that divides it) are part of it, so a
// choice is reused only for calls of the same kind. All ints: no padding.
typedef struct {
    int ta, tb, m, n, k, lda, ldb, ldc;
    int ab_type, compute;  // cudaDataType of A and B (C and D are fp32); cublasComputeType_t
    int beta_nonzero, c_is_d;
    int align[4];  // A, B, C, D
} GemmKey;

// A key's descriptors and the algorithm the heuristic chose for it, once.
typedef struct {
    GemmKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;  // D has C's layout
    cublasLtMatmulAlgo_t algo;
} GemmPlan;

// A training step has a few dozen shapes; serving one more per prompt
// length, so past MAX_PLANS the oldest plan is replaced.
enum { MAX_PLANS = 256 };
static const size_t WORKSPACE_BYTES = (size_t)32 << 20;

static struct {
    cublasLtHandle_t h;
    void *workspace;  // WORKSPACE_BYTES
    GemmPlan plans[MAX_PLANS];
    int nplans, next_replaced;
} lt;

extern "C" int matmul_plans_cuda(void) { return lt.nplans; }

static void plan_free(GemmPlan *p) {
    cublasLtMatmulDescDestroy(p->desc);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
}

// At exit (registered after the CUDA runtime started, so it runs first);
// errors are ignored: the process is ending.
static void lt_release(void) {
    for (int i = 0; i < lt.nplans; i++) plan_free(&lt.plans[i]);
    lt.nplans = 0;
    if (lt.workspace) (void)cudaFree(lt.workspace);
    if (lt.h) cublasLtDestroy(lt.h);
    lt.workspace = nullptr, lt.h = nullptr;
}

static void lt_init(void) {
    if (lt.h) return;
    if (!(lt.workspace = cuda_alloc(WORKSPACE_BYTES)))
        glia_check_fail("CUDA", "cudaMalloc (cuBLASLt's 32 MiB workspace)", alloc_error, __FILE__,
                        __LINE__);
    cublas_check(cublasLtCreate(&lt.h));
    atexit(lt_release);
}

static int alignment(const void *p) {
    int a = 1;
    while (a < 256 && !((uintptr_t)p & (uintptr_t)a)) a <<= 1;
    return a;
}

static const GemmPlan *plan_for(const GemmKey *key) {
    for (int i = 0; i < lt.nplans; i++)
        if (!memcmp(&lt.plans[i].key, key, sizeof *key)) return &lt.plans[i];
    GemmPlan *p;
    if (lt.nplans < MAX_PLANS) {
        p = &lt.plans[lt.nplans++];
    } else {
        p = &lt.plans[lt.next_replaced];
        lt.next_replaced = (lt.next_replaced + 1) % MAX_PLANS;
        plan_free(p);
    }
    p->key = *key;
    const int32_t ta = key->ta, tb = key->tb;
    cublas_check(cublasLtMatmulDescCreate(&p->desc, (cublasComputeType_t)key->compute, CUDA_R_32F));
    cublas_check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    cublas_check(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    // layouts of the matrices as stored: op(A) (m, k), op(B) (k, n)
    const cudaDataType ab = (cudaDataType)key->ab_type;
    cublas_check(cublasLtMatrixLayoutCreate(&p->a, ab, ta == CUBLAS_OP_N ? key->m : key->k,
                                            ta == CUBLAS_OP_N ? key->k : key->m, key->lda));
    cublas_check(cublasLtMatrixLayoutCreate(&p->b, ab, tb == CUBLAS_OP_N ? key->k : key->n,
                                            tb == CUBLAS_OP_N ? key->n : key->k, key->ldb));
    cublas_check(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, key->m, key->n, key->ldc));
    cublasLtMatmulPreference_t pref;
    cublas_check(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = WORKSPACE_BYTES;
    cublas_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                      sizeof ws));
    const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) {
        const uint32_t a = (uint32_t)key->align[i];
        cublas_check(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &a, sizeof a));
    }
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    cublas_check(cublasLtMatmulAlgoGetHeuristic(lt.h, p->desc, p->a, p->b, p->c, p->c, pref, 1, &r, &found));
    cublas_check(cublasLtMatmulPreferenceDestroy(pref));
    if (!found) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "no algorithm for m %d n %d k %d (transa %d transb %d, compute type %d); another --matmul "
                 "mode may have one (docs/CUDA.md)",
                 key->m, key->n, key->k, ta, tb, key->compute);
        glia_check_fail("cuBLASLt", "cublasLtMatmulAlgoGetHeuristic", msg, __FILE__, __LINE__);
    }
    p->algo = r.algo;
    return p;
}

// D (m, n) = alpha op(A) op(B) + C (C NULL: none; C may be D), column-major,
// C and D fp32, A and B of type ab in `compute`.
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                 const void *A, int lda, const void *B, int ldb, cudaDataType ab,
                 cublasComputeType_t compute, const float *C, float *D, int ldc, void *stream) {
    if (m <= 0 || n <= 0) return;
    lt_init();
    GemmKey key;
    memset(&key, 0, sizeof key);
    key.ta = ta, key.tb = tb, key.m = m, key.n = n, key.k = k;
    key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.ab_type = ab, key.compute = compute;
    key.beta_nonzero = C != nullptr, key.c_is_d = !C || C == D;
    key.align[0] = alignment(A), key.align[1] = alignment(B);
    key.align[2] = alignment(C ? C : D), key.align[3] = alignment(D);
    const GemmPlan *p = plan_for(&key);
    const float beta = C ? 1.0f : 0.0f;
    cublas_check(cublasLtMatmul(lt.h, p->desc, &alpha, A, p->a, B, p->b, &beta, C ? C : D, p->c, D, p->c,
                                &p->algo, lt.workspace, WORKSPACE_BYTES, (cudaStream_t)stream));
}

static cublasComputeType_t mode_compute(void) {
    return matmul_mode == MATMUL_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
           : matmul_mode == MATMUL_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                        : CUBLAS_COMPUTE_32F_PEDANTIC;
}

extern "C" void matmul_forward_cuda(float *out, const float *inp, const float *W, int M, int K,
                                    int N, float alpha, const float *add, void *stream) {
    // column-major: outᵀ (N, M) = addᵀ + W (N, K as Wᵀ of the stored (K, N)) · inpᵀ (K, M)
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, alpha, W, K, inp, K, CUDA_R_32F, mode_compute(), add, out, N,
         stream);
}

extern "C" void matmul_backward_cuda(float *dinp, float *dW, const float *dout, const float *inp,
                                     const float *W, int M, int K, int N, float alpha,
                                     int accumulate, void *stream) {
    const cublasComputeType_t ct = mode_compute();
    if (dinp)  // dinp (M, K) = alpha · dout (M, N) @ W (N, K); column-major dinpᵀ = Wᵀ · doutᵀ
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, alpha, W, K, dout, N, CUDA_R_32F, ct,
             accumulate ? dinp : nullptr, dinp, K, stream);
    if (dW)  // dW (N, K) += alpha · doutᵀ (N, M) @ inp (M, K); column-major dWᵀ = inpᵀ · dout
        gemm(CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, alpha, inp, K, dout, N, CUDA_R_32F, ct, dW, dW, K, stream);
}

// The kernel lab's ceiling: the same product with operands stored as bf16
// (2 bytes each), the layout a bf16-storage model would feed cuBLASLt.
extern "C" void matmul_forward_bf16_cuda(float *out, const uint16_t *inp, const uint16_t *W, int M,
                                         int K, int N, void *stream) {
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, W, K, inp, K, CUDA_R_16BF, CUBLAS_COMPUTE_32F, nullptr,
         out, N, stream);
}

// The spike GEMMs of BF16 mode: A and B bf16, fp32 accumulation (COMPUTE_32F,
// as above), C and D fp32. The same numbers as matmul_forward_cuda /
// matmul_backward_cuda's dW in BF16 mode on the fp32 values, whose operands
// cuBLASLt rounds to bf16 (RNE) inside the GEMM.
extern "C" void spike_matmul_forward_cuda(float *out, const bf16_t *s, const bf16_t *W16, int M, int K, int N,
                                          const float *add, void *stream) {
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, 1.0f, W16, K, s, K, CUDA_R_16BF, CUBLAS_COMPUTE_32F, add, out, N,
         stream);
}

extern "C" void spike_matmul_dW_cuda(float *dW, bf16_t *dout16, const float *dout, const bf16_t *s, int M, int K,
                                     int N, void *stream) {
    to_bf16_cuda(dout16, dout, (size_t)M * N, stream);
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, 1.0f, s, K, dout16, N, CUDA_R_16BF, CUBLAS_COMPUTE_32F, dW, dW, K,
         stream);
}
