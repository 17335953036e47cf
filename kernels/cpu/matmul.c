// matmul.c: the CPU backend's linear maps, through CBLAS (OpenBLAS).
//
// Every matmul in the model is a linear map without bias, out = inp @ Wᵀ
// with W stored (out, in) as SPEC says; the two backward products are the
// usual ones. A well-kept BLAS does this far better than a hand loop, so
// these are thin, shape-documented wrappers over cblas_sgemm.
#include "cpu/cpu.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

const char *cpu_blas_better_core(void) {
    static const char *older[] = {"Prescott", "Core2", "Nehalem", "Sandybridge", "Haswell", "Zen"};
    const char *core = openblas_get_corename();
    int rank = -1;  // where OpenBLAS's choice sits in `older` (-1: newer or unknown: keep it)
    for (int i = 0; core && i < (int)(sizeof older / sizeof older[0]); i++)
        if (!strcmp(core, older[i])) rank = i;
    if (rank < 0) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        return "SkylakeX";
    if (rank < 4 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

void cpu_set_threads(int n) {
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

void matmul_forward(float *out, const float *inp, const float *W, int M, int K, int N,
                    float alpha, const float *add) {
    // out (M, N) = [add +] alpha · inp (M, K) @ W (N, K)ᵀ; BLAS only adds in place
    if (add && add != out) memcpy(out, add, (size_t)M * N * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, inp, K, W, K,
                add ? 1.0f : 0.0f, out, N);
}

void matmul_backward(float *dinp, float *dW, const float *dout, const float *inp,
                     const float *W, int M, int K, int N, float alpha, int accumulate) {
    if (dinp) {
        // dinp (M, K) = alpha · dout (M, N) @ W (N, K) [+ dinp]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, alpha, dout, N, W, K,
                    accumulate ? 1.0f : 0.0f, dinp, K);
    }
    if (dW) {
        // dW (N, K) += alpha · dout (M, N)ᵀ @ inp (M, K)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, alpha, dout, N, inp, K,
                    1.0f, dW, K);
    }
}
