// test_stats.c: the spike statistics of model_stats (host/model/model.c)
// against a direct count from the saved activations, and on models forced to
// stay silent or to fire at every position, where every figure is known by
// hand; and `glia eval --stats` and `glia bench generate` print those
// figures for such models. (The CUDA backend's figures equal the CPU's:
// test_cuda_model.c.)
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "testutil.h"

static Model *tiny(int astro) {
    ModelConfig c;
    model_config_named("tiny", &c);  // L 2, C 32, Nh 2, F 128, V 256
    c.astro = astro;
    return model_new(&c);
}

static void forward(Model *m, int B, int T, uint64_t seed) {
    int *tok = malloc((size_t)B * T * sizeof(int));
    TestRng r;
    rng_seed(&r, seed);
    test_random_tokens(tok, B * T, m->cfg.V, &r);
    model_alloc_acts(m, B, T);
    model_forward(m, tok, NULL, B, T, NULL);
    free(tok);
}

// Rate, never, always of N neurons over M positions, counted here.
static void count(const float *s, int M, int N, double *rate, double *never, double *always) {
    double total = 0;
    int nv = 0, al = 0;
    for (int n = 0; n < N; n++) {
        int c = 0;
        for (int i = 0; i < M; i++) c += s[(size_t)i * N + n] != 0.0f;
        total += c, nv += c == 0, al += c == M;
    }
    *rate = total / ((double)M * N), *never = (double)nv / N, *always = (double)al / N;
}

// B 3 × T 40 (rates strictly between 0 and 1), and B 1 × T 2, where many
// neurons fire exactly once, between never and always.
static void check_counts(int B, int T) {
    Model *m = tiny(1);
    test_model_randomise(m, 3);
    const int M = B * T, C = m->cfg.C, F = m->cfg.F;
    forward(m, B, T, 4);
    ModelStats st;
    model_stats(m, &st);
    double spikes = 0;
    for (int l = 0; l < m->cfg.L; l++) {
        const LayerActs *a = &m->acts[l];
        double r, nv, al, so = 0, su = 0;
        count(a->amsu.s, M, C, &r, &nv, &al);
        cr_expect(fabs(st.layer[l].amsu_rate - r) < 1e-12 && st.layer[l].amsu_never == nv &&
                      st.layer[l].amsu_always == al,
                  "layer %d AM-SU: %g %g %g, counted %g %g %g", l, st.layer[l].amsu_rate, st.layer[l].amsu_never,
                  st.layer[l].amsu_always, r, nv, al);
        if (M > 2) cr_expect(r > 0.01 && r < 0.99, "layer %d: a degenerate rate %g (the case must exercise counting)", l, r);
        spikes += r * C;
        count(a->r, M, F, &r, &nv, &al);
        cr_expect(fabs(st.layer[l].ffn_rate - r) < 1e-12 && st.layer[l].ffn_never == nv &&
                      st.layer[l].ffn_always == al,
                  "layer %d FFN: %g %g %g, counted %g %g %g", l, st.layer[l].ffn_rate, st.layer[l].ffn_never,
                  st.layer[l].ffn_always, r, nv, al);
        spikes += r * F;
        for (size_t i = 0; i < (size_t)M * C; i++) so += fabs(a->amsu.o[i]), su += fabs(a->amsu.u[i]);
        cr_expect(fabs(st.layer[l].astro_share - so / su) < 1e-9 * (so / su), "layer %d astro share %g, counted %g",
                  l, st.layer[l].astro_share, so / su);
    }
    cr_expect(fabs(st.sops - spikes * C) < 1e-6 * st.sops, "SOPs per token %g, counted %g", st.sops, spikes * C);
    const double Cd = C, Fd = F;
    cr_expect_eq(st.spike_macs, m->cfg.L * (Cd * Cd + Fd * Cd));
    model_stats_free(&st);
    model_free(m);
}

Test(stats, equal_a_direct_count) {
    check_counts(3, 40);
    check_counts(1, 2);
}

// No current reaches any neuron; the astrocyte reads zeros.
static Model *silent(void) {
    Model *m = tiny(1);
    model_init(m, 5);
    for (int l = 0; l < m->cfg.L; l++) {
        LayerParams *p = &m->layers[l];
        float *zero[] = {p->W_I, p->W_K, p->W_V, p->W_Q, p->W_1};
        for (int k = 0; k < 5; k++) memset(zero[k], 0, (size_t)m->cfg.C * (k == 4 ? m->cfg.F : m->cfg.C) * 4);
    }
    return m;
}

// Every embedding row all ones makes every RMSNorm output the gains (1); with
// W_I = W_1 = 2/C every neuron receives a current of 2 > θ at every step, and
// W_O = W_2 = 0 keep the residual stream as it is through the layers.
static Model *firing_everywhere(void) {
    Model *m = tiny(0);
    model_init(m, 7);
    const int C = m->cfg.C, F = m->cfg.F;
    for (size_t i = 0; i < (size_t)m->cfg.Vp * C; i++) m->E[i] = 1.0f;
    for (int l = 0; l < m->cfg.L; l++) {
        LayerParams *p = &m->layers[l];
        for (size_t i = 0; i < (size_t)C * C; i++) p->W_I[i] = 2.0f / C, p->W_O[i] = 0.0f;
        for (size_t i = 0; i < (size_t)F * C; i++) p->W_1[i] = 2.0f / C, p->W_2[i] = 0.0f;
    }
    return m;
}

Test(stats, a_silent_model) {
    Model *m = silent();
    forward(m, 2, 20, 6);
    ModelStats st;
    model_stats(m, &st);
    for (int l = 0; l < m->cfg.L; l++) {
        const LayerStats *s = &st.layer[l];
        cr_expect(s->amsu_rate == 0 && s->ffn_rate == 0, "layer %d fires: %g %g", l, s->amsu_rate, s->ffn_rate);
        cr_expect(s->amsu_never == 1 && s->ffn_never == 1 && s->amsu_always == 0 && s->ffn_always == 0);
        cr_expect(s->astro_share == 0, "no membrane drive: share %g", s->astro_share);
    }
    cr_expect(st.sops == 0, "SOPs %g", st.sops);
    cr_expect(st.energy_spiking_pj == st.other_macs * MODEL_PJ_PER_MAC);
    model_stats_free(&st);
    model_free(m);
}

Test(stats, a_model_firing_everywhere) {
    Model *m = firing_everywhere();
    const int C = m->cfg.C, F = m->cfg.F;
    forward(m, 2, 20, 8);
    ModelStats st;
    model_stats(m, &st);
    for (int l = 0; l < m->cfg.L; l++) {
        const LayerStats *s = &st.layer[l];
        cr_expect(s->amsu_rate == 1 && s->ffn_rate == 1, "layer %d: rates %g %g", l, s->amsu_rate, s->ffn_rate);
        cr_expect(s->amsu_always == 1 && s->ffn_always == 1 && s->amsu_never == 0 && s->ffn_never == 0);
    }
    const double Cd = C, Fd = F;
    cr_expect_eq(st.sops, m->cfg.L * (Cd + Fd) * Cd, "SOPs %g", st.sops);
    cr_expect_eq(st.sops, st.spike_macs, "every input a spike: as many SOPs as dense MACs");
    model_stats_free(&st);
    model_free(m);
}

// ---- the commands' tables -----------------------------------------------------------------

// The number after `label` in out, skipping the table's " | " (NAN if absent).
static double after(const char *out, const char *label) {
    const char *p = strstr(out, label);
    if (!p) return NAN;
    p += strlen(label);
    while (*p == ' ' || *p == '|') p++;
    return strtod(p, NULL);
}

// Per token, by hand (tiny: L 2, C 32, F 128, V 256): SOPs L·(C·rC + F·rF)·C
// for rates rC = rF = rate, dense MACs of W_O and W_2 L·(C + F)·C, other
// MACs L·(k·C² + C·F) + C·V (k 4 with the astrocyte: W_I, W_K, W_V, W_Q; else
// W_I alone); energies in nJ from the stated pJ figures.
static void expect_ops(const char *out, int eval, int astro, double rate, const char *what) {
    const double L = 2, C = 32, F = 128, V = 256;
    const double sops = L * (C + F) * rate * C, dense = L * (C + F) * C, other = L * ((astro ? 4 : 1) * C * C + C * F) + C * V;
    const double e_s = (sops * 0.9 + other * 4.6) * 1e-3, e_d = (dense + other) * 4.6 * 1e-3;
    double got[4];
    if (eval) {
        got[0] = after(out, "per token:"), got[1] = after(out, "(W_O, W_2) against"), got[2] = after(out, "other MACs");
        const char *p = strstr(out, "not a measurement):");
        got[3] = p ? after(p, "nJ per token spiking against") : NAN;
        double spk = p ? after(p, "not a measurement):") : NAN;
        cr_expect(fabs(spk - e_s) < 0.051, "%s: eval's spiking energy %g nJ, by hand %g", what, spk, e_s);
    } else {
        got[0] = after(out, "spike × fan-out)"), got[1] = after(out, "with dense inputs"),
        got[2] = after(out, "(projections, W_1, head)");
        got[3] = after(out, "all MACs × 4.6 pJ");
        double spk = after(out, "other MACs × 4.6 pJ");
        cr_expect(fabs(spk - e_s) < 0.051, "%s: bench's spiking energy %g nJ, by hand %g", what, spk, e_s);
        cr_expect_eq(after(out, "AM-SU neurons (mean over layers)"), rate, "%s", what);
        cr_expect_eq(after(out, "FFN neurons (mean over layers)"), rate, "%s", what);
    }
    cr_expect(got[0] == sops && got[1] == dense && got[2] == other, "%s: SOPs %g, dense %g, other %g; by hand %g %g %g",
              what, got[0], got[1], got[2], sops, dense, other);
    cr_expect(fabs(got[3] - e_d) < 0.051, "%s: dense energy %g nJ, by hand %g", what, got[3], e_d);
    cr_expect(strstr(out, "Horowitz, ISSCC 2014") || strstr(out, "Horowitz ISSCC 2014"), "%s: the source is cited", what);
}

Test(stats, eval_and_bench_print_the_figures_of_silent_and_saturated_models) {
    char dir[256], ckpt[300], corpus[300], out[16384];
    snprintf(dir, sizeof dir, "%s/glia_stats_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(corpus, 3000), 0);
    for (int firing = 0; firing < 2; firing++) {
        Model *m = firing ? firing_everywhere() : silent();
        char err[CKPT_ERR_LEN];
        cr_assert_eq(ckpt_save_model(m, ckpt, 0, err), 0, "%s", err);
        model_free(m);
        const char *what = firing ? "firing everywhere" : "silent";
        int rc = glia_run(out, sizeof out, "eval --ckpt '%s' --data '%s' --out '%s/ev' --batch 2 --seq 16 --batches 2 "
                          "--stats --device cpu --threads 1", ckpt, corpus, dir);
        cr_assert_eq(rc, 0, "%s", out);
        const char *row = firing ? "| 0 | 1.0000 | 0.0000 | 1.0000 | 1.0000 | 0.0000 | 1.0000 | 0.0000 |"
                                 : "| 0 | 0.0000 | 1.0000 | 0.0000 | 0.0000 | 1.0000 | 0.0000 | 0.0000 |";
        cr_expect(strstr(out, row), "%s: eval's layer 0 should read %s:\n%s", what, row, out);
        expect_ops(out, 1, !firing, firing, what);
        rc = glia_run(out, sizeof out, "bench generate --ckpt '%s' --batches 1 --tokens 4 --contexts 10,40 --steps 3 "
                      "--device cpu --threads 1", ckpt);
        cr_assert_eq(rc, 0, "%s", out);
        cr_expect(strstr(out, "mean of the 6 decode steps"), "%s", out);
        expect_ops(out, 0, !firing, firing, what);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
