// test_bpe_model.c: a GPT-2 BPE model (V = 50257) speaking text: the model
// file records its tokenizer; the engine encodes text and id prompts alike,
// decodes completions to the same bytes as sample.c's token-by-token loop
// (the oracle: its ids, decoded by the ranks table), cuts at stop strings
// that start inside a token, never streams half a UTF-8 character, and
// refuses invalid UTF-8, out-of-range ids and logprobs; `glia generate`
// writes text and fails in one line without the ranks file; `glia export`
// writes the ranks file beside config.json. A random model
// with L 1, C 32 keeps it fast; every test skips without the ranks file.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "generate/engine.h"
#include "generate/json.h"
#include "generate/sample.h"
#include "generate/tokenizer.h"
#include "model/checkpoint.h"
#include "testutil.h"

typedef struct {
    char text[8192], streamed[8192];
    int len, slen, prompt_tokens, tokens, done;
    int cuts[1024], ncuts;  // where on_text pieces ended
    char finish[16];
} Out;

static int on_text(void *user, const char *t, int n) {
    Out *o = user;
    cr_assert(o->slen + n < (int)sizeof o->streamed);
    memcpy(o->streamed + o->slen, t, (size_t)n);
    o->slen += n;
    if (o->ncuts < 1024) o->cuts[o->ncuts++] = o->slen;
    return 0;
}

static void on_done(void *user, const EngineResult *r) {
    Out *o = user;
    cr_assert(r->len < (int)sizeof o->text);
    memcpy(o->text, r->text, (size_t)r->len);
    o->len = r->len, o->tokens = r->completion_tokens, o->prompt_tokens = r->prompt_tokens;
    snprintf(o->finish, sizeof o->finish, "%s", r->finish_reason);
    o->done++;
}

static Model *bpe_model(Tokenizer *tk) {
    ModelConfig c = {.V = BPE_VOCAB, .Vp = model_pad_vocab(BPE_VOCAB), .L = 1, .C = 32, .Nh = 2, .F = 64, .astro = 1};
    char err[800];
    if (tokenizer_open(&c, tk, err, sizeof err)) cr_skip_test("%s", err);
    Model *m = model_new(&c);
    test_model_randomise(m, 7);
    return m;
}

static void run(Engine *e) {
    for (int guard = 0; engine_step(e) > 0;) cr_assert(++guard < 10000);
}

// The oracle: sample.c's loop, greedy, from the prompt's ids; its tokens' bytes.
static int oracle_text(Model *m, const Tokenizer *tk, const int *ids, int n, int ntok, char *out) {
    int *gen = malloc((size_t)ntok * sizeof(int));
    model_alloc_acts(m, 1, n);
    ModelState *st = model_state_new(m, 1);
    Rng rng;
    rng_init(&rng, 1);
    SampleParams sp = {0.0f, 0, 1.0f};
    generate_tokens(m, st, ids, n, ntok, &sp, &rng, NULL, gen, tk);
    model_state_free(st);
    int len = 0;
    for (int i = 0; i < ntok; i++) {
        int l;
        const unsigned char *b = tokenizer_bytes(tk, gen[i], &l);
        memcpy(out + len, b, (size_t)l);
        len += l;
    }
    free(gen);
    return len;
}

Test(bpe_model, text_and_ids_prompts_decode_as_the_oracle) {
    Tokenizer tk;
    Model *m = bpe_model(&tk);
    const char *prompt = "And God said, Let there be light: and there was light.";
    char err[300];
    int nids;
    int *ids = tokenizer_encode(&tk, prompt, (int)strlen(prompt), &nids, err, sizeof err);
    cr_assert(ids && nids > 5 && nids < 20, "%d tokens", nids);
    char want[8192];
    int wlen = oracle_text(m, &tk, ids, nids, 40, want);

    Engine *e = engine_new(m, 2, 64);
    cr_assert(e);
    Out a = {0}, b = {0};
    EngineRequest r = {.prompt = prompt, .prompt_len = (int)strlen(prompt), .max_tokens = 40, .sp = {0.0f, 0, 1.0f},
                       .on_text = on_text, .on_done = on_done, .user = &a};
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    // the same prompt as OpenAI's array of token ids, through the request parser
    char body[600];
    int k = snprintf(body, sizeof body, "{\"prompt\":[");
    for (int i = 0; i < nids; i++) k += snprintf(body + k, sizeof body - k, "%s%d", i ? "," : "", ids[i]);
    snprintf(body + k, sizeof body - k, "],\"max_tokens\":40,\"temperature\":0}");
    Json *j = json_parse(body, strlen(body), err, sizeof err);
    ParsedRequest pr = {.base = {.sp = {1.0f, 0, 1.0f}}};
    cr_assert(j && engine_parse_request(j, &pr, err, sizeof err) == 0, "%s", err);
    cr_assert_eq(engine_resolve(e, &pr, err, sizeof err), 0, "%s", err);
    cr_assert(pr.prompt_lens[0] == (int)strlen(prompt) && !memcmp(pr.prompts[0], prompt, strlen(prompt)),
              "an id prompt's text (for echo) is its decoded bytes");
    pr.base.on_text = on_text, pr.base.on_done = on_done, pr.base.user = &b;
    cr_assert_geq(engine_submit(e, &pr.base, err, sizeof err), 0, "%s", err);
    engine_parsed_free(&pr);
    json_free(j);
    run(e);
    Out *outs[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        Out *o = outs[i];
        cr_assert_eq(o->done, 1);
        cr_assert_eq(o->prompt_tokens, nids, "usage counts the prompt's tokens");
        cr_assert_eq(o->tokens, 40);
        cr_assert(o->len == wlen && !memcmp(o->text, want, (size_t)wlen), "prompt %d: the completion is not the oracle's", i);
        cr_assert(o->slen == o->len && !memcmp(o->streamed, o->text, (size_t)o->len), "streamed pieces != the text");
        // no piece ends inside a valid UTF-8 character
        for (int c = 0; c + 1 < o->ncuts; c++) {
            int at = o->cuts[c];
            for (int s = at - 1; s >= 0 && s >= at - 3; s--) {
                unsigned char u = (unsigned char)o->text[s];
                if ((u & 0xC0) == 0x80) continue;
                int need = u >= 0xF0 ? 4 : u >= 0xE0 ? 3 : u >= 0xC0 ? 2 : 1;
                cr_assert(!(s + need > at && s + need <= o->len && utf8_first_invalid(o->text + s, need) < 0),
                          "a piece ends at %d, inside the character at %d", at, s);
                break;
            }
        }
    }
    // a stop string that starts inside a token: the text ends where it starts
    Out c = {0};
    int at = wlen / 2;
    while (at < wlen && ((unsigned char)want[at] & 0xC0) == 0x80) at++;
    EngineRequest rs = r;
    rs.user = &c, rs.nstop = 1, rs.stop_len[0] = 3;
    memcpy(rs.stop[0], want + at, 3);
    cr_assert_geq(engine_submit(e, &rs, err, sizeof err), 0, "%s", err);
    run(e);
    const char *first = want;
    while (memcmp(first, want + at, 3)) first++;  // its first occurrence (at the latest at `at`)
    cr_assert_str_eq(c.finish, "stop");
    cr_assert(c.len == (int)(first - want) && !memcmp(c.text, want, (size_t)c.len), "stop: %d bytes, expected %d",
              c.len, (int)(first - want));
    // refused: invalid UTF-8, an id past the vocabulary, logprobs
    EngineRequest bad = r;
    bad.prompt = "ab\xff", bad.prompt_len = 3;
    cr_assert_lt(engine_submit(e, &bad, err, sizeof err), 0);
    cr_assert(strstr(err, "not valid UTF-8") && strstr(err, "offset 2"), "%s", err);
    int big = BPE_VOCAB;
    bad = r, bad.prompt_ids = &big, bad.prompt_nids = 1;
    cr_assert_lt(engine_submit(e, &bad, err, sizeof err), 0);
    cr_assert(strstr(err, "50257"), "%s", err);
    bad = r, bad.logprobs = 1;
    cr_assert_lt(engine_submit(e, &bad, err, sizeof err), 0);
    engine_free(e);
    free(ids);
    tokenizer_free(&tk);
    model_free(m);
}

Test(bpe_model, file_records_the_tokenizer_and_generate_speaks_text) {
    Tokenizer tk;
    Model *m = bpe_model(&tk);
    tokenizer_free(&tk);
    char dir[] = "/tmp/glia_bpem_XXXXXX", path[300], err[CKPT_ERR_LEN], out[8192];
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    cr_assert_eq(ckpt_save_model(m, path, 0, err), 0, "%s", err);
    char serr[ST_ERR_LEN];
    StFile *f = st_load(path, serr);
    cr_assert(f && st_meta(f, "tokenizer") && !strcmp(st_meta(f, "tokenizer"), "gpt2"));
    st_free(f);
    int rc = glia_run(out, sizeof out, "generate --ckpt %s --prompt 'And God said' --tokens 12 --device cpu", path);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(!strncmp(out, "And God said", 12) && strlen(out) > 14, "%s", out);
    rc = glia_run(out, sizeof out, "generate --ckpt %s --prompt \"$(printf 'x\\377')\" --device cpu", path);
    cr_assert(rc == 2 && strstr(out, "not valid UTF-8") && strchr(out, '\n') == out + strlen(out) - 1, "%d: %s", rc, out);
    // the model's tokenizer missing: one line naming what provides it
    char cmd[700];
    snprintf(cmd, sizeof cmd, "GLIA_DATA=%s/none '%s' generate --ckpt %s --prompt x --device cpu > %s/o 2>&1", dir,
             GLIA_BIN, path, dir);
    int st = system(cmd);
    snprintf(cmd, sizeof cmd, "%s/o", dir);
    FILE *o = fopen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, o);
    out[n] = 0;
    fclose(o);
    cr_assert(WEXITSTATUS(st) == 2 && strstr(out, "fetch_gpt2_ranks.sh") && strchr(out, '\n') == out + n - 1, "%s", out);
    // export writes the tokenizer next to config.json: the ranks file, byte for byte
    rc = glia_run(out, sizeof out, "export --ckpt %s --out %s/exp", path, dir);
    cr_assert_eq(rc, 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s/exp/gpt2.tiktoken", dir);
    o = fopen(cmd, "rb");
    cr_assert(o, "export wrote no %s", cmd);
    static unsigned char ranks[1 << 20];
    n = fread(ranks, 1, sizeof ranks, o);
    fclose(o);
    char hex[65];
    bpe_sha256_hex(ranks, n, hex);
    cr_assert_str_eq(hex, BPE_RANKS_SHA256);
    snprintf(cmd, sizeof cmd, "grep -q '\"tokenizer\":.*\"gpt2\"' %s/exp/config.json", dir);
    cr_assert_eq(system(cmd), 0, "config.json names the tokenizer");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    model_free(m);
}

Test(bpe_model, train_refuses_byte_text_for_a_bpe_model) {
    // the default corpus or a text file would become byte tokens: one line naming the command that helps
    char out[4096], dir[] = "/tmp/glia_bpe_train_XXXXXX", cmd[300];
    cr_assert(mkdtemp(dir));
    int rc = glia_run(out, sizeof out, "train --size 124m --steps 1 --out %s/run --device cpu", dir);
    cr_assert(rc == 2 && strstr(out, "glia prepare --tokenizer gpt2") && strchr(out, '\n') == out + strlen(out) - 1,
              "%d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "%s/run/model.safetensors", dir);
    cr_assert_neq(access(cmd, F_OK), 0);
    // and eval of a BPE model file on the default corpus
    Tokenizer tk;
    Model *m = bpe_model(&tk);
    tokenizer_free(&tk);
    char err[CKPT_ERR_LEN];
    snprintf(cmd, sizeof cmd, "%s/m.safetensors", dir);
    cr_assert_eq(ckpt_save_model(m, cmd, 0, err), 0, "%s", err);
    model_free(m);
    rc = glia_run(out, sizeof out, "eval --ckpt %s --device cpu", cmd);
    cr_assert(rc == 2 && strstr(out, "glia prepare --tokenizer gpt2") && strchr(out, '\n') == out + strlen(out) - 1,
              "%d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
