// mma.h (emulator): the part of CUDA's warp matrix API (nvcuda::wmma) glia's
// kernels use, on the fibers of emu.cpp: TF32 operands, fp32 accumulators,
// shape m16n16k8; fill, load, store, mma and __float_to_tf32.
//
// Each thread holds the WHOLE tile (num_elements = rows·cols, row by row),
// where a GPU spreads it over the warp's 32 lanes in an unspecified order.
// That is exact for kernels that treat fragment elements uniformly, and
// kernels run here must obey this rule: an element of x[] may be changed
// only by an operation applied to every element alike (scaling, rounding,
// splitting into high and low parts), never by one that depends on which
// row or column, or which lane, holds it.
//
// The operations are warp-collective, as on the GPU: load_matrix_sync,
// store_matrix_sync and mma_sync first wait at the warp's barrier
// (__syncwarp with the full mask), so a call some lanes of the warp do not
// make deadlocks or is reported instead of passing. store_matrix_sync writes
// the tile once, from lane 0, between two warp barriers.
//
// Precision: mma_sync reads a TF32 operand as the tensor cores do, with only
// the top 19 bits of each fp32 (sign, exponent, 10 mantissa bits), products
// exact, sums in fp32; __float_to_tf32 rounds to nearest (ties away from
// zero) to those 10 bits, as the GPU's conversion does. So a kernel that
// forgets its conversions, or uses one TF32 product where it needs fp32
// accuracy, shows TF32's real error here.
#ifndef GLIA_EMU_MMA_H
#define GLIA_EMU_MMA_H

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Rows and columns of a fragment's tile: A is M×K, B is K×N, the accumulator M×N.
template <class Use, int M, int N, int K> struct tile_dims;
template <int M, int N, int K> struct tile_dims<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct tile_dims<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct tile_dims<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 8, "the emulator has WMMA's TF32 shape m16n16k8 only");
    static_assert(std::is_same<T, precision::tf32>::value || std::is_same<T, float>::value,
                  "the emulator has TF32 operands and fp32 accumulators only");
    static constexpr int rows = tile_dims<Use, M, N, K>::rows, cols = tile_dims<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    float x[num_elements];  // the whole tile, row by row (see the top comment)
};

// The GPU's cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties
// away from zero; the low 13 bits of the result are zero. Inf and NaN pass.
__attribute__((optimize("O2"))) inline float __float_to_tf32(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
    memcpy(&f, &b, sizeof f);
    return f;
}

namespace detail {
inline int lane(void) {
    return (int)((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32u);
}
// What the tensor cores read of a TF32 operand: its top 19 bits.
__attribute__((optimize("O2"))) inline float tf32_operand(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    b &= 0xffffe000u;
    memcpy(&f, &b, sizeof f);
    return f;
}
// d = a·b + c on whole tiles (d may be c), the operands read as TF32. Every
// lane runs it, so it is compiled optimised even in a Debug build: it is
// most of the emulator's time in a kernel on the tensor cores (and reads only
// the fragments, whose bounds are fixed, so AddressSanitizer skips it).
template <int M, int N, int K>
__attribute__((optimize("O2"), no_sanitize_address)) inline void mma_tile(float *d, const float *a, const float *b, const float *c) {
    float at[M * K], bt[K * N], out[M * N];
    for (int e = 0; e < M * K; e++) at[e] = tf32_operand(a[e]);
    for (int e = 0; e < K * N; e++) bt[e] = tf32_operand(b[e]);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = c[i * N + j];
            for (int k = 0; k < K; k++) acc += at[i * K + k] * bt[k * N + j];
            out[i * N + j] = acc;
        }
    memcpy(d, out, sizeof out);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &f, float v) {
    for (int e = 0; e < f.num_elements; e++) f.x[e] = v;
}

// A or B operand from memory with leading dimension ldm (elements), in the
// fragment's own layout.
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const float *p, unsigned ldm) {
    static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load names its layout");
    __syncwarp();
    constexpr bool row = std::is_same<Layout, row_major>::value;
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++) f.x[r * f.cols + c] = row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm,
                             layout_t layout) {
    __syncwarp();
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                              layout_t layout) {
    __syncwarp();
    if (detail::lane() == 0)
        for (int r = 0; r < f.rows; r++)
            for (int c = 0; c < f.cols; c++)
                (layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[r * f.cols + c];
    __syncwarp();
}

// d = a·b + c, products of the TF32 operands exact, sums in fp32 over k ascending.
template <int M, int N, int K, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, precision::tf32, LA> &a,
                     const fragment<matrix_b, M, N, K, precision::tf32, LB> &b,
                     const fragment<accumulator, M, N, K, float> &c) {
    __syncwarp();
    detail::mma_tile<M, N, K>(d.x, a.x, b.x, c.x);
}

}  // namespace wmma
}  // namespace nvcuda

#endif
