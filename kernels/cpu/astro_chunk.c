// astro_chunk.c: the astrocyte recurrence in chunks of matrix products
// (chunk-parallel linear attention with a per-key-channel decay), forward
// and backward, beside the per-timestep scan of amsu.c that stays the
// reference. Same contracts as astro_forward / astro_backward (cpu.h).
//
// Per (sequence, head), with k' = (1 − λ) ⊙ k and chunk-local steps
// τ, σ ∈ [0, L) of a chunk of L = GLIA_CHUNK steps whose incoming state is S:
//   o_τ      = Σ_{σ≤τ} A[τ,σ] v_σ + (q_τ ⊙ λ^{τ+1})ᵀ S,
//   A[τ,σ]   = Σ_i q_τ[i] k'_σ[i] λ_i^{τ−σ}                 (σ ≤ τ, else 0)
//   S_next   = diag(λ^L) S + Σ_σ diag(λ^{L−1−σ}) k'_σ v_σᵀ.
// A (causal, σ ≤ τ) is one sgemm, A = Q̂ K̂ᵀ masked, with the decay split
// across the factors: Q̂[τ] = q_τ ⊙ λ^τ, K̂[σ] = k'_σ ⊙ λ^{−σ}. That split is
// exact to rounding (each factor is rescaled, no sum cancels) while the
// negative power is representable: a key channel is "safe" when
// λ_i^{L−1} ≥ 2⁻⁴⁸ (λ_i ≥ 0.34 at L = 32, which covers SPEC's initial range).
// The other channels, where λ^{−σ} would overflow or magnify, leave Q̂ and K̂
// as zero columns and are added pairwise with non-negative exponents only
// (the table pw[d][i] = λ_i^d, d = 0..L, built by repeated products), so
// nothing overflows for any λ in (0, 1): small λ only underflows to the zero
// it is. Everything else is an sgemm on strided views of the (B, T, C)
// tensors: A V, the state read Q̃ S, and the state update K̄ᵀ V
// (Q̃[τ] = q_τ ⊙ λ^{τ+1}, K̄[σ] = k'_σ ⊙ λ^{L−1−σ}).
//
// The backward walks the chunks from the last with dS = ∂L/∂S_next:
//   dA = (dO Vᵀ) masked;  dv = Aᵀ dO + K̄ dS;
//   dq = Σ_σ dA[τ,σ] k'_σ λ^{τ−σ} + λ^{τ+1} ⊙ (dO Sᵀ);
//   dk' = Σ_τ dA[τ,σ] q_τ λ^{τ−σ} + λ^{L−1−σ} ⊙ (V dSᵀ);  dk = (1 − λ) dk';
//   dS ← diag(λ^L) dS + Q̃ᵀ dO.
// The intra-chunk sums (σ < τ) are sgemms too, split as A is: λ^τ ⊙ (dA K̂)
// for dq and λ^{−σ} ⊙ (dAᵀ Q̂) for dk' on the safe channels, pairwise on the
// others.
// ∂L/∂λ comes from the same products with chunk-local position weights
// (each power λ^e contributes e/λ times its term), so no sum grows with T:
//   λ·dλ_decay = Σ_τ τ q dq_intra − Σ_σ σ k' dk'_intra + Σ_τ (τ+1) q dq_inter
//              + Σ_σ (L−1−σ) k' dk'_state + L λ^L Σ_j S[i,j] dS[i,j],
// where the intra sums leave out σ = τ (weight τ − σ = 0, and its terms are of
// order 1 against the others' order λ: kept in, they would cancel, and the
// division by a small λ would magnify the rounding),
//   dλ = λ·dλ_decay / λ − Σ_σ k dk'.
// The chunk states S are the forward's checkpoints (Hckpt, one per
// GLIA_CHUNK steps), so the scan's backward and this one read the same ones.
#include <stdlib.h>
#include <string.h>

#include "common/step.h"
#include "cpu/cpu.h"
#include "glia/util.h"

#include <omp.h>

#include <cblas.h>  // last: its complex.h defines I, a field name in cpu.h's structs

// The (sequence, head) pairs run on OpenMP's threads, each calling sgemm on
// its own small matrices. OpenBLAS must run those calls single-threaded: left
// at the process's thread count, its calls from inside a parallel region
// contend with each other (measured here at 2 threads: 5x slower than one
// thread). So the BLAS thread count is 1 for the region and restored after.
static int blas_single_begin(void) {
    int nt = omp_get_max_threads();
    openblas_set_num_threads(1);
    return nt;
}
static void blas_single_end(int nt) { cpu_set_threads(nt); }

enum { LC = GLIA_CHUNK };

// A key channel whose λ^{L−1} is at least this is split as λ^τ · λ^{−σ} (above).
#define SAFE_POW 0x1p-48f

// Per-(sequence, head) scratch.
typedef struct {
    float *pw;            // (LC + 1, D): pw[d][i] = λ_i^d
    float *ps, *pn;       // (LC, D): λ_i^d and λ_i^{−d} on safe channels, 0 elsewhere
    int *uns, nuns;       // (D): the channels that are not safe, and how many
    float *qt, *kp, *kb;  // (LC, D): q ⊙ λ^{τ+1}, k', k' ⊙ λ^{L−1−σ}
    float *qh, *kh;       // (LC, D): Q̂ = q ⊙ λ^τ, K̂ = k' ⊙ λ^{−σ} (safe channels)
    float *A, *dA;        // (LC, LC)
    float *t1, *t2;       // (LC, D)
    float *g1, *g2;       // (LC, D): the intra-chunk parts of dq and dk'
    float *S, *dS;        // (D, D)
    float *lambda;        // (D)
} Work;

static void work_new(Work *w, const float *a_lambda, int D) {
    size_t LD = (size_t)LC * D;
    float *p = xmalloc(((size_t)(LC + 1) * D + 11 * LD + 2 * (size_t)LC * LC + 2 * (size_t)D * D + D) *
                       sizeof(float));
    w->pw = p, p += (size_t)(LC + 1) * D;
    float **ld[] = {&w->ps, &w->pn, &w->qt, &w->kp, &w->kb, &w->qh, &w->kh, &w->t1, &w->t2, &w->g1, &w->g2};
    for (size_t j = 0; j < sizeof ld / sizeof ld[0]; j++) *ld[j] = p, p += LD;
    w->A = p, p += (size_t)LC * LC;
    w->dA = p, p += (size_t)LC * LC;
    w->S = p, p += (size_t)D * D;
    w->dS = p, p += (size_t)D * D;
    w->lambda = p;
    w->uns = xmalloc((size_t)D * sizeof(int));
    w->nuns = 0;
    for (int i = 0; i < D; i++) w->lambda[i] = step_sigmoid(a_lambda[i]);
    for (int i = 0; i < D; i++) w->pw[i] = 1.0f;
    for (int d = 1; d <= LC; d++)
        for (int i = 0; i < D; i++) w->pw[(size_t)d * D + i] = w->pw[(size_t)(d - 1) * D + i] * w->lambda[i];
    for (int i = 0; i < D; i++) {
        const int safe = w->pw[(size_t)(LC - 1) * D + i] >= SAFE_POW;
        if (!safe) w->uns[w->nuns++] = i;
        for (int d = 0; d < LC; d++) {
            const float pd = w->pw[(size_t)d * D + i];
            w->ps[(size_t)d * D + i] = safe ? pd : 0.0f;
            w->pn[(size_t)d * D + i] = safe ? 1.0f / pd : 0.0f;
        }
    }
}

static void work_free(Work *w) {
    free(w->pw);
    free(w->uns);
}

// The chunk's operands from rows [t0, t0 + L) (row stride ld): qt, kp, kb,
// Q̂, K̂, and A (causal, diagonal included).
static void chunk_operands(Work *w, const float *q, const float *k, int L, int ld, int D) {
    const float *lambda = w->lambda;
    for (int t = 0; t < L; t++) {
        const float *qr = q + (size_t)t * ld, *kr = k + (size_t)t * ld;
        const float *p1 = w->pw + (size_t)(t + 1) * D, *pl = w->pw + (size_t)(L - 1 - t) * D;
        const float *ps = w->ps + (size_t)t * D, *pn = w->pn + (size_t)t * D;
        float *qt = w->qt + (size_t)t * D, *kp = w->kp + (size_t)t * D, *kb = w->kb + (size_t)t * D;
        float *qh = w->qh + (size_t)t * D, *kh = w->kh + (size_t)t * D;
#pragma omp simd
        for (int i = 0; i < D; i++) {
            qt[i] = qr[i] * p1[i];
            kp[i] = (1.0f - lambda[i]) * kr[i];
            kb[i] = kp[i] * pl[i];
            qh[i] = qr[i] * ps[i];
            kh[i] = kp[i] * pn[i];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, D, 1.0f, w->qh, D, w->kh, D, 0.0f, w->A, LC);
    for (int t = 0; t < L; t++) {
        float *Ar = w->A + (size_t)t * LC;
        for (int s = t + 1; s < L; s++) Ar[s] = 0.0f;
        if (!w->nuns) continue;
        const float *qr = q + (size_t)t * ld;
        for (int s = 0; s <= t; s++) {
            const float *kp = w->kp + (size_t)s * D, *pd = w->pw + (size_t)(t - s) * D;
            float acc = 0.0f;
            for (int j = 0; j < w->nuns; j++) {
                const int i = w->uns[j];
                acc += qr[i] * kp[i] * pd[i];
            }
            Ar[s] += acc;
        }
    }
}

void astro_forward_chunk(float *o, float *Hckpt, const float *k, const float *v, const float *q,
                         const float *a_lambda, float *H_state, int B, int T, int C, int Nh, int ld) {
    const int D = C / Nh, nch = glia_nchunks(T);
    const size_t DD = (size_t)D * D;
    const int nt = blas_single_begin();
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int bh = 0; bh < B * Nh; bh++) {
        const int b = bh / Nh, h = bh % Nh;
        Work w;
        work_new(&w, a_lambda + h * D, D);
        if (H_state) memcpy(w.S, H_state + (size_t)bh * DD, DD * sizeof(float));
        else memset(w.S, 0, DD * sizeof(float));
        for (int c = 0; c < nch; c++) {
            const int t0 = c * LC, L = T - t0 < LC ? T - t0 : LC;
            const size_t off = ((size_t)b * T + t0) * C + (size_t)h * D;   // o
            const size_t pin = ((size_t)b * T + t0) * ld + (size_t)h * D;  // k, v, q
            if (Hckpt) memcpy(Hckpt + ((size_t)bh * nch + c) * DD, w.S, DD * sizeof(float));
            chunk_operands(&w, q + pin, k + pin, L, ld, D);
            // o = A V + Q̃ S
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, L, 1.0f, w.A, LC, v + pin, ld, 0.0f,
                        o + off, C);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, D, 1.0f, w.qt, D, w.S, D, 1.0f, o + off, C);
            // S ← diag(λ^L) S + K̄ᵀ V
            const float *pL = w.pw + (size_t)L * D;
            for (int i = 0; i < D; i++)
                for (int j = 0; j < D; j++) w.S[(size_t)i * D + j] *= pL[i];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, L, 1.0f, w.kb, D, v + pin, ld, 1.0f, w.S, D);
        }
        if (H_state) memcpy(H_state + (size_t)bh * DD, w.S, DD * sizeof(float));
        work_free(&w);
    }
    blas_single_end(nt);
}

// The intra-chunk parts of dq (g1) and dk' (g2), σ < τ only, from the
// strictly masked dA: sgemms on the safe channels, pairwise on the others.
static void intra_grads(Work *w, const float *q, int L, int ld, int D) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, L, 1.0f, w->dA, LC, w->kh, D, 0.0f, w->g1, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, L, 1.0f, w->dA, LC, w->qh, D, 0.0f, w->g2, D);
    for (int t = 0; t < L; t++) {
        float *g1 = w->g1 + (size_t)t * D, *g2 = w->g2 + (size_t)t * D;
        const float *ps = w->ps + (size_t)t * D, *pn = w->pn + (size_t)t * D;
#pragma omp simd
        for (int i = 0; i < D; i++) g1[i] *= ps[i], g2[i] *= pn[i];
    }
    for (int j = 0; j < w->nuns; j++) {
        const int i = w->uns[j];
        for (int t = 0; t < L; t++) {
            float gq = 0.0f, gk = 0.0f;
            for (int s = 0; s < t; s++)
                gq += w->dA[(size_t)t * LC + s] * w->kp[(size_t)s * D + i] * w->pw[(size_t)(t - s) * D + i];
            for (int u = t + 1; u < L; u++)
                gk += w->dA[(size_t)u * LC + t] * q[(size_t)u * ld + i] * w->pw[(size_t)(u - t) * D + i];
            w->g1[(size_t)t * D + i] = gq;
            w->g2[(size_t)t * D + i] = gk;
        }
    }
}

void astro_backward_chunk(float *dk, float *dv, float *dq, float *da_lambda, const float *dout,
                          const float *k, const float *v, const float *q, const float *a_lambda,
                          const float *Hckpt, int B, int T, int C, int Nh, int ld) {
    const int D = C / Nh, nch = glia_nchunks(T);
    const size_t DD = (size_t)D * D;
    float *dlam_part = xcalloc((size_t)B * C, sizeof(float));  // (B, Nh, D) per sequence
    const int nt = blas_single_begin();
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int bh = 0; bh < B * Nh; bh++) {
        const int b = bh / Nh, h = bh % Nh;
        Work w;
        work_new(&w, a_lambda + h * D, D);
        const float *lambda = w.lambda;
        float *wsum = xcalloc(2 * (size_t)D + LC, sizeof(float)), *direct = wsum + D, *diag = direct + D;
        memset(w.dS, 0, DD * sizeof(float));
        for (int c = nch - 1; c >= 0; c--) {
            const int t0 = c * LC, L = T - t0 < LC ? T - t0 : LC;
            const size_t off = ((size_t)b * T + t0) * C + (size_t)h * D;   // dout
            const size_t pin = ((size_t)b * T + t0) * ld + (size_t)h * D;  // k, v, q and their gradients
            const float *qc = q + pin, *kc = k + pin, *vc = v + pin, *doc = dout + off;
            memcpy(w.S, Hckpt + ((size_t)bh * nch + c) * DD, DD * sizeof(float));
            chunk_operands(&w, qc, kc, L, ld, D);
            // dA = dO Vᵀ: its diagonal kept apart, the rest masked to σ < τ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, D, 1.0f, doc, C, vc, ld, 0.0f, w.dA, LC);
            for (int t = 0; t < L; t++) {
                diag[t] = w.dA[(size_t)t * LC + t];
                for (int s = t; s < L; s++) w.dA[(size_t)t * LC + s] = 0.0f;
            }
            // dv = Aᵀ dO + K̄ dS
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, L, 1.0f, w.A, LC, doc, C, 0.0f, dv + pin, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, D, 1.0f, w.kb, D, w.dS, D, 1.0f, dv + pin, ld);
            // t1 = dO Sᵀ (the state read's gradient), t2 = V dSᵀ (the state update's)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, D, D, 1.0f, doc, C, w.S, D, 0.0f, w.t1, D);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, D, D, 1.0f, vc, ld, w.dS, D, 0.0f, w.t2, D);
            intra_grads(&w, qc, L, ld, D);
            // λ·∂L/∂λ through S_next = diag(λ^L) S + ...: L λ^L Σ_j S dS
            const float *pL = w.pw + (size_t)L * D;
            for (int i = 0; i < D; i++) {
                float acc = 0.0f;
                for (int j = 0; j < D; j++) acc += w.S[(size_t)i * D + j] * w.dS[(size_t)i * D + j];
                wsum[i] += (float)L * pL[i] * acc;
            }
            for (int t = 0; t < L; t++) {
                const float *qr = qc + (size_t)t * ld, *kr = kc + (size_t)t * ld;
                const float *p1 = w.pw + (size_t)(t + 1) * D, *pl = w.pw + (size_t)(L - 1 - t) * D;
                const float *kp = w.kp + (size_t)t * D, *t1 = w.t1 + (size_t)t * D, *t2 = w.t2 + (size_t)t * D;
                const float *gq = w.g1 + (size_t)t * D, *gk = w.g2 + (size_t)t * D;
                float *dqr = dq + pin + (size_t)t * ld, *dkr = dk + pin + (size_t)t * ld;
                // the intra-chunk parts leave out the diagonal σ = τ, whose decay
                // λ^0 = 1 carries no position weight: the weighted sums below then
                // hold only terms of order λ, so dividing them by λ loses nothing
                // for small λ
                const float dg = diag[t];
#pragma omp simd
                for (int i = 0; i < D; i++) {
                    const float gq_inter = p1[i] * t1[i], gk_state = pl[i] * t2[i];
                    const float dkp = gk[i] + dg * qr[i] + gk_state;
                    dqr[i] = gq[i] + dg * kp[i] + gq_inter;
                    dkr[i] = (1.0f - lambda[i]) * dkp;
                    wsum[i] += (float)t * (qr[i] * gq[i] - kp[i] * gk[i]) + (float)(t + 1) * qr[i] * gq_inter +
                               (float)(L - 1 - t) * kp[i] * gk_state;
                    direct[i] += kr[i] * dkp;
                }
            }
            // dS ← diag(λ^L) dS + Q̃ᵀ dO
            for (int i = 0; i < D; i++)
                for (int j = 0; j < D; j++) w.dS[(size_t)i * D + j] *= pL[i];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, L, 1.0f, w.qt, D, doc, C, 1.0f, w.dS, D);
        }
        float *dlam = dlam_part + (size_t)b * C + (size_t)h * D;
        for (int i = 0; i < D; i++) dlam[i] = wsum[i] / lambda[i] - direct[i];
        free(wsum);
        work_free(&w);
    }
    blas_single_end(nt);
    sigmoid_grad_from_partials(da_lambda, dlam_part, a_lambda, B, C);  // chain through λ = sigmoid(a_λ)
    free(dlam_part);
}
