// test_engine.c: the batched generation engine (host/generate/engine.c): a request's
// completion is bit-identical whether it runs alone or beside others in the
// pool, a reused slot starts from a clean state, stop strings and max_tokens
// are honoured, over-long prompts are refused, the offline JSONL mode
// writes the engine's completions in input order, and the served firing
// rate (engine_spikes) equals a direct count of the same forwards' spikes.
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate/engine.h"
#include "model/model.h"

#define SLOTS 4
#define MAX_PROMPT 400

typedef struct {
    char text[1024];  // from on_done
    int len, tokens;
    char finish[16];
    char streamed[1024];  // on_text pieces, concatenated
    int slen, pieces, done;
} Out;

static int collect_text(void *user, const char *t, int n) {
    Out *o = user;
    cr_assert(o->slen + n < (int)sizeof o->streamed);
    memcpy(o->streamed + o->slen, t, (size_t)n);
    o->slen += n;
    o->pieces++;
    return 0;
}

static void collect_done(void *user, const EngineResult *r) {
    Out *o = user;
    cr_assert(r->len < (int)sizeof o->text);
    memcpy(o->text, r->text, (size_t)r->len);
    o->len = r->len;
    o->tokens = r->completion_tokens;
    snprintf(o->finish, sizeof o->finish, "%s", r->finish_reason);
    o->done++;
}

static Model *tiny_model(void) {
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    Model *m = model_new(&c);
    model_init(m, 5);
    return m;
}

static char long_prompt[MAX_PROMPT + 2];

static EngineRequest request(int i, Out *o) {
    // different prompts (one longer than a prefill chunk), seeds and sampling
    static const char *prompts[] = {"the astrocyte ", "a", "calcium rises and ", "", NULL, "neuron"};
    memset(long_prompt, 'a', 300);
    for (int k = 0; k < 300; k++) long_prompt[k] = (char)('a' + k % 26);
    long_prompt[300] = 0;
    const char *p = prompts[i % 6] ? prompts[i % 6] : long_prompt;
    EngineRequest r = {.prompt = p,
                       .prompt_len = (int)strlen(p),
                       .max_tokens = 8 + 5 * i,
                       .sp = {i % 3 == 0 ? 0.0f : 0.9f, i % 2 ? 20 : 0, i % 4 == 1 ? 0.8f : 1.0f},
                       .seed = 100 + (uint64_t)i,
                       .on_text = collect_text,
                       .on_done = collect_done,
                       .user = o};
    return r;
}

static void run_all(Engine *e) {
    int guard = 0;
    while (engine_step(e) > 0) cr_assert(++guard < 10000, "engine never goes idle");
}

static void run_alone(Model *m, const EngineRequest *r, Out *o) {
    Engine *e = engine_new(m, SLOTS, MAX_PROMPT);
    cr_assert(e);
    char err[200];
    EngineRequest q = *r;
    q.user = o;
    cr_assert_geq(engine_submit(e, &q, err, sizeof err), 0, "%s", err);
    run_all(e);
    engine_free(e);
    cr_assert_eq(o->done, 1);
}

Test(engine, batched_equals_one_at_a_time) {
    Model *m = tiny_model();
    enum { N = 9 };  // more than the slots: some wait, slots are reused
    Out batched[N] = {0}, alone[N] = {0};
    Engine *e = engine_new(m, SLOTS, MAX_PROMPT);
    char err[200];
    for (int i = 0; i < N; i++) {
        EngineRequest r = request(i, &batched[i]);
        cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    }
    run_all(e);
    engine_free(e);
    for (int i = 0; i < N; i++) {
        EngineRequest r = request(i, &alone[i]);
        run_alone(m, &r, &alone[i]);
        cr_assert_eq(batched[i].done, 1);
        cr_expect_eq(batched[i].tokens, alone[i].tokens, "request %d", i);
        cr_expect_eq(batched[i].len, alone[i].len, "request %d", i);
        cr_expect(!memcmp(batched[i].text, alone[i].text, (size_t)alone[i].len),
                  "request %d: batched and alone completions differ", i);
        cr_expect_str_eq(batched[i].finish, "length");
        cr_expect_eq(batched[i].tokens, 8 + 5 * i, "max_tokens is honoured");
        // the streamed pieces add up to the completion
        cr_expect_eq(batched[i].slen, batched[i].len);
        cr_expect(!memcmp(batched[i].streamed, batched[i].text, (size_t)batched[i].len));
    }
    model_free(m);
}

Test(engine, reused_slot_starts_clean) {
    Model *m = tiny_model();
    Out first = {0}, second = {0}, fresh = {0};
    Engine *e = engine_new(m, 1, MAX_PROMPT);  // one slot: the second request reuses it
    char err[200];
    EngineRequest a = request(4, &first), b = request(2, &second);
    cr_assert_geq(engine_submit(e, &a, err, sizeof err), 0);
    cr_assert_geq(engine_submit(e, &b, err, sizeof err), 0);
    run_all(e);
    engine_free(e);
    e = engine_new(m, 1, MAX_PROMPT);
    b.user = &fresh;
    cr_assert_geq(engine_submit(e, &b, err, sizeof err), 0);
    run_all(e);
    engine_free(e);
    cr_assert_eq(second.done, 1);
    cr_assert_eq(second.len, fresh.len);
    cr_expect(!memcmp(second.text, fresh.text, (size_t)fresh.len), "a reused slot remembers its last sequence");
    model_free(m);
}

Test(engine, stop_strings_and_limits) {
    Model *m = tiny_model();
    Out plain = {0};
    EngineRequest r = request(0, &plain);  // greedy
    r.max_tokens = 60;
    run_alone(m, &r, &plain);
    cr_assert_eq(plain.len, 60);
    // a stop string taken from the middle of the completion ends it at its first occurrence
    int k = 20;
    while (k < 57 && !(plain.text[k] && plain.text[k + 1])) k++;  // two bytes without a NUL
    char stop[3] = {plain.text[k], plain.text[k + 1], 0};
    cr_assert(stop[0] && stop[1]);
    char *at = strstr(plain.text, stop);
    cr_assert(at);
    int expect = (int)(at - plain.text);
    Out stopped = {0};
    memcpy(r.stop[0], "\x01never", 6), r.stop_len[0] = 6;
    memcpy(r.stop[1], stop, 2), r.stop_len[1] = 2;
    r.nstop = 2;
    r.user = &stopped;
    run_alone(m, &r, &stopped);
    cr_expect_str_eq(stopped.finish, "stop");
    cr_expect_eq(stopped.len, expect, "stopped at %d, the stop string first ends at %d", stopped.len, expect + 2);
    cr_expect(!memcmp(stopped.text, plain.text, (size_t)expect));
    cr_expect_eq(stopped.slen, stopped.len, "streamed text never includes the stop string");
    cr_expect(!memcmp(stopped.streamed, plain.text, (size_t)expect));

    // limits: prompt over max_prompt, max_tokens < 0, a bad top_p
    Engine *e = engine_new(m, SLOTS, 16);
    char err[200];
    Out o = {0};
    EngineRequest bad = request(1, &o);
    bad.prompt = "seventeen bytes!!";
    bad.prompt_len = 17;
    cr_expect_eq(engine_submit(e, &bad, err, sizeof err), -1);
    cr_expect(strstr(err, "limit"), "%s", err);
    bad.prompt_len = 16;
    bad.max_tokens = -1;
    cr_expect_eq(engine_submit(e, &bad, err, sizeof err), -1);
    bad.max_tokens = 1;
    bad.sp.top_p = 0;
    cr_expect_eq(engine_submit(e, &bad, err, sizeof err), -1);
    bad.sp.top_p = 1;
    cr_expect_geq(engine_submit(e, &bad, err, sizeof err), 0);
    run_all(e);
    cr_expect_eq(o.tokens, 1);
    engine_free(e);
    // a model without the byte vocabulary is refused
    ModelConfig c = m->cfg;
    c.V = 300, c.Vp = model_pad_vocab(300);
    Model *m2 = model_new(&c);
    cr_expect_null(engine_new(m2, 2, 16));
    model_free(m2);
    model_free(m);
}

// Σ of the 0/1 spikes of positions [row0, row0 + rows) over the layers, counted from host memory.
static void count_rows(const Model *m, int row0, int rows, double *amsu, double *ffn) {
    const int C = m->cfg.C, F = m->cfg.F;
    for (int l = 0; l < m->cfg.L; l++)
        for (int i = row0; i < row0 + rows; i++) {
            for (int n = 0; n < C; n++) *amsu += m->acts[l].amsu.s[(size_t)i * C + n] != 0.0f;
            for (int n = 0; n < F; n++) *ffn += m->acts[l].r[(size_t)i * F + n] != 0.0f;
        }
}

// Two greedy requests in a pool of three: A (20 tokens) in slot 0, B (40) in
// slot 1, slot 2 idle. The oracle replays the engine's forwards on its own
// models and state (the prefills, then decode steps whose inputs are the
// completions' bytes, 0 in idle rows) and counts the spikes of every prefill
// position and of the active rows of decode steps 0, 16 and 32: at 32 only
// B's row 1 is active, so a count over the whole pool, or from row 0, fails.
Test(engine, firing_rate_counts_the_active_rows) {
    Model *m = tiny_model();
    enum { S = 3 };
    Engine *e = engine_new(m, S, MAX_PROMPT);
    EngineSpikes none = engine_spikes(e);
    cr_expect(none.positions == 0 && isnan(none.amsu_rate) && isnan(none.ffn_rate), "nothing counted yet");
    const char *prompt[2] = {"the astrocyte ", "calcium rises and falls "};
    const int max_tokens[2] = {20, 40};
    Out out[2] = {0};
    char err[200];
    for (int i = 0; i < 2; i++) {
        EngineRequest r = {.prompt = prompt[i], .prompt_len = (int)strlen(prompt[i]), .max_tokens = max_tokens[i],
                           .sp = {0.0f, 0, 1.0f}, .on_done = collect_done, .user = &out[i]};
        cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    }
    run_all(e);
    EngineSpikes got = engine_spikes(e);
    engine_free(e);
    cr_assert(out[0].tokens == 20 && out[1].tokens == 40 && out[0].len == 20 && out[1].len == 40);

    Model *pre = model_share(m), *dec = model_share(m);
    model_alloc_acts(pre, 1, ENGINE_PREFILL_CHUNK);
    model_alloc_acts(dec, S, 1);
    ModelState *st = model_state_new(dec, S);
    double pos = 0, amsu = 0, ffn = 0;
    int tok[S];
    for (int i = 0; i < 2; i++) {
        const int T = (int)strlen(prompt[i]);
        ModelState *view = model_state_slot(st, i);
        int *ptok = malloc((size_t)T * sizeof(int));
        for (int t = 0; t < T; t++) ptok[t] = (unsigned char)prompt[i][t];
        model_forward(pre, ptok, NULL, 1, T, view);
        free(ptok);
        count_rows(pre, 0, T, &amsu, &ffn);
        pos += T;
        model_state_free(view);
    }
    for (int k = 0; k < 39; k++) {  // the first token comes from the prefill; B's last one ends the run
        tok[0] = k < 19 ? (unsigned char)out[0].text[k] : 0;
        tok[1] = (unsigned char)out[1].text[k];
        tok[2] = 0;
        model_forward(dec, tok, NULL, S, 1, st);
        if (k % ENGINE_SPIKE_EVERY) continue;
        int rows = k < 19 ? 2 : 1, row0 = k < 19 ? 0 : 1;
        count_rows(dec, row0, rows, &amsu, &ffn);
        pos += rows;
    }
    cr_expect_eq(pos, strlen(prompt[0]) + strlen(prompt[1]) + 2 + 2 + 1);
    cr_expect(got.positions == pos && got.amsu == amsu && got.ffn == ffn,
              "engine: %g positions, %g AM-SU and %g FFN spikes; counted %g, %g, %g", got.positions, got.amsu, got.ffn,
              pos, amsu, ffn);
    const ModelConfig *c = &m->cfg;
    cr_expect(fabs(got.amsu_rate - amsu / (pos * c->L * c->C)) < 1e-15 &&
                  fabs(got.ffn_rate - ffn / (pos * c->L * c->F)) < 1e-15,
              "rates %g %g", got.amsu_rate, got.ffn_rate);
    cr_expect(got.amsu_rate > 0.01 && got.amsu_rate < 0.99 && got.ffn_rate > 0.01 && got.ffn_rate < 0.99,
              "degenerate rates %g %g: the case must exercise counting", got.amsu_rate, got.ffn_rate);
    model_state_free(st);
    model_free(pre);
    model_free(dec);
    model_free(m);
}

Test(engine, offline_jsonl_round_trip) {
    Model *m = tiny_model();
    char dir[256], in[300], out[300];
    snprintf(dir, sizeof dir, "%s/glia_engine_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    snprintf(in, sizeof in, "%s/in.jsonl", dir);
    snprintf(out, sizeof out, "%s/out.jsonl", dir);
    FILE *f = fopen(in, "w");
    cr_assert(f);
    fprintf(f, "{\"prompt\": \"the astrocyte \", \"max_tokens\": 12, \"seed\": 100, \"temperature\": 0}\n");
    fprintf(f, "{\"prompt\": \"a\", \"max_tokens\": 9, \"seed\": 3, \"top_k\": 20, \"top_p\": 0.8}\n");
    fprintf(f, "\n{\"prompt\": 5}\n");
    fprintf(f, "not json\n");
    fprintf(f, "{\"prompt\": \"neuron\"}\n");
    fclose(f);
    OfflineOptions o = {.batch = 2, .max_prompt = 64, .max_tokens = 7, .temperature = 0.9f, .top_p = 1.0f,
                        .seed = 11, .quiet = 1};
    cr_assert_eq(generate_offline(m, in, out, &o), 0);
    // what each valid line should produce
    EngineRequest want[3] = {
        {.prompt = "the astrocyte ", .prompt_len = 14, .max_tokens = 12, .sp = {0.0f, 0, 1.0f}, .seed = 100},
        {.prompt = "a", .prompt_len = 1, .max_tokens = 9, .sp = {0.9f, 20, 0.8f}, .seed = 3},
        {.prompt = "neuron", .prompt_len = 6, .max_tokens = 7, .sp = {0.9f, 0, 1.0f}, .seed = 11},
    };
    int want_line[3] = {0, 1, 4};
    f = fopen(out, "r");
    cr_assert(f);
    char line[8192];
    int n = 0, w = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        cr_assert(j, "output line %d is not JSON: %s", n, line);
        cr_expect_eq(cJSON_GetObjectItem(j, "index")->valueint, n);
        if (w < 3 && want_line[w] == n) {
            Out alone = {0};
            want[w].on_done = collect_done;
            // offline engines have o.batch slots: compare with the same pool size
            Engine *e = engine_new(m, o.batch, 64);
            char err[200];
            want[w].user = &alone;
            cr_assert_geq(engine_submit(e, &want[w], err, sizeof err), 0);
            run_all(e);
            engine_free(e);
            char *clean = engine_utf8_clean(alone.text, alone.len, NULL);
            cr_expect_str_eq(cJSON_GetObjectItem(j, "completion")->valuestring, clean, "line %d", n);
            free(clean);
            cr_expect_eq(cJSON_GetObjectItem(j, "tokens")->valueint, want[w].max_tokens);
            cr_expect_str_eq(cJSON_GetObjectItem(j, "finish_reason")->valuestring, "length");
            cr_expect(cJSON_IsNumber(cJSON_GetObjectItem(j, "ttft_ms")));
            cr_expect_str_eq(cJSON_GetObjectItem(j, "prompt")->valuestring, want[w].prompt);
            w++;
        } else {
            cr_expect(cJSON_IsString(cJSON_GetObjectItem(j, "error")), "line %d should be an error", n);
        }
        cJSON_Delete(j);
        n++;
    }
    fclose(f);
    cr_expect_eq(n, 5, "one output line per request line (blank lines skipped)");
    cr_expect_eq(w, 3);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    model_free(m);
}
