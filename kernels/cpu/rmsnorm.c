// rmsnorm.c: RMSNorm forward and backward on the CPU.
//
// y = g ⊙ x · r with r = 1 / sqrt(mean(x²) + ε). The forward keeps r per row
// so the backward needs no second pass over the statistics:
//   dx = r · (dx̂ − x̂ · mean(dx̂ ⊙ x̂)),  dx̂ = dy ⊙ g,  x̂ = x · r,
//   dg = Σ_rows dy ⊙ x̂.
// Rows are independent and run in parallel; dg is summed over rows in row
// order so the result does not depend on the thread count.
#include "common/step.h"
#include "cpu/cpu.h"

#include <math.h>

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *g, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *yr = out + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        float r = 1.0f / sqrtf(ss / (float)C + GLIA_RMS_EPS);
        for (int c = 0; c < C; c++) yr[c] = g[c] * (xr[c] * r);
        rstd[n] = r;
    }
}

void rmsnorm_backward(float *dx, float *dg, const float *dout, const float *x, const float *g,
                      const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        const float *dyr = dout + (size_t)n * C;
        float *dxr = dx + (size_t)n * C;
        float r = rstd[n];
        float dot = 0.0f;  // Σ_c dx̂_c · x̂_c
        for (int c = 0; c < C; c++) dot += dyr[c] * g[c] * xr[c] * r;
        float mean_dot = dot / (float)C;
        for (int c = 0; c < C; c++) {
            float xhat = xr[c] * r;
            dxr[c] += r * (dyr[c] * g[c] - xhat * mean_dot);
        }
    }
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        const float *dyr = dout + (size_t)n * C;
        float r = rstd[n];
        for (int c = 0; c < C; c++) dg[c] += dyr[c] * (xr[c] * r);
    }
}
