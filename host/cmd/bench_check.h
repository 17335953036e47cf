// bench_check.h: the kernel lab's comparison of an AM-SU forward with the
// CPU's under the tests' spike-flip rule (tests/test_cuda_amsu.c): spikes
// equal except where the CPU's potential |u + o − θ| < margin, where rounding
// may flip one; after such a flip that neuron's later u and s are not
// compared (its trajectory has rightly diverged). Flips are counted apart
// from mismatches, so a correct kernel on a GPU (own expf, FMA contraction)
// is not rejected, and a wrong one is.
#ifndef GLIA_BENCH_CHECK_H
#define GLIA_BENCH_CHECK_H

#include <stddef.h>

typedef struct {
    double err_u;       // normwise relative error of u over the compared entries
    size_t flips;       // spikes that differ within the margin of θ (allowed)
    size_t mismatches;  // spikes that differ away from θ, or are not 0/1 (errors)
    size_t compared;    // (b, t, c) entries compared
} AmsuFlipCheck;

#define BENCH_SPIKE_MARGIN 1e-4f

// u, s from the device, u_ref, o_ref, s_ref from the CPU, all (B, T, C).
AmsuFlipCheck bench_amsu_flip_check(const float *u, const float *s, const float *u_ref, const float *o_ref,
                                    const float *s_ref, int B, int T, int C, float margin);

#endif
