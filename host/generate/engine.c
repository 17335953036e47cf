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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "glia/util.h"
#include "model/rng.h"

typedef struct Req {
    long id;
    int *tokens;  // prompt tokens (at least one)
    int ntokens, prompt_bytes;
    int max_tokens;
    SampleParams sp;
    uint64_t seed;
    char stop[ENGINE_MAX_STOPS][ENGINE_MAX_STOP_LEN + 1];
    int nstop;
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
} Slot;

struct Engine {
    Model *dec, *pre;
    ModelState *state;  // S sequences
    Slot *slots;
    int S, max_prompt, active, queued;
    Req *head, *tail;
    long next_id;
    int *step_tokens;   // (S)
};

double engine_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

Engine *engine_new(Model *m, int slots, int max_prompt) {
    if (m->cfg.V != 256 || slots < 1 || max_prompt < 1) return NULL;
    Engine *e = xcalloc(1, sizeof(Engine));
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
        model_state_free(e->slots[s].view);
    }
    for (Req *r = e->head, *n; r; r = n) n = r->next, req_free(r);
    free(e->slots);
    free(e->step_tokens);
    model_state_free(e->state);
    model_free(e->pre);
    free(e);
}

int engine_active(const Engine *e) { return e->active; }
int engine_queued(const Engine *e) { return e->queued; }
int engine_slots(const Engine *e) { return e->S; }
int engine_max_prompt(const Engine *e) { return e->max_prompt; }

long engine_submit(Engine *e, const EngineRequest *q, char *err, size_t n) {
    if (q->prompt_len < 0 || (q->prompt_len > 0 && !q->prompt))
        return snprintf(err, n, "prompt is missing"), -1;
    if (q->prompt_len > e->max_prompt)
        return snprintf(err, n, "prompt is %d bytes; the limit is %d", q->prompt_len, e->max_prompt), -1;
    if (q->max_tokens < 1) return snprintf(err, n, "max_tokens must be at least 1"), -1;
    if (!(q->sp.temperature >= 0.0f && q->sp.temperature <= 100.0f))
        return snprintf(err, n, "temperature must be in [0, 100]"), -1;
    if (!(q->sp.top_p > 0.0f && q->sp.top_p <= 1.0f)) return snprintf(err, n, "top_p must be in (0, 1]"), -1;
    if (q->sp.top_k < 0) return snprintf(err, n, "top_k must be >= 0"), -1;
    Req *r = xcalloc(1, sizeof(Req));
    for (int i = 0; i < ENGINE_MAX_STOPS && q->stop[i]; i++) {
        size_t sl = strlen(q->stop[i]);
        if (sl == 0) continue;
        if (sl > ENGINE_MAX_STOP_LEN) {
            free(r);
            return snprintf(err, n, "stop strings are limited to %d bytes", ENGINE_MAX_STOP_LEN), -1;
        }
        memcpy(r->stop[r->nstop++], q->stop[i], sl + 1);
    }
    r->id = e->next_id++;
    r->prompt_bytes = q->prompt_len;
    r->ntokens = q->prompt_len > 0 ? q->prompt_len : 1;
    r->tokens = xmalloc((size_t)r->ntokens * sizeof(int));
    if (q->prompt_len == 0) r->tokens[0] = '\n';
    for (int i = 0; i < q->prompt_len; i++) r->tokens[i] = (unsigned char)q->prompt[i];
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
        int k = (int)strlen(r->stop[i]) - 1;
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
    EngineResult res = {sl->text, sl->len, r->prompt_bytes, sl->ntok, reason,
                        r->t_first - r->t_submit, now - r->t_submit};
    if (r->on_done) r->on_done(r->user, &res);
    req_free(r);
    sl->req = NULL;
    e->active--;
}

// A new token for the slot: record it, then stop or pass on the final text.
// Returns 1 when the request finished.
static int slot_take(Engine *e, Slot *sl, int tok) {
    Req *r = sl->req;
    if (sl->ntok == 0) r->t_first = engine_now();
    if (sl->len + 1 > sl->cap) {
        sl->cap = sl->cap ? 2 * sl->cap : 256;
        char *t = realloc(sl->text, (size_t)sl->cap + 1);
        if (!t) fatal("engine: out of memory for %d bytes of text", sl->cap);
        sl->text = t;
    }
    sl->text[sl->len++] = (char)tok;
    sl->text[sl->len] = 0;
    sl->ntok++;
    sl->next_tok = tok;
    for (int i = 0; i < r->nstop; i++) {
        int k = (int)strlen(r->stop[i]);
        if (sl->len >= k && !memcmp(sl->text + sl->len - k, r->stop[i], k)) {
            sl->len -= k;
            sl->text[sl->len] = 0;
            if (sl->emitted > sl->len) sl->emitted = sl->len;  // (never: the tail was held)
            slot_finish(e, sl, "stop");
            return 1;
        }
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
    sl->len = sl->emitted = sl->ntok = 0;
    rng_init(&sl->rng, r->seed);
    model_state_reset_slot(e->state, s);
    int T = 0;
    for (int off = 0; off < r->ntokens; off += T) {
        T = r->ntokens - off < ENGINE_PREFILL_CHUNK ? r->ntokens - off : ENGINE_PREFILL_CHUNK;
        model_forward(e->pre, r->tokens + off, NULL, 1, T, sl->view);
    }
    int tok = sample_token(model_logits(e->pre, 0, T - 1), e->pre->cfg.V, &r->sp, &sl->rng);
    slot_take(e, sl, tok);
}

int engine_step(Engine *e) {
    for (int s = 0; s < e->S && e->head; s++)
        while (!e->slots[s].req && e->head) slot_admit(e, s);  // a request may finish at once
    if (e->active > 0) {
        for (int s = 0; s < e->S; s++) e->step_tokens[s] = e->slots[s].req ? e->slots[s].next_tok : 0;
        model_forward(e->dec, e->step_tokens, NULL, e->S, 1, e->state);
        for (int s = 0; s < e->S; s++) {
            Slot *sl = &e->slots[s];
            if (!sl->req) continue;
            int tok = sample_token(model_logits(e->dec, s, 0), e->dec->cfg.V, &sl->req->sp, &sl->rng);
            slot_take(e, sl, tok);
        }
    }
    return e->active + e->queued;
}

char *engine_utf8_clean(const char *s, int len) {
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
    return o;
}

// ---- offline batch mode ---------------------------------------------------------------

typedef struct {
    char *prompt;      // NULL after an error
    char *completion;
    int len, tokens;
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
    Engine *e = engine_new(m, o->batch, o->max_prompt);
    if (!e) {
        fclose(in);
        fprintf(stderr, "glia generate: the model's vocabulary (%d) is not the byte vocabulary; text prompts need V = 256\n",
                m->cfg.V);
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
        cJSON *j = cJSON_ParseWithLength(line, (size_t)got);
        EngineRequest r = {.max_tokens = o->max_tokens,
                           .sp = {o->temperature, o->top_k, o->top_p},
                           .seed = o->seed,
                           .on_done = offline_done,
                           .user = it};
        int stream = 0;
        if (!j)
            snprintf(it->error, sizeof it->error, "line %d is not valid JSON", n);
        else if (engine_parse_request(j, &r, &stream, it->error, sizeof it->error) == 0 &&
                 engine_submit(e, &r, it->error, sizeof it->error) >= 0) {
            it->prompt = xmalloc((size_t)r.prompt_len + 1);
            memcpy(it->prompt, r.prompt, (size_t)r.prompt_len);
            it->prompt[r.prompt_len] = 0;
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(in);
    if (n == 0) {
        fprintf(stderr, "glia generate: %s holds no requests\n", in_path);
        engine_free(e);
        free(items);
        return 2;
    }
    double t0 = engine_now(), last = 0;
    long tokens = 0;
    int done = 0;
    for (int i = 0; i < n; i++) done += items[i].prompt == NULL;
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
    int nt = 0;
    FILE *out = fopen(out_path, "w");
    int rc = out ? 0 : 1;
    for (int i = 0; i < n; i++) {
        OfflineItem *it = &items[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "index", i);
        if (!it->prompt) {
            cJSON_AddStringToObject(j, "error", it->error);
        } else {
            char *p = engine_utf8_clean(it->prompt, (int)strlen(it->prompt));
            char *c = engine_utf8_clean(it->completion, it->len);
            cJSON_AddStringToObject(j, "prompt", p);
            cJSON_AddStringToObject(j, "completion", c);
            free(p), free(c);
            cJSON_AddNumberToObject(j, "tokens", it->tokens);
            cJSON_AddNumberToObject(j, "ttft_ms", it->ttft_s * 1e3);
            cJSON_AddStringToObject(j, "finish_reason", it->finish);
            tokens += it->tokens;
            ttft[nt++] = it->ttft_s * 1e3;
        }
        char *s = cJSON_PrintUnformatted(j);
        if (out && fprintf(out, "%s\n", s) < 0) rc = 1;
        free(s);
        cJSON_Delete(j);
        free(it->prompt);
        free(it->completion);
    }
    if (out && fclose(out)) rc = 1;
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

static int num_field(const cJSON *j, const char *name, double lo, double hi, double *out, char *err,
                     size_t n) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!f || cJSON_IsNull(f)) return 0;
    if (!cJSON_IsNumber(f)) return snprintf(err, n, "field '%s' must be a number", name), -1;
    if (!(f->valuedouble >= lo && f->valuedouble <= hi))
        return snprintf(err, n, "field '%s' is out of range [%g, %g]", name, lo, hi), -1;
    *out = f->valuedouble;
    return 0;
}

int engine_parse_request(const cJSON *j, EngineRequest *r, int *stream, char *err, size_t n) {
    if (!cJSON_IsObject(j)) return snprintf(err, n, "the request must be a JSON object"), -1;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    if (!p) return snprintf(err, n, "field 'prompt' is required"), -1;
    if (!cJSON_IsString(p)) return snprintf(err, n, "field 'prompt' must be a string"), -1;
    r->prompt = p->valuestring;
    r->prompt_len = (int)strlen(p->valuestring);
    double v;
    v = r->max_tokens;
    if (num_field(j, "max_tokens", 1, 1 << 30, &v, err, n)) return -1;
    r->max_tokens = (int)v;
    v = r->sp.temperature;
    if (num_field(j, "temperature", 0, 100, &v, err, n)) return -1;
    r->sp.temperature = (float)v;
    v = r->sp.top_p;
    if (num_field(j, "top_p", 1e-6, 1, &v, err, n)) return -1;
    r->sp.top_p = (float)v;
    v = r->sp.top_k;
    if (num_field(j, "top_k", 0, 1 << 30, &v, err, n)) return -1;
    r->sp.top_k = (int)v;
    v = (double)r->seed;
    if (num_field(j, "seed", 0, 9007199254740992.0, &v, err, n)) return -1;
    r->seed = (uint64_t)v;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "stop");
    memset(r->stop, 0, sizeof r->stop);
    if (s && !cJSON_IsNull(s)) {
        if (cJSON_IsString(s)) {
            r->stop[0] = s->valuestring;
        } else if (cJSON_IsArray(s)) {
            int k = 0;
            const cJSON *x;
            cJSON_ArrayForEach(x, s) {
                if (!cJSON_IsString(x)) return snprintf(err, n, "field 'stop' must be a string or an array of strings"), -1;
                if (k == ENGINE_MAX_STOPS) return snprintf(err, n, "field 'stop' holds more than %d strings", ENGINE_MAX_STOPS), -1;
                r->stop[k++] = x->valuestring;
            }
        } else {
            return snprintf(err, n, "field 'stop' must be a string or an array of strings"), -1;
        }
        for (int k = 0; k < ENGINE_MAX_STOPS && r->stop[k]; k++)
            if (strlen(r->stop[k]) > ENGINE_MAX_STOP_LEN)
                return snprintf(err, n, "field 'stop': strings are limited to %d bytes", ENGINE_MAX_STOP_LEN), -1;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (st && !cJSON_IsNull(st)) {
        if (!cJSON_IsBool(st)) return snprintf(err, n, "field 'stream' must be a boolean"), -1;
        *stream = cJSON_IsTrue(st);
    }
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (mo && !cJSON_IsNull(mo) && !cJSON_IsString(mo)) return snprintf(err, n, "field 'model' must be a string"), -1;
    return 0;
}
