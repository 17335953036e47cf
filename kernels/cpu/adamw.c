// adamw.c: the optimizer step and gradient-norm clipping on the CPU.
//
// AdamW with decoupled weight decay, bias-corrected moments, element-wise
// and embarrassingly parallel; the gradient-clip factor is applied to each
// gradient inside the update (one float multiply, as a separate scaling pass
// would round it). Compiled with -fno-math-errno (CMakeLists.txt): sqrtf
// without its errno branch, so the loop vectorises (the same correctly
// rounded square root). The gradient norm is a reduction, so it is summed in
// fixed-size blocks (each in double), then the blocks in order: the result
// is the same whatever the number of threads.
#include "cpu/cpu.h"

#include <math.h>
#include <stdlib.h>

#include "glia/util.h"

#define NORM_BLOCK 65536

void adamw_update(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step) {
    float c1 = 1.0f - powf(beta1, (float)step), c2 = 1.0f - powf(beta2, (float)step);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gscale;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi / c1, vhat = vi / c2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * p[i]);
    }
}

double grad_norm_sq(const float *g, size_t n) {
    size_t nb = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double *part = xmalloc((nb ? nb : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t lo = b * NORM_BLOCK, hi = lo + NORM_BLOCK < n ? lo + NORM_BLOCK : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
        part[b] = s;
    }
    double total = 0.0;
    for (size_t b = 0; b < nb; b++) total += part[b];
    free(part);
    return total;
}
