// lif.c: the leaky integrate-and-fire neuron on the CPU, forward and backward.
//
// One neuron serves both mixers of a layer (SPEC): in the AM-SU the
// astrocyte output o shifts the potential before the spike, in the FFN o ≡ 0.
// The recurrence runs along time for each (sequence, channel); channels are
// independent, so work is split over (sequence, block of channels) and the
// inner loop runs over contiguous channels of one timestep, which the
// compiler vectorises (one loop per case of the optional operands). The
// membrane and reset rules come from common/step.h.
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

// One timestep of nc channels (u_prev, s_prev: the step before, updated in
// place). The optional operands are arguments of an always-inlined function,
// so each call site with constant NULLs (training: no test mode) compiles to
// its own branch-free loop that vectorises; the test modes take the general
// call.
static inline __attribute__((always_inline)) void forward_step(
    float *restrict ur, float *restrict sr, const float *restrict cur, const float *restrict orow,
    const float *restrict keep, int smooth, const float *restrict beta, float *restrict u_prev,
    float *restrict s_prev, int nc) {
    for (int c = 0; c < nc; c++) {
        float k = keep ? keep[c] : step_keep(s_prev[c]);
        float ut = step_membrane(beta[c], u_prev[c], k, cur[c]);
        float m = step_potential(ut, orow ? orow[c] : 0.0f);
        float st = smooth ? step_spike_smooth(m) : step_spike(m);
        ur[c] = ut;
        sr[c] = st;
        u_prev[c] = ut;
        s_prev[c] = st;
    }
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
            if (test)
                forward_step(u + row, s + row, cur, o ? o + row : NULL, test->keep ? test->keep + row : NULL,
                             test->smooth, beta, u_prev, s_prev, nc);
            else if (o)
                forward_step(u + row, s + row, cur, o + row, NULL, 0, beta, u_prev, s_prev, nc);
            else
                forward_step(u + row, s + row, cur, NULL, NULL, 0, beta, u_prev, s_prev, nc);
        }
        if (u_state) memcpy(u_state + (size_t)b * N + c0, u_prev, nc * sizeof(float));
        if (s_state) memcpy(s_state + (size_t)b * N + c0, s_prev, nc * sizeof(float));
    }
}

// One timestep of the backward for nc channels, walking t down: du_next and
// keep_next hold step t+1's du and keep and are updated in place. uprev,
// sprev: step t−1's u and s (zeros at t = 0, which give keep 1 and u_prev 0);
// tkeep (test mode) replaces the keep from sprev. Specialised per call site
// as forward_step is.
static inline __attribute__((always_inline)) void backward_step(
    float *restrict dcur, float *restrict dmr, float *restrict dbeta, float *restrict du_next,
    float *restrict keep_next, const float *restrict dsr, const float *restrict ur, const float *restrict orow,
    const float *restrict uprev, const float *restrict sprev, const float *restrict tkeep,
    const float *restrict beta, int nc) {
    for (int c = 0; c < nc; c++) {
        float m = step_potential(ur[c], orow ? orow[c] : 0.0f);
        float dmt = step_spike_grad(dsr[c], m);
        float du = step_membrane_grad(dmt, beta[c], keep_next[c], du_next[c]);
        float keep = tkeep ? tkeep[c] : step_keep(sprev[c]);
        dbeta[c] += step_beta_grad(du, uprev[c], keep);
        dcur[c] = du;
        if (dmr) dmr[c] = dmt;
        du_next[c] = du;
        keep_next[c] = keep;
    }
}

void neuron_backward(float *dcurrent, float *dm, float *da_beta, const float *ds,
                     const float *u, const float *o, const float *s, const float *a_beta,
                     int B, int T, int N, int ld, const NeuronTestMode *test) {
    static const float zeros[LIF_BLOCK];  // step −1's u and s
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
            const float *up = t ? u + row - N : zeros, *sp = t ? s + row - N : zeros;
            float *dcur = dcurrent + ((size_t)b * T + t) * ld + c0;
            if (test)
                backward_step(dcur, dm ? dm + row : NULL, dbeta, du_next, keep_next, ds + row, u + row,
                              o ? o + row : NULL, up, sp, t && test->keep ? test->keep + row : NULL, beta, nc);
            else if (o && dm)
                backward_step(dcur, dm + row, dbeta, du_next, keep_next, ds + row, u + row, o + row, up, sp, NULL,
                              beta, nc);
            else if (o)
                backward_step(dcur, NULL, dbeta, du_next, keep_next, ds + row, u + row, o + row, up, sp, NULL, beta,
                              nc);
            else if (dm)
                backward_step(dcur, dm + row, dbeta, du_next, keep_next, ds + row, u + row, NULL, up, sp, NULL,
                              beta, nc);
            else
                backward_step(dcur, NULL, dbeta, du_next, keep_next, ds + row, u + row, NULL, up, sp, NULL, beta,
                              nc);
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
