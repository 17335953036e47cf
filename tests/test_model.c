// test_model.c: the whole AstroSNN language model on the CPU backend:
// gradients against finite differences (the smooth test mode of cpu.h, for
// every parameter tensor), streaming generation against a full forward,
// checkpoint round trips and bad checkpoints.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/model.h"
#include "testutil.h"

// ---- gradient check --------------------------------------------------------------

#define FD_H 2e-2f
#define FD_TOL 5e-3  // observed ≤ 1.6e-3 (fp32 forward, Richardson-extrapolated differences)
#define FD_SAMPLES 24

static void check_model_grads(ModelConfig cfg, int B, int T, uint64_t seed) {
    Model *m = model_new(&cfg);
    test_model_randomise(m, seed);
    test_alloc_train(m);
    model_alloc_acts(m, B, T);
    TestRng r;
    rng_seed(&r, seed + 1);
    int *tok = malloc(B * T * sizeof(int)), *tgt = malloc(B * T * sizeof(int));
    test_random_tokens(tok, B * T, cfg.V, &r);
    test_random_tokens(tgt, B * T, cfg.V, &r);
    tgt[1] = -1;  // an unscored position

    m->test_mode = 1;  // smooth spikes; record the reset factors
    model_forward(m, tok, tgt, B, T, NULL);
    m->test_mode = 2;  // hold them
    model_forward(m, tok, tgt, B, T, NULL);
    model_zero_grad(m);
    model_backward(m, tok, 1.0f);

    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        const float *g = m->grads + t->offset;
        size_t n = !strcmp(t->name, "E") ? (size_t)cfg.V * cfg.C : t->numel;  // padded rows: no use
        size_t ns = n < FD_SAMPLES ? n : FD_SAMPLES;
        double fd[FD_SAMPLES], an[FD_SAMPLES], gmax = 0.0;
        for (size_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(g[k]));
        cr_assert(gmax > 1e-5, "%s: gradient is zero: the case does not exercise it", t->name);
        for (size_t s = 0; s < ns; s++) {
            size_t k = n <= FD_SAMPLES ? s : (size_t)(rng_uniform(&r) * n) % n;
            // Richardson: (4·D(h/2) − D(h)) / 3 cancels the h² error of
            // central differences D(h), so h can be large enough that fp32
            // rounding in the loss does not dominate
            float keep = p[k];
            double d[2];
            for (int j = 0; j < 2; j++) {
                float h = j ? FD_H / 2 : FD_H;
                p[k] = keep + h;
                double lp = model_forward(m, tok, tgt, B, T, NULL);
                p[k] = keep - h;
                double lm = model_forward(m, tok, tgt, B, T, NULL);
                p[k] = keep;
                d[j] = (lp - lm) / (2.0 * (double)h);
            }
            fd[s] = (4.0 * d[1] - d[0]) / 3.0;
            an[s] = g[k];
        }
        double err = rel_err_d(fd, an, ns);
        cr_log_info("model gradcheck %-22s err=%.2e", t->name, err);
        cr_expect(err < FD_TOL, "%s: finite differences disagree, error %.3e", t->name, err);
    }
    if (cfg.Vp > cfg.V) {  // padded embedding rows get no gradient
        const float *gE = m->grads + model_find(m, "E")->offset;
        for (size_t k = (size_t)cfg.V * cfg.C; k < (size_t)cfg.Vp * cfg.C; k++)
            cr_assert_eq(gE[k], 0.0f, "padded row of E got a gradient");
    }
    free(tok), free(tgt);
    model_free(m);
}

Test(model, gradcheck_astro_on) {
    ModelConfig c = {.V = 40, .Vp = 64, .L = 2, .C = 16, .Nh = 2, .F = 24, .astro = 1};
    check_model_grads(c, 2, 7, 5);
}

Test(model, gradcheck_astro_off) {
    ModelConfig c = {.V = 40, .Vp = 64, .L = 2, .C = 16, .Nh = 2, .F = 24, .astro = 0};
    check_model_grads(c, 2, 7, 6);
}

// ---- padded vocabulary ---------------------------------------------------------

// E's pad rows [V, Vp) start at 0 and must stay exactly 0 through AdamW with
// weight decay and clipping: the cross-entropy gives the pad columns of the
// logits no gradient, so the rows get none, their moments stay 0 and the
// decayed update of a zero weight is 0. Every logits row starts 256 bytes
// into the activations' allocation (B·T odd: no other buffer rounds it).
Test(model, padded_rows_of_E_stay_zero_in_training) {
    ModelConfig c = {.V = 40, .Vp = 64, .L = 1, .C = 16, .Nh = 2, .F = 24, .astro = 1};
    const int B = 3, T = 9;
    Model *m = model_new(&c);
    test_model_randomise(m, 41);
    test_alloc_train(m);
    model_alloc_acts(m, B, T);
    cr_assert_eq((size_t)(m->logits - m->acts_mem) * sizeof(float) % 256, 0, "logits rows are not 256-byte aligned");
    const size_t e0 = model_find(m, "E")->offset, lo = e0 + (size_t)c.V * c.C, hi = e0 + (size_t)c.Vp * c.C;
    float *E0 = malloc((size_t)c.V * c.C * sizeof(float));
    memcpy(E0, m->params + e0, (size_t)c.V * c.C * sizeof(float));
    TestRng r;
    rng_seed(&r, 42);
    int tok[B * T], tgt[B * T];
    for (int step = 1; step <= 4; step++) {
        test_random_tokens(tok, B * T, c.V, &r);
        test_random_tokens(tgt, B * T, c.V, &r);
        tgt[0] = c.V - 1;  // the real column next to the pad
        model_zero_grad(m);
        model_forward(m, tok, tgt, B, T, NULL);
        model_backward(m, tok, 1.0f);
        for (size_t k = lo; k < hi; k++)
            cr_assert_eq(m->grads[k], 0.0f, "step %d: pad entry %zu of E got gradient %g", step, k - e0, m->grads[k]);
        model_step(m, 1e-2f, 0.1f, 1.0f, step);
    }
    const float *m1, *m2;
    model_moments_host(m, &m1, &m2);
    for (size_t k = lo; k < hi; k++) {
        cr_assert_eq(m->params[k], 0.0f, "pad entry %zu of E is %g after 4 steps", k - e0, m->params[k]);
        cr_assert(m1[k] == 0.0f && m2[k] == 0.0f, "pad entry %zu of E has moments %g, %g", k - e0, m1[k], m2[k]);
    }
    cr_assert(rel_err(m->params + e0, E0, (size_t)c.V * c.C) > 1e-4, "the real rows of E did not train");
    free(E0);
    model_free(m);
}

// ---- streaming generation ------------------------------------------------------

// Running a sequence in pieces with the state carried must give the logits
// of one forward over the whole sequence.
Test(model, streaming_matches_full_forward) {
    ModelConfig c = {.V = 50, .Vp = 64, .L = 2, .C = 32, .Nh = 2, .F = 64, .astro = 1};
    Model *m = model_new(&c);
    test_model_randomise(m, 9);
    int T = 21, split = 13;
    TestRng r;
    rng_seed(&r, 10);
    int tok[21];
    test_random_tokens(tok, T, c.V, &r);
    model_alloc_acts(m, 1, T);
    model_forward(m, tok, NULL, 1, T, NULL);
    float *full = malloc((size_t)T * c.V * sizeof(float));
    test_logits(m, 1, T, full);

    ModelState *st = model_state_new(m, 1);
    float *piece = malloc((size_t)T * c.V * sizeof(float));
    model_forward(m, tok, NULL, 1, split, st);
    test_logits(m, 1, split, piece);
    for (int t = split; t < T; t++) {
        model_forward(m, &tok[t], NULL, 1, 1, st);
        memcpy(piece + (size_t)t * c.V, model_logits(m, 0, 0), c.V * sizeof(float));
    }
    double err = rel_err(piece, full, (size_t)T * c.V);
    cr_expect(err < 1e-5, "streamed logits differ from the full forward: %.3e", err);

    // a reset state starts the sequence over
    model_state_reset(st);
    model_forward(m, tok, NULL, 1, split, st);
    test_logits(m, 1, split, piece);
    err = rel_err(piece, full, (size_t)split * c.V);
    cr_expect(err < 1e-5, "after a reset: %.3e", err);
    free(full), free(piece);
    model_state_free(st);
    model_free(m);
}

// ---- checkpoints ------------------------------------------------------------------

static char dir[256];
static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_model_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
}
static void rm(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(model, checkpoint_round_trip_gives_identical_logits, .init = mk, .fini = rm) {
    ModelConfig c = {.V = 70, .Vp = 128, .L = 2, .C = 16, .Nh = 4, .F = 48, .astro = 1};
    Model *m = model_new(&c);
    test_model_randomise(m, 3);
    char path[512], err[CKPT_ERR_LEN];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(ckpt_save_model(m, path, 42, err), 0, "%s", err);
    long step = 0;
    Model *m2 = ckpt_load_model(path, &step, err);
    cr_assert(m2, "%s", err);
    cr_expect_eq(step, 42);
    cr_assert_eq(memcmp(&m2->cfg, &m->cfg, sizeof c), 0);
    cr_assert_eq(memcmp(m2->params, m->params, m->nparams * sizeof(float)), 0);
    int tok[10] = {1, 5, 69, 0, 3, 3, 3, 8, 13, 21};
    model_alloc_acts(m, 2, 5);
    model_alloc_acts(m2, 2, 5);
    model_forward(m, tok, NULL, 2, 5, NULL);
    model_forward(m2, tok, NULL, 2, 5, NULL);
    float a[10 * 70], b[10 * 70];
    test_logits(m, 2, 5, a);
    test_logits(m2, 2, 5, b);
    cr_expect_eq(memcmp(a, b, sizeof a), 0, "logits differ");
    model_free(m);
    model_free(m2);
}

static void expect_load_error(const char *path, const char *what) {
    char err[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(path, NULL, err);
    cr_expect_null(m, "loading %s should fail", path);
    cr_expect(strstr(err, what), "error should mention '%s': %s", what, err);
    cr_expect(strstr(err, path) || strstr(err, strrchr(path, '/') + 1), "error names the file: %s", err);
    model_free(m);
}

Test(model, bad_checkpoints, .init = mk, .fini = rm) {
    ModelConfig c = {.V = 64, .Vp = 64, .L = 1, .C = 8, .Nh = 2, .F = 16, .astro = 1};
    Model *m = model_new(&c);
    model_init(m, 1);
    char good[512], bad[512], cmd[1200], err[CKPT_ERR_LEN];
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    cr_assert_eq(ckpt_save_model(m, good, 1, err), 0, "%s", err);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);

    snprintf(cmd, sizeof cmd, "head -c 300 '%s' > '%s'", good, bad);  // truncated
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "bad.safetensors");
    expect_load_error(dir, "glia_model_");                   // a directory
    snprintf(bad, sizeof bad, "%s/none.safetensors", dir);   // not found
    expect_load_error(bad, "none.safetensors");
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    snprintf(cmd, sizeof cmd, ": > '%s'", bad);              // empty
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "bad.safetensors");

    // a safetensors file that is not a glia model, and a newer model version
    snprintf(cmd, sizeof cmd, "sed 's/glia-model/glia-other/' '%s' > '%s'", good, bad);
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "not a glia model");
    snprintf(cmd, sizeof cmd, "sed 's/\"model_version\":\"1\"/\"model_version\":\"7\"/' '%s' > '%s'", good, bad);
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "model_version 7");
    // a config that does not match the tensors: a narrower FFN (the shapes
    // disagree), and a wider one (the file cannot hold it: refused before
    // anything of that size is allocated)
    snprintf(cmd, sizeof cmd, "sed 's/\"F\":\"16\"/\"F\":\"12\"/' '%s' > '%s'", good, bad);
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "W_1");
    snprintf(cmd, sizeof cmd, "sed 's/\"F\":\"16\"/\"F\":\"32\"/' '%s' > '%s'", good, bad);
    cr_assert_eq(system(cmd), 0);
    expect_load_error(bad, "its configuration needs");
    model_free(m);
}

// The size check before loading a file relies on this count matching the
// parameter table exactly.
Test(model, config_nparams_matches_the_table) {
    const char *names[] = {"tiny", "small"};
    for (int i = 0; i < 2; i++)
        for (int astro = 0; astro < 2; astro++) {
            ModelConfig c;
            cr_assert_eq(model_config_named(names[i], &c), 0);
            c.astro = astro;
            Model *m = model_new(&c);
            cr_expect_eq((size_t)model_config_nparams(&c), m->nparams, "%s astro %d", names[i], astro);
            model_free(m);
        }
}
