// test_sample.c: sampling and greedy decoding against oracles that do not
// come from the code under test. sample_token is checked on logits whose
// distributions are worked out by hand (log-probabilities of chosen
// fractions): exactly for greedy, by a chi-square bound over many draws for
// temperature, top-k and top-p, and excluded tokens must never be drawn. A
// whole greedy generation of the engine must equal the argmax of
// model_forward's logits taken step by step, and the engine's logprobs
// (echoed prompt and completion) must equal log-softmax of those logits and
// the training loss of the same text.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "generate/engine.h"
#include "generate/sample.h"
#include "model/model.h"
#include "model/rng.h"

#define DRAWS 200000

// Draws DRAWS tokens and returns the chi-square statistic against want
// (probabilities over V; a zero there must never be drawn).
static double chi_square(const float *logits, int V, SampleParams sp, const double *want, uint64_t seed) {
    long count[16] = {0};
    Rng rng;
    rng_init(&rng, seed);
    for (int i = 0; i < DRAWS; i++) {
        int t = sample_token(logits, V, &sp, &rng);
        cr_assert(t >= 0 && t < V);
        count[t]++;
    }
    double chi = 0;
    for (int v = 0; v < V; v++) {
        if (want[v] == 0) {
            cr_expect_eq(count[v], 0, "token %d has probability 0 but was drawn %ld times", v, count[v]);
            continue;
        }
        double e = want[v] * DRAWS;
        chi += (count[v] - e) * (count[v] - e) / e;
    }
    return chi;
}

// Logits log(p) for p = 0.4, 0.3, 0.15, 0.1, 0.05, shuffled over ids so
// that order by id is not order by probability, plus a constant.
static const int ID[5] = {3, 0, 4, 1, 2};
static const double P[5] = {0.4, 0.3, 0.15, 0.1, 0.05};

static void hand_logits(float *l) {
    for (int k = 0; k < 5; k++) l[ID[k]] = (float)(log(P[k]) + 1.25);
}

Test(sample, greedy_is_exact_argmax_with_ties_to_the_lowest_id) {
    float l[5];
    hand_logits(l);
    SampleParams g = {0.0f, 0, 1.0f};
    Rng rng;
    rng_init(&rng, 1);
    cr_expect_eq(sample_token(l, 5, &g, &rng), 3);
    float tie[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9999f, 2.0f};
    cr_expect_eq(sample_token(tie, 6, &g, &rng), 1);
    float neg[3] = {-5.0f, -3.0f, -4.0f};
    cr_expect_eq(sample_token(neg, 3, &g, &rng), 1);
}

// Critical values of chi-square at p = 1e-4 (df 1, 2, 4): a correct sampler
// exceeds them once in ten thousand seeds; the seeds here are fixed.
#define CHI_DF1 15.14
#define CHI_DF2 18.42
#define CHI_DF4 23.51

Test(sample, temperature_one_follows_the_softmax) {
    float l[5];
    hand_logits(l);
    double want[5];
    for (int k = 0; k < 5; k++) want[ID[k]] = P[k];
    double chi = chi_square(l, 5, (SampleParams){1.0f, 0, 1.0f}, want, 11);
    cr_expect_lt(chi, CHI_DF4, "chi-square %.2f over 4 degrees of freedom", chi);
}

Test(sample, temperature_half_squares_the_probabilities) {
    float l[5];
    hand_logits(l);
    // p^(1/T) with T = 1/2: 0.16, 0.09, 0.0225, 0.01, 0.0025 over 0.285
    double sq[5] = {0.16, 0.09, 0.0225, 0.01, 0.0025}, want[5];
    for (int k = 0; k < 5; k++) want[ID[k]] = sq[k] / 0.285;
    double chi = chi_square(l, 5, (SampleParams){0.5f, 0, 1.0f}, want, 12);
    cr_expect_lt(chi, CHI_DF4, "chi-square %.2f over 4 degrees of freedom", chi);
    // T = 2: sqrt(p), normalised
    double s = 0;
    for (int k = 0; k < 5; k++) s += sqrt(P[k]);
    for (int k = 0; k < 5; k++) want[ID[k]] = sqrt(P[k]) / s;
    chi = chi_square(l, 5, (SampleParams){2.0f, 0, 1.0f}, want, 13);
    cr_expect_lt(chi, CHI_DF4, "T = 2: chi-square %.2f over 4 degrees of freedom", chi);
}

Test(sample, top_k_keeps_the_k_most_likely) {
    float l[5];
    hand_logits(l);
    double want[5] = {0};
    want[ID[0]] = 0.4 / 0.7, want[ID[1]] = 0.3 / 0.7;  // 4/7, 3/7
    double chi = chi_square(l, 5, (SampleParams){1.0f, 2, 1.0f}, want, 14);
    cr_expect_lt(chi, CHI_DF1, "chi-square %.2f over 1 degree of freedom", chi);
    // top-k with temperature: k = 3 at T = 1/2
    double w3[5] = {0};
    w3[ID[0]] = 0.16 / 0.2725, w3[ID[1]] = 0.09 / 0.2725, w3[ID[2]] = 0.0225 / 0.2725;
    chi = chi_square(l, 5, (SampleParams){0.5f, 3, 1.0f}, w3, 15);
    cr_expect_lt(chi, CHI_DF2, "k 3, T 1/2: chi-square %.2f over 2 degrees of freedom", chi);
}

Test(sample, top_p_keeps_the_smallest_set_reaching_p) {
    float l[5];
    hand_logits(l);
    // cumulative 0.4, 0.7, 0.85: p = 0.8 keeps three
    double want[5] = {0};
    want[ID[0]] = 0.4 / 0.85, want[ID[1]] = 0.3 / 0.85, want[ID[2]] = 0.15 / 0.85;
    double chi = chi_square(l, 5, (SampleParams){1.0f, 0, 0.8f}, want, 16);
    cr_expect_lt(chi, CHI_DF2, "chi-square %.2f over 2 degrees of freedom", chi);
    // p = 0.3 keeps only the first: always token ID[0]
    double one[5] = {0};
    one[ID[0]] = 1.0;
    chi_square(l, 5, (SampleParams){1.0f, 0, 0.3f}, one, 17);
    // top-k and top-p together: k = 4 then p = 0.95 of the full distribution keeps 4
    double w4[5] = {0};
    for (int k = 0; k < 4; k++) w4[ID[k]] = P[k] / 0.95;
    chi = chi_square(l, 5, (SampleParams){1.0f, 4, 0.95f}, w4, 18);
    cr_expect_lt(chi, 21.11 /* df 3 */, "chi-square %.2f over 3 degrees of freedom", chi);
}

// ---- the engine against model_forward -----------------------------------------------------

static Model *tiny_model(void) {
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    Model *m = model_new(&c);
    model_init(m, 5);
    return m;
}

typedef struct {
    char text[256];
    int len, nlp, echo_tokens, top_n;
    unsigned char tok[512];
    float lp[512];
    int top_ids[512 * ENGINE_MAX_LOGPROBS];
    float top_lp[512 * ENGINE_MAX_LOGPROBS];
} Got;

static void keep(void *u, const EngineResult *r) {
    Got *g = u;
    cr_assert(r->len < 256 && r->nlp <= 512);
    memcpy(g->text, r->text, (size_t)r->len);
    g->len = r->len, g->nlp = r->nlp, g->echo_tokens = r->echo_tokens, g->top_n = r->top_n;
    if (r->nlp) {
        memcpy(g->tok, r->lp_tokens, (size_t)r->nlp);
        memcpy(g->lp, r->lp, (size_t)r->nlp * sizeof(float));
        memcpy(g->top_ids, r->top_ids, (size_t)r->nlp * ENGINE_MAX_LOGPROBS * sizeof(int));
        memcpy(g->top_lp, r->top_lp, (size_t)r->nlp * ENGINE_MAX_LOGPROBS * sizeof(float));
    }
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static double log_softmax_at(const float *x, int n, int i) {
    double mx = x[argmax(x, n)], s = 0;
    for (int k = 0; k < n; k++) s += exp((double)x[k] - mx);
    return x[i] - mx - log(s);
}

Test(sample, greedy_generation_is_the_argmax_of_model_forward_step_by_step) {
    Model *m = tiny_model();
    const char *prompt = "calcium waves\0 and spikes";  // a NUL inside: the prompt is bytes with a length
    int NP = 25, N = 40;
    Engine *e = engine_new(m, 1, 64);
    Got g = {0};
    EngineRequest r = {.prompt = prompt, .prompt_len = NP, .max_tokens = N, .sp = {0.0f, 0, 1.0f},
                       .logprobs = 1, .top_logprobs = 3, .echo = 1, .on_done = keep, .user = &g};
    char err[200];
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    while (engine_step(e) > 0) {}
    engine_free(e);
    cr_assert_eq(g.len, N);
    cr_assert_eq(g.echo_tokens, NP);
    cr_assert_eq(g.nlp, NP + N);

    // the oracle: model_forward on the prompt, then one token at a time, argmax each
    Model *o = model_share(m);
    model_alloc_acts(o, 1, NP);
    ModelState *st = model_state_new(o, 1);
    int toks[64];
    for (int i = 0; i < NP; i++) toks[i] = (unsigned char)prompt[i];
    model_forward(o, toks, NULL, 1, NP, st);
    int V = m->cfg.V;
    cr_expect(isnan(g.lp[0]), "the first prompt token has no logprob");
    for (int t = 0; t + 1 < NP; t++) {
        double want = log_softmax_at(model_logits(o, 0, t), V, toks[t + 1]);
        cr_expect_eq(g.tok[t + 1], toks[t + 1]);
        cr_expect(fabs(g.lp[t + 1] - want) < 1e-4, "prompt token %d: logprob %g, log-softmax %g", t + 1,
                  g.lp[t + 1], want);
    }
    float logits[256];
    memcpy(logits, model_logits(o, 0, NP - 1), sizeof logits);
    for (int i = 0; i < N; i++) {
        int want = argmax(logits, V);
        cr_assert_eq((unsigned char)g.text[i], want, "token %d: the engine chose %d, argmax is %d", i,
                     (unsigned char)g.text[i], want);
        cr_expect(fabs(g.lp[NP + i] - log_softmax_at(logits, V, want)) < 1e-4, "token %d's logprob", i);
        cr_expect_eq(g.top_ids[(NP + i) * ENGINE_MAX_LOGPROBS], want, "the first alternative is the argmax");
        cr_expect_eq(g.top_lp[(NP + i) * ENGINE_MAX_LOGPROBS], g.lp[NP + i], "greedy: same value as the chosen");
        for (int k = 1; k < 3; k++)
            cr_expect_leq(g.top_lp[(NP + i) * ENGINE_MAX_LOGPROBS + k], g.top_lp[(NP + i) * ENGINE_MAX_LOGPROBS + k - 1]);
        model_forward(o, &want, NULL, 1, 1, st);
        memcpy(logits, model_logits(o, 0, 0), sizeof logits);
    }
    model_state_free(st);

    // the echoed prompt's logprobs are the training loss of the same text (what glia eval reports)
    model_alloc_acts(o, 1, NP - 1);
    ModelState *s2 = model_state_new(o, 1);
    double loss = model_forward(o, toks, toks + 1, 1, NP - 1, s2);
    double sum = 0;
    for (int t = 1; t < NP; t++) sum += g.lp[t];
    cr_expect(fabs(-sum / (NP - 1) - loss) < 1e-4, "mean -logprob %.6f, model loss %.6f", -sum / (NP - 1), loss);
    model_state_free(s2);
    model_free(o);
    model_free(m);
}

Test(sample, max_tokens_zero_scores_the_prompt_only) {
    Model *m = tiny_model();
    Engine *e = engine_new(m, 2, 64);
    Got g = {0};
    EngineRequest r = {.prompt = "abc", .prompt_len = 3, .max_tokens = 0, .sp = {1.0f, 0, 1.0f},
                       .logprobs = 1, .echo = 1, .on_done = keep, .user = &g};
    char err[200];
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    while (engine_step(e) > 0) {}
    engine_free(e);
    cr_expect_eq(g.len, 0);
    cr_expect_eq(g.nlp, 3);
    cr_expect_eq(g.echo_tokens, 3);
    model_free(m);
}
