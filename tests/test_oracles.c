// test_oracles.c: the optimiser's arithmetic against values computed
// independently of glia: AdamW (kernels/cpu/adamw.c), the decay mask
// (host/model.c), the warmup + cosine schedule (train_lr), global-norm
// clipping (grad_norm_sq, AdamW's gradient factor) and gradient accumulation (--accum,
// through the glia binary).
//
// Where the expected numbers come from:
//   AdamW: torch.optim.AdamW (PyTorch 1.13, float64, lr 0.1, betas 0.9/0.95,
//     eps 1e-8, weight_decay 0.1 and 0) stepped three times on the literal
//     parameters and gradients below; the printed parameters and moments are
//     pasted here as literals. The first step is also worked by hand.
//   Decay mask: docs/TRAINING.md's rule, "weight decay on matrices only: E
//     and every W_*" (a_lambda is 2-D but a gate, not a matrix), checked on
//     the tensor table and through a one-step `glia train` run.
//   Schedule: the closed form (linear warmup to lr over `warmup` steps, then
//     min + (lr - min)(1 + cos(pi (s - warmup) / (steps - warmup))) / 2),
//     evaluated in Python and pasted as literals, plus values exact by hand.
//   Clipping: a 3-4-12 vector (norm 13) and a vector of 0.5s spanning several
//     summation blocks, both by hand.
//   --accum: a --batch 4 run against --batch 2 --accum 2 on a generated task
//     (task batches number sequences globally, so both see the same four
//     sequences per step; text batches are drawn per micro-batch and would not).
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/checkpoint.h"
#include "cpu/cpu.h"
#include "testutil.h"
#include "train/train.h"

// float32 against a float64 oracle over three steps of values up to 3:
// a few ulps of 3 (2.4e-7 each). A missing bias correction moves step 1 by
// 0.05, coupled (L2) decay by 0.01.
#define ADAM_TOL 1e-6

// ---- AdamW --------------------------------------------------------------------

enum { NA = 5, NSTEP = 3 };
static const float P0[NA] = {1.0f, -2.0f, 0.5f, 0.0f, 3.0f};
static const float G[NSTEP][NA] = {{0.5f, -0.25f, 1e-3f, 2.0f, 0.0f},
                                   {-0.25f, 0.5f, 1e-3f, -1.0f, 0.0f},
                                   {1.0f, 0.125f, -4e-3f, 0.5f, 0.0f}};
// torch.optim.AdamW, weight_decay 0.1: parameters after steps 1, 2, 3
static const double P_WD[NSTEP][NA] = {
    {0.89000000199999996, -1.8800000039999998, 0.3950009999900001, -0.099999999500000006, 2.9699999999999998},
    {0.85426305785582735, -1.8975373980954524, 0.29105198998010018, -0.12583694414233046, 2.9402999999999997},
    {0.78084593489670662, -1.9202890612926617, 0.32191899018490178, -0.15924673730068728, 2.9108969999999998}};
// weight_decay 0
static const double P_NOWD[NSTEP][NA] = {
    {0.90000000199999997, -1.9000000039999998, 0.40000099999000011, -0.099999999500000006, 3.0},
    {0.87316305787582738, -1.9363373981354524, 0.30000199998000021, -0.12683694413733046, 3.0},
    {0.80828856549526495, -1.9780644353136163, 0.33377952008460282, -0.1615051067371106, 3.0}};
// the moments (the same with and without decay): exp_avg, exp_avg_sq
static const double M[NSTEP][NA] = {
    {0.049999999999999989, -0.024999999999999994, 9.9999999999999978e-05, 0.19999999999999996, 0},
    {0.019999999999999997, 0.027499999999999993, 0.00018999999999999996, 0.079999999999999988, 0},
    {0.11799999999999998, 0.037249999999999991, -0.00022899999999999996, 0.12199999999999998, 0}};
static const double V[NSTEP][NA] = {
    {0.012500000000000011, 0.0031250000000000028, 5.0000000000000044e-08, 0.20000000000000018, 0},
    {0.015000000000000013, 0.015468750000000014, 9.7500000000000086e-08, 0.24000000000000021, 0},
    {0.064250000000000057, 0.015476562500000013, 8.9262500000000083e-07, 0.24050000000000021, 0}};

static void adam_run(float wd, const double want[NSTEP][NA]) {
    float p[NA], m[NA] = {0}, v[NA] = {0};
    memcpy(p, P0, sizeof p);
    for (int s = 0; s < NSTEP; s++) {
        adamw_update(p, G[s], 1.0f, m, v, NA, 0.1f, 0.9f, 0.95f, 1e-8f, wd, s + 1);
        for (int i = 0; i < NA; i++) {
            cr_expect(fabs(p[i] - want[s][i]) <= ADAM_TOL, "wd %g step %d p[%d] = %.9g, torch %.9g", wd, s + 1, i,
                      p[i], want[s][i]);
            cr_expect(fabs(m[i] - M[s][i]) <= ADAM_TOL, "wd %g step %d m[%d] = %.9g, torch %.9g", wd, s + 1, i, m[i],
                      M[s][i]);
            cr_expect(fabs(v[i] - V[s][i]) <= ADAM_TOL * 1e-1, "wd %g step %d v[%d] = %.9g, torch %.9g", wd, s + 1, i,
                      v[i], V[s][i]);
        }
    }
}

Test(oracles, adamw_matches_torch_three_steps) {
    adam_run(0.1f, P_WD);
    adam_run(0.0f, P_NOWD);
}

// Step 1 by hand: m = 0.1 g, v = 0.05 g², bias-corrected m̂ = g, v̂ = g², so
// the Adam part is g / (|g| + eps) = sign(g) (to eps), and decoupled decay
// multiplies p by (1 - lr·wd) whatever the gradient: with lr 0.1, wd 0.1,
//   p = 1,  g = 0.5:  1·0.99 - 0.1 = 0.89
//   p = 3,  g = 0:    3·0.99       = 2.97   (no gradient: decay only)
//   p = 0,  g = 2:    0 - 0.1      = -0.1   (nothing to decay)
Test(oracles, adamw_first_step_by_hand) {
    float p[3] = {1.0f, 3.0f, 0.0f}, g[3] = {0.5f, 0.0f, 2.0f}, m[3] = {0}, v[3] = {0};
    adamw_update(p, g, 1.0f, m, v, 3, 0.1f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
    cr_expect(fabsf(p[0] - 0.89f) <= 1e-6f, "p[0] = %.9g, by hand 0.89", p[0]);
    cr_expect(fabsf(p[1] - 2.97f) <= 1e-6f, "p[1] = %.9g, by hand 2.97", p[1]);
    cr_expect(fabsf(p[2] + 0.1f) <= 1e-6f, "p[2] = %.9g, by hand -0.1", p[2]);
    cr_expect(fabsf(m[0] - 0.05f) <= 1e-7f && fabsf(v[0] - 0.0125f) <= 1e-8f, "m %.9g v %.9g", m[0], v[0]);
}

// ---- the decay mask ---------------------------------------------------------------

// docs/TRAINING.md: decay on E and every W_* (by name), nothing else.
static int spec_decays(const char *name) {
    const char *last = strrchr(name, '.');
    last = last ? last + 1 : name;
    return !strcmp(name, "E") || !strncmp(last, "W_", 2);
}

Test(oracles, decay_mask_is_matrices_only) {
    const char *sizes[] = {"tiny", "small"};
    for (int k = 0; k < 2; k++)
        for (int astro = 0; astro <= 1; astro++) {
            ModelConfig cfg;
            cr_assert_eq(model_config_named(sizes[k], &cfg), 0);
            cfg.astro = astro;
            Model *m = model_new(&cfg);
            int decayed = 0, seen_alambda = 0;
            for (int i = 0; i < m->ntensors; i++) {
                const ParamTensor *t = &m->tensors[i];
                cr_expect_eq(!!t->decay, spec_decays(t->name), "%s astro %d: %s has decay %d", sizes[k], astro,
                             t->name, t->decay);
                decayed += !!t->decay;
                seen_alambda |= strstr(t->name, "a_lambda") != NULL;
            }
            // E, then per layer W_I W_O W_1 W_2 (+ W_K W_V W_Q with the astrocyte)
            cr_expect_eq(decayed, 1 + cfg.L * (astro ? 7 : 4), "%s astro %d", sizes[k], astro);
            cr_expect_eq(seen_alambda, astro, "a_lambda (2-D, no decay) is there with the astrocyte");
            model_free(m);
        }
}

static char dir[256];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_oracles_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
}

static void rm(void) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static Model *load_run(const char *name) {
    char path[400], err[CKPT_ERR_LEN];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, name);
    Model *m = ckpt_load_model(path, NULL, err);
    cr_assert(m, "%s", err);
    return m;
}

#define TASK_FLAGS                                                                                          \
    "train --size tiny --task recall --pairs 2 --threads 1 --quiet --eval-every 0 --sample-tokens 0 --keep 1"

// Through a whole run: one step from a known initialisation with weight
// decay 0.5 and with 0. The gradients are the same (same parameters, same
// batch), so the runs differ only by the decay term, which with the step's
// lr (--warmup 1: the full lr at step 1) is exactly -lr·wd·p0 on E and the
// W_* and nothing at all elsewhere.
Test(oracles, decay_mask_through_a_run, .init = mk, .fini = rm, .timeout = 60) {
    ModelConfig cfg;
    cr_assert_eq(model_config_named("tiny", &cfg), 0);
    Model *init = model_new(&cfg);
    test_model_randomise(init, 5);
    char path[400], out[16384], err[CKPT_ERR_LEN];
    snprintf(path, sizeof path, "%s/init.safetensors", dir);
    cr_assert_eq(ckpt_save_model(init, path, 0, err), 0, "%s", err);
    const double lr = 1e-2, wd = 0.5;
    for (int k = 0; k < 2; k++) {
        int st = glia_run(out, sizeof out,
                          TASK_FLAGS " --batch 4 --steps 1 --warmup 1 --lr %g --weight-decay %g --init '%s' --out '%s/%s'",
                          lr, k ? wd : 0.0, path, dir, k ? "wd" : "nowd");
        cr_assert_eq(st, 0, "%s", out);
    }
    Model *a = load_run("wd"), *b = load_run("nowd");
    for (int i = 0; i < init->ntensors; i++) {
        const ParamTensor *t = &init->tensors[i];
        double worst = 0.0;
        for (size_t j = 0; j < t->numel; j++) {
            double p0 = init->params[t->offset + j];
            double diff = (double)a->params[t->offset + j] - b->params[t->offset + j];
            double want = spec_decays(t->name) ? -lr * wd * p0 : 0.0;
            // the two float32 results round separately: an ulp of |p| each
            double e = fabs(diff - want) - 2.5e-7 * (fabs(p0) + lr);
            if (e > worst) worst = e;
        }
        cr_expect(worst <= 0.0, "%s (decay %d): the wd 0.5 and wd 0 runs differ by other than -lr·wd·p0, by %.3g",
                  t->name, spec_decays(t->name), worst);
    }
    model_free(a);
    model_free(b);
    model_free(init);
}

// ---- the schedule -----------------------------------------------------------------

Test(oracles, lr_schedule_closed_form) {
    struct {
        double lr, min_frac;
        long warmup, steps, s;
        double want;
    } c[] = {
        // warmup: linear from 0, exact
        {3e-3, 0.1, 20, 100, 0, 0.0},
        {3e-3, 0.1, 20, 100, 1, 1.5e-4},
        {3e-3, 0.1, 20, 100, 10, 1.5e-3},
        {3e-3, 0.1, 20, 100, 20, 3e-3},  // warmup end: the peak
        // cosine (Python: min + 0.5 (1 + cos(pi p)) (lr - min))
        {3e-3, 0.1, 20, 100, 21, 0.0029989591989249761},
        {3e-3, 0.1, 20, 100, 60, 1.65e-3},  // half way: (lr + min) / 2, exact
        {3e-3, 0.1, 20, 100, 99, 0.00030104080107502411},
        {3e-3, 0.1, 20, 100, 100, 3e-4},  // last step: min_frac · lr
        // no warmup: the cosine from step 1
        {3e-3, 0.1, 0, 100, 1, 0.0029993338564937378},
        {3e-3, 0.1, 0, 100, 50, 1.65e-3},
        {3e-3, 0.1, 0, 100, 100, 3e-4},
        // min 0, a short run
        {1e-2, 0.0, 5, 10, 7, 0.0065450849718747374},
        {1e-2, 0.0, 5, 10, 10, 0.0},
        // warmup as long as the run: the peak at the last step
        {1e-2, 0.1, 10, 10, 10, 1e-2},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        double got = train_lr(c[i].lr, c[i].min_frac, c[i].warmup, c[i].steps, c[i].s);
        cr_expect(fabs(got - c[i].want) <= 1e-15 + 1e-12 * c[i].want,
                  "lr %g min %g warmup %ld steps %ld: step %ld gives %.17g, closed form %.17g", c[i].lr, c[i].min_frac,
                  c[i].warmup, c[i].steps, c[i].s, got, c[i].want);
    }
}

// ---- clipping -------------------------------------------------------------------------

// The clip model_step applies: when ||g|| > clip, AdamW sees g · clip / ||g||.
// g becomes the gradient AdamW saw: its first moment with β1 = 0 (lr 0).
static double clip(float *g, size_t n, double c) {
    double norm = sqrt(grad_norm_sq(g, n));
    float *p = calloc(n, sizeof(float)), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    cr_assert(p && m && v);
    adamw_update(p, g, c > 0 && norm > c ? (float)(c / norm) : 1.0f, m, v, n, 0.0f, 0.0f, 0.95f, 1e-8f, 0.0f, 1);
    memcpy(g, m, n * sizeof(float));
    free(p), free(m), free(v);
    return norm;
}

Test(oracles, global_norm_clip_by_hand) {
    // 3-4-12: norm 13; clip 1 gives 3/13, 4/13, 12/13 (norm 1); clip 20 leaves it
    float g[3] = {3.0f, -4.0f, 12.0f};
    cr_expect_eq(clip(g, 3, 1.0), 13.0);
    cr_expect(fabsf(g[0] - 3.0f / 13) <= 1e-7f && fabsf(g[1] + 4.0f / 13) <= 1e-7f && fabsf(g[2] - 12.0f / 13) <= 1e-7f,
              "clipped to %.9g %.9g %.9g, by hand 0.230769 -0.307692 0.923077", g[0], g[1], g[2]);
    float h[3] = {3.0f, -4.0f, 12.0f};
    cr_expect_eq(clip(h, 3, 20.0), 13.0);
    cr_expect(h[0] == 3.0f && h[1] == -4.0f && h[2] == 12.0f, "a norm below the clip is left alone");
    float z[2] = {3.0f, 4.0f};
    clip(z, 2, 0.0);  // --clip 0: off
    cr_expect(z[0] == 3.0f && z[1] == 4.0f);

    // 200 003 values of 0.5 (across four blocks of the blocked sum), then one
    // 1000: sum of squares 200003/4 + 10^6 = 1050000.75, exact in double
    size_t n = 200004;
    float *v = malloc(n * sizeof(float));
    cr_assert(v);
    for (size_t i = 0; i < n; i++) v[i] = 0.5f;
    v[n - 1] = 1000.0f;
    cr_expect_eq(grad_norm_sq(v, n), 1050000.75, "sum of squares %.17g, by hand 1050000.75", grad_norm_sq(v, n));
    double norm = clip(v, n, 2.0);
    cr_expect(fabs(norm - sqrt(1050000.75)) <= 1e-9);
    double after = sqrt(grad_norm_sq(v, n));
    cr_expect(fabs(after - 2.0) <= 2.0 * 1e-6, "clipped norm %.9g, want 2", after);
    cr_expect(fabsf(v[0] - (float)(0.5 * 2.0 / sqrt(1050000.75))) <= 1e-9f, "v[0] = %.9g", v[0]);
    free(v);
}

// ---- gradient accumulation --------------------------------------------------------

// --batch 4 --accum 1 against --batch 2 --accum 2 (the same global batch of
// four sequences per step). Each micro-batch's gradient is scaled by
// 1/accum and the loss divided by accum, so the two differ only by the
// order of the additions. Measured (this task, 12 steps, seed 1):
// losses and gradient norms equal to their printed 6 decimals at every step
// (grad norm |Δ| 1e-6 at most, the print rounding), parameters within 1.8e-7 (normwise
// relative, rel_err); no spike flipped. Allowed: print rounding (2e-6) on
// every loss and norm, 1e-5 on the parameters. Dropping the 1/accum scale
// doubles every gradient norm; summing only the last micro-batch changes the
// loss at step 1 by far more than 2e-6.
#define ACCUM_STEPS 12
#define ACCUM_PRINT_TOL 2e-6
#define ACCUM_PARAM_TOL 1e-5

Test(oracles, accum_matches_the_larger_batch, .init = mk, .fini = rm, .timeout = 60) {
    char out[16384];
    const char *runs[2] = {"b4", "b2a2"}, *flags[2] = {"--batch 4 --accum 1", "--batch 2 --accum 2"};
    for (int k = 0; k < 2; k++) {
        int st = glia_run(out, sizeof out, TASK_FLAGS " --steps %d --warmup 3 %s --out '%s/%s'", ACCUM_STEPS,
                          flags[k], dir, runs[k]);
        cr_assert_eq(st, 0, "%s: %s", flags[k], out);
    }
    double la[32], lb[32], na[32], nb[32];
    cr_assert_eq(read_step_metrics(dir, "b4", la, na, 32), ACCUM_STEPS);
    cr_assert_eq(read_step_metrics(dir, "b2a2", lb, nb, 32), ACCUM_STEPS);
    for (int i = 0; i < ACCUM_STEPS; i++) {
        cr_expect(fabs(la[i] - lb[i]) <= ACCUM_PRINT_TOL, "step %d: loss %.6f (accum 1) vs %.6f (accum 2)", i + 1,
                  la[i], lb[i]);
        cr_expect(fabs(na[i] - nb[i]) <= ACCUM_PRINT_TOL, "step %d: grad norm %.6f (accum 1) vs %.6f (accum 2)",
                  i + 1, na[i], nb[i]);
    }
    Model *a = load_run("b4"), *b = load_run("b2a2");
    double e = rel_err(b->params, a->params, a->nparams);
    cr_log_info("accum 2 vs 1: normwise relative difference of the parameters %.3g", e);
    cr_expect(e <= ACCUM_PARAM_TOL, "accum 2 vs 1: parameters differ by %.3g > %.0e", e, ACCUM_PARAM_TOL);
    model_free(a);
    model_free(b);
}
