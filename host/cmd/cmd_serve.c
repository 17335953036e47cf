// cmd_serve.c: `glia serve`, an HTTP endpoint in the shape of OpenAI's
// completions API (POST /v1/completions, streaming as server-sent events)
// plus GET /health, on libmicrohttpd.
//
// Threads: libmicrohttpd runs one thread per connection; those threads only
// parse, validate and wait. One engine thread owns the model and the Engine
// (engine.h): it takes accepted requests from a pending list, submits them,
// and steps the engine while anything is active. Its callbacks append to
// the request's Job (text for a plain answer, ready-made SSE events for a
// stream) under one mutex and wake the connection waiting on the job's
// condition variable. A Job has two owners (the connection and the engine)
// and is freed by whichever lets go last, so a client that disconnects
// mid-stream only cancels its request. Admission is bounded: at most
// slots + queue requests are outstanding, beyond that the answer is 429.
// The server never trusts its input: every failure is a 4xx with a JSON
// error body, and SIGINT / SIGTERM stop it after answering what it accepted.
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "cpu/cpu.h"
#include "generate/engine.h"
#include "glia/util.h"

typedef struct Job {
    pthread_cond_t cv;
    char *prompt;  // owned copies of what the engine request points to
    char stops[ENGINE_MAX_STOPS][ENGINE_MAX_STOP_LEN + 1];
    EngineRequest req;
    int stream;
    char id[40];
    long created;
    char *buf;  // plain: the completion text; stream: SSE bytes not yet sent
    size_t len, cap, sent;
    int done, cancelled, refs;
    int prompt_tokens, completion_tokens;
    char finish[16];
    struct Job *next;  // pending list
} Job;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;  // engine thread: work arrived, or stop
    Job *pending, *pending_tail;
    int npending, outstanding, limit, stopping;
    int active, queued;   // published by the engine thread
    Engine *engine;
    int slots, max_prompt, max_tokens;
    size_t max_body;
    long next_id;
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

static void job_release(Server *sv, Job *j) {  // with sv->mu held
    (void)sv;
    if (--j->refs > 0) return;
    pthread_cond_destroy(&j->cv);
    free(j->prompt);
    free(j->buf);
    free(j);
}

// One SSE event: data: {...choices: [{text, index: 0, finish_reason}]}
static void sse_event(Job *j, const char *text, int len, const char *finish) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", "glia");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    char *t = engine_utf8_clean(text, len);
    cJSON_AddStringToObject(c, "text", t);
    free(t);
    cJSON_AddNumberToObject(c, "index", 0);
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

static Server *g_server;  // the callbacks' way back (one server per process)

static int on_text(void *user, const char *text, int len) {
    Job *j = user;
    pthread_mutex_lock(&g_server->mu);
    if (j->stream) {
        sse_event(j, text, len, NULL);
        pthread_cond_broadcast(&j->cv);
    }
    int cancel = j->cancelled;
    pthread_mutex_unlock(&g_server->mu);
    return cancel;
}

static void on_done(void *user, const EngineResult *r) {
    Job *j = user;
    Server *sv = g_server;
    pthread_mutex_lock(&sv->mu);
    j->prompt_tokens = r->prompt_tokens;
    j->completion_tokens = r->completion_tokens;
    snprintf(j->finish, sizeof j->finish, "%s", r->finish_reason);
    if (j->stream) {
        sse_event(j, "", 0, r->finish_reason);
        buf_add(j, "data: [DONE]\n\n", 14);
    } else {
        buf_add(j, r->text, (size_t)r->len);
    }
    j->done = 1;
    sv->outstanding--;
    pthread_cond_broadcast(&j->cv);
    job_release(sv, j);
    pthread_mutex_unlock(&sv->mu);
}

// ---- the engine thread -------------------------------------------------------------

static void *engine_main(void *arg) {
    Server *sv = arg;
    for (;;) {
        pthread_mutex_lock(&sv->mu);
        while (!sv->pending && !sv->stopping && sv->active + sv->queued == 0)
            pthread_cond_wait(&sv->wake, &sv->mu);
        if (sv->stopping && !sv->pending && sv->active + sv->queued == 0) {
            pthread_mutex_unlock(&sv->mu);
            break;
        }
        Job *list = sv->pending;
        sv->pending = sv->pending_tail = NULL;
        sv->npending = 0;
        pthread_mutex_unlock(&sv->mu);
        for (Job *j = list, *next; j; j = next) {
            next = j->next;
            char err[256];
            if (engine_submit(sv->engine, &j->req, err, sizeof err) < 0) {  // validated before: not expected
                EngineResult r = {"", 0, j->req.prompt_len, 0, "error", 0, 0};
                on_done(j, &r);
            }
        }
        engine_step(sv->engine);
        pthread_mutex_lock(&sv->mu);
        sv->active = engine_active(sv->engine);
        sv->queued = engine_queued(sv->engine);
        pthread_mutex_unlock(&sv->mu);
    }
    return NULL;
}

// ---- HTTP --------------------------------------------------------------------------

typedef struct {
    char *body;
    size_t len;
    int too_large;
} Conn;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, char *body, const char *type) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    if (code == 405) MHD_add_response_header(r, "Allow", "GET, POST");
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
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
    while (j->sent == j->len && !j->done) pthread_cond_wait(&j->cv, &sv->mu);
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
    if (!j->done) j->cancelled = 1;  // the client went away: stop generating for it
    job_release(g_server, j);
    pthread_mutex_unlock(&g_server->mu);
}

static enum MHD_Result completions(Server *sv, struct MHD_Connection *c, Conn *cn) {
    if (cn->too_large) return reply_error(c, 413, "request body is too large");
    cJSON *body = cJSON_ParseWithLength(cn->body ? cn->body : "", cn->len);
    if (!body) return reply_error(c, 400, "request body is not valid JSON");
    Job *j = xcalloc(1, sizeof(Job));
    j->req = (EngineRequest){.max_tokens = sv->max_tokens < 16 ? sv->max_tokens : 16,
                             .sp = {1.0f, 0, 1.0f},
                             .seed = 0,
                             .on_text = on_text,
                             .on_done = on_done,
                             .user = j};
    char err[256];
    unsigned code = 0;
    if (engine_parse_request(body, &j->req, &j->stream, err, sizeof err))
        code = 400;
    else if (j->req.prompt_len > sv->max_prompt)
        code = 413, snprintf(err, sizeof err, "prompt is %d bytes; the limit is %d", j->req.prompt_len, sv->max_prompt);
    else if (j->req.max_tokens > sv->max_tokens)
        code = 400, snprintf(err, sizeof err, "field 'max_tokens' is over this server's limit of %d", sv->max_tokens);
    if (code) {
        cJSON_Delete(body);
        free(j);
        return reply_error(c, code, err);
    }
    j->prompt = xmalloc((size_t)j->req.prompt_len + 1);
    memcpy(j->prompt, j->req.prompt, (size_t)j->req.prompt_len + 1);
    j->req.prompt = j->prompt;
    for (int i = 0; i < ENGINE_MAX_STOPS && j->req.stop[i]; i++) {
        size_t sl = strlen(j->req.stop[i]);  // at most ENGINE_MAX_STOP_LEN (checked by the parser)
        memcpy(j->stops[i], j->req.stop[i], sl + 1);
        j->req.stop[i] = j->stops[i];
    }
    cJSON_Delete(body);
    pthread_cond_init(&j->cv, NULL);
    j->created = (long)time(NULL);
    j->refs = 2;  // the connection and the engine

    pthread_mutex_lock(&sv->mu);
    if (sv->stopping || sv->outstanding >= sv->limit) {
        int stopping = sv->stopping;
        j->refs = 1;
        job_release(sv, j);
        pthread_mutex_unlock(&sv->mu);
        return stopping ? reply_error(c, 503, "the server is shutting down")
                        : reply_error(c, 429, "the request queue is full; try again later");
    }
    snprintf(j->id, sizeof j->id, "cmpl-%ld", sv->next_id++);
    sv->outstanding++;
    if (sv->pending_tail)
        sv->pending_tail->next = j;
    else
        sv->pending = j;
    sv->pending_tail = j;
    sv->npending++;
    pthread_cond_signal(&sv->wake);

    if (j->stream) {
        pthread_mutex_unlock(&sv->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, j, stream_free);
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ok;
    }
    while (!j->done) pthread_cond_wait(&j->cv, &sv->mu);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", "glia");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    cJSON *c0 = cJSON_CreateObject();
    char *t = engine_utf8_clean(j->buf ? j->buf : "", (int)j->len);
    cJSON_AddStringToObject(c0, "text", t);
    free(t);
    cJSON_AddNumberToObject(c0, "index", 0);
    cJSON_AddNullToObject(c0, "logprobs");
    cJSON_AddStringToObject(c0, "finish_reason", j->finish);
    cJSON_AddItemToArray(ch, c0);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
    job_release(sv, j);
    pthread_mutex_unlock(&sv->mu);
    return reply_json(c, 200, o);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **state) {
    Server *sv = cls;
    Conn *cn = *state;
    if (!cn) {  // first call: headers only
        *state = xcalloc(1, sizeof(Conn));
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
        pthread_mutex_unlock(&sv->mu);
        return reply_json(c, 200, o);
    }
    if (!strcmp(url, "/v1/completions")) {
        if (!post) return reply_error(c, 405, "use POST for /v1/completions");
        return completions(sv, c, cn);
    }
    char msg[200];
    snprintf(msg, sizeof msg, "no such endpoint: %.100s (try POST /v1/completions or GET /health)", url);
    return reply_error(c, 404, msg);
}

static void request_done(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode t) {
    Conn *cn = *state;
    if (!cn) return;
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

int cmd_serve(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "model file (byte vocabulary)", NULL},
        {"--host", "ADDR", "IPv4 address to listen on", "127.0.0.1"},
        {"--port", "N", "TCP port (0: pick a free one and print it)", "8080"},
        {"--slots", "N", "sequences decoded together (the engine's batch)", "8"},
        {"--queue", "N", "requests that may wait beyond the slots (then 429)", "64"},
        {"--max-prompt", "N", "longest prompt in bytes (then 413)", "4096"},
        {"--max-tokens", "N", "largest max_tokens a request may ask for", "256"},
        {"--threads", "N", "CPU threads", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32 or bf16 (tensor cores, fp32 accumulation) or fp32 (exact)", "tf32"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("serve",
                       "Serves a model over HTTP: POST /v1/completions (OpenAI completions shape;\n"
                       "\"stream\": true answers as server-sent events) and GET /health. Requests\n"
                       "share one batched engine (docs/SERVING.md). Ctrl-C stops it.",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long port, slots, queue, max_prompt, max_tokens, threads;
    if (cli_int("serve", "--port", GET("--port"), 0, 65535, &port) ||
        cli_int("serve", "--slots", GET("--slots"), 1, 4096, &slots) ||
        cli_int("serve", "--queue", GET("--queue"), 0, 1 << 20, &queue) ||
        cli_int("serve", "--max-prompt", GET("--max-prompt"), 1, 1 << 24, &max_prompt) ||
        cli_int("serve", "--max-tokens", GET("--max-tokens"), 1, 1 << 24, &max_tokens))
        return 2;
    const Backend *be;
    if (device_pick("serve", GET("--device"), GET("--matmul"), &be))
        return 2;
    if (GET("--threads")) {
        if (cli_int("serve", "--threads", GET("--threads"), 1, 4096, &threads)) return 2;
        cpu_set_threads((int)threads);
    }
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
                 .limit = (int)(slots + queue)};
    sv.max_body = (size_t)max_prompt * 6 + 65536;  // a prompt of escaped bytes, plus the rest
    sv.engine = engine_new(m, (int)slots, (int)max_prompt);
    if (!sv.engine) {
        fprintf(stderr, "glia serve: the model's vocabulary (%d) is not the byte vocabulary; text prompts need V = 256\n", m->cfg.V);
        model_free(m);
        return 2;
    }
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

    pthread_t eng;
    pthread_create(&eng, NULL, engine_main, &sv);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port,
        NULL, NULL, handle, &sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(sv.limit + 64), MHD_OPTION_END);
    rc = 0;
    if (!d) {
        fprintf(stderr, "glia serve: cannot listen on %s:%ld (in use, or not this machine's address?)\n",
                GET("--host"), port);
        rc = 1;
    } else {
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        printf("glia serve: listening on http://%s:%u (slots %ld, queue %ld, max prompt %ld bytes)\n",
               GET("--host"), info ? info->port : (unsigned)port, slots, queue, max_prompt);
        fflush(stdout);
        unsigned char sig = 0;
        while (read(g_sigpipe[0], &sig, 1) != 1) {}
        printf("glia serve: %s: finishing accepted requests, then stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
        fflush(stdout);
    }
    pthread_mutex_lock(&sv.mu);
    sv.stopping = 1;
    pthread_cond_signal(&sv.wake);
    pthread_mutex_unlock(&sv.mu);
    pthread_join(eng, NULL);  // every accepted request is answered by now
    if (d) MHD_stop_daemon(d);
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
