// engine.c: see engine.h for the design (slots, continuous batching, why
// prefill is one slot at a time and decode always runs the whole pool).
//
// The engine keeps two Models on the same parameters: `pre` with activations
// for one sequence of ENGINE_PREFILL_CHUNK tokens, `dec` with activations for
// S sequences of one token, so neither shape ever reallocates. Text leaves a
// slot only when it is final: a tail that could still grow into a stop
// string, or an unfinished UTF-8 character, is held back until the next
// token decides it. The offline batch mode (generate_offline) is at the end:
// it is the engine's simplest client.
#include "generate/engine.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate/json.h"
#include "generate/tokenizer.h"
#include "glia/util.h"
#include "model/rng.h"

typedef struct Req {
    long id;
    int *tokens;  // prompt tokens (at least one)
    int ntokens, prompt_bytes;
    int max_tokens;
    SampleParams sp;
    uint64_t seed;
    char stop[ENGINE_MAX_STOPS][ENGINE_MAX_STOP_LEN];
    int stop_len[ENGINE_MAX_STOPS];
    int nstop, logprobs, echo;
    int (*on_text)(void *, const char *, int);
    void (*on_done)(void *, const EngineResult *);
    void *user;
    double t_submit, t_first;
    struct Req *next;
} Req;

typedef struct {
    Req *req;          // NULL: free
    ModelState *view;  // B = 1 view of this slot of the pool's state
    Rng rng;
    char *text;        // completion bytes so far
    int len, cap, emitted, ntok, next_tok;
    // logprobs (Req.logprobs >= 0): nlp entries of lpcap, echoed prompt first
    unsigned char *lp_tok;
    float *lp, *top_lp;
    int *top_ids;
    int nlp, lpcap, echo_tokens;
} Slot;

struct Engine {
    Model *dec, *pre;
    ModelState *state;  // S sequences
    Slot *slots;
    int S, max_prompt, active, queued;
    Req *head, *tail;
    long next_id;
    int *step_tokens;   // (S)
    Tokenizer tok;
    long decode_steps;
    double sp_pos, sp_amsu, sp_ffn;  // engine_spikes
};

double engine_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

Engine *engine_new(Model *m, int slots, int max_prompt) {
    if ((m->cfg.V != 256 && m->cfg.V != BPE_VOCAB) || slots < 1 || max_prompt < 1) return NULL;
    Tokenizer tok;
    char err[800];
    if (tokenizer_open(&m->cfg, &tok, err, sizeof err)) return NULL;
    Engine *e = xcalloc(1, sizeof(Engine));
    e->tok = tok;
    e->S = slots, e->max_prompt = max_prompt;
    e->dec = m;
    model_alloc_acts(m, slots, 1);
    e->pre = model_share(m);
    model_alloc_acts(e->pre, 1, ENGINE_PREFILL_CHUNK);
    e->state = model_state_new(m, slots);
    e->slots = xcalloc(slots, sizeof(Slot));
    for (int s = 0; s < slots; s++) e->slots[s].view = model_state_slot(e->state, s);
    e->step_tokens = xcalloc(slots, sizeof(int));
    return e;
}

static void req_free(Req *r) {
    free(r->tokens);
    free(r);
}

void engine_free(Engine *e) {
    if (!e) return;
    for (int s = 0; s < e->S; s++) {
        if (e->slots[s].req) req_free(e->slots[s].req);
        free(e->slots[s].text);
        free(e->slots[s].lp_tok), free(e->slots[s].lp), free(e->slots[s].top_lp), free(e->slots[s].top_ids);
        model_state_free(e->slots[s].view);
    }
    for (Req *r = e->head, *n; r; r = n) n = r->next, req_free(r);
    free(e->slots);
    free(e->step_tokens);
    model_state_free(e->state);
    model_free(e->pre);
    tokenizer_free(&e->tok);
    free(e);
}

int engine_is_bpe(const Engine *e) { return e->tok.bpe != NULL; }

// The prompt's token ids (malloc'd, *n), or NULL with a reason; -2 in *why
// when it is only too long.
static int *prompt_tokens(const Engine *e, const char *text, int len, const int *ids, int nids, int *n, int *why,
                          char *err, size_t en) {
    *why = -1;
    int *t;
    if (ids) {
        for (int i = 0; i < nids; i++)
            if (ids[i] < 0 || ids[i] >= e->tok.V)
                return snprintf(err, en, "field 'prompt': token id %d is outside the model's vocabulary [0, %d)", ids[i],
                                e->tok.V), NULL;
        t = xmalloc((size_t)(nids > 0 ? nids : 1) * sizeof(int));
        memcpy(t, ids, (size_t)nids * sizeof(int));
        *n = nids;
    } else if (!(t = tokenizer_encode(&e->tok, text, len, n, err, en))) {
        return NULL;
    }
    if (*n > e->max_prompt) {
        if (e->tok.bpe) snprintf(err, en, "prompt is %d tokens; the limit is %d", *n, e->max_prompt);
        else snprintf(err, en, "prompt is %d bytes; the limit is %d", *n, e->max_prompt);
        free(t);
        *why = -2;
        return NULL;
    }
    return t;
}

int engine_resolve(const Engine *e, ParsedRequest *pr, char *err, size_t n) {
    for (int i = 0; i < pr->nprompts; i++) {
        int nt, why;
        const int *ids = pr->prompt_ids ? pr->prompt_ids[i] : NULL;
        int *t = prompt_tokens(e, pr->prompts[i], pr->prompt_lens[i], ids, ids ? pr->prompt_nids[i] : 0, &nt, &why, err, n);
        if (!t) return why;
        if (ids) {  // its text, for echo and the offline output
            size_t len = 0;
            for (int k = 0; k < nt; k++) {
                int l;
                tokenizer_bytes(&e->tok, t[k], &l);
                len += (size_t)l;
            }
            if (len > (1u << 30)) return free(t), snprintf(err, n, "field 'prompt': too long"), -1;
            char *s = xmalloc(len + 1), *p = s;
            for (int k = 0; k < nt; k++) {
                int l;
                const unsigned char *b = tokenizer_bytes(&e->tok, t[k], &l);
                memcpy(p, b, (size_t)l);
                p += l;
            }
            *p = 0;
            free(pr->prompts[i]);
            pr->prompts[i] = s, pr->prompt_lens[i] = (int)len;
        }
        free(t);
    }
    return 0;
}

static void count_spikes(Engine *e, Model *m, int row0, int rows) {
    double a, f;
    model_spike_sums(m, row0, rows, &a, &f);
    e->sp_pos += rows, e->sp_amsu += a, e->sp_ffn += f;
}

EngineSpikes engine_spikes(const Engine *e) {
    const ModelConfig *c = &e->dec->cfg;
    EngineSpikes s = {e->sp_pos, e->sp_amsu, e->sp_ffn, NAN, NAN};
    if (e->sp_pos > 0)
        s.amsu_rate = e->sp_amsu / (e->sp_pos * c->L * c->C), s.ffn_rate = e->sp_ffn / (e->sp_pos * c->L * c->F);
    return s;
}

int engine_active(const Engine *e) { return e->active; }
int engine_queued(const Engine *e) { return e->queued; }
int engine_slots(const Engine *e) { return e->S; }
int engine_max_prompt(const Engine *e) { return e->max_prompt; }

long engine_submit(Engine *e, const EngineRequest *q, char *err, size_t n) {
    if (!q->prompt_ids && (q->prompt_len < 0 || (q->prompt_len > 0 && !q->prompt)))
        return snprintf(err, n, "prompt is missing"), -1;
    if (q->logprobs && e->tok.bpe)
        return snprintf(err, n, "field 'logprobs' is implemented for byte models only"), -1;
    if (q->max_tokens < 0) return snprintf(err, n, "max_tokens must be at least 0"), -1;
    if (q->top_logprobs < 0 || q->top_logprobs > ENGINE_MAX_LOGPROBS)
        return snprintf(err, n, "logprobs must be in [0, %d]", ENGINE_MAX_LOGPROBS), -1;
    if (q->nstop < 0 || q->nstop > ENGINE_MAX_STOPS) return snprintf(err, n, "at most %d stop strings", ENGINE_MAX_STOPS), -1;
    if (!(q->sp.temperature >= 0.0f && q->sp.temperature <= 100.0f))
        return snprintf(err, n, "temperature must be in [0, 100]"), -1;
    if (!(q->sp.top_p > 0.0f && q->sp.top_p <= 1.0f)) return snprintf(err, n, "top_p must be in (0, 1]"), -1;
    if (q->sp.top_k < 0) return snprintf(err, n, "top_k must be >= 0"), -1;
    int nt, why;
    int *toks = prompt_tokens(e, q->prompt, q->prompt_len, q->prompt_ids, q->prompt_nids, &nt, &why, err, n);
    if (!toks) return -1;
    Req *r = xcalloc(1, sizeof(Req));
    for (int i = 0; i < q->nstop; i++) {
        int sl = q->stop_len[i];
        if (sl == 0) continue;
        if (sl < 0 || sl > ENGINE_MAX_STOP_LEN) {
            free(r), free(toks);
            return snprintf(err, n, "stop strings are limited to %d bytes", ENGINE_MAX_STOP_LEN), -1;
        }
        memcpy(r->stop[r->nstop], q->stop[i], (size_t)sl);
        r->stop_len[r->nstop++] = sl;
    }
    r->logprobs = q->logprobs ? q->top_logprobs : -1, r->echo = q->echo && q->logprobs;
    r->id = e->next_id++;
    r->prompt_bytes = nt;  // the prompt's tokens (usage), the bytes of a byte model's
    r->ntokens = nt > 0 ? nt : 1;
    r->tokens = toks;
    if (nt == 0) r->tokens[0] = e->tok.bpe ? BPE_EOT : '\n';
    r->max_tokens = q->max_tokens, r->sp = q->sp, r->seed = q->seed;
    r->on_text = q->on_text, r->on_done = q->on_done, r->user = q->user;
    r->t_submit = engine_now();
    if (e->tail)
        e->tail->next = r;
    else
        e->head = r;
    e->tail = r;
    e->queued++;
    return r->id;
}

// Bytes at the end of text[0..len) that must wait: the longest tail that is
// a proper prefix of a stop string, or an unfinished UTF-8 character.
static int hold_back(const Slot *sl, int len) {
    const Req *r = sl->req;
    int hold = 0;
    for (int i = 0; i < r->nstop; i++) {
        int k = r->stop_len[i] - 1;
        if (k > len) k = len;
        for (; k > hold; k--)
            if (!memcmp(sl->text + len - k, r->stop[i], k)) {
                hold = k;
                break;
            }
    }
    int end = len - hold;
    for (int back = 1; back <= 3 && back <= end; back++) {
        unsigned char b = (unsigned char)sl->text[end - back];
        if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        int need = b >= 0xF0 && b < 0xF8 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
        if (need > back) hold += back;  // lead byte whose character is not complete yet
        break;
    }
    return hold;
}

static void slot_finish(Engine *e, Slot *sl, const char *reason) {
    Req *r = sl->req;
    if (strcmp(reason, "cancelled") && sl->len > sl->emitted && r->on_text)
        r->on_text(r->user, sl->text + sl->emitted, sl->len - sl->emitted);
    double now = engine_now();
    if (!sl->text) {  // max_tokens 0: no text was ever made
        sl->cap = 256;
        sl->text = xmalloc((size_t)sl->cap + 1);
        sl->text[0] = 0;
    }
    if (r->t_first == 0) r->t_first = now;
    EngineResult res = {sl->text, sl->len, r->prompt_bytes, sl->ntok, reason,
                        r->t_first - r->t_submit, now - r->t_submit,
                        r->logprobs >= 0 ? sl->nlp : 0, sl->echo_tokens, r->logprobs >= 0 ? r->logprobs : 0,
                        sl->lp_tok, sl->lp, sl->top_ids, sl->top_lp};
    if (r->on_done) r->on_done(r->user, &res);
    req_free(r);
    sl->req = NULL;
    e->active--;
}

// Records token tok's log-probability under logits (V = 256: byte models only, temperature
// 1) and the top alternatives, as the slot's next logprobs entry.
static void record_lp(Slot *sl, const float *logits, int tok, int top_n, int none) {
    if (sl->nlp == sl->lpcap) {
        sl->lpcap = sl->lpcap ? 2 * sl->lpcap : 256;
        sl->lp_tok = realloc(sl->lp_tok, (size_t)sl->lpcap);
        sl->lp = realloc(sl->lp, (size_t)sl->lpcap * sizeof(float));
        sl->top_lp = realloc(sl->top_lp, (size_t)sl->lpcap * ENGINE_MAX_LOGPROBS * sizeof(float));
        sl->top_ids = realloc(sl->top_ids, (size_t)sl->lpcap * ENGINE_MAX_LOGPROBS * sizeof(int));
        if (!sl->lp_tok || !sl->lp || !sl->top_lp || !sl->top_ids) fatal("engine: out of memory for logprobs");
    }
    int i = sl->nlp++;
    sl->lp_tok[i] = (unsigned char)tok;
    if (none) {  // the first prompt token: nothing predicts it
        sl->lp[i] = NAN;
        for (int k = 0; k < top_n; k++) sl->top_ids[i * ENGINE_MAX_LOGPROBS + k] = -1;
        return;
    }
    float mx = logits[0];
    for (int v = 1; v < 256; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = 0;
    for (int v = 0; v < 256; v++) sum += exp((double)logits[v] - mx);
    double lse = mx + log(sum);
    sl->lp[i] = (float)(logits[tok] - lse);
    for (int k = 0; k < top_n; k++) {  // k-th most likely, ties by id
        int best = -1;
        for (int v = 0; v < 256; v++) {
            int taken = 0;
            for (int q = 0; q < k; q++) taken |= sl->top_ids[i * ENGINE_MAX_LOGPROBS + q] == v;
            if (!taken && (best < 0 || logits[v] > logits[best])) best = v;
        }
        sl->top_ids[i * ENGINE_MAX_LOGPROBS + k] = best;
        sl->top_lp[i * ENGINE_MAX_LOGPROBS + k] = (float)(logits[best] - lse);
    }
}

// A new token for the slot: record it, then stop or pass on the final text.
// Returns 1 when the request finished.
static int slot_take(Engine *e, Slot *sl, int tok, const float *logits) {
    Req *r = sl->req;
    if (r->logprobs >= 0) record_lp(sl, logits, tok, r->logprobs, 0);
    if (sl->ntok == 0) r->t_first = engine_now();
    int blen;
    const unsigned char *bytes = tokenizer_bytes(&e->tok, tok, &blen);
    if (!bytes) blen = 0;  // (never: the engine's vocabularies have text for every id)
    while (sl->len + blen > sl->cap) {
        sl->cap = sl->cap ? 2 * sl->cap : 256;
        char *t = realloc(sl->text, (size_t)sl->cap + 1);
        if (!t) fatal("engine: out of memory for %d bytes of text", sl->cap);
        sl->text = t;
    }
    int before = sl->len;
    if (blen) memcpy(sl->text + sl->len, bytes, (size_t)blen);
    sl->len += blen;
    sl->text[sl->len] = 0;
    sl->ntok++;
    sl->next_tok = tok;
    // a stop string that ends inside this token's bytes: the earliest one
    int cut = -1;
    for (int i = 0; i < r->nstop; i++) {
        int k = r->stop_len[i];
        for (int end = before + 1 > k ? before + 1 : k; end <= sl->len; end++)
            if (!memcmp(sl->text + end - k, r->stop[i], k)) {
                if (cut < 0 || end - k < cut) cut = end - k;
                break;
            }
    }
    if (cut >= 0) {
        if (r->logprobs >= 0) sl->nlp -= sl->len - cut;  // one entry per byte of the completion (byte models only)
        sl->len = cut;
        sl->text[sl->len] = 0;
        if (sl->emitted > sl->len) sl->emitted = sl->len;  // (never: the tail was held)
        slot_finish(e, sl, "stop");
        return 1;
    }
    if (sl->ntok >= r->max_tokens) {
        slot_finish(e, sl, "length");
        return 1;
    }
    int upto = sl->len - hold_back(sl, sl->len);
    if (upto > sl->emitted && r->on_text) {
        int cancel = r->on_text(r->user, sl->text + sl->emitted, upto - sl->emitted);
        sl->emitted = upto;
        if (cancel) {
            slot_finish(e, sl, "cancelled");
            return 1;
        }
    }
    return 0;
}

// Moves the next queued request into free slot s: clean state, prefill in
// fixed chunks through the slot's B = 1 view, first token.
static void slot_admit(Engine *e, int s) {
    Slot *sl = &e->slots[s];
    Req *r = e->head;
    e->head = r->next;
    if (!e->head) e->tail = NULL;
    r->next = NULL;
    e->queued--;
    e->active++;
    sl->req = r;
    sl->len = sl->emitted = sl->ntok = sl->nlp = sl->echo_tokens = 0;
    rng_init(&sl->rng, r->seed);
    model_state_reset_slot(e->state, s);
    if (r->echo && r->prompt_bytes > 0) record_lp(sl, NULL, r->tokens[0], r->logprobs, 1);
    int T = 0;
    for (int off = 0; off < r->ntokens; off += T) {
        T = r->ntokens - off < ENGINE_PREFILL_CHUNK ? r->ntokens - off : ENGINE_PREFILL_CHUNK;
        model_forward(e->pre, r->tokens + off, NULL, 1, T, sl->view);
        count_spikes(e, e->pre, 0, T);
        if (r->echo && r->prompt_bytes > 0)  // position t predicts prompt token off + t + 1
            for (int t = 0; t < T && off + t + 1 < r->ntokens; t++)
                record_lp(sl, model_logits(e->pre, 0, t), r->tokens[off + t + 1], r->logprobs, 0);
    }
    sl->echo_tokens = sl->nlp;
    if (r->max_tokens == 0) {
        sl->len = 0;
        slot_finish(e, sl, "length");
        return;
    }
    const float *logits = model_logits(e->pre, 0, T - 1);
    int tok = sample_token(logits, e->pre->cfg.V, &r->sp, &sl->rng);
    slot_take(e, sl, tok, logits);
}

int engine_cancel(Engine *e, long id) {
    for (int s = 0; s < e->S; s++)
        if (e->slots[s].req && e->slots[s].req->id == id) {
            slot_finish(e, &e->slots[s], "cancelled");
            return 0;
        }
    for (Req **pp = &e->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        Req *r = *pp;
        if (r->id != id) continue;
        *pp = r->next;
        if (e->tail == r) e->tail = prev;
        e->queued--;
        double now = engine_now();
        EngineResult res = {"", 0, r->prompt_bytes, 0, "cancelled", 0, now - r->t_submit, 0, 0, 0,
                            NULL, NULL, NULL, NULL};
        if (r->on_done) r->on_done(r->user, &res);
        req_free(r);
        return 0;
    }
    return -1;
}

int engine_step(Engine *e) {
    for (int s = 0; s < e->S && e->head; s++)
        while (!e->slots[s].req && e->head) slot_admit(e, s);  // a request may finish at once
    if (e->active > 0) {
        for (int s = 0; s < e->S; s++) e->step_tokens[s] = e->slots[s].req ? e->slots[s].next_tok : 0;
        model_forward(e->dec, e->step_tokens, NULL, e->S, 1, e->state);
        if (e->decode_steps++ % ENGINE_SPIKE_EVERY == 0)  // each run of adjacent active slots
            for (int s = 0, n; s < e->S; s += n + 1) {
                for (n = 0; s + n < e->S && e->slots[s + n].req; n++) {}
                if (n) count_spikes(e, e->dec, s, n);
            }
        for (int s = 0; s < e->S; s++) {
            Slot *sl = &e->slots[s];
            if (!sl->req) continue;
            const float *logits = model_logits(e->dec, s, 0);
            int tok = sample_token(logits, e->dec->cfg.V, &sl->req->sp, &sl->rng);
            slot_take(e, sl, tok, logits);
        }
    }
    return e->active + e->queued;
}

char *engine_utf8_clean(const char *s, int len, int *out_len) {
    char *o = xmalloc((size_t)len * 3 + 1), *p = o;
    const unsigned char *u = (const unsigned char *)s;
    for (int i = 0; i < len;) {
        unsigned char b = u[i];
        int need = b < 0x80 ? 1 : b >= 0xC2 && b < 0xE0 ? 2 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xF0 && b < 0xF5 ? 4 : 0;
        int ok = need > 0 && i + need <= len;
        for (int k = 1; ok && k < need; k++) ok = (u[i + k] & 0xC0) == 0x80;
        if (ok && need == 3) {  // no overlongs, no surrogates
            unsigned cp = (b & 0x0Fu) << 12 | (u[i + 1] & 0x3Fu) << 6;
            ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
        }
        if (ok && need == 4) {
            unsigned cp = (b & 0x07u) << 18 | (u[i + 1] & 0x3Fu) << 12;
            ok = cp >= 0x10000 && cp <= 0x10FFFF;
        }
        if (ok) {
            memcpy(p, u + i, need);
            p += need, i += need;
        } else {
            memcpy(p, "\xEF\xBF\xBD", 3);
            p += 3, i++;
        }
    }
    *p = 0;
    if (out_len) *out_len = (int)(p - o);
    return o;
}

// ---- offline batch mode ---------------------------------------------------------------

typedef struct {
    char *prompt;      // NULL after an error
    char *completion;
    int plen, len, tokens;
    const char *finish;
    double ttft_s;
    char error[200];
    int done;
} OfflineItem;

static void offline_done(void *user, const EngineResult *r) {
    OfflineItem *it = user;
    it->completion = xmalloc((size_t)r->len + 1);
    memcpy(it->completion, r->text, (size_t)r->len);
    it->completion[r->len] = 0;
    it->len = r->len;
    it->tokens = r->completion_tokens;
    it->finish = r->finish_reason;
    it->ttft_s = r->ttft_s;
    it->done = 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, int n, double p) {
    if (n == 0) return 0.0;
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static void progress(int done, int total, long tokens, double t0) {
    int width = 30, fill = total ? done * width / total : width;
    double dt = engine_now() - t0;
    fprintf(stderr, "\r[%.*s%.*s] %d/%d requests  %ld tokens  %.1f tok/s", fill,
            "##############################", width - fill, "------------------------------",
            done, total, tokens, dt > 0 ? tokens / dt : 0.0);
    fflush(stderr);
}

int generate_offline(Model *m, const char *in_path, const char *out_path, const OfflineOptions *o) {
    FILE *in = fopen(in_path, "r");
    if (!in) {
        fprintf(stderr, "glia generate: cannot read %s\n", in_path);
        return 2;
    }
    // The output first: a path that cannot be written fails now, not after the batch.
    FILE *out = fopen(out_path, "w");
    if (!out) {
        fprintf(stderr, "glia generate: cannot write %s\n", out_path);
        fclose(in);
        return 1;
    }
    Engine *e = engine_new(m, o->batch, o->max_prompt);
    if (!e) {
        fclose(in);
        fclose(out);
        char terr[800];
        Tokenizer t;
        if (tokenizer_open(&m->cfg, &t, terr, sizeof terr) == 0)
            snprintf(terr, sizeof terr, "the model's vocabulary (%d) is neither bytes (256) nor GPT-2 BPE (%d)", m->cfg.V,
                     BPE_VOCAB), tokenizer_free(&t);
        fprintf(stderr, "glia generate: %s\n", terr);
        return 2;
    }
    int n = 0, cap = 0;
    OfflineItem *items = NULL;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, in)) > 0) {
        int blank = 1;
        for (ssize_t i = 0; i < got; i++) blank &= line[i] == ' ' || line[i] == '\t' || line[i] == '\n' || line[i] == '\r';
        if (blank) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            OfflineItem *t = realloc(items, (size_t)cap * sizeof(OfflineItem));
            if (!t) fatal("generate: out of memory for %d requests", cap);
            items = t;
        }
        OfflineItem *it = &items[n++];
        memset(it, 0, sizeof *it);
        char jerr[160];
        Json *j = json_parse(line, (size_t)got, jerr, sizeof jerr);
        ParsedRequest pr = {.base = {.max_tokens = o->max_tokens,
                                     .sp = {o->temperature, o->top_k, o->top_p},
                                     .seed = o->seed,
                                     .on_done = offline_done,
                                     .user = it}};
        if (!j) {
            snprintf(it->error, sizeof it->error, "line %d: %s", n, jerr);
        } else if (engine_parse_request(j, &pr, it->error, sizeof it->error) == 0) {
            if (pr.nprompts != 1 || pr.n != 1 || pr.stream || pr.logprobs >= 0 || pr.echo)
                snprintf(it->error, sizeof it->error,
                         "one prompt and one completion per line (no n, stream, logprobs or echo)");
            else if (engine_resolve(e, &pr, it->error, sizeof it->error) == 0 &&
                     engine_submit(e, &pr.base, it->error, sizeof it->error) >= 0) {
                it->prompt = pr.prompts[0], it->plen = pr.prompt_lens[0];
                pr.prompts[0] = NULL;
            }
            engine_parsed_free(&pr);
        }
        json_free(j);
    }
    free(line);
    fclose(in);
    if (n == 0) {
        fprintf(stderr, "glia generate: %s holds no requests\n", in_path);
        engine_free(e);
        free(items);
        fclose(out);
        return 2;
    }
    double t0 = engine_now(), last = 0;
    long tokens = 0;
    while (engine_step(e) > 0) {
        tokens += engine_active(e);
        if (!o->quiet && engine_now() - last > 0.25) {
            int d = 0;
            for (int i = 0; i < n; i++) d += items[i].done || !items[i].prompt;
            progress(d, n, tokens, t0);
            last = engine_now();
        }
    }
    double dt = engine_now() - t0;
    engine_free(e);
    tokens = 0;
    double *ttft = xmalloc((size_t)n * sizeof(double));
    int nt = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        OfflineItem *it = &items[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "index", i);
        if (!it->prompt) {
            cJSON_AddStringToObject(j, "error", it->error);
        } else {
            char *p = json_quote(it->prompt, it->plen), *c = json_quote(it->completion, it->len);
            cJSON_AddRawToObject(j, "prompt", p);
            cJSON_AddRawToObject(j, "completion", c);
            free(p), free(c);
            cJSON_AddNumberToObject(j, "tokens", it->tokens);
            cJSON_AddNumberToObject(j, "ttft_ms", it->ttft_s * 1e3);
            cJSON_AddStringToObject(j, "finish_reason", it->finish);
            tokens += it->tokens;
            ttft[nt++] = it->ttft_s * 1e3;
        }
        char *s = cJSON_PrintUnformatted(j);
        if (fprintf(out, "%s\n", s) < 0) rc = 1;
        free(s);
        cJSON_Delete(j);
        free(it->prompt);
        free(it->completion);
    }
    if (fclose(out)) rc = 1;
    if (rc) fprintf(stderr, "glia generate: cannot write %s\n", out_path);
    if (!o->quiet) {
        progress(n, n, tokens, t0);
        fputc('\n', stderr);
    }
    qsort(ttft, nt, sizeof(double), cmp_double);
    printf("glia generate: %d requests (%d failed), %ld tokens in %.2f s: %.1f tokens/s; "
           "time to first token p50 %.1f ms, p99 %.1f ms; batch %d\n",
           n, n - nt, tokens, dt, dt > 0 ? tokens / dt : 0.0, percentile(ttft, nt, 0.5),
           percentile(ttft, nt, 0.99), o->batch);
    free(ttft);
    free(items);
    return rc;
}

// ---- request JSON (shared with serve) ---------------------------------------------------

// A number field in [lo, hi]; integer fields refuse a fractional value.
static int num_field(const Json *j, const char *name, double lo, double hi, int integer, double *out, char *err,
                     size_t n) {
    const Json *f = json_get(j, name);
    if (!f || f->type == JSON_NULL) return 0;
    if (f->type != JSON_NUMBER)
        return snprintf(err, n, "field '%s' must be %s", name, integer ? "an integer" : "a number"), -1;
    if (integer && f->number != floor(f->number))
        return snprintf(err, n, "field '%s' must be an integer, not %g", name, f->number), -1;
    if (!(f->number >= lo && f->number <= hi))
        return snprintf(err, n, "field '%s' is out of range [%g, %g]", name, lo, hi), -1;
    *out = f->number;
    return 0;
}

static int bool_field(const Json *j, const char *name, int *out, char *err, size_t n) {
    const Json *f = json_get(j, name);
    if (!f || f->type == JSON_NULL) return 0;
    if (f->type != JSON_BOOL) return snprintf(err, n, "field '%s' must be a boolean", name), -1;
    *out = f->boolean;
    return 0;
}

// One prompt: a string, or an array of token ids (checked against the
// model's vocabulary by engine_resolve / engine_submit).
static int one_prompt(const Json *p, char **out, int *len, int **ids, int *nids, char *err, size_t n) {
    if (p->type == JSON_STRING) {
        *out = xmalloc((size_t)p->len + 1);
        memcpy(*out, p->str, (size_t)p->len + 1);
        *len = p->len;
        return 0;
    }
    int k = json_count(p), i = 0;
    *ids = xmalloc((size_t)(k > 0 ? k : 1) * sizeof(int));
    for (const Json *t = p->child; t; t = t->next, i++) {
        if (t->type != JSON_NUMBER || t->number != floor(t->number) || t->number < 0 || t->number > 1 << 30) {
            free(*ids), *ids = NULL;
            return snprintf(err, n, "field 'prompt': token ids must be non-negative integers"), -1;
        }
        (*ids)[i] = (int)t->number;
    }
    *nids = k;
    *out = xmalloc(1);
    (*out)[0] = 0;
    *len = 0;
    return 0;
}

void engine_parsed_free(ParsedRequest *pr) {
    for (int i = 0; i < pr->nprompts; i++) free(pr->prompts[i]), free(pr->prompt_ids[i]);
    free(pr->prompts);
    free(pr->prompt_lens);
    free(pr->prompt_ids);
    free(pr->prompt_nids);
    pr->prompts = NULL, pr->prompt_lens = NULL, pr->prompt_ids = NULL, pr->prompt_nids = NULL, pr->nprompts = 0;
}

static int parse_prompts(const Json *p, ParsedRequest *pr, char *err, size_t n) {
    if (!p || p->type == JSON_NULL) return snprintf(err, n, "field 'prompt' is required"), -1;
    const char *shape = "field 'prompt' must be a string, an array of token ids, or an array of either";
    int many = p->type == JSON_ARRAY && p->child && (p->child->type == JSON_STRING || p->child->type == JSON_ARRAY);
    if (p->type != JSON_STRING && p->type != JSON_ARRAY) return snprintf(err, n, "%s", shape), -1;
    int k = many ? json_count(p) : 1;
    if (k > 1024) return snprintf(err, n, "field 'prompt' holds more than 1024 prompts"), -1;
    pr->prompts = xcalloc((size_t)k, sizeof(char *));
    pr->prompt_lens = xcalloc((size_t)k, sizeof(int));
    pr->prompt_ids = xcalloc((size_t)k, sizeof(int *));
    pr->prompt_nids = xcalloc((size_t)k, sizeof(int));
    const Json *one = many ? p->child : p;
    for (int i = 0; i < k; i++, one = many ? one->next : NULL) {
        if (one->type != JSON_STRING && one->type != JSON_ARRAY) return engine_parsed_free(pr), snprintf(err, n, "%s", shape), -1;
        if (one_prompt(one, &pr->prompts[i], &pr->prompt_lens[i], &pr->prompt_ids[i], &pr->prompt_nids[i], err, n))
            return engine_parsed_free(pr), -1;
        pr->nprompts++;
    }
    return 0;
}

int engine_parse_request(const Json *j, ParsedRequest *pr, char *err, size_t n) {
    if (!j || j->type != JSON_OBJECT) return snprintf(err, n, "the request must be a JSON object"), -1;
    EngineRequest *r = &pr->base;
    double v;
#define NUM(name, lo, hi, integer, lvalue, type)                                  \
    v = (double)(lvalue);                                                         \
    if (num_field(j, name, lo, hi, integer, &v, err, n)) return -1;               \
    lvalue = (type)v;
    NUM("max_tokens", 0, 1 << 30, 1, r->max_tokens, int)
    NUM("temperature", 0, 100, 0, r->sp.temperature, float)
    NUM("top_p", 1e-6, 1, 0, r->sp.top_p, float)
    NUM("top_k", 0, 1 << 30, 1, r->sp.top_k, int)
    NUM("seed", 0, 9007199254740992.0, 1, r->seed, uint64_t)
    if (pr->n < 1) pr->n = 1;
    NUM("n", 1, 128, 1, pr->n, int)
    const Json *lp = json_get(j, "logprobs");
    pr->logprobs = -1;
    if (lp && lp->type == JSON_BOOL)  // the chat API's spelling; here true means the chosen token's only
        return snprintf(err, n, "field 'logprobs' must be an integer in [0, %d] (the completions API's form)",
                        ENGINE_MAX_LOGPROBS), -1;
    NUM("logprobs", 0, ENGINE_MAX_LOGPROBS, 1, pr->logprobs, int)
#undef NUM
    r->logprobs = pr->logprobs >= 0, r->top_logprobs = pr->logprobs >= 0 ? pr->logprobs : 0;
    if (bool_field(j, "stream", &pr->stream, err, n) || bool_field(j, "echo", &pr->echo, err, n)) return -1;
    r->echo = pr->echo;
    double bo = 1;
    if (num_field(j, "best_of", 1, 128, 1, &bo, err, n)) return -1;
    if (bo != 1) return snprintf(err, n, "field 'best_of' is not implemented (only 1)"), -1;
    static const char *zero[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        double z = 0;
        if (num_field(j, zero[i], -2, 2, 0, &z, err, n)) return -1;
        if (z != 0) return snprintf(err, n, "field '%s' is not implemented (only 0)", zero[i]), -1;
    }
    const Json *sx = json_get(j, "suffix");
    if (sx && sx->type != JSON_NULL && !(sx->type == JSON_STRING && sx->len == 0))
        return snprintf(err, n, "field 'suffix' is not implemented"), -1;
    const Json *lb = json_get(j, "logit_bias");
    if (lb && lb->type != JSON_NULL && !(lb->type == JSON_OBJECT && !lb->child))
        return snprintf(err, n, "field 'logit_bias' is not implemented"), -1;
    static const char *strs[] = {"model", "user"};
    for (int i = 0; i < 2; i++) {
        const Json *f = json_get(j, strs[i]);
        if (f && f->type != JSON_NULL && f->type != JSON_STRING) return snprintf(err, n, "field '%s' must be a string", strs[i]), -1;
    }
    const Json *s = json_get(j, "stop");
    if (s && s->type != JSON_NULL) {
        const char *shape = "field 'stop' must be a string or an array of strings";
        if (s->type != JSON_STRING && s->type != JSON_ARRAY) return snprintf(err, n, "%s", shape), -1;
        if (s->type == JSON_ARRAY && json_count(s) > ENGINE_MAX_STOPS)
            return snprintf(err, n, "field 'stop' holds more than %d strings", ENGINE_MAX_STOPS), -1;
        r->nstop = 0;
        for (const Json *x = s->type == JSON_STRING ? s : s->child; x; x = s->type == JSON_STRING ? NULL : x->next) {
            if (x->type != JSON_STRING) return snprintf(err, n, "%s", shape), -1;
            if (x->len > ENGINE_MAX_STOP_LEN)
                return snprintf(err, n, "field 'stop': strings are limited to %d bytes", ENGINE_MAX_STOP_LEN), -1;
            memcpy(r->stop[r->nstop], x->str, (size_t)x->len);
            r->stop_len[r->nstop++] = x->len;
        }
    }
    if (parse_prompts(json_get(j, "prompt"), pr, err, n)) return -1;
    r->prompt = pr->prompts[0], r->prompt_len = pr->prompt_lens[0];
    r->prompt_ids = pr->prompt_ids[0], r->prompt_nids = pr->prompt_nids[0];
    return 0;
}
