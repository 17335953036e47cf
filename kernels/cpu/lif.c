// lif.c: the leaky integrate-and-fire neuron on the CPU, forward and backward.
//
// One neuron serves both mixers of a layer (SPEC): in the AM-SU the
// astrocyte output o shifts the potential before the spike, in the FFN o ≡ 0.
// The recurrence runs along time for each (sequence, channel); channels are
// independent, so work is split over (sequence, block of channels) and the
// inner loop runs over contiguous channels of one timestep, which the
// compiler vectorises. The membrane and reset rules come from common/step.h.
//
// Backward, with the reset factor keep_t = 1 − s_{t-1} detached (SPEC):
//   dm_t = ds_t · σ'(m_t)
//   du_t = dm_t + β · keep_{t+1} · du_{t+1}
//   dβ  += du_t · u_{t-1} · keep_t
// The backward assumes the forward started from a zero state (training).
#include "common/step.h"
#include "cpu/cpu.h"
#include "glia/util.h"

#include <stdlib.h>
#include <string.h>

#define LIF_BLOCK 64  // channels per work item

static inline float spike_of(float m, const NeuronTestMode *test) {
    return (test && test->smooth) ? step_spike_smooth(m) : step_spike(m);
}

void neuron_forward(float *u, float *s, const float *current, const float *o,
                    const float *a_beta, float *u_state, float *s_state,
                    int B, int T, int N, int ld, const NeuronTestMode *test) {
    int nblocks = (N + LIF_BLOCK - 1) / LIF_BLOCK;
#pragma omp parallel for schedule(static)
    for (int work = 0; work < B * nblocks; work++) {
        int b = work / nblocks, c0 = (work % nblocks) * LIF_BLOCK;
        int nc = N - c0 < LIF_BLOCK ? N - c0 : LIF_BLOCK;
        float beta[LIF_BLOCK], u_prev[LIF_BLOCK], s_prev[LIF_BLOCK];
        for (int c = 0; c < nc; c++) {
            beta[c] = step_sigmoid(a_beta[c0 + c]);
            u_prev[c] = u_state ? u_state[(size_t)b * N + c0 + c] : 0.0f;
            s_prev[c] = s_state ? s_state[(size_t)b * N + c0 + c] : 0.0f;
        }
        for (int t = 0; t < T; t++) {
            size_t row = ((size_t)b * T + t) * N + c0;
            const float *cur = current + ((size_t)b * T + t) * ld + c0;
            const float *keep = (test && test->keep) ? test->keep + row : NULL;
            for (int c = 0; c < nc; c++) {
                float k = keep ? keep[c] : 1.0f - s_prev[c];
                float ut = step_membrane(beta[c], u_prev[c], k, cur[c]);
                float m = step_potential(ut, o ? o[row + c] : 0.0f);
                float st = spike_of(m, test);
                u[row + c] = ut;
                s[row + c] = st;
                u_prev[c] = ut;
                s_prev[c] = st;
            }
        }
        if (u_state) memcpy(u_state + (size_t)b * N + c0, u_prev, nc * sizeof(float));
        if (s_state) memcpy(s_state + (size_t)b * N + c0, s_prev, nc * sizeof(float));
    }
}

void neuron_backward(float *dcurrent, float *dm, float *da_beta, const float *ds,
                     const float *u, const float *o, const float *s, const float *a_beta,
                     int B, int T, int N, int ld, const NeuronTestMode *test) {
    int nblocks = (N + LIF_BLOCK - 1) / LIF_BLOCK;
    float *dbeta_part = xcalloc((size_t)B * N, sizeof(float));  // (B, N) per-sequence partials
#pragma omp parallel for schedule(static)
    for (int work = 0; work < B * nblocks; work++) {
        int b = work / nblocks, c0 = (work % nblocks) * LIF_BLOCK;
        int nc = N - c0 < LIF_BLOCK ? N - c0 : LIF_BLOCK;
        float beta[LIF_BLOCK], du_next[LIF_BLOCK], keep_next[LIF_BLOCK], dbeta[LIF_BLOCK];
        for (int c = 0; c < nc; c++) {
            beta[c] = step_sigmoid(a_beta[c0 + c]);
            du_next[c] = 0.0f;
            keep_next[c] = 0.0f;
            dbeta[c] = 0.0f;
        }
        for (int t = T - 1; t >= 0; t--) {
            size_t row = ((size_t)b * T + t) * N + c0;
            size_t prev = row - N;  // row of step t-1 (only read when t > 0)
            float *dcur = dcurrent + ((size_t)b * T + t) * ld + c0;
            for (int c = 0; c < nc; c++) {
                float m = step_potential(u[row + c], o ? o[row + c] : 0.0f);
                float dmt = step_spike_grad(ds[row + c], m);
                float du = step_membrane_grad(dmt, beta[c], keep_next[c], du_next[c]);
                float keep = 1.0f, u_prev = 0.0f;
                if (t > 0) {
                    keep = (test && test->keep) ? test->keep[row + c] : step_keep(s[prev + c]);
                    u_prev = u[prev + c];
                }
                dbeta[c] += step_beta_grad(du, u_prev, keep);
                dcur[c] = du;
                if (dm) dm[row + c] = dmt;
                du_next[c] = du;
                keep_next[c] = keep;
            }
        }
        for (int c = 0; c < nc; c++) dbeta_part[(size_t)b * N + c0 + c] = dbeta[c];
    }
    sigmoid_grad_from_partials(da_beta, dbeta_part, a_beta, B, N);  // chain through β = sigmoid(a_β)
    free(dbeta_part);
}

void sigmoid_grad_from_partials(float *grad, const float *part, const float *a, int B, int N) {
    for (int n = 0; n < N; n++) {
        float total = 0.0f;
        for (int b = 0; b < B; b++) total += part[(size_t)b * N + n];
        grad[n] += step_sigmoid_grad(total, step_sigmoid(a[n]));
    }
}
