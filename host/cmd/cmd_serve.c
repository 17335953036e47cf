// cmd_serve.c: `glia serve`, an HTTP endpoint in the shape of OpenAI's
// completions API (POST /v1/completions, streaming as server-sent events,
// GET /v1/models) plus GET /health and GET /metrics (Prometheus text
// format; docs/SERVING.md lists the series), on libmicrohttpd. One access-log
// line per request on stderr unless --quiet.
//
// Threads: libmicrohttpd runs one thread per connection (at most
// --max-connections; beyond that a request gets 503); those threads only
// parse, validate and wait. One engine thread owns the model and the Engine
// (engine.h): it takes accepted requests from a pending list, submits one
// engine request per choice (prompts × n), and steps the engine while
// anything is active. Before every step it checks each waiting client's
// socket, so a client that went away, streamed or not, is cancelled within
// one decode step. A watchdog thread closes connections that have not sent
// a whole request within --read-timeout seconds. The compute threads
// (OpenMP, which OpenBLAS shares) are --threads of them and wait passively:
// the command starts itself again with OMP_WAIT_POLICY=passive, which the
// OpenMP runtime reads only when it loads.
//
// A Job (one HTTP request) has several owners: the connection, the engine
// thread's list of live jobs and each of its choices until that choice is
// done; whichever lets go last frees it. Text is bytes with a length from
// the request body (json.h) to the answer, where json_quote escapes every
// byte. SIGINT / SIGTERM stop accepting and finish what was accepted; a
// second one cancels everything and stops at once.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "cpu/cpu.h"
#include "generate/engine.h"
#include "generate/tokenizer.h"
#include "generate/json.h"
#include "glia/util.h"

struct Job;

typedef struct {
    struct Job *job;
    int index;           // the choice's index in the answer (prompt × n + k)
    int prompt;          // which prompt
    long engine_id;      // -1: not submitted
    char *text;          // the completion
    int len, done, prompt_tokens, completion_tokens;
    char finish[16];
    char *logprobs;      // the answer's "logprobs" object as JSON text, or NULL
} Choice;

typedef struct Job {
    pthread_cond_t cv;
    ParsedRequest pr;
    Choice *ch;
    int nch, ndone;
    char id[40];
    long created;
    char *buf;  // stream: SSE bytes not yet sent
    size_t len, cap, sent;
    int cancelled, refs, fd;  // fd: the client's socket while it may be polled, else -1
    struct Job *next;         // pending list
    struct Job *live_next;    // the engine thread's list of submitted jobs
} Job;

typedef struct ConnRec {  // one open connection, for the cap and the read deadline
    int fd, busy, cut;
    int status;  // of the response queued for its current request (0: none yet)
    double deadline;
    struct ConnRec *prev, *next;
} ConnRec;

// A Prometheus histogram: in[i] observations in (le[i-1], le[i]], the last
// bucket +Inf.
#define HIST_MAX 16
typedef struct {
    int n;  // finite bounds
    double le[HIST_MAX];
    long in[HIST_MAX + 1];
    double sum;
    long count;
} Hist;

static void hist_observe(Hist *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->in[i]++;
    h->sum += v;
    h->count++;
}

static const char *const FINISH[] = {"length", "stop", "cancelled", "error"};
#define NFINISH 4

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;  // engine thread: work arrived, or stop
    Job *pending, *pending_tail, *live;
    int npending, outstanding, limit, stopping, abort, engine_exited, quit;
    int active, queued;   // published by the engine thread
    Engine *engine;
    int slots, max_prompt, max_tokens, threads;
    size_t max_body;
    long next_id;
    ConnRec *conns;
    int nconn, max_conn;
    double read_timeout;
    // /metrics, under mu
    long responses[600];          // by HTTP status
    long finished[NFINISH];       // completions (choices) by finish reason
    long prompt_tokens, completion_tokens;
    Hist ttft, tpot;              // seconds: submit → first token; per output token after the first
    EngineSpikes spikes;          // published by the engine thread
    int quiet;                    // no access log
} Server;

// ---- jobs ------------------------------------------------------------------------------

static void buf_add(Job *j, const char *s, size_t n) {
    if (j->len + n + 1 > j->cap) {
        j->cap = (j->len + n + 1) * 2;
        char *b = realloc(j->buf, j->cap);
        if (!b) fatal("serve: out of memory for %zu bytes", j->cap);
        j->buf = b;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = 0;
}

static void job_release(Job *j) {  // with sv->mu held
    if (--j->refs > 0) return;
    pthread_cond_destroy(&j->cv);
    for (int i = 0; i < j->nch; i++) free(j->ch[i].text), free(j->ch[i].logprobs);
    free(j->ch);
    engine_parsed_free(&j->pr);
    free(j->buf);
    free(j);
}

static void add_text(cJSON *o, const char *name, const char *s, int len) {
    char *q = json_quote(s, len);
    cJSON_AddRawToObject(o, name, q);
    free(q);
}

// One SSE event: data: {...choices: [{text, index, finish_reason}]}
static void sse_event(Job *j, int index, const char *text, int len, const char *finish) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", "glia");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    add_text(c, "text", text, len);
    cJSON_AddNumberToObject(c, "index", index);
    cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(ch, c);
    char *s = cJSON_PrintUnformatted(o);
    buf_add(j, "data: ", 6);
    buf_add(j, s, strlen(s));
    buf_add(j, "\n\n", 2);
    free(s);
    cJSON_Delete(o);
}

// A token of the byte vocabulary as OpenAI's logprobs name it: the byte as
// text, or "bytes:\xNN" for a byte that is not UTF-8 by itself.
static char *token_name(unsigned char b) {
    if (b < 0x80) return json_quote((const char *)&b, 1);
    char *s = xmalloc(16);
    snprintf(s, 16, "\"bytes:\\\\x%02x\"", b);
    return s;
}

// A log-probability as JSON: the float's shortest round-trip form, written
// the same way in token_logprobs and top_logprobs, so a client comparing a
// chosen token with its alternatives (lm-evaluation-harness's greedy check)
// sees equal numbers.
static void add_lp(char **p, float v) { *p += sprintf(*p, "%.9g", (double)v); }

// OpenAI's completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}.
static char *logprobs_json(const EngineResult *r) {
    size_t cap = (size_t)r->nlp * (64 + (size_t)r->top_n * 40) + 128;
    char *o = xmalloc(cap), *p = o;
    p += sprintf(p, "{\"tokens\":[");
    for (int i = 0; i < r->nlp; i++) {
        char *t = token_name(r->lp_tokens[i]);
        p += sprintf(p, "%s%s", i ? "," : "", t);
        free(t);
    }
    p += sprintf(p, "],\"token_logprobs\":[");
    for (int i = 0; i < r->nlp; i++) {
        if (i) *p++ = ',';
        if (isnan(r->lp[i])) p += sprintf(p, "null");
        else add_lp(&p, r->lp[i]);
    }
    p += sprintf(p, "],\"top_logprobs\":[");
    for (int i = 0; i < r->nlp; i++) {
        if (i) *p++ = ',';
        if (isnan(r->lp[i])) {
            p += sprintf(p, "null");
            continue;
        }
        *p++ = '{';
        for (int k = 0; k < r->top_n; k++) {
            char *t = token_name((unsigned char)r->top_ids[i * ENGINE_MAX_LOGPROBS + k]);
            p += sprintf(p, "%s%s:", k ? "," : "", t);
            free(t);
            add_lp(&p, r->top_lp[i * ENGINE_MAX_LOGPROBS + k]);
        }
        *p++ = '}';
    }
    p += sprintf(p, "],\"text_offset\":[");
    for (int i = 0; i < r->nlp; i++) p += sprintf(p, "%s%d", i ? "," : "", i);
    sprintf(p, "]}");
    return o;
}

static Server *g_server;  // the callbacks' way back (one server per process)

static int on_text(void *user, const char *text, int len) {
    Choice *c = user;
    Job *j = c->job;
    pthread_mutex_lock(&g_server->mu);
    if (j->pr.stream) {
        sse_event(j, c->index, text, len, NULL);
        pthread_cond_broadcast(&j->cv);
    }
    int cancel = j->cancelled;
    pthread_mutex_unlock(&g_server->mu);
    return cancel;
}

static void on_done(void *user, const EngineResult *r) {
    Choice *c = user;
    Job *j = c->job;
    Server *sv = g_server;
    pthread_mutex_lock(&sv->mu);
    c->prompt_tokens = r->prompt_tokens;
    c->completion_tokens = r->completion_tokens;
    snprintf(c->finish, sizeof c->finish, "%s", r->finish_reason);
    c->text = xmalloc((size_t)r->len + 1);
    memcpy(c->text, r->text, (size_t)r->len);
    c->len = r->len;
    if (j->pr.logprobs >= 0 && r->nlp >= 0 && strcmp(r->finish_reason, "cancelled")) c->logprobs = logprobs_json(r);
    c->done = 1;
    j->ndone++;
    int f = 0;
    while (f < NFINISH - 1 && strcmp(FINISH[f], r->finish_reason)) f++;
    sv->finished[f]++;
    if (c->index % j->pr.n == 0) sv->prompt_tokens += r->prompt_tokens;  // as the answer's usage counts them
    sv->completion_tokens += r->completion_tokens;
    if (r->completion_tokens >= 1) hist_observe(&sv->ttft, r->ttft_s);
    if (r->completion_tokens >= 2) hist_observe(&sv->tpot, (r->total_s - r->ttft_s) / (r->completion_tokens - 1));
    if (j->pr.stream) {
        sse_event(j, c->index, "", 0, r->finish_reason);
        if (j->ndone == j->nch) buf_add(j, "data: [DONE]\n\n", 14);
    }
    sv->outstanding--;
    pthread_cond_broadcast(&j->cv);
    job_release(j);
    pthread_mutex_unlock(&sv->mu);
}

// ---- the engine thread -------------------------------------------------------------

// Whether the client at the other end of fd has gone (closed or reset).
static int peer_gone(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static void cancel_job(Server *sv, Job *j) {  // engine thread, without sv->mu
    for (int i = 0; i < j->nch; i++) {
        pthread_mutex_lock(&sv->mu);
        int pending = !j->ch[i].done && j->ch[i].engine_id >= 0;
        long id = j->ch[i].engine_id;
        pthread_mutex_unlock(&sv->mu);
        if (pending) engine_cancel(sv->engine, id);
    }
}

static void *engine_main(void *arg) {
    Server *sv = arg;
    // omp_set_num_threads is per thread: this thread's OpenMP team is set here.
    if (sv->threads > 0) cpu_set_threads(sv->threads);
    for (;;) {
        pthread_mutex_lock(&sv->mu);
        while (!sv->pending && !sv->stopping && !sv->abort && sv->active + sv->queued == 0)
            pthread_cond_wait(&sv->wake, &sv->mu);
        int abort = sv->abort;
        if ((sv->stopping && !sv->pending && sv->active + sv->queued == 0) || abort) {
            // abort (second signal): every job, pending or submitted, is cancelled
            Job *list = sv->pending;
            sv->pending = sv->pending_tail = NULL;
            sv->npending = 0;
            pthread_mutex_unlock(&sv->mu);
            for (Job *j = list, *next; j; j = next) {
                next = j->next;
                for (int i = 0; i < j->nch; i++) {
                    EngineResult r = {"", 0, 0, 0, "cancelled", 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL};
                    on_done(&j->ch[i], &r);
                }
                pthread_mutex_lock(&sv->mu);
                job_release(j);  // the live list's reference, never taken up
                pthread_mutex_unlock(&sv->mu);
            }
            for (Job *j = sv->live; j; j = j->live_next) cancel_job(sv, j);
            pthread_mutex_lock(&sv->mu);
            for (Job *j = sv->live, *next; j; j = next) next = j->live_next, job_release(j);
            sv->live = NULL;
            sv->engine_exited = 1;
            pthread_mutex_unlock(&sv->mu);
            break;
        }
        Job *list = sv->pending;
        sv->pending = sv->pending_tail = NULL;
        sv->npending = 0;
        // Clients that went away: their jobs are cancelled before this step.
        Job *gone[64];
        int ngone = 0;
        for (Job **pp = &sv->live; *pp;) {
            Job *j = *pp;
            if (j->ndone == j->nch) {  // finished: off the list
                *pp = j->live_next;
                job_release(j);
                continue;
            }
            if (!j->cancelled && j->fd >= 0 && peer_gone(j->fd)) j->cancelled = 1;
            if (j->cancelled && ngone < 64) gone[ngone++] = j, j->refs++;
            pp = &j->live_next;
        }
        pthread_mutex_unlock(&sv->mu);
        for (int g = 0; g < ngone; g++) {
            cancel_job(sv, gone[g]);
            pthread_mutex_lock(&sv->mu);
            job_release(gone[g]);
            pthread_mutex_unlock(&sv->mu);
        }
        for (Job *j = list, *next; j; j = next) {
            next = j->next;
            for (int i = 0; i < j->nch; i++) {
                Choice *c = &j->ch[i];
                EngineRequest q = j->pr.base;
                q.prompt = j->pr.prompts[c->prompt], q.prompt_len = j->pr.prompt_lens[c->prompt];
                q.prompt_ids = j->pr.prompt_ids[c->prompt], q.prompt_nids = j->pr.prompt_nids[c->prompt];
                q.seed = j->pr.base.seed + (uint64_t)(i % j->pr.n);  // choice k of a prompt: seed + k
                q.on_text = on_text, q.on_done = on_done, q.user = c;
                char err[256];
                long id = engine_submit(sv->engine, &q, err, sizeof err);  // validated before: not expected to fail
                pthread_mutex_lock(&sv->mu);
                c->engine_id = id;
                pthread_mutex_unlock(&sv->mu);
                if (id < 0) {
                    EngineResult r = {"", 0, q.prompt_len, 0, "error", 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL};
                    on_done(c, &r);
                }
            }
            pthread_mutex_lock(&sv->mu);
            j->live_next = sv->live;
            sv->live = j;
            pthread_mutex_unlock(&sv->mu);
        }
        engine_step(sv->engine);
        pthread_mutex_lock(&sv->mu);
        sv->active = engine_active(sv->engine);
        sv->queued = engine_queued(sv->engine);
        sv->spikes = engine_spikes(sv->engine);
        pthread_mutex_unlock(&sv->mu);
    }
    return NULL;
}

// ---- connections: the cap and the read deadline --------------------------------------

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    Server *sv = cls;
    pthread_mutex_lock(&sv->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        ConnRec *r = xcalloc(1, sizeof(ConnRec));
        r->fd = ci ? ci->connect_fd : -1;
        r->deadline = engine_now() + sv->read_timeout;
        r->next = sv->conns;
        if (sv->conns) sv->conns->prev = r;
        sv->conns = r;
        sv->nconn++;
        *socket_context = r;
    } else if (*socket_context) {
        ConnRec *r = *socket_context;
        if (r->prev) r->prev->next = r->next;
        else sv->conns = r->next;
        if (r->next) r->next->prev = r->prev;
        sv->nconn--;
        free(r);
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&sv->mu);
}

static ConnRec *conn_rec(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

// Closes every connection that has not delivered a whole request by its
// deadline (headers and body: a slow trickle is cut like silence).
static void *watchdog_main(void *arg) {
    Server *sv = arg;
    for (;;) {
        pthread_mutex_lock(&sv->mu);
        if (sv->quit) {
            pthread_mutex_unlock(&sv->mu);
            break;
        }
        double now = engine_now();
        for (ConnRec *r = sv->conns; r; r = r->next)
            if (!r->busy && !r->cut && now > r->deadline && r->fd >= 0) {
                shutdown(r->fd, SHUT_RDWR);  // its thread sees the end and closes it
                r->cut = 1;
            }
        pthread_mutex_unlock(&sv->mu);
        usleep(50000);
    }
    return NULL;
}

// ---- HTTP --------------------------------------------------------------------------

typedef struct {  // one request
    char *body;
    size_t len;
    int too_large, over_cap;
    Job *job;  // the stream this connection answers, for request_done
    // the access log
    char method[16], path[160];
    double t0;
    long tokens;  // prompt + completion of a non-streamed answer
} Conn;

// Counted when queued, so a client that has its answer finds it in /metrics.
static void record_status(struct MHD_Connection *c, unsigned code) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    ConnRec *rec = ci ? ci->socket_context : NULL;
    pthread_mutex_lock(&g_server->mu);
    if (rec) rec->status = (int)code;
    if (code < 600) g_server->responses[code]++;
    pthread_mutex_unlock(&g_server->mu);
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned code, struct MHD_Response *r) {
    record_status(c, code);
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, char *body, const char *type) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    if (code == 405) MHD_add_response_header(r, "Allow", "GET, POST");
    return queue(c, code, r);
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned code, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t n = strlen(s);
    char *b = xmalloc(n + 2);
    memcpy(b, s, n);
    memcpy(b + n, "\n", 2);
    free(s);
    return reply(c, code, b, "application/json");
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned code, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", code == 429 ? "rate_limit_error"
                                       : code >= 500 ? "server_error"
                                                     : "invalid_request_error");
    cJSON_AddNumberToObject(e, "code", code);
    return reply_json(c, code, o);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    Job *j = cls;
    Server *sv = g_server;
    pthread_mutex_lock(&sv->mu);
    while (j->sent == j->len && j->ndone < j->nch) pthread_cond_wait(&j->cv, &sv->mu);
    ssize_t n;
    if (j->sent == j->len) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t k = j->len - j->sent < max ? j->len - j->sent : max;
        memcpy(out, j->buf + j->sent, k);
        j->sent += k;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&sv->mu);
    return n;
}

static void stream_free(void *cls) {
    Job *j = cls;
    pthread_mutex_lock(&g_server->mu);
    if (j->ndone < j->nch) j->cancelled = 1;  // the client went away: stop generating for it
    j->fd = -1;
    job_release(j);
    pthread_mutex_unlock(&g_server->mu);
}

static enum MHD_Result completions(Server *sv, struct MHD_Connection *c, Conn *cn) {
    if (cn->too_large) return reply_error(c, 413, "request body is too large");
    char err[256];
    Json *body = json_parse(cn->body, cn->len, err, sizeof err);
    if (!body) return reply_error(c, 400, err);
    Job *j = xcalloc(1, sizeof(Job));
    j->pr.base = (EngineRequest){.max_tokens = sv->max_tokens < 16 ? sv->max_tokens : 16,
                                 .sp = {1.0f, 0, 1.0f},
                                 .seed = 0};
    unsigned code = 0;
    if (engine_parse_request(body, &j->pr, err, sizeof err)) {
        code = 400;
    } else if (j->pr.base.max_tokens > sv->max_tokens) {
        code = 400, snprintf(err, sizeof err, "field 'max_tokens' is over this server's limit of %d", sv->max_tokens);
    } else if (j->pr.stream && (j->pr.logprobs >= 0 || j->pr.echo)) {
        code = 400, snprintf(err, sizeof err, "fields 'logprobs' and 'echo' are not implemented with 'stream'");
    } else if ((long)j->pr.nprompts * j->pr.n > sv->limit) {
        code = 400, snprintf(err, sizeof err, "fields 'prompt' and 'n' ask for %ld completions; this server holds %d at once",
                             (long)j->pr.nprompts * j->pr.n, sv->limit);
    } else if (j->pr.logprobs >= 0 && engine_is_bpe(sv->engine)) {
        code = 400, snprintf(err, sizeof err, "field 'logprobs' is implemented for byte models only");
    } else {
        int why = engine_resolve(sv->engine, &j->pr, err, sizeof err);  // its tokenizer only: thread-safe
        if (why) code = why == -2 ? 413 : 400;
    }
    json_free(body);
    if (code) {
        engine_parsed_free(&j->pr);
        free(j);
        return reply_error(c, code, err);
    }
    j->nch = j->pr.nprompts * j->pr.n;
    j->ch = xcalloc((size_t)j->nch, sizeof(Choice));
    for (int i = 0; i < j->nch; i++) j->ch[i] = (Choice){.job = j, .index = i, .prompt = i / j->pr.n, .engine_id = -1};
    pthread_cond_init(&j->cv, NULL);
    j->created = (long)time(NULL);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    j->refs = 2 + j->nch;  // the connection, the engine thread's live list, each choice

    pthread_mutex_lock(&sv->mu);
    if (sv->stopping || sv->outstanding + j->nch > sv->limit) {
        int stopping = sv->stopping;
        j->refs = 1;
        job_release(j);
        pthread_mutex_unlock(&sv->mu);
        return stopping ? reply_error(c, 503, "the server is shutting down")
                        : reply_error(c, 429, "the request queue is full; try again later");
    }
    snprintf(j->id, sizeof j->id, "cmpl-%ld", sv->next_id++);
    sv->outstanding += j->nch;
    if (sv->pending_tail)
        sv->pending_tail->next = j;
    else
        sv->pending = j;
    sv->pending_tail = j;
    sv->npending++;
    pthread_cond_signal(&sv->wake);

    if (j->pr.stream) {
        cn->job = j;
        j->refs++;  // the connection's record of it, let go in request_done
        pthread_mutex_unlock(&sv->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, j, stream_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        return queue(c, 200, r);
    }
    while (j->ndone < j->nch) pthread_cond_wait(&j->cv, &sv->mu);
    j->fd = -1;
    int cancelled = j->cancelled;
    for (int i = 0; i < j->nch; i++) cancelled |= !strcmp(j->ch[i].finish, "cancelled");
    if (cancelled) {  // the client is gone (or the server was stopped at once): nobody reads this
        job_release(j);
        pthread_mutex_unlock(&sv->mu);
        return reply_error(c, 503, "the request was cancelled");
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", "glia");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    long ptoks = 0, ctoks = 0;
    for (int i = 0; i < j->nch; i++) {
        Choice *h = &j->ch[i];
        cJSON *c0 = cJSON_CreateObject();
        int plen = j->pr.echo ? j->pr.prompt_lens[h->prompt] : 0;
        char *t = xmalloc((size_t)plen + (size_t)h->len + 1);
        memcpy(t, j->pr.prompts[h->prompt], (size_t)plen);
        memcpy(t + plen, h->text, (size_t)h->len);
        add_text(c0, "text", t, plen + h->len);
        free(t);
        cJSON_AddNumberToObject(c0, "index", h->index);
        if (h->logprobs)
            cJSON_AddRawToObject(c0, "logprobs", h->logprobs);
        else
            cJSON_AddNullToObject(c0, "logprobs");
        cJSON_AddStringToObject(c0, "finish_reason", h->finish);
        cJSON_AddItemToArray(ch, c0);
        if (i % j->pr.n == 0) ptoks += h->prompt_tokens;
        ctoks += h->completion_tokens;
    }
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)ptoks);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)ctoks);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(ptoks + ctoks));
    cn->tokens = ptoks + ctoks;
    job_release(j);
    pthread_mutex_unlock(&sv->mu);
    return reply_json(c, 200, o);
}

// ---- /metrics: the Prometheus text exposition format (version 0.0.4) -------------------

static void metric_head(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_value(FILE *f, double v) {  // the format's spellings of the special values
    if (isnan(v)) fputs("NaN", f);
    else if (isinf(v)) fputs(v > 0 ? "+Inf" : "-Inf", f);
    else fprintf(f, "%.17g", v);
}

static void metric_hist(FILE *f, const char *name, const char *help, const Hist *h) {
    metric_head(f, name, "histogram", help);
    long cum = 0;
    for (int i = 0; i <= h->n; i++) {
        cum += h->in[i];
        if (i < h->n) fprintf(f, "%s_bucket{le=\"%g\"} %ld\n", name, h->le[i], cum);
        else fprintf(f, "%s_bucket{le=\"+Inf\"} %ld\n", name, cum);
    }
    fprintf(f, "%s_sum ", name);
    metric_value(f, h->sum);
    fprintf(f, "\n%s_count %ld\n", name, h->count);
}

static char *metrics_text(Server *sv) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) fatal("serve: out of memory for /metrics");
    pthread_mutex_lock(&sv->mu);
    metric_head(f, "glia_http_responses_total", "counter", "HTTP responses by status code (every path).");
    for (int code = 100; code < 600; code++)
        if (sv->responses[code]) fprintf(f, "glia_http_responses_total{code=\"%d\"} %ld\n", code, sv->responses[code]);
    metric_head(f, "glia_completions_total", "counter",
                "Completions (choices) by finish reason: length, stop, cancelled (client gone, or a stop at once), error.");
    for (int i = 0; i < NFINISH; i++) fprintf(f, "glia_completions_total{finish_reason=\"%s\"} %ld\n", FINISH[i], sv->finished[i]);
    metric_head(f, "glia_prompt_tokens_total", "counter", "Prompt tokens, counted as the answers' usage counts them.");
    fprintf(f, "glia_prompt_tokens_total %ld\n", sv->prompt_tokens);
    metric_head(f, "glia_completion_tokens_total", "counter", "Completion tokens generated.");
    fprintf(f, "glia_completion_tokens_total %ld\n", sv->completion_tokens);
    metric_head(f, "glia_slots", "gauge", "Sequence slots of the engine (--slots).");
    fprintf(f, "glia_slots %d\n", sv->slots);
    metric_head(f, "glia_slots_busy", "gauge", "Slots generating now.");
    fprintf(f, "glia_slots_busy %d\n", sv->active);
    metric_head(f, "glia_queue_depth", "gauge", "Completions accepted and waiting for a slot.");
    fprintf(f, "glia_queue_depth %d\n", sv->queued + sv->npending);
    metric_hist(f, "glia_time_to_first_token_seconds", "Seconds from a completion's submission to its first token.",
                &sv->ttft);
    metric_hist(f, "glia_time_per_output_token_seconds",
                "Seconds per output token after the first, per completion of two tokens or more.", &sv->tpot);
    metric_head(f, "glia_firing_rate", "gauge",
                "Spikes per neuron and token position of the served model since start, AM-SU or FFN neurons "
                "(every prefill position, every 16th decode step).");
    fputs("glia_firing_rate{neurons=\"amsu\"} ", f);
    metric_value(f, sv->spikes.amsu_rate);
    fputs("\nglia_firing_rate{neurons=\"ffn\"} ", f);
    metric_value(f, sv->spikes.ffn_rate);
    fputc('\n', f);
    metric_head(f, "glia_firing_rate_positions_total", "counter", "Token positions the firing rate counts.");
    fprintf(f, "glia_firing_rate_positions_total %.0f\n", sv->spikes.positions);
    pthread_mutex_unlock(&sv->mu);
    if (fclose(f)) fatal("serve: out of memory for /metrics");
    return text;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **state) {
    Server *sv = cls;
    Conn *cn = *state;
    if (!cn) {  // first call: headers only
        cn = *state = xcalloc(1, sizeof(Conn));
        cn->t0 = engine_now();
        snprintf(cn->method, sizeof cn->method, "%s", method);
        snprintf(cn->path, sizeof cn->path, "%s", url);
        pthread_mutex_lock(&sv->mu);
        cn->over_cap = sv->nconn > sv->max_conn;
        pthread_mutex_unlock(&sv->mu);
        return MHD_YES;
    }
    if (*upload_size) {  // a piece of the body
        if (!cn->too_large && cn->len + *upload_size <= sv->max_body) {
            char *b = realloc(cn->body, cn->len + *upload_size + 1);
            if (!b) fatal("serve: out of memory for a request body");
            cn->body = b;
            memcpy(cn->body + cn->len, upload, *upload_size);
            cn->len += *upload_size;
        } else {
            cn->too_large = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    ConnRec *rec = conn_rec(c);  // the whole request is here: no deadline while it is answered
    pthread_mutex_lock(&sv->mu);
    if (rec) rec->busy = 1;
    pthread_mutex_unlock(&sv->mu);
    if (cn->over_cap) {
        char msg[160];
        snprintf(msg, sizeof msg, "too many connections (the limit is %d); try again later", sv->max_conn);
        return reply_error(c, 503, msg);
    }
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        if (!get) return reply_error(c, 405, "use GET for /health");
        cJSON *o = cJSON_CreateObject();
        pthread_mutex_lock(&sv->mu);
        cJSON_AddStringToObject(o, "status", sv->stopping ? "stopping" : "ok");
        cJSON_AddNumberToObject(o, "slots", sv->slots);
        cJSON_AddNumberToObject(o, "active", sv->active);
        cJSON_AddNumberToObject(o, "queued", sv->queued + sv->npending);
        cJSON_AddNumberToObject(o, "queue_limit", sv->limit);
        cJSON_AddNumberToObject(o, "connections", sv->nconn);
        cJSON_AddNumberToObject(o, "max_connections", sv->max_conn);
        pthread_mutex_unlock(&sv->mu);
        return reply_json(c, 200, o);
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return reply_error(c, 405, "use GET for /metrics");
        return reply(c, 200, metrics_text(sv), "text/plain; version=0.0.4; charset=utf-8");
    }
    if (!strcmp(url, "/v1/models")) {
        if (!get) return reply_error(c, 405, "use GET for /v1/models");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", "glia");
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "glia");
        cJSON_AddItemToArray(d, m);
        return reply_json(c, 200, o);
    }
    if (!strcmp(url, "/v1/completions")) {
        if (!post) return reply_error(c, 405, "use POST for /v1/completions");
        return completions(sv, c, cn);
    }
    char msg[200];
    snprintf(msg, sizeof msg, "no such endpoint: %.100s (try POST /v1/completions, GET /v1/models, GET /health or GET /metrics)", url);
    return reply_error(c, 404, msg);
}

// Client-chosen text in the access log: printable ASCII, no spaces.
static void log_clean(char *s) {
    for (; *s; s++)
        if (*s <= ' ' || *s > '~') *s = '?';
}

static void request_done(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode t) {
    Server *sv = cls;
    Conn *cn = *state;
    ConnRec *rec = conn_rec(c);
    (void)t;
    pthread_mutex_lock(&sv->mu);
    int status = rec ? rec->status : 0;
    if (rec) rec->busy = 0, rec->status = 0, rec->deadline = engine_now() + sv->read_timeout;  // the next request's
    if (cn && cn->job) {  // a stream's tokens: what its choices got
        for (int i = 0; i < cn->job->nch; i++) {
            const Choice *h = &cn->job->ch[i];
            cn->tokens += (i % cn->job->pr.n == 0 ? h->prompt_tokens : 0) + h->completion_tokens;
        }
    }
    if (cn && cn->job) {  // before libmicrohttpd closes the socket: the engine thread stops polling it
        cn->job->fd = -1;
        if (cn->job->ndone < cn->job->nch) cn->job->cancelled = 1;
        job_release(cn->job);
        cn->job = NULL;
    }
    pthread_mutex_unlock(&sv->mu);
    if (!cn) return;
    if (!sv->quiet) {  // one line, written whole
        log_clean(cn->method), log_clean(cn->path);
        char line[320], st[12] = "-";
        if (status > 0) snprintf(st, sizeof st, "%d", status);
        int n = snprintf(line, sizeof line, "glia serve: %s %s %s %ld tokens %.1f ms\n", cn->method, cn->path, st,
                         cn->tokens, (engine_now() - cn->t0) * 1e3);
        ssize_t w = write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
    free(cn->body);
    free(cn);
    *state = NULL;
}

// ---- the command -----------------------------------------------------------------------

#define GET(name) cli_get(flags, nf, name)

static int g_sigpipe[2];

static void on_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(g_sigpipe[1], &b, 1);
    (void)n;
}

// The OpenMP runtime reads OMP_WAIT_POLICY and OMP_NUM_THREADS once, when it
// loads, and by default its idle threads spin: against the HTTP threads on a
// busy machine that costs far more than it saves. So serve starts itself
// again with both set (a user's own settings are kept). argv is main's
// argument vector from "serve" on; the program's path is just before it.
static void exec_with_omp_settings(int argc, char **argv, const char *threads) {
    if (getenv("GLIA_SERVE_OMP_SET")) return;
    setenv("GLIA_SERVE_OMP_SET", "1", 1);
    int again = 0;
    if (!getenv("OMP_WAIT_POLICY")) setenv("OMP_WAIT_POLICY", "passive", 1), again = 1;
    if (threads && (!getenv("OMP_NUM_THREADS") || strcmp(getenv("OMP_NUM_THREADS"), threads)))
        setenv("OMP_NUM_THREADS", threads, 1), again = 1;
    if (threads && !getenv("OPENBLAS_NUM_THREADS")) setenv("OPENBLAS_NUM_THREADS", threads, 1), again = 1;
    if (!again) return;
    (void)argc;
    fflush(stdout);
    execv("/proc/self/exe", argv - 1);  // returns only on failure: carry on, --threads still applies
}

int cmd_serve(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "model file (byte or GPT-2 BPE vocabulary)", NULL},
        {"--host", "ADDR", "IPv4 address to listen on", "127.0.0.1"},
        {"--port", "N", "TCP port (0: pick a free one and print it)", "8080"},
        {"--slots", "N", "sequences decoded together (the engine's batch)", "8"},
        {"--queue", "N", "requests that may wait beyond the slots (then 429)", "64"},
        {"--max-prompt", "N", "longest prompt in tokens (bytes for a byte model; then 413)", "4096"},
        {"--max-tokens", "N", "largest max_tokens a request may ask for", "256"},
        {"--max-connections", "N", "open connections served at once (beyond: 503)", "256"},
        {"--read-timeout", "S", "seconds a connection has to send a whole request (headers and body)", "10"},
        {"--threads", "N", "compute threads (OpenMP and BLAS; they wait passively)", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32 or bf16 (tensor cores, fp32 accumulation) or fp32 (exact)", "tf32"},
        {"--quiet", NULL, "no access log (one line per request on stderr: method, path, status, tokens, ms)", NULL},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("serve",
                       "Serves a model over HTTP: POST /v1/completions (OpenAI completions shape;\n"
                       "\"stream\": true answers as server-sent events), GET /v1/models, GET /health\n"
                       "and GET /metrics (Prometheus text format). Requests share one batched engine\n"
                       "(docs/SERVING.md); one access-log line per request on stderr. Ctrl-C stops\n"
                       "it after the accepted requests; a second Ctrl-C at once.",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long port, slots, queue, max_prompt, max_tokens, threads = 0, max_conn;
    double read_timeout;
    if (cli_int("serve", "--port", GET("--port"), 0, 65535, &port) ||
        cli_int("serve", "--slots", GET("--slots"), 1, 4096, &slots) ||
        cli_int("serve", "--queue", GET("--queue"), 0, 1 << 20, &queue) ||
        cli_int("serve", "--max-prompt", GET("--max-prompt"), 1, 1 << 24, &max_prompt) ||
        cli_int("serve", "--max-tokens", GET("--max-tokens"), 1, 1 << 24, &max_tokens) ||
        cli_int("serve", "--max-connections", GET("--max-connections"), 1, 65536, &max_conn) ||
        cli_float("serve", "--read-timeout", GET("--read-timeout"), 0.05, 86400, &read_timeout))
        return 2;
    if (GET("--threads") && cli_int("serve", "--threads", GET("--threads"), 1, 4096, &threads)) return 2;
    exec_with_omp_settings(argc, argv, GET("--threads"));
    const Backend *be;
    if (device_pick("serve", GET("--device"), GET("--matmul"), &be))
        return 2;
    if (threads > 0) cpu_set_threads((int)threads);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, GET("--host"), &addr.sin_addr) != 1) {
        fprintf(stderr, "glia serve: --host: '%s' is not an IPv4 address\n", GET("--host"));
        return 2;
    }
    if (cli_require("serve", flags, nf, "--ckpt", NULL)) return 2;
    char err[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(GET("--ckpt"), NULL, err);
    if (!m) {
        fprintf(stderr, "glia serve: %s\n", err);
        return 2;
    }
    if (device_move_model("serve", m, be)) {
        model_free(m);
        return 2;
    }
    Server sv = {.slots = (int)slots, .max_prompt = (int)max_prompt, .max_tokens = (int)max_tokens,
                 .limit = (int)(slots + queue), .threads = (int)threads, .max_conn = (int)max_conn,
                 .read_timeout = read_timeout, .quiet = GET("--quiet") != NULL,
                 .ttft = {11, {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}},
                 .tpot = {11, {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}},
                 .spikes = {0, 0, 0, NAN, NAN}};
    Tokenizer tk;
    if (tokenizer_open(&m->cfg, &tk, err, sizeof err) == 0) tokenizer_free(&tk);
    else {
        fprintf(stderr, "glia serve: %s: %s\n", GET("--ckpt"), err);
        model_free(m);
        return 2;
    }
    sv.engine = engine_new(m, (int)slots, (int)max_prompt);
    if (!sv.engine) {
        fprintf(stderr, "glia serve: the model's vocabulary (%d) is neither bytes (256) nor GPT-2 BPE (%d)\n", m->cfg.V,
                BPE_VOCAB);
        model_free(m);
        return 2;
    }
    // a prompt of escaped bytes (a BPE token is a few bytes, or a number), plus the rest
    sv.max_body = (size_t)max_prompt * (engine_is_bpe(sv.engine) ? 48 : 6) + 65536;
    pthread_mutex_init(&sv.mu, NULL);
    pthread_cond_init(&sv.wake, NULL);
    g_server = &sv;

    // SIGINT / SIGTERM may land on any thread (OpenBLAS and OpenMP start
    // their own), so the handler only writes the signal to a pipe that this
    // thread waits on.
    if (pipe(g_sigpipe)) fatal("serve: cannot create a pipe");
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_t eng, dog;
    pthread_create(&eng, NULL, engine_main, &sv);
    pthread_create(&dog, NULL, watchdog_main, &sv);
    // libmicrohttpd's own timeout is an idle one (any byte restarts it): it
    // covers a client that stops reading an answer. The deadline for
    // receiving a request is the watchdog's, which no trickle of bytes resets.
    unsigned timeout = (unsigned)ceil(2 * read_timeout) + 1;
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port,
        NULL, NULL, handle, &sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, request_done, &sv, MHD_OPTION_NOTIFY_CONNECTION, on_connection, &sv,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(max_conn + 64),  // the 64 beyond get a 503, then refusal
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)256 * 1024, MHD_OPTION_END);
    rc = 0;
    if (!d) {
        fprintf(stderr, "glia serve: cannot listen on %s:%ld (in use, or not this machine's address?)\n",
                GET("--host"), port);
        rc = 1;
    } else {
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        printf("glia serve: listening on http://%s:%u (slots %ld, queue %ld, max prompt %ld %s, "
               "max connections %ld, read timeout %g s)\n",
               GET("--host"), info ? info->port : (unsigned)port, slots, queue, max_prompt,
               engine_is_bpe(sv.engine) ? "tokens" : "bytes", max_conn, read_timeout);
        fflush(stdout);
        unsigned char sig = 0;
        while (read(g_sigpipe[0], &sig, 1) != 1) {}
        printf("glia serve: %s: finishing accepted requests, then stopping (again: stop at once)\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
        fflush(stdout);
    }
    pthread_mutex_lock(&sv.mu);
    sv.stopping = 1;
    pthread_cond_signal(&sv.wake);
    pthread_mutex_unlock(&sv.mu);
    // The drain: until the engine thread is done, a second signal cancels everything.
    for (int exited = 0; !exited;) {
        struct pollfd p = {.fd = g_sigpipe[0], .events = POLLIN};
        if (d && poll(&p, 1, 50) == 1) {
            unsigned char sig;
            if (read(g_sigpipe[0], &sig, 1) == 1) {
                printf("glia serve: %s again: cancelling every request and stopping now\n",
                       sig == SIGINT ? "SIGINT" : "SIGTERM");
                fflush(stdout);
                pthread_mutex_lock(&sv.mu);
                sv.abort = 1;
                pthread_cond_signal(&sv.wake);
                pthread_mutex_unlock(&sv.mu);
                rc = 1;
            }
        } else if (!d) {
            pthread_mutex_lock(&sv.mu);
            sv.abort = 1;
            pthread_cond_signal(&sv.wake);
            pthread_mutex_unlock(&sv.mu);
        }
        pthread_mutex_lock(&sv.mu);
        exited = sv.engine_exited;
        pthread_mutex_unlock(&sv.mu);
    }
    pthread_join(eng, NULL);  // every accepted request is answered (or cancelled) by now
    if (d) MHD_stop_daemon(d);
    pthread_mutex_lock(&sv.mu);
    sv.quit = 1;
    pthread_mutex_unlock(&sv.mu);
    pthread_join(dog, NULL);
    engine_free(sv.engine);
    pthread_cond_destroy(&sv.wake);
    pthread_mutex_destroy(&sv.mu);
    g_server = NULL;
    model_free(m);
    close(g_sigpipe[0]);
    close(g_sigpipe[1]);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    return rc;
}
