// bench_check.c: the spike-flip comparison of the kernel lab (bench_check.h).
#include "cmd/bench_check.h"

#include <math.h>

#include "common/step.h"

AmsuFlipCheck bench_amsu_flip_check(const float *u, const float *s, const float *u_ref, const float *o_ref,
                                    const float *s_ref, int B, int T, int C, float margin) {
    AmsuFlipCheck r = {0};
    double num = 0.0, den = 0.0;
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < C; c++) {
            for (int t = 0; t < T; t++) {
                size_t i = ((size_t)b * T + t) * C + c;
                r.compared++;
                double d = fabs((double)u[i] - u_ref[i]), mag = fabs((double)u_ref[i]);
                num = d > num ? d : num;
                den = mag > den ? mag : den;
                if (s[i] == s_ref[i]) continue;
                int valid = s[i] == 0.0f || s[i] == 1.0f;
                if (valid && fabsf(step_potential(u_ref[i], o_ref[i])) < margin) {
                    r.flips++;
                    break;  // u_t still compared; from t + 1 on this neuron has diverged
                }
                r.mismatches++;
            }
        }
    }
    r.err_u = den > 0 ? num / den : num;
    return r;
}
