// bf16.h: the one float <-> bf16 conversion of the kernels (bf16_t holds the
// bits, types.h): round to nearest, ties to even, the rounding cuBLASLt's
// FAST_16BF compute type applies to fp32 operands; NaN stays a (quiet) NaN,
// overflow goes to ±Inf, subnormals round like any other value. Compiles as
// C and as CUDA __host__ __device__ code, like step.h.
#ifndef GLIA_BF16_H
#define GLIA_BF16_H

#include <stdint.h>
#include <string.h>

#include "common/types.h"

#ifdef __CUDACC__
#define GLIA_BF16_FN __host__ __device__ __forceinline__
#else
#define GLIA_BF16_FN static inline
#endif

GLIA_BF16_FN bf16_t glia_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (bf16_t)((u >> 16) | 0x40u);  // NaN: keep it quiet
    return (bf16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

GLIA_BF16_FN float glia_from_bf16(bf16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#endif
