// test_gradcheck.c: finite-difference checks of every hand-written backward
// of the CPU backend: the AM-SU layer (astro on and off), the LIF neuron of
// the FFN, and RMSNorm.
//
// Spikes are not differentiable, so the spiking ops run in the test mode of
// cpu.h: Θ is replaced by Θ̃(m) = arctan(π·α·m/2)/π + 1/2, whose derivative
// is exactly the ATan surrogate, and the reset factors (1 − s_{t-1}) are held
// at their unperturbed values. The forward is then a smooth function whose
// exact gradient is what the backward claims to compute, and central
// differences must agree with it.
//
// Measure: for each tensor, on up to FD_SAMPLES coordinates, the normwise
// relative error max|fd − analytic| / max|analytic|. fp32 forward with
// h = 3e-3 (loss summed in double) leaves errors below 6e-4; a wrong
// factor or a missing term gives errors of order 1. Tolerance: FD_TOL.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"  // AMSU_CHUNK
#include "cpu/cpu.h"
#include "testutil.h"

#define FD_SAMPLES 48
#define FD_H 3e-3f
#define FD_TOL 2e-3

typedef double (*LossFn)(void *ctx);

// Central differences of loss() with respect to up to FD_SAMPLES coordinates
// of p (n), compared with the analytic gradient g (n). Returns the error.
static double fd_check(const char *name, LossFn loss, void *ctx, float *p, const float *g,
                       size_t n, TestRng *rng) {
    size_t m = n < FD_SAMPLES ? n : FD_SAMPLES;
    double *fd = malloc(m * sizeof(double)), *an = malloc(m * sizeof(double));
    for (size_t s = 0; s < m; s++) {
        size_t i = n <= FD_SAMPLES ? s : (size_t)(rng_uniform(rng) * n) % n;
        float keep = p[i];
        p[i] = keep + FD_H;
        double lp = loss(ctx);
        p[i] = keep - FD_H;
        double lm = loss(ctx);
        p[i] = keep;
        fd[s] = (lp - lm) / (2.0 * (double)FD_H);
        an[s] = g[i];
    }
    double err = rel_err_d(fd, an, m);
    cr_log_info("gradcheck %-10s n=%6zu err=%.2e", name, n, err);
    free(fd);
    free(an);
    return err;
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

// keep[b,t,c] = 1 − s[b,t−1,c] (1 at t = 0): the reset factors of a forward.
static void keep_from_spikes(float *keep, const float *s, int B, int T, int N) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < N; c++) {
                size_t i = ((size_t)b * T + t) * N + c;
                keep[i] = t == 0 ? 1.0f : 1.0f - s[i - N];
            }
}

// ---- AM-SU layer ----------------------------------------------------------------

typedef struct {
    AmsuShape sh;
    float *z, *dy, *y, *keep, *acts_mem, *pmem, *params[7];  // params: views into pmem, in this order
    AmsuActs acts;
    AmsuWeights w;
    NeuronTestMode test;
} AmsuCase;

enum { P_WI, P_WK, P_WV, P_WQ, P_WO, P_LAM, P_BETA };
static const char *amsu_names[7] = {"W_I", "W_K", "W_V", "W_Q", "W_O", "a_lambda", "a_beta"};

static double amsu_loss(void *ctx) {
    AmsuCase *a = ctx;
    amsu_forward(a->y, &a->acts, a->z, &a->w, a->sh, NULL, NULL, &a->test);
    return dot_d(a->dy, a->y, (size_t)a->sh.B * a->sh.T * a->sh.C);
}

static void check_amsu(AmsuShape sh, uint64_t seed) {
    TestRng rng;
    rng_seed(&rng, seed);
    int C = sh.C, D = C / sh.Nh;
    size_t btc = (size_t)sh.B * sh.T * C, cc = (size_t)C * C;
    size_t psize[7] = {cc, cc, cc, cc, cc, (size_t)C, (size_t)C};
    AmsuCase a = {.sh = sh};
    a.z = malloc(btc * sizeof(float));
    a.dy = malloc(btc * sizeof(float));
    a.y = malloc(btc * sizeof(float));
    a.keep = malloc(btc * sizeof(float));
    fill_normal(a.z, btc, 1.0f, &rng);
    fill_normal(a.dy, btc, 1.0f, &rng);
    a.pmem = malloc((5 * cc + 2 * (size_t)C) * sizeof(float));  // W_I..W_Q adjacent: the layer's W_in
    for (int p = 0, off = 0; p < 7; off += psize[p++]) {
        a.params[p] = a.pmem + off;
        fill_normal(a.params[p], psize[p], p <= P_WO ? 1.0f / sqrtf((float)C) : 0.5f, &rng);
    }
    for (int h = 0; h < sh.Nh; h++)  // SPEC's λ spread around its initial values
        for (int i = 0; i < D; i++) {
            float lam = 1.0f - powf(2.0f, -(1.0f + 9.0f * i / (float)(D - 1)));
            a.params[P_LAM][h * D + i] = logf(lam / (1.0f - lam)) + 0.3f * rng_normal(&rng);
        }
    a.w = (AmsuWeights){a.params[P_WI], a.params[P_WO], a.params[P_LAM], a.params[P_BETA], NULL};
    a.acts_mem = malloc(amsu_acts_size(sh) * sizeof(float));
    amsu_acts_bind(&a.acts, sh, a.acts_mem);

    // unperturbed smooth forward fixes the reset factors
    a.test = (NeuronTestMode){.smooth = 1, .keep = NULL};
    amsu_forward(a.y, &a.acts, a.z, &a.w, sh, NULL, NULL, &a.test);
    keep_from_spikes(a.keep, a.acts.s, sh.B, sh.T, C);
    a.test.keep = a.keep;
    amsu_forward(a.y, &a.acts, a.z, &a.w, sh, NULL, NULL, &a.test);

    float *grads[7], *dz = malloc(btc * sizeof(float)), *gmem = calloc(5 * cc + 2 * (size_t)C, sizeof(float));
    for (int p = 0; p < 7; p++) grads[p] = gmem + (a.params[p] - a.pmem);
    AmsuGrads g = {grads[P_WI], grads[P_WO], grads[P_LAM], grads[P_BETA]};
    float *scratch = malloc(amsu_scratch_size(sh) * sizeof(float));
    amsu_backward(dz, &g, scratch, a.dy, a.z, &a.acts, &a.w, sh, &a.test);

    double err = fd_check("z", amsu_loss, &a, a.z, dz, btc, &rng);
    cr_expect(err < FD_TOL, "dz: error %.3e over %.0e", err, FD_TOL);
    for (int p = 0; p < 7; p++) {
        int astro_param = p == P_WK || p == P_WV || p == P_WQ || p == P_LAM;
        if (astro_param && !sh.astro) {
            for (size_t i = 0; i < psize[p]; i++)
                cr_assert_eq(grads[p][i], 0.0f, "astro off: %s must get no gradient", amsu_names[p]);
            continue;
        }
        // a gradient of all zeros would pass trivially: the case must exercise it
        double gmax = 0.0;
        for (size_t i = 0; i < psize[p]; i++) gmax = fmax(gmax, fabs(grads[p][i]));
        cr_assert(gmax > 1e-3, "%s: gradient is (near) zero, test case too weak", amsu_names[p]);
        err = fd_check(amsu_names[p], amsu_loss, &a, a.params[p], grads[p], psize[p], &rng);
        cr_expect(err < FD_TOL, "%s: error %.3e over %.0e", amsu_names[p], err, FD_TOL);
    }
    free(a.pmem), free(gmem);
    free(a.z), free(a.dy), free(a.y), free(a.keep), free(a.acts_mem), free(dz), free(scratch);
}

// The per-timestep scan (amsu.c), then the chunked astrocyte (astro_chunk.c,
// the CPU's default), each within one chunk and across three.
Test(gradcheck, amsu_astro_on) {
    cpu_set_amsu(AMSU_SCAN);
    check_amsu((AmsuShape){2, 9, 16, 2, 1}, 11);
}
Test(gradcheck, amsu_astro_on_multichunk) {
    cpu_set_amsu(AMSU_SCAN);
    // T spans three checkpoint chunks, the last one partial
    check_amsu((AmsuShape){1, 2 * GLIA_CHUNK + 5, 12, 3, 1}, 12);
}
Test(gradcheck, amsu_astro_off) { check_amsu((AmsuShape){2, 7, 16, 2, 0}, 13); }
Test(gradcheck, amsu_chunked) {
    cpu_set_amsu(AMSU_CHUNK);
    check_amsu((AmsuShape){2, 9, 16, 2, 1}, 11);
    check_amsu((AmsuShape){1, 2 * GLIA_CHUNK + 5, 12, 3, 1}, 12);
}

// ---- LIF neuron (the FFN's) -------------------------------------------------------

typedef struct {
    int B, T, N;
    float *cur, *a_beta, *ds, *u, *s;
    NeuronTestMode test;
} LifCase;

static double lif_loss(void *ctx) {
    LifCase *l = ctx;
    neuron_forward(l->u, l->s, l->cur, NULL, l->a_beta, NULL, NULL, l->B, l->T, l->N, l->N, &l->test);
    return dot_d(l->ds, l->s, (size_t)l->B * l->T * l->N);
}

Test(gradcheck, lif_neuron) {
    TestRng rng;
    rng_seed(&rng, 21);
    LifCase l = {.B = 3, .T = 10, .N = 70};  // N spans two channel blocks
    size_t n = (size_t)l.B * l.T * l.N;
    l.cur = malloc(n * sizeof(float)), l.ds = malloc(n * sizeof(float));
    l.u = malloc(n * sizeof(float)), l.s = malloc(n * sizeof(float));
    l.a_beta = malloc(l.N * sizeof(float));
    float *keep = malloc(n * sizeof(float));
    fill_normal(l.cur, n, 1.0f, &rng);
    fill_normal(l.ds, n, 1.0f, &rng);
    fill_normal(l.a_beta, l.N, 0.5f, &rng);
    l.test = (NeuronTestMode){.smooth = 1};
    lif_loss(&l);
    keep_from_spikes(keep, l.s, l.B, l.T, l.N);
    l.test.keep = keep;
    lif_loss(&l);
    float *dcur = malloc(n * sizeof(float)), *dbeta = calloc(l.N, sizeof(float));
    neuron_backward(dcur, NULL, dbeta, l.ds, l.u, NULL, l.s, l.a_beta, l.B, l.T, l.N, l.N, &l.test);
    double e1 = fd_check("current", lif_loss, &l, l.cur, dcur, n, &rng);
    double e2 = fd_check("a_beta", lif_loss, &l, l.a_beta, dbeta, l.N, &rng);
    cr_expect(e1 < FD_TOL, "dcurrent: error %.3e", e1);
    cr_expect(e2 < FD_TOL, "da_beta: error %.3e", e2);
    free(l.cur), free(l.ds), free(l.u), free(l.s), free(l.a_beta), free(keep), free(dcur),
        free(dbeta);
}

// ---- RMSNorm ---------------------------------------------------------------------

typedef struct {
    int N, C;
    float *x, *g, *dy, *y, *rstd;
} NormCase;

static double norm_loss(void *ctx) {
    NormCase *c = ctx;
    rmsnorm_forward(c->y, c->rstd, c->x, c->g, c->N, c->C);
    return dot_d(c->dy, c->y, (size_t)c->N * c->C);
}

Test(gradcheck, rmsnorm) {
    TestRng rng;
    rng_seed(&rng, 31);
    NormCase c = {.N = 5, .C = 24};
    size_t n = (size_t)c.N * c.C;
    c.x = malloc(n * sizeof(float)), c.dy = malloc(n * sizeof(float));
    c.y = malloc(n * sizeof(float)), c.rstd = malloc(c.N * sizeof(float));
    c.g = malloc(c.C * sizeof(float));
    fill_normal(c.x, n, 2.0f, &rng);
    fill_normal(c.dy, n, 1.0f, &rng);
    for (int i = 0; i < c.C; i++) c.g[i] = 1.0f + 0.2f * rng_normal(&rng);
    norm_loss(&c);
    float *dx = calloc(n, sizeof(float)), *dg = calloc(c.C, sizeof(float));
    rmsnorm_backward(dx, dg, c.dy, c.x, c.g, c.rstd, c.N, c.C);
    double e1 = fd_check("x", norm_loss, &c, c.x, dx, n, &rng);
    double e2 = fd_check("g", norm_loss, &c, c.g, dg, c.C, &rng);
    cr_expect(e1 < FD_TOL, "dx: error %.3e", e1);
    cr_expect(e2 < FD_TOL, "dg: error %.3e", e2);
    free(c.x), free(c.dy), free(c.y), free(c.rstd), free(c.g), free(dx), free(dg);
}
