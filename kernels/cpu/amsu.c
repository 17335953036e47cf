// amsu.c: the AM-SU token mixer on the CPU: astrocyte recurrence and the
// whole layer, forward and backward.
//
// A layer is four projections of the normalised input (current I, key k,
// value v, query q; one GEMM into P, types.h), the astrocyte recurrence that
// turns k, v, q into the modulation o, the LIF neuron (lif.c) that turns I
// and o into spikes s, and the output projection y = W_O s. The neuron never feeds back into the
// astrocyte, so on the CPU the two recurrences run one after the other: all
// of o first, then the neurons. (The CUDA kernel fuses them into one pass.)
//
// The astrocyte state H is one D×D matrix per (sequence, head), rows i
// indexed by key channel and columns j by value channel; (sequence, head)
// pairs are independent and run in parallel. The forward stores H only at
// the start of every GLIA_CHUNK steps; the backward walks the chunks from the
// last, recomputes the states inside each chunk from its checkpoint with the
// same code as the forward (so bit-identical), and runs SPEC's recursion
//   G_t    = q_t do_tᵀ + diag(λ) G_{t+1}          (G = total ∂L/∂H_t)
//   dq_t   = H_t do_t
//   dk_t   = (1 − λ) ⊙ G_t v_t
//   dv_t   = G_tᵀ ((1 − λ) ⊙ k_t)
//   dλ    += rowsum(G_t ⊙ (H_{t-1} − k_t v_tᵀ)).
#include "common/backend.h"  // AMSU_SCAN, AMSU_CHUNK
#include "common/step.h"
#include "cpu/cpu.h"
#include "glia/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// One astrocyte step for one (sequence, head): H ← λ H + (1 − λ) k vᵀ and
// o = Hᵀ q. H (D, D); k, v, q, o, lambda (D).
static void astro_step(float *H, float *o, const float *k, const float *v, const float *q,
                       const float *lambda, int D) {
    for (int j = 0; j < D; j++) o[j] = 0.0f;
    for (int i = 0; i < D; i++) {
        float *row = H + (size_t)i * D;
        float gain_k = (1.0f - lambda[i]) * k[i];
        float qi = q[i];
        for (int j = 0; j < D; j++) {
            row[j] = step_calcium(lambda[i], row[j], gain_k, v[j]);
            o[j] += row[j] * qi;
        }
    }
}

void astro_forward(float *o, float *Hckpt, const float *k, const float *v, const float *q,
                   const float *a_lambda, float *H_state, int B, int T, int C, int Nh, int ld) {
    int D = C / Nh, nch = glia_nchunks(T);
    size_t DD = (size_t)D * D;
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * Nh; bh++) {
        int b = bh / Nh, h = bh % Nh;
        float *H = H_state ? H_state + (size_t)bh * DD : xcalloc(DD, sizeof(float));
        float *lambda = xmalloc(D * sizeof(float));
        for (int i = 0; i < D; i++) lambda[i] = step_sigmoid(a_lambda[h * D + i]);
        for (int t = 0; t < T; t++) {
            if (Hckpt && t % GLIA_CHUNK == 0)
                memcpy(Hckpt + ((size_t)bh * nch + t / GLIA_CHUNK) * DD, H, DD * sizeof(float));
            size_t off = ((size_t)b * T + t) * C + (size_t)h * D;
            size_t pin = ((size_t)b * T + t) * ld + (size_t)h * D;  // k, v, q
            astro_step(H, o + off, k + pin, v + pin, q + pin, lambda, D);
        }
        if (!H_state) free(H);
        free(lambda);
    }
}

void astro_backward(float *dk, float *dv, float *dq, float *da_lambda, const float *dout,
                    const float *k, const float *v, const float *q, const float *a_lambda,
                    const float *Hckpt, int B, int T, int C, int Nh, int ld) {
    int D = C / Nh, nch = glia_nchunks(T);
    size_t DD = (size_t)D * D;
    float *dlam_part = xcalloc((size_t)B * C, sizeof(float));  // (B, Nh, D) per sequence
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * Nh; bh++) {
        int b = bh / Nh, h = bh % Nh;
        float *Hs = xmalloc((GLIA_CHUNK + 1) * DD * sizeof(float));  // H_{t0-1} .. H_{t1-1}
        float *G = xcalloc(DD, sizeof(float));                       // ∂L/∂H_t
        float *lambda = xmalloc(D * sizeof(float));
        float *scratch_o = xmalloc(D * sizeof(float));
        float *dlam = dlam_part + (size_t)b * C + (size_t)h * D;
        for (int i = 0; i < D; i++) lambda[i] = step_sigmoid(a_lambda[h * D + i]);
        for (int c = nch - 1; c >= 0; c--) {
            int t0 = c * GLIA_CHUNK, t1 = t0 + GLIA_CHUNK < T ? t0 + GLIA_CHUNK : T;
            // recompute the chunk's states: Hs[τ] = H before step t0 + τ
            memcpy(Hs, Hckpt + ((size_t)bh * nch + c) * DD, DD * sizeof(float));
            for (int t = t0; t < t1; t++) {
                size_t pin = ((size_t)b * T + t) * ld + (size_t)h * D;
                float *Hn = Hs + (size_t)(t - t0 + 1) * DD;
                memcpy(Hn, Hn - DD, DD * sizeof(float));
                astro_step(Hn, scratch_o, k + pin, v + pin, q + pin, lambda, D);
            }
            for (int t = t1 - 1; t >= t0; t--) {
                size_t off = ((size_t)b * T + t) * C + (size_t)h * D;
                size_t pin = ((size_t)b * T + t) * ld + (size_t)h * D;  // k, v, q and their gradients
                const float *kt = k + pin, *vt = v + pin, *qt = q + pin, *dot = dout + off;
                const float *Ht = Hs + (size_t)(t - t0 + 1) * DD, *Hp = Ht - DD;
                float *dqt = dq + pin, *dkt = dk + pin, *dvt = dv + pin;
                for (int j = 0; j < D; j++) dvt[j] = 0.0f;
                for (int i = 0; i < D; i++) {
                    float *Gi = G + (size_t)i * D;
                    const float *Hti = Ht + (size_t)i * D, *Hpi = Hp + (size_t)i * D;
                    float gk = (1.0f - lambda[i]) * kt[i];
                    float sq = 0.0f, sk = 0.0f, sl = 0.0f;
                    // the three sums over j vectorise (a fixed order, so the
                    // result is still the same on every run)
#pragma omp simd reduction(+ : sq, sk, sl)
                    for (int j = 0; j < D; j++) {
                        Gi[j] = step_calcium_grad(lambda[i], Gi[j], qt[i], dot[j]);
                        sq += Hti[j] * dot[j];
                        sk += Gi[j] * vt[j];
                        sl += step_lambda_grad(Gi[j], Hpi[j], kt[i], vt[j]);
                        dvt[j] += Gi[j] * gk;
                    }
                    dqt[i] = sq;
                    dkt[i] = (1.0f - lambda[i]) * sk;
                    dlam[i] += sl;
                }
            }
        }
        free(Hs);
        free(G);
        free(lambda);
        free(scratch_o);
    }
    sigmoid_grad_from_partials(da_lambda, dlam_part, a_lambda, B, C);  // chain through λ = sigmoid(a_λ)
    free(dlam_part);
}

// ---- the layer ------------------------------------------------------------------

static int amsu_mode = AMSU_CHUNK;  // the faster on this backend (docs/PERF.md)
void cpu_set_amsu(int mode) { amsu_mode = mode; }

size_t amsu_scratch_size(AmsuShape sh) {
    return (size_t)sh.B * sh.T * (2 * sh.C + amsu_ld(sh));  // ds, dm, dP
}

// The key scale 1/sqrt(D) of SPEC's k, applied to the k columns of P (or of
// dP in the backward): rows (M, C) of x at row stride ld.
static void scale_rows(float *x, int M, int C, int ld, float s) {
#pragma omp parallel for schedule(static)
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++) x[(size_t)m * ld + c] *= s;
}

void amsu_forward(float *y, AmsuActs *a, const float *z, const AmsuWeights *w, AmsuShape sh,
                  AmsuState *state, const float *add, const NeuronTestMode *test) {
    int M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh);
    matmul_forward(a->P, z, w->W_in, M, C, ld, 1.0f, NULL);  // [I | k | v | q] = z W_inᵀ
    if (sh.astro) {
        scale_rows(a->k, M, C, ld, 1.0f / sqrtf((float)(C / sh.Nh)));
        // one token (decoding) takes the scan: there the chunk's setup costs more
        // than it saves (measured 42 against 22 µs at B 8, C 128, 4 heads; the
        // chunk is faster from T = 8 on)
        (amsu_mode == AMSU_CHUNK && sh.T > 1 ? astro_forward_chunk : astro_forward)(
            a->o, a->Hckpt, a->k, a->v, a->q, w->a_lambda, state ? state->H : NULL, sh.B, sh.T, C, sh.Nh, ld);
    } else {
        memset(a->o, 0, (size_t)M * C * sizeof(float));
    }
    neuron_forward(a->u, a->s, a->I, sh.astro ? a->o : NULL, w->a_beta, state ? state->u : NULL,
                   state ? state->s : NULL, sh.B, sh.T, C, ld, test);
    matmul_forward(y, a->s, w->W_O, M, C, C, 1.0f, add);
}

void amsu_backward(float *dz, AmsuGrads *g, float *scratch, const float *dy, const float *z,
                   const AmsuActs *a, const AmsuWeights *w, AmsuShape sh,
                   const NeuronTestMode *test) {
    int M = sh.B * sh.T, C = sh.C, ld = amsu_ld(sh);
    size_t btc = (size_t)M * C;
    float *ds = scratch, *dm = scratch + btc, *dP = scratch + 2 * btc;  // dP (M, ld): [dI | dk | dv | dq]
    // y = s W_Oᵀ
    matmul_backward(ds, g->dW_O, dy, a->s, w->W_O, M, C, C, 1.0f, 0);
    // spikes and membrane; ∂L/∂o_t = ∂L/∂m_t
    neuron_backward(dP, dm, g->da_beta, ds, a->u, sh.astro ? a->o : NULL, a->s, w->a_beta, sh.B, sh.T, C, ld,
                    test);
    if (sh.astro) {
        (amsu_mode == AMSU_CHUNK ? astro_backward_chunk : astro_backward)(
            dP + C, dP + 2 * C, dP + 3 * C, g->da_lambda, dm, a->k, a->v, a->q, w->a_lambda, a->Hckpt, sh.B,
            sh.T, C, sh.Nh, ld);
        scale_rows(dP + C, M, C, ld, 1.0f / sqrtf((float)(C / sh.Nh)));
    }
    // [I | k | v | q] = z W_inᵀ
    matmul_backward(dz, g->dW_in, dP, z, w->W_in, M, C, ld, 1.0f, 0);
}
