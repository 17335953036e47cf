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
// Every power of λ has a non-negative exponent below L + 1 (a table pw[d][i]
// = λ_i^d, d = 0..L, built by repeated products), so nothing overflows for
// any λ in (0, 1): small λ only underflows to the zero it is. A is formed
// pairwise (L²·D/2 multiply-adds, the only scalar loop); everything else is
// an sgemm on strided views of the (B, T, C) tensors: A V, the state read
// Q̃ S, and the state update K̄ᵀ V (K̄[σ] = k'_σ ⊙ λ^{L−1−σ}).
//
// The backward walks the chunks from the last with dS = ∂L/∂S_next:
//   dA = (dO Vᵀ) masked;  dv = Aᵀ dO + K̄ dS;
//   dq = Σ_σ dA[τ,σ] k'_σ λ^{τ−σ} + λ^{τ+1} ⊙ (dO Sᵀ);
//   dk' = Σ_τ dA[τ,σ] q_τ λ^{τ−σ} + λ^{L−1−σ} ⊙ (V dSᵀ);  dk = (1 − λ) dk';
//   dS ← diag(λ^L) dS + Q̃ᵀ dO.
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

// Per-(sequence, head) scratch.
typedef struct {
    float *pw;       // (LC + 1, D): pw[d][i] = λ_i^d
    float *qt, *kp, *kb;  // (LC, D): q ⊙ λ^{τ+1}, k', k' ⊙ λ^{L−1−σ}
    float *A, *dA;   // (LC, LC)
    float *t1, *t2;  // (LC, D)
    float *S, *dS;   // (D, D)
} Work;

static void work_new(Work *w, int D) {
    size_t LD = (size_t)LC * D;
    float *p = xmalloc(((size_t)(LC + 1) * D + 5 * LD + 2 * (size_t)LC * LC + 2 * (size_t)D * D) * sizeof(float));
    w->pw = p, p += (size_t)(LC + 1) * D;
    w->qt = p, p += LD;
    w->kp = p, p += LD;
    w->kb = p, p += LD;
    w->t1 = p, p += LD;
    w->t2 = p, p += LD;
    w->A = p, p += (size_t)LC * LC;
    w->dA = p, p += (size_t)LC * LC;
    w->S = p, p += (size_t)D * D;
    w->dS = p;
}

static void powers(float *pw, const float *lambda, int D) {
    for (int i = 0; i < D; i++) pw[i] = 1.0f;
    for (int d = 1; d <= LC; d++)
        for (int i = 0; i < D; i++) pw[(size_t)d * D + i] = pw[(size_t)(d - 1) * D + i] * lambda[i];
}

// The chunk's operands from rows [t0, t0 + L) (row stride C): qt, kp, kb, and A.
static void chunk_operands(Work *w, const float *q, const float *k, const float *lambda, int L, int C, int D) {
    for (int t = 0; t < L; t++) {
        const float *qr = q + (size_t)t * C, *kr = k + (size_t)t * C;
        const float *p1 = w->pw + (size_t)(t + 1) * D, *pl = w->pw + (size_t)(L - 1 - t) * D;
        float *qt = w->qt + (size_t)t * D, *kp = w->kp + (size_t)t * D, *kb = w->kb + (size_t)t * D;
        for (int i = 0; i < D; i++) {
            qt[i] = qr[i] * p1[i];
            kp[i] = (1.0f - lambda[i]) * kr[i];
            kb[i] = kp[i] * pl[i];
        }
    }
    for (int t = 0; t < L; t++) {
        const float *qr = q + (size_t)t * C;
        float *Ar = w->A + (size_t)t * LC;
        for (int s = 0; s <= t; s++) {
            const float *kp = w->kp + (size_t)s * D, *pd = w->pw + (size_t)(t - s) * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int i = 0; i < D; i++) acc += qr[i] * kp[i] * pd[i];
            Ar[s] = acc;
        }
        for (int s = t + 1; s < L; s++) Ar[s] = 0.0f;
    }
}

void astro_forward_chunk(float *o, float *Hckpt, const float *k, const float *v, const float *q,
                         const float *a_lambda, float *H_state, int B, int T, int C, int Nh) {
    const int D = C / Nh, nch = glia_nchunks(T);
    const size_t DD = (size_t)D * D;
    const int nt = blas_single_begin();
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int bh = 0; bh < B * Nh; bh++) {
        const int b = bh / Nh, h = bh % Nh;
        Work w;
        work_new(&w, D);
        float *lambda = w.t2;  // (D): the forward does not use t2 otherwise
        for (int i = 0; i < D; i++) lambda[i] = step_sigmoid(a_lambda[h * D + i]);
        powers(w.pw, lambda, D);
        if (H_state) memcpy(w.S, H_state + (size_t)bh * DD, DD * sizeof(float));
        else memset(w.S, 0, DD * sizeof(float));
        for (int c = 0; c < nch; c++) {
            const int t0 = c * LC, L = T - t0 < LC ? T - t0 : LC;
            const size_t off = ((size_t)b * T + t0) * C + (size_t)h * D;
            if (Hckpt) memcpy(Hckpt + ((size_t)bh * nch + c) * DD, w.S, DD * sizeof(float));
            chunk_operands(&w, q + off, k + off, lambda, L, C, D);
            // o = A V + Q̃ S
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, L, 1.0f, w.A, LC, v + off, C, 0.0f,
                        o + off, C);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, D, 1.0f, w.qt, D, w.S, D, 1.0f, o + off, C);
            // S ← diag(λ^L) S + K̄ᵀ V
            const float *pL = w.pw + (size_t)L * D;
            for (int i = 0; i < D; i++)
                for (int j = 0; j < D; j++) w.S[(size_t)i * D + j] *= pL[i];
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, L, 1.0f, w.kb, D, v + off, C, 1.0f, w.S, D);
        }
        if (H_state) memcpy(H_state + (size_t)bh * DD, w.S, DD * sizeof(float));
        free(w.pw);
    }
    blas_single_end(nt);
}

void astro_backward_chunk(float *dk, float *dv, float *dq, float *da_lambda, const float *dout,
                          const float *k, const float *v, const float *q, const float *a_lambda,
                          const float *Hckpt, int B, int T, int C, int Nh) {
    const int D = C / Nh, nch = glia_nchunks(T);
    const size_t DD = (size_t)D * D;
    float *dlam_part = xcalloc((size_t)B * C, sizeof(float));  // (B, Nh, D) per sequence
    const int nt = blas_single_begin();
#pragma omp parallel for schedule(dynamic) num_threads(nt)
    for (int bh = 0; bh < B * Nh; bh++) {
        const int b = bh / Nh, h = bh % Nh;
        Work w;
        work_new(&w, D);
        float *lambda = xmalloc(5 * (size_t)D * sizeof(float)), *wsum = lambda + D, *direct = wsum + D;
        float *gq = direct + D, *gk = gq + D;  // (D) the intra-chunk parts of one row's dq and dk'
        for (int i = 0; i < D; i++) lambda[i] = step_sigmoid(a_lambda[h * D + i]), wsum[i] = direct[i] = 0.0f;
        powers(w.pw, lambda, D);
        memset(w.dS, 0, DD * sizeof(float));
        for (int c = nch - 1; c >= 0; c--) {
            const int t0 = c * LC, L = T - t0 < LC ? T - t0 : LC;
            const size_t off = ((size_t)b * T + t0) * C + (size_t)h * D;
            const float *qc = q + off, *kc = k + off, *vc = v + off, *doc = dout + off;
            memcpy(w.S, Hckpt + ((size_t)bh * nch + c) * DD, DD * sizeof(float));
            chunk_operands(&w, qc, kc, lambda, L, C, D);
            // dA = dO Vᵀ, masked to σ ≤ τ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, D, 1.0f, doc, C, vc, C, 0.0f, w.dA, LC);
            for (int t = 0; t < L; t++)
                for (int s = t + 1; s < L; s++) w.dA[(size_t)t * LC + s] = 0.0f;
            // dv = Aᵀ dO + K̄ dS
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, D, L, 1.0f, w.A, LC, doc, C, 0.0f, dv + off, C);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, D, D, 1.0f, w.kb, D, w.dS, D, 1.0f, dv + off, C);
            // t1 = dO Sᵀ (the state read's gradient), t2 = V dSᵀ (the state update's)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, D, D, 1.0f, doc, C, w.S, D, 0.0f, w.t1, D);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, D, D, 1.0f, vc, C, w.dS, D, 0.0f, w.t2, D);
            // λ·∂L/∂λ through S_next = diag(λ^L) S + ...: L λ^L Σ_j S dS
            const float *pL = w.pw + (size_t)L * D;
            for (int i = 0; i < D; i++) {
                float acc = 0.0f;
                for (int j = 0; j < D; j++) acc += w.S[(size_t)i * D + j] * w.dS[(size_t)i * D + j];
                wsum[i] += (float)L * pL[i] * acc;
            }
            for (int t = 0; t < L; t++) {
                const float *qr = qc + (size_t)t * C, *kr = kc + (size_t)t * C;
                const float *p1 = w.pw + (size_t)(t + 1) * D, *pl = w.pw + (size_t)(L - 1 - t) * D;
                const float *kp = w.kp + (size_t)t * D, *t1 = w.t1 + (size_t)t * D, *t2 = w.t2 + (size_t)t * D;
                float *dqr = dq + off + (size_t)t * C, *dkr = dk + off + (size_t)t * C;
                // intra-chunk parts: row t of dA against k' (dq), column t against q (dk'),
                // first without the diagonal σ = τ, whose decay λ^0 = 1 carries no
                // position weight: the weighted sums below then hold only terms of
                // order λ, so dividing them by λ loses nothing for small λ
                for (int i = 0; i < D; i++) gq[i] = gk[i] = 0.0f;
                for (int s2 = 0; s2 < t; s2++) {
                    const float a = w.dA[(size_t)t * LC + s2];
                    const float *ks = w.kp + (size_t)s2 * D, *pd = w.pw + (size_t)(t - s2) * D;
#pragma omp simd
                    for (int i = 0; i < D; i++) gq[i] += a * ks[i] * pd[i];
                }
                for (int u = t + 1; u < L; u++) {
                    const float a = w.dA[(size_t)u * LC + t];
                    const float *qu = qc + (size_t)u * C, *pd = w.pw + (size_t)(u - t) * D;
#pragma omp simd
                    for (int i = 0; i < D; i++) gk[i] += a * qu[i] * pd[i];
                }
                const float diag = w.dA[(size_t)t * LC + t];
                for (int i = 0; i < D; i++) {
                    const float gq_inter = p1[i] * t1[i], gk_state = pl[i] * t2[i];
                    const float dkp = gk[i] + diag * qr[i] + gk_state;
                    dqr[i] = gq[i] + diag * kp[i] + gq_inter;
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
        free(lambda);
        free(w.pw);
    }
    blas_single_end(nt);
    sigmoid_grad_from_partials(da_lambda, dlam_part, a_lambda, B, C);  // chain through λ = sigmoid(a_λ)
    free(dlam_part);
}
