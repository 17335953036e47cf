// test_serve.c: `glia serve` end to end. Each test starts GLIA_BIN serve on
// a loopback port the server picks (--port 0; it prints the address) and
// talks to it with curl or raw sockets. The answers are checked against
// oracles outside the server: every completion equals the engine's for the
// same request in a pool of the server's size (so swapped or truncated
// answers fail), text with NUL and every byte value survives (json.h reads
// the answers, keeping lengths), logprobs equal the model's training loss.
// Also: strict parsing, unknown paths and methods, an over-long prompt, a
// burst of concurrent clients, cancellation of abandoned requests, 200
// stalled sockets, the connection cap, a second SIGTERM; /metrics read by a
// strict checker of the Prometheus text format, its counters against the
// requests sent, and the access log. A server that does
// not start fails the test; only a missing curl (or GPU, for
// GLIA_TEST_DEVICE=cuda: ctest's test_serve_cuda, exact fp32 matmuls) skips.
// The server is killed in the suite's .fini, which runs even when a test
// fails. On a GPU the server's text must be its engine's there, exactly
// (engine_bytes_for); whether the GPU's text agrees with the CPU's, under
// the spike-flip rule, is test_cuda_model's question.
#define _DEFAULT_SOURCE  // usleep
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmd/commands.h"  // device_pick, device_move_model: the server's device
#include "model/checkpoint.h"
#include "generate/engine.h"
#include "generate/json.h"
#include "generate/tokenizer.h"
#include "model/model.h"
#include "testutil.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif

static char dir[256], ckpt[300];
static pid_t server = -1;
static int port;
static const char *skip_reason;
static char start_error[600];
static char errlog[320];  // the server's stderr goes here when capture_stderr is set
static int capture_stderr, silent_model;

static int use_bpe;  // the serve_bpe suite: a GPT-2 BPE model (V = 50257, L 1, C 32)

static Model *tiny_model(void) {
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    if (use_bpe) c = (ModelConfig){.V = 50257, .Vp = model_pad_vocab(50257), .L = 1, .C = 32, .Nh = 2, .F = 64, .astro = 1};
    Model *m = model_new(&c);
    model_init(m, 5);
    return m;
}

// No current reaches any neuron: every spike tensor is zero (test_stats.c).
static void silence(Model *m) {
    for (int l = 0; l < m->cfg.L; l++) {
        LayerParams *p = &m->layers[l];
        float *zero[] = {p->W_I, p->W_K, p->W_V, p->W_Q, p->W_1};
        for (int k = 0; k < 5; k++) memset(zero[k], 0, (size_t)m->cfg.C * (k == 4 ? m->cfg.F : m->cfg.C) * 4);
    }
}

static const char *server_device(void) {
    return getenv("GLIA_TEST_DEVICE") ? getenv("GLIA_TEST_DEVICE") : "cpu";
}

// The tiny model on the device the server runs on (GLIA_TEST_DEVICE).
static Model *device_model(void) {
    Model *m = tiny_model();
    const Backend *be;
    cr_assert_eq(device_pick("serve", server_device(), "fp32", &be), 0);
    cr_assert_eq(device_move_model("serve", m, be), 0);
    return m;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Starts the server with the given flags after the common ones. A server
// that does not come up leaves start_error set: the test then fails.
static void start_with(const char *const *extra) {
    skip_reason = NULL;
    start_error[0] = 0;
    if (system("command -v curl >/dev/null 2>&1")) {
        skip_reason = "curl is not installed";
        return;
    }
    const char *device = server_device();
    if (!strcmp(device, "cuda")) {
#ifdef GLIA_HAVE_CUDA
        if (cuda_device_count() == 0) skip_reason = "no CUDA device found";
#else
        skip_reason = "glia was built without CUDA";
#endif
        if (skip_reason) return;
    }
    snprintf(dir, sizeof dir, "%s/glia_serve_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
    Model *m = tiny_model();
    if (silent_model) silence(m);
    char err[CKPT_ERR_LEN];
    cr_assert_eq(ckpt_save_model(m, ckpt, 0, err), 0, "%s", err);
    errlog[0] = 0;
    if (capture_stderr) snprintf(errlog, sizeof errlog, "%s/stderr.txt", dir);
    model_free(m);
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    server = fork();
    cr_assert_geq(server, 0);
    if (server == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test killed by its timeout takes its server along
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        if (errlog[0] && !freopen(errlog, "w", stderr)) _exit(126);
        const char *argv[64] = {GLIA_BIN, "serve", "--ckpt", ckpt, "--port", "0", "--device", device, "--matmul", "fp32"};
        int n = 10;
        for (int i = 0; extra[i] && n < 63; i++) argv[n++] = extra[i];
        argv[n] = NULL;
        execv(GLIA_BIN, (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    char line[512] = "";
    if (!fgets(line, sizeof line, f) || !strstr(line, "listening on")) {
        fclose(f);
        int st = 0;
        waitpid(server, &st, 0);
        server = -1;
        snprintf(start_error, sizeof start_error, "the server did not start (exit status %d; its first line: '%.300s')",
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1, line);
        return;
    }
    fclose(f);  // the server's later lines go to a closed pipe: it ignores SIGPIPE
    char *p = strstr(line, "127.0.0.1:");
    cr_assert(p, "%s", line);
    port = atoi(p + 10);
    cr_assert_gt(port, 0);
}

#define SLOTS 4
static void start(void) {
    static const char *const extra[] = {"--slots", "4", "--queue", "32", "--max-prompt", "300", "--max-tokens", "32", NULL};
    start_with(extra);
}

// Every test begins here: skip only for a missing tool, fail for a server that did not start.
#define NEED_SERVER()                                               \
    do {                                                            \
        if (skip_reason) cr_skip_test("%s", skip_reason);           \
        if (start_error[0]) cr_assert_fail("%s", start_error);      \
    } while (0)

static void stop(void) {
    if (server > 0) {
        kill(server, SIGKILL);
        int st;
        waitpid(server, &st, 0);
        server = -1;
    }
    if (dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
        dir[0] = 0;
    }
}

TestSuite(serve, .init = start, .fini = stop, .timeout = 120);

// One request with curl; returns the body (malloc'd, *out_len bytes, NUL
// after) and the status in *code. body is blen bytes (-1: a C string).
static char *http_n(const char *method, const char *path, const char *body, long blen, int *code, int *out_len,
                    const char *curl_extra) {
    char bfile[400], ofile[400], cmd[1600];
    snprintf(bfile, sizeof bfile, "%s/body.json", dir);
    snprintf(ofile, sizeof ofile, "%s/out.txt", dir);
    if (body) {
        FILE *f = fopen(bfile, "w");
        cr_assert(f);
        fwrite(body, 1, blen < 0 ? strlen(body) : (size_t)blen, f);
        fclose(f);
    }
    snprintf(cmd, sizeof cmd,
             "curl -q -s -N --noproxy '*' %s -o '%s' -w '%%{http_code}' -X %s %s%s%s 'http://127.0.0.1:%d%s'",
             curl_extra ? curl_extra : "", ofile, method,
             body ? "-H 'Content-Type: application/json' --data-binary @'" : "", body ? bfile : "",
             body ? "'" : "", port, path);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    *code = 0;
    if (fscanf(p, "%d", code) != 1) *code = 0;
    pclose(p);
    char *out = calloc(1, 1 << 20);
    FILE *f = fopen(ofile, "r");
    size_t n = 0;
    if (f) {
        n = fread(out, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    out[n] = 0;
    if (out_len) *out_len = (int)n;
    return out;
}

static char *http(const char *method, const char *path, const char *body, int *code) {
    char *b = http_n(method, path, body, -1, code, NULL, NULL);
    cr_assert(*code, "curl printed no status for %s %s", method, path);
    return b;
}

static void expect_error(const char *body, int code, int want, const char *mention) {
    cr_expect_eq(code, want, "status %d, wanted %d: %s", code, want, body);
    cJSON *j = cJSON_Parse(body);
    cr_assert(j, "error body is not JSON: %s", body);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    cr_assert(cJSON_IsObject(e), "%s", body);
    cJSON *msg = cJSON_GetObjectItem(e, "message");
    cr_assert(cJSON_IsString(msg));
    if (mention) cr_expect(strstr(msg->valuestring, mention), "'%s' does not mention %s", msg->valuestring, mention);
    cJSON_Delete(j);
}

// The completion bytes the engine makes for a request in a pool of `slots`.
typedef struct {
    char *text;
    int len;
} Bytes;

static int ignore_text(void *u, const char *t, int n) { return 0; }
static void keep_done(void *u, const EngineResult *r) {
    Bytes *b = u;
    b->text = malloc((size_t)r->len + 1);
    memcpy(b->text, r->text, (size_t)r->len);
    b->text[r->len] = 0;
    b->len = r->len;
}

// On the CPU, or on the server's device.
static Bytes engine_bytes(const char *prompt, int plen, int max_tokens, float temp, uint64_t seed, int slots,
                          int on_device) {
    Model *m = on_device ? device_model() : tiny_model();
    Engine *e = engine_new(m, slots, 300);
    Bytes out = {0};
    char err[200];
    EngineRequest r = {.prompt = prompt, .prompt_len = plen, .max_tokens = max_tokens,
                       .sp = {temp, 0, 1.0f}, .seed = seed, .on_text = ignore_text, .on_done = keep_done,
                       .user = &out};
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    while (engine_step(e) > 0) {}
    engine_free(e);
    model_free(m);
    cr_assert(out.text);
    return out;
}

// The engine's bytes for a request, to compare with the server's answer
// `got` (as the server writes text: invalid UTF-8 as U+FFFD): the CPU
// engine's when they match, else the engine's on the server's device, which
// the server must then match. A GPU's rounding may rightly part its text from
// the CPU's, never the server's from its own engine's. The device engine runs
// only on a mismatch: on the emulator, where texts rarely part, it is slow.
static Bytes engine_bytes_for(const char *got, int got_len, const char *prompt, int plen, int max_tokens,
                              float temp, uint64_t seed) {
    Bytes b = engine_bytes(prompt, plen, max_tokens, temp, seed, SLOTS, 0);
    int clen;
    char *c = engine_utf8_clean(b.text, b.len, &clen);
    const int same = clen == got_len && !memcmp(c, got, (size_t)clen);
    free(c);
    if (same || !strcmp(server_device(), "cpu")) return b;
    free(b.text);
    return engine_bytes(prompt, plen, max_tokens, temp, seed, SLOTS, 1);
}

// The same, as the server writes it into JSON (invalid UTF-8 as U+FFFD, NUL
// kept; *len bytes); got_len < 0: got is NUL-terminated.
static char *engine_text_for(const char *got, int got_len, const char *prompt, int max_tokens, float temp,
                             uint64_t seed, int *len) {
    Bytes b = engine_bytes_for(got, got_len < 0 ? (int)strlen(got) : got_len, prompt, (int)strlen(prompt),
                               max_tokens, temp, seed);
    char *c = engine_utf8_clean(b.text, b.len, len);
    free(b.text);
    return c;
}

// The first seed below 256 whose completion of prompt "x" (32 tokens at
// temperature 4, pool of SLOTS) holds a NUL byte; its bytes into *w.
static int seed_with_nul(Bytes *w) {
    Model *m = tiny_model();
    Engine *e = engine_new(m, SLOTS, 300);
    static Bytes outs[256];
    char err[200];
    int seed = -1;
    for (int s0 = 0; s0 < 256 && seed < 0; s0 += 16) {  // the lowest such seed, 16 at a time
        for (int s = s0; s < s0 + 16; s++) {
            EngineRequest r = {.prompt = "x", .prompt_len = 1, .max_tokens = 32, .sp = {4.0f, 0, 1.0f},
                               .seed = (uint64_t)s, .on_done = keep_done, .user = &outs[s]};
            cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
        }
        while (engine_step(e) > 0) {}
        for (int s = s0; s < s0 + 16; s++) {
            if (seed < 0 && memchr(outs[s].text, 0, (size_t)outs[s].len)) seed = s, *w = outs[s];
            else free(outs[s].text);
        }
    }
    engine_free(e);
    model_free(m);
    return seed;
}

// choices[i].text of an answer, decoded with its length.
static Bytes choice_text(const char *body, int blen, int i) {
    char err[200];
    Json *j = json_parse(body, (size_t)blen, err, sizeof err);
    cr_assert(j, "%s: %s", err, body);
    const Json *c = json_get(j, "choices");
    cr_assert(c && c->type == JSON_ARRAY, "%s", body);
    const Json *x = c->child;
    for (int k = 0; k < i && x; k++) x = x->next;
    cr_assert(x, "no choice %d: %s", i, body);
    const Json *t = json_get(x, "text");
    cr_assert(t && t->type == JSON_STRING);
    Bytes b = {malloc((size_t)t->len + 1), t->len};
    memcpy(b.text, t->str, (size_t)t->len + 1);
    json_free(j);
    return b;
}

static void expect_bytes(Bytes got, const char *want, int want_len, const char *what) {
    cr_expect_eq(got.len, want_len, "%s: %d bytes, the engine's text is %d bytes", what, got.len, want_len);
    cr_expect(got.len == want_len && !memcmp(got.text, want, (size_t)want_len), "%s differs from the engine's", what);
}

Test(serve, health_completion_and_stream) {
    NEED_SERVER();
    int code;
    char *b = http("GET", "/health", NULL, &code);
    cr_expect_eq(code, 200);
    cJSON *j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "status")->valuestring, "ok");
    cr_expect_eq(cJSON_GetObjectItem(j, "slots")->valueint, 4);
    cr_expect(cJSON_IsNumber(cJSON_GetObjectItem(j, "queued")));
    cJSON_Delete(j);
    free(b);

    b = http("POST", "/v1/completions",
             "{\"model\": \"glia\", \"prompt\": \"the astrocyte \", \"max_tokens\": 20, \"temperature\": 0.8, "
             "\"seed\": 42}", &code);
    cr_expect_eq(code, 200, "%s", b);
    j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    cr_expect(cJSON_IsString(cJSON_GetObjectItem(j, "id")));
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_assert(c0);
    cr_expect_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length");
    const char *gt = cJSON_GetObjectItem(c0, "text")->valuestring;
    char *want = engine_text_for(gt, -1, "the astrocyte ", 20, 0.8f, 42, NULL);
    cr_expect_str_eq(gt, want, "the server's text is not the engine's");
    free(want);
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    cr_expect_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 14);
    cr_expect_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 20);
    cr_expect_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint, 34);
    cJSON_Delete(j);
    free(b);

    // streaming: one event per piece of text, a final event with the finish reason, then [DONE]
    b = http("POST", "/v1/completions",
             "{\"prompt\": \"the astrocyte \", \"max_tokens\": 20, \"temperature\": 0.8, \"seed\": 42, "
             "\"stream\": true}", &code);
    cr_expect_eq(code, 200);
    size_t total = 0;
    char text[4096] = "";
    int events = 0, finished = 0, done = 0;
    for (char *line = strtok(b, "\n"); line; line = strtok(NULL, "\n")) {
        cr_assert(!strncmp(line, "data: ", 6), "not an SSE data line: %s", line);
        if (!strcmp(line + 6, "[DONE]")) {
            done = 1;
            continue;
        }
        cr_expect(!done, "an event after [DONE]");
        cJSON *ev = cJSON_Parse(line + 6);
        cr_assert(ev, "%s", line);
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0);
        const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
        cr_assert(total + strlen(t) < sizeof text);
        strcat(text, t);
        total += strlen(t);
        if (cJSON_IsString(cJSON_GetObjectItem(c, "finish_reason"))) finished++;
        events++;
        cJSON_Delete(ev);
    }
    cr_expect(done, "the stream does not end with data: [DONE]");
    cr_expect_eq(finished, 1);
    cr_expect_geq(events, 2);
    want = engine_text_for(text, -1, "the astrocyte ", 20, 0.8f, 42, NULL);
    cr_expect_str_eq(text, want, "the streamed text is not the engine's");
    free(want);
    free(b);
}

// Text is bytes with a length: a prompt of all 256 byte values (NUL escaped,
// bytes ≥ 0x80 raw), a completion that holds NUL, streamed and not, a stop
// string that is a NUL.
Test(serve, nul_and_every_byte_value) {
    NEED_SERVER();
    char body[2048], prompt[256];
    int n = snprintf(body, sizeof body, "{\"prompt\": \"");
    for (int b = 0; b < 256; b++) {
        prompt[b] = (char)b;
        if (b < 0x20 || b == '"' || b == '\\')
            n += snprintf(body + n, sizeof body - n, "\\u%04x", b);
        else
            body[n++] = (char)b;
    }
    n += snprintf(body + n, sizeof body - n, "\", \"max_tokens\": 32, \"temperature\": 0}");
    int code, blen;
    char *r = http_n("POST", "/v1/completions", body, n, &code, &blen, NULL);
    cr_assert_eq(code, 200, "%s", r);
    cJSON *j = cJSON_Parse(r);
    cr_assert(j);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens")->valueint, 256,
                 "every byte of the prompt is a token");
    cJSON_Delete(j);
    Bytes got = choice_text(r, blen, 0);
    Bytes want = engine_bytes_for(got.text, got.len, prompt, 256, 32, 0.0f, 0);
    int clen;
    char *clean = engine_utf8_clean(want.text, want.len, &clen);
    expect_bytes(got, clean, clen, "greedy completion of the 256-byte prompt");
    free(clean), free(got.text), free(want.text), free(r);

    // a seed whose completion holds a NUL byte (the engine says which)
    Bytes w = {0};
    int seed = seed_with_nul(&w);
    cr_assert_geq(seed, 0, "no seed below 256 makes a NUL at temperature 4");
    snprintf(body, sizeof body, "{\"prompt\": \"x\", \"max_tokens\": 32, \"temperature\": 4, \"seed\": %d}", seed);
    r = http_n("POST", "/v1/completions", body, -1, &code, &blen, NULL);
    cr_assert_eq(code, 200, "%s", r);
    j = cJSON_Parse(r);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint, 32);
    cJSON_Delete(j);
    got = choice_text(r, blen, 0);
    cr_expect(memchr(got.text, 0, (size_t)got.len), "the answer lost its NUL byte");
    Bytes wd = engine_bytes_for(got.text, got.len, "x", 1, 32, 4.0f, (uint64_t)seed);  // the device's, if it parts
    free(w.text);
    w = wd;
    cr_assert(memchr(w.text, 0, (size_t)w.len), "on the server's device seed %d makes no NUL", seed);
    int wlen;
    char *wclean = engine_utf8_clean(w.text, w.len, &wlen);
    expect_bytes(got, wclean, wlen, "a completion holding NUL");
    free(got.text), free(r);

    // streamed: the pieces, decoded and joined, are the same bytes; no empty piece before the last event
    snprintf(body, sizeof body, "{\"prompt\": \"x\", \"max_tokens\": 32, \"temperature\": 4, \"seed\": %d, \"stream\": true}", seed);
    r = http_n("POST", "/v1/completions", body, -1, &code, &blen, NULL);
    cr_assert_eq(code, 200);
    char joined[4096];
    int jl = 0, empty_before_last = 0, finals = 0;
    for (char *line = r; line < r + blen;) {
        char *end = memchr(line, '\n', (size_t)(r + blen - line));
        if (!end) end = r + blen;
        if (end - line > 6 && !strncmp(line, "data: ", 6) && strncmp(line + 6, "[DONE]", 6)) {
            char err[200];
            Json *ev = json_parse(line + 6, (size_t)(end - line - 6), err, sizeof err);
            cr_assert(ev, "%s", err);
            const Json *c = json_get(ev, "choices")->child;
            const Json *t = json_get(c, "text");
            int fin = json_get(c, "finish_reason")->type == JSON_STRING;
            finals += fin;
            if (!fin && t->len == 0) empty_before_last++;
            cr_assert(jl + t->len < (int)sizeof joined);
            memcpy(joined + jl, t->str, (size_t)t->len);
            jl += t->len;
            json_free(ev);
        }
        line = end + 1;
    }
    cr_expect_eq(finals, 1);
    cr_expect_eq(empty_before_last, 0, "a stream event with an empty piece");
    expect_bytes((Bytes){joined, jl}, wclean, wlen, "the streamed completion holding NUL");
    free(r);

    // a stop string that is a NUL byte ends the completion before the first NUL
    snprintf(body, sizeof body,
             "{\"prompt\": \"x\", \"max_tokens\": 32, \"temperature\": 4, \"seed\": %d, \"stop\": \"\\u0000\"}", seed);
    r = http_n("POST", "/v1/completions", body, -1, &code, &blen, NULL);
    cr_assert_eq(code, 200, "%s", r);
    cr_expect(strstr(r, "\"finish_reason\":\"stop\""), "%s", r);
    got = choice_text(r, blen, 0);
    int upto = (int)((char *)memchr(w.text, 0, (size_t)w.len) - w.text);
    int plen;
    char *pre = engine_utf8_clean(w.text, upto, &plen);
    expect_bytes(got, pre, plen, "the completion up to the NUL stop string");
    free(pre), free(got.text), free(r), free(wclean), free(w.text);
}

Test(serve, bad_requests_get_4xx_json) {
    NEED_SERVER();
    int code;
    char *b = http("POST", "/v1/completions", "{\"prompt\": \"x\", ", &code);
    expect_error(b, code, 400, "JSON");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": \"many\"}", &code);
    expect_error(b, code, 400, "max_tokens");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": {\"a\": 1}}", &code);
    expect_error(b, code, 400, "prompt");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": [1, 2, 300]}", &code);
    expect_error(b, code, 400, "prompt");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"stream\": \"yes\"}", &code);
    expect_error(b, code, 400, "stream");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 1000}", &code);
    expect_error(b, code, 400, "max_tokens");
    free(b);
    b = http("POST", "/v1/completions", "[]", &code);
    expect_error(b, code, 400, NULL);
    free(b);
    char big[600] = "{\"prompt\": \"";
    memset(big + strlen(big), 'a', 400);
    strcat(big, "\"}");
    b = http("POST", "/v1/completions", big, &code);
    expect_error(b, code, 413, "limit");
    free(b);
    b = http("GET", "/v2/nothing", NULL, &code);
    expect_error(b, code, 404, NULL);
    free(b);
    b = http("GET", "/v1/completions", NULL, &code);
    expect_error(b, code, 405, NULL);
    free(b);
    // still alive
    b = http("GET", "/health", NULL, &code);
    cr_expect_eq(code, 200);
    free(b);
}

// Strict parsing: data after the JSON value, fractions for integer fields,
// unimplemented parameters and raw control bytes are refused by name.
Test(serve, strict_parsing) {
    NEED_SERVER();
    static const struct {
        const char *body, *mention;
    } bad[] = {
        {"{\"prompt\": \"x\"} trailing", "after"},
        {"{\"prompt\": \"x\"}{\"prompt\": \"y\"}", "after"},
        {"{\"prompt\": \"x\"}\n\n}", "after"},
        {"{\"prompt\": \"x\", \"max_tokens\": 1.5}", "max_tokens"},
        {"{\"prompt\": \"x\", \"top_k\": 2.5}", "top_k"},
        {"{\"prompt\": \"x\", \"seed\": 0.25}", "seed"},
        {"{\"prompt\": \"x\", \"n\": 1.5}", "'n'"},
        {"{\"prompt\": \"x\", \"logprobs\": 0.5}", "logprobs"},
        {"{\"prompt\": \"x\", \"logprobs\": true}", "logprobs"},
        {"{\"prompt\": \"x\", \"best_of\": 2}", "best_of"},
        {"{\"prompt\": \"x\", \"presence_penalty\": 0.5}", "presence_penalty"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"1\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"suffix\": \"y\"}", "suffix"},
        {"{\"prompt\": \"x\", \"stream\": true, \"logprobs\": 1}", "stream"},
        {"{\"prompt\": \"a\tb\"}", "control"},
        {"{\"prompt\": \"\\ud800\"}", "surrogate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int code;
        char *b = http("POST", "/v1/completions", bad[i].body, &code);
        expect_error(b, code, 400, bad[i].mention);
        free(b);
    }
    int code;  // white space after the value, whole-number floats and neutral values are fine
    char *b = http("POST", "/v1/completions",
                   "{\"prompt\": \"x\", \"max_tokens\": 2.0, \"seed\": 1e1, \"best_of\": 1, \"presence_penalty\": 0, "
                   "\"suffix\": null, \"logit_bias\": {}, \"user\": \"u\"}\r\n \n",
                   &code);
    cr_expect_eq(code, 200, "%s", b);
    free(b);
}

// Each concurrent client's text is its own: the engine's for its request alone.
Test(serve, burst_of_concurrent_clients) {
    NEED_SERVER();
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && for i in $(seq 16); do "
             "curl -q -s --noproxy '*' -o r$i.json -w '%%{http_code}' -H 'Content-Type: application/json' "
             "-d \"{\\\"prompt\\\": \\\"client $i \\\", \\\"max_tokens\\\": 12, \\\"seed\\\": $i}\" "
             "http://127.0.0.1:%d/v1/completions > c$i.txt & done; wait",
             dir, port);
    cr_assert_eq(system(cmd), 0);
    for (int i = 1; i <= 16; i++) {
        char path[400], buf[8192];
        snprintf(path, sizeof path, "%s/c%d.txt", dir, i);
        FILE *f = fopen(path, "r");
        cr_assert(f);
        int code = 0;
        cr_expect_eq(fscanf(f, "%d", &code), 1);
        fclose(f);
        cr_expect_eq(code, 200, "client %d got %d", i, code);
        snprintf(path, sizeof path, "%s/r%d.json", dir, i);
        f = fopen(path, "r");
        cr_assert(f);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        cJSON *j = cJSON_Parse(buf);
        cr_assert(j, "client %d: %s", i, buf);
        cJSON *u = cJSON_GetObjectItem(j, "usage");
        cr_expect_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 12);
        char prompt[32];
        snprintf(prompt, sizeof prompt, "client %d ", i);
        int wl;
        Bytes got = choice_text(buf, (int)n, 0);
        char *want = engine_text_for(got.text, got.len, prompt, 12, 1.0f, (uint64_t)i, &wl);
        expect_bytes(got, want, wl, prompt);
        free(got.text), free(want);
        cJSON_Delete(j);
    }
}

// ---- the OpenAI surface ---------------------------------------------------------------------

static cJSON *post_json(const char *body, int want_code) {
    int code;
    char *b = http("POST", "/v1/completions", body, &code);
    cr_assert_eq(code, want_code, "%s -> %d %s", body, code, b);
    cJSON *j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    free(b);
    return j;
}

// The loss `glia eval` reports for text (2·n bytes; the val split is its last n).
static double glia_eval_loss(const char *text, int n) {
    char path[400], shards[400], out[4096];
    // (the name must not hold "val" or "train": glia eval reads every *val*.bin of the directory)
    snprintf(path, sizeof path, "%s/scored.txt", dir);
    snprintf(shards, sizeof shards, "%s/shards", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    for (int i = 0; i < n; i++) fputc('.', f);  // the train split: never scored
    fwrite(text, 1, (size_t)n, f);
    fclose(f);
    cr_assert_eq(glia_run(out, sizeof out, "prepare --in '%s' --out '%s' --val-frac 0.5", path, shards), 0, "%s", out);
    cr_assert_eq(glia_run(out, sizeof out, "eval --ckpt '%s' --data '%s' --seq %d --batch 1 --batches 1 --device cpu",
                          ckpt, shards, n - 1), 0, "%s", out);
    char *v = strstr(out, "val loss ");
    cr_assert(v, "%s", out);
    return atof(v + 9);
}

Test(serve, openai_models_n_logprobs_echo) {
    NEED_SERVER();
    int code;
    char *b = http("GET", "/v1/models", NULL, &code);
    cr_expect_eq(code, 200, "%s", b);
    cJSON *j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    cr_expect_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "list");
    cr_expect_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0), "id")->valuestring, "glia");
    cJSON_Delete(j);
    free(b);

    // n = 3: choice k is the engine's completion with seed + k
    j = post_json("{\"prompt\": \"glial \", \"max_tokens\": 8, \"seed\": 7, \"n\": 3}", 200);
    cJSON *ch = cJSON_GetObjectItem(j, "choices");
    cr_assert_eq(cJSON_GetArraySize(ch), 3);
    for (int k = 0; k < 3; k++) {
        cJSON *c = cJSON_GetArrayItem(ch, k);
        cr_expect_eq(cJSON_GetObjectItem(c, "index")->valueint, k);
        const char *gt = cJSON_GetObjectItem(c, "text")->valuestring;
        char *want = engine_text_for(gt, -1, "glial ", 8, 1.0f, 7 + (uint64_t)k, NULL);
        cr_expect_str_eq(gt, want, "choice %d", k);
        free(want);
    }
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint, 24);
    cJSON_Delete(j);
    // n = 2 streamed: each event names its choice; each choice's pieces join to its text
    int blen;
    char *sb = http_n("POST", "/v1/completions", "{\"prompt\": \"glial \", \"max_tokens\": 8, \"seed\": 7, \"n\": 2, "
                      "\"stream\": true}", -1, &code, &blen, NULL);
    cr_assert_eq(code, 200, "%s", sb);
    char joined[2][256] = {"", ""};
    int finals[2] = {0, 0};
    for (char *line = strtok(sb, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: {", 7)) continue;
        cJSON *ev = cJSON_Parse(line + 6);
        cr_assert(ev, "%s", line);
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0);
        int idx = cJSON_GetObjectItem(c, "index")->valueint;
        cr_assert(idx == 0 || idx == 1, "%s", line);
        strncat(joined[idx], cJSON_GetObjectItem(c, "text")->valuestring, 255 - strlen(joined[idx]));
        finals[idx] += cJSON_IsString(cJSON_GetObjectItem(c, "finish_reason"));
        cJSON_Delete(ev);
    }
    free(sb);
    for (int k = 0; k < 2; k++) {
        char *want = engine_text_for(joined[k], -1, "glial ", 8, 1.0f, 7 + (uint64_t)k, NULL);
        cr_expect_str_eq(joined[k], want, "streamed choice %d", k);
        cr_expect_eq(finals[k], 1, "streamed choice %d: one final event", k);
        free(want);
    }
    // an array of prompts, n = 2: choices prompt-major
    j = post_json("{\"prompt\": [\"ab\", [99, 100]], \"max_tokens\": 4, \"seed\": 1, \"n\": 2, \"temperature\": 0}", 200);
    ch = cJSON_GetObjectItem(j, "choices");
    cr_assert_eq(cJSON_GetArraySize(ch), 4);
    for (int k = 0; k < 4; k++) {
        const char *gt = cJSON_GetObjectItem(cJSON_GetArrayItem(ch, k), "text")->valuestring;
        char *want = engine_text_for(gt, -1, k < 2 ? "ab" : "cd", 4, 0.0f, 1, NULL);
        cr_expect_str_eq(gt, want, "choice %d", k);
        free(want);
    }
    cJSON_Delete(j);

    // logprobs of a completion: one entry per token, the tokens spell the text, greedy = first alternative
    j = post_json("{\"prompt\": \"the astrocyte \", \"max_tokens\": 6, \"temperature\": 0, \"logprobs\": 2}", 200);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *lp = cJSON_GetObjectItem(c0, "logprobs");
    cr_assert(cJSON_IsObject(lp), "logprobs missing");
    cJSON *tl = cJSON_GetObjectItem(lp, "token_logprobs"), *tops = cJSON_GetObjectItem(lp, "top_logprobs");
    cr_assert_eq(cJSON_GetArraySize(tl), 6);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 6);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "text_offset")), 6);
    for (int i = 0; i < 6; i++) {
        cJSON *top = cJSON_GetArrayItem(tops, i);
        cr_expect_eq(cJSON_GetArraySize(top), 2, "two alternatives at %d", i);
        double best = -1e30;
        cJSON *x;
        cJSON_ArrayForEach(x, top) best = x->valuedouble > best ? x->valuedouble : best;
        cr_expect(best == cJSON_GetArrayItem(tl, i)->valuedouble, "greedy token %d: %.17g is not the best alternative %.17g "
                  "(lm-evaluation-harness compares them exactly)", i, cJSON_GetArrayItem(tl, i)->valuedouble, best);
        cr_expect_leq(cJSON_GetArrayItem(tl, i)->valuedouble, 0.0);
    }
    cJSON_Delete(j);

    // echo + logprobs + max_tokens 0 (lm-evaluation-harness's loglikelihood): the
    // prompt's tokens, the first without a logprob, the rest averaging to glia eval's loss
    const char *text = "the astrocyte listens to the synapse and answers in calcium";
    int n = (int)strlen(text);
    char body[512];
    snprintf(body, sizeof body, "{\"prompt\": \"%s\", \"max_tokens\": 0, \"echo\": true, \"logprobs\": 1}", text);
    j = post_json(body, 200);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, text, "echo returns the prompt");
    lp = cJSON_GetObjectItem(c0, "logprobs");
    tl = cJSON_GetObjectItem(lp, "token_logprobs");
    cr_assert_eq(cJSON_GetArraySize(tl), n);
    cr_expect(cJSON_IsNull(cJSON_GetArrayItem(tl, 0)), "the first token has no logprob");
    double sum = 0;
    for (int i = 1; i < n; i++) sum += cJSON_GetArrayItem(tl, i)->valuedouble;
    cJSON_Delete(j);
    double loss = glia_eval_loss(text, n);
    cr_expect(fabs(-sum / (n - 1) - loss) < 2e-4, "mean -logprob %.5f, glia eval's loss %.4f", -sum / (n - 1), loss);
}

// The official openai Python client (tests/serve_openai.py) against the
// server: models list, completion, stream, logprobs with echo.
Test(serve, openai_python_client) {
    NEED_SERVER();
    if (system("python3 -c 'import openai' >/dev/null 2>&1"))
        cr_skip_test("the openai Python package is not installed (tools/setup.sh installs it with pip)");
    const char *text = "calcium waves spread through the glial network";
    int n = (int)strlen(text);
    double loss = glia_eval_loss(text, n);
    // the engine's text for the script's request, checked against the server's answer to it
    cJSON *j = post_json("{\"prompt\": \"the astrocyte \", \"max_tokens\": 20, \"temperature\": 0.8, \"seed\": 42}",
                         200);
    const char *gt = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text")->valuestring;
    char *want = engine_text_for(gt, -1, "the astrocyte ", 20, 0.8f, 42, NULL);
    cr_expect_str_eq(gt, want, "the server's text is not the engine's");
    cJSON_Delete(j);
    char wpath[400], cmd[2000], out[8192];
    snprintf(wpath, sizeof wpath, "%s/want.txt", dir);
    FILE *f = fopen(wpath, "w");
    cr_assert(f);
    fputs(want, f);
    fclose(f);
    free(want);
    snprintf(cmd, sizeof cmd, "python3 '%s/../serve_openai.py' %d '%s' '%s' %.6f 2>&1", GLIA_FIXTURES, port, wpath,
             text, loss);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    int st = pclose(p);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "serve_openai.py failed:\n%s", out);
}

// ---- cancellation and the drain: one slot, no queue, long requests -------------------------

static void start_one_slot(void) {
    static const char *const extra[] = {"--slots", "1", "--queue", "0", "--max-tokens", "1000000", NULL};
    start_with(extra);
}
TestSuite(serve_drain, .init = start_one_slot, .fini = stop, .timeout = 120);

static int health_field(const char *name) {
    int code;
    char *b = http("GET", "/health", NULL, &code);
    cJSON *j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    int v = cJSON_GetObjectItem(j, name)->valueint;
    cJSON_Delete(j);
    free(b);
    return v;
}

// Seconds until /health shows no active request (gives up after limit).
static double until_idle(double limit) {
    double t0 = now_s();
    while (now_s() - t0 < limit) {
        if (health_field("active") == 0 && health_field("queued") == 0) return now_s() - t0;
        usleep(10000);
    }
    return -1;
}

Test(serve_drain, a_client_that_goes_cancels_its_request) {
    NEED_SERVER();
    for (int stream = 0; stream < 2; stream++) {
        char body[200];
        snprintf(body, sizeof body, "{\"prompt\": \"a long one\", \"max_tokens\": 1000000, \"stream\": %s}",
                 stream ? "true" : "false");
        int code, len;
        double t0 = now_s();
        char *b = http_n("POST", "/v1/completions", body, -1, &code, &len, "--max-time 0.5");  // gives up
        free(b);
        cr_assert(now_s() - t0 < 5, "curl did not give up");
        double t = until_idle(3.0);
        cr_expect_geq(t, 0, "%s request: the slot is still busy 3 s after its client went away",
                      stream ? "a streamed" : "a plain");
        fprintf(stderr, "serve_drain: %s request cancelled %.0f ms after its client went\n", stream ? "streamed" : "plain",
                t * 1e3);
        b = http("POST", "/v1/completions", "{\"prompt\": \"next\", \"max_tokens\": 3}", &code);
        cr_expect_eq(code, 200, "the next client is served: %s", b);
        free(b);
    }
}

Test(serve_drain, a_second_sigterm_ends_the_drain) {
    NEED_SERVER();
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "curl -q -s --noproxy '*' -o /dev/null -d '{\"prompt\": \"x\", \"max_tokens\": 1000000}' "
             "http://127.0.0.1:%d/v1/completions >/dev/null 2>&1 &", port);
    cr_assert_eq(system(cmd), 0);
    double t0 = now_s();
    while (health_field("active") == 0) {
        cr_assert(now_s() - t0 < 5, "the long request never started");
        usleep(10000);
    }
    kill(server, SIGTERM);
    usleep(300000);
    int st;
    cr_assert_eq(waitpid(server, &st, WNOHANG), 0, "the first SIGTERM should drain, not stop");
    kill(server, SIGTERM);
    t0 = now_s();
    pid_t w = 0;
    while ((w = waitpid(server, &st, WNOHANG)) == 0 && now_s() - t0 < 5) usleep(10000);
    cr_assert_eq(w, server, "the server still runs 5 s after a second SIGTERM");
    server = -1;
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0, "a stop before the drain finished exits non-zero");
    fprintf(stderr, "serve_drain: stopped %.0f ms after the second SIGTERM\n", (now_s() - t0) * 1e3);
}

// ---- stalled sockets, the connection cap and the read deadline ------------------------------

#define CAP 240
static void start_limits(void) {
    static const char *const extra[] = {"--slots", "4", "--queue", "32", "--max-prompt", "300", "--max-tokens", "32",
                                        "--read-timeout", "3", "--max-connections", "240", NULL};
    start_with(extra);
}
TestSuite(serve_limits, .init = start_limits, .fini = stop, .timeout = 120);

static int open_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s", strerror(errno));
    return fd;
}

static int closed_by_server(int fd) {
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

Test(serve_limits, stalled_sockets_do_not_lock_clients_out) {
    NEED_SERVER();
    enum { STALLED = 200, MORE = 45 };
    static int fds[STALLED + MORE];
    const char *partial = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"pro";
    for (int i = 0; i < STALLED; i++) {
        fds[i] = open_socket();
        if (i % 2) cr_assert_gt(send(fds[i], partial, strlen(partial), MSG_NOSIGNAL), 0);  // half a request, or nothing
    }
    double t_open = now_s();
    usleep(200000);
    // 8 normal clients while 200 sockets stall: all served, each with its own text
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && for i in $(seq 8); do "
             "curl -q -s --noproxy '*' -o s$i.json -w '%%{http_code} %%{time_total}' -H 'Content-Type: application/json' "
             "-d \"{\\\"prompt\\\": \\\"client $i \\\", \\\"max_tokens\\\": 12, \\\"seed\\\": $i}\" "
             "http://127.0.0.1:%d/v1/completions > t$i.txt & done; wait",
             dir, port);
    double t0 = now_s();
    cr_assert_eq(system(cmd), 0);
    double wall = now_s() - t0;
    // over the cap: 503 at once, not a wait
    for (int i = STALLED; i < STALLED + MORE; i++) fds[i] = open_socket();
    usleep(200000);
    int code;
    t0 = now_s();
    char *b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 2}", &code);
    double t503 = now_s() - t0;
    expect_error(b, code, 503, "connections");
    free(b);
    fprintf(stderr, "serve_limits: over the cap of %d connections: 503 in %.0f ms\n", CAP, t503 * 1e3);
    double worst = 0;
    for (int i = 1; i <= 8; i++) {
        char path[400], buf[8192];
        snprintf(path, sizeof path, "%s/t%d.txt", dir, i);
        FILE *f = fopen(path, "r");
        cr_assert(f);
        int status = 0;
        double t = 0;
        cr_expect_eq(fscanf(f, "%d %lf", &status, &t), 2);
        fclose(f);
        worst = t > worst ? t : worst;
        cr_expect_eq(status, 200, "client %d got %d beside %d stalled sockets", i, status, STALLED);
        snprintf(path, sizeof path, "%s/s%d.json", dir, i);
        f = fopen(path, "r");
        cr_assert(f);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        char prompt[32];
        snprintf(prompt, sizeof prompt, "client %d ", i);
        int wl;
        Bytes got = choice_text(buf, (int)n, 0);
        char *want = engine_text_for(got.text, got.len, prompt, 12, 1.0f, (uint64_t)i, &wl);
        expect_bytes(got, want, wl, prompt);
        free(got.text), free(want);
    }
    fprintf(stderr, "serve_limits: 8 clients beside %d stalled sockets: all served in %.0f ms (slowest %.0f ms)\n", STALLED,
            wall * 1e3, worst * 1e3);
    // the read deadline (3 s) closes every stalled socket, a trickling one too
    t0 = now_s();
    int open_left = STALLED + MORE;
    while (open_left > 0 && now_s() - t0 < 6.0) {
        send(fds[1], "m", 1, MSG_NOSIGNAL);  // one byte now and then: activity is no excuse
        usleep(100000);
        open_left = 0;
        for (int i = 0; i < STALLED + MORE; i++) open_left += !closed_by_server(fds[i]);
    }
    double tclose = now_s() - t_open;
    cr_expect_eq(open_left, 0, "%d stalled sockets still open %.1f s after they were opened (read timeout 3 s)", open_left, tclose);
    fprintf(stderr, "serve_limits: all %d stalled sockets closed by the server %.1f s after the first was opened\n",
            STALLED + MORE, tclose);
    for (int i = 0; i < STALLED + MORE; i++) close(fds[i]);
    b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 2}", &code);
    cr_expect_eq(code, 200, "%s", b);
    free(b);
}

// ---- compute threads: --threads bounds them, and they wait passively ------------------------

static void start_one_thread(void) {
    static const char *const extra[] = {"--slots", "4", "--queue", "8", "--max-tokens", "64", "--threads", "1", NULL};
    // the test's own OpenMP settings must not reach the server: it decides them
    unsetenv("OMP_WAIT_POLICY");
    unsetenv("OMP_NUM_THREADS");
    unsetenv("OPENBLAS_NUM_THREADS");
    start_with(extra);
}
TestSuite(serve_threads, .init = start_one_thread, .fini = stop, .timeout = 60);

Test(serve_threads, threads_bounds_the_compute_threads_which_wait_passively) {
    NEED_SERVER();
    char path[64], env[8192];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)server);
    FILE *f = fopen(path, "r");
    if (!f) cr_skip_test("no /proc/PID/environ on this system");
    size_t n = fread(env, 1, sizeof env - 1, f);
    fclose(f);
    int passive = 0, one = 0;
    for (size_t i = 0; i < n; i += strlen(env + i) + 1) {
        passive |= !strcmp(env + i, "OMP_WAIT_POLICY=passive");
        one |= !strcmp(env + i, "OMP_NUM_THREADS=1");
    }
    cr_expect(passive, "the server's OpenMP runtime did not start with OMP_WAIT_POLICY=passive");
    cr_expect(one, "the server's OpenMP runtime did not start with OMP_NUM_THREADS=1 (--threads 1)");
    for (int i = 0; i < 4; i++) {  // work for every thread the engine would start
        int code;
        char *b = http("POST", "/v1/completions", "{\"prompt\": \"threads\", \"max_tokens\": 64, \"n\": 4}", &code);
        cr_expect_eq(code, 200, "%s", b);
        free(b);
    }
    // threads other than libmicrohttpd's (one listener, one per open connection):
    // main, the engine and the watchdog, and no OpenMP or BLAS workers for --threads 1
    char cmd[200];
    snprintf(cmd, sizeof cmd, "cat /proc/%d/task/*/comm | grep -vc '^MHD'", (int)server);
    FILE *p = popen(cmd, "r");
    int count = -1;
    cr_assert(p && fscanf(p, "%d", &count) == 1);
    pclose(p);
    cr_expect_leq(count, 3, "%d threads besides libmicrohttpd's with --threads 1 (main, engine, watchdog: 3)", count);
}

// ---- a GPT-2 BPE model ---------------------------------------------------------------

static void start_bpe(void) {
    use_bpe = 1;
    Tokenizer tk;
    char err[800];
    ModelConfig c = {.V = 50257};
    if (tokenizer_open(&c, &tk, err, sizeof err)) {
        static char why[800];
        snprintf(why, sizeof why, "%s", err);
        skip_reason = why;
        return;
    }
    tokenizer_free(&tk);
    start();
}

TestSuite(serve_bpe, .init = start_bpe, .fini = stop, .timeout = 120);

static cJSON *completion(const char *body, int *code) {
    char *b = http("POST", "/v1/completions", body, code);
    cJSON *j = cJSON_Parse(b);
    cr_assert(j, "%s", b);
    free(b);
    return j;
}

static const char *bpe_choice_text(cJSON *j) {
    return cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text")->valuestring;
}

Test(serve_bpe, text_and_id_prompts) {
    NEED_SERVER();
    // "And God said" is GPT-2's [1870, 1793, 531] (tiktoken)
    int code;
    cJSON *a = completion("{\"prompt\": \"And God said\", \"max_tokens\": 12, \"temperature\": 0}", &code);
    cr_assert_eq(code, 200);
    cJSON *u = cJSON_GetObjectItem(a, "usage");
    cr_expect_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 3);
    cr_expect_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 12);
    cJSON *b = completion("{\"prompt\": [1870, 1793, 531], \"max_tokens\": 12, \"temperature\": 0, \"echo\": true}", &code);
    cr_assert_eq(code, 200);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(b, "usage"), "prompt_tokens")->valueint, 3);
    char want[4096];
    snprintf(want, sizeof want, "And God said%s", bpe_choice_text(a));
    cr_expect_str_eq(bpe_choice_text(b), want, "the id prompt (echoed) continues as the text prompt does");
    cJSON_Delete(a), cJSON_Delete(b);
    // ids that are not text's own encoding ("And", " ", "God", " ", "said") are
    // used as they are: 5 prompt tokens, though the text would be 3
    b = completion("{\"prompt\": [1870, 220, 13482, 220, 30079], \"max_tokens\": 2, \"echo\": true}", &code);
    cr_assert_eq(code, 200);
    cr_expect_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(b, "usage"), "prompt_tokens")->valueint, 5);
    cr_expect(!strncmp(bpe_choice_text(b), "And God said", 12), "%s", bpe_choice_text(b));
    cJSON_Delete(b);
    // bad prompts: 400 naming the problem
    char *e = http_n("POST", "/v1/completions", "{\"prompt\": \"ab\xff\"}", -1, &code, NULL, NULL);
    expect_error(e, code, 400, "not valid UTF-8");
    free(e);
    e = http("POST", "/v1/completions", "{\"prompt\": [50257]}", &code);
    expect_error(e, code, 400, "outside the model's vocabulary");
    free(e);
    e = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"logprobs\": 1}", &code);
    expect_error(e, code, 400, "byte models only");
    free(e);
}

// ---- /metrics and the access log ------------------------------------------------------------

// One sample of an exposition: "name{labels}" as written, and its value.
typedef struct {
    char key[200];
    double v;
} Sample;
typedef struct {
    Sample s[256];
    int n;
} Expo;

static int name_char(char c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

// A metric (or, without colons, label) name at p; its length, 0 if none.
static int name_len(const char *p, int label) {
    int n = 0;
    while (name_char(p[n], n == 0) && !(label && p[n] == ':')) n++;
    return n;
}

// A sample value: a float as Go's ParseFloat reads it, or NaN, +Inf, -Inf.
static int parse_value(const char *p, double *v) {
    if (!strcmp(p, "NaN")) return *v = NAN, 0;
    if (!strcmp(p, "+Inf")) return *v = INFINITY, 0;
    if (!strcmp(p, "-Inf")) return *v = -INFINITY, 0;
    if (!*p || !strchr("+-.0123456789", *p)) return -1;
    char *end;
    errno = 0;
    *v = strtod(p, &end);
    return *end || errno || isnan(*v) || isinf(*v) ? -1 : 0;
}

// Checks every line of a text exposition (format 0.0.4) and fills e. HELP
// and TYPE name a family at most once each, TYPE before its samples; sample
// names are metric names with their family's suffixes (_bucket, _sum,
// _count for a histogram); labels are name="value" with \\, \" and \n the
// only escapes; a family's samples are together; counters are >= 0; a
// histogram's buckets have ascending le ending at +Inf with non-decreasing
// counts, and +Inf equals _count. 0, or -1 with the first fault in why.
#define BAD(cond, ...)                                 \
    do {                                               \
        if (!(cond)) {                                 \
            snprintf(why, WHY_LEN, __VA_ARGS__);       \
            return -1;                                 \
        }                                              \
    } while (0)
#define WHY_LEN 300
static int check_exposition(const char *text, Expo *e, char *why) {
    e->n = 0;
    BAD(*text && text[strlen(text) - 1] == '\n', "the exposition does not end with a newline");
    char family[100] = "", type[16] = "", done[64][100];
    int ndone = 0, nbuckets = 0;
    double last_le = -INFINITY, last_count = 0, inf_count = -1, count = -1;
    int have_sum = 0;
    const char *p = text;
    for (int ln = 1; *p; ln++) {
        const char *nl = strchr(p, '\n');
        char line[512];
        size_t len = (size_t)(nl - p);
        BAD(len < sizeof line, "line %d is too long", ln);
        memcpy(line, p, len);
        line[len] = 0;
        p = nl + 1;
        BAD(len > 0, "line %d is empty", ln);
        if (line[0] == '#') {
            char kw[8] = "", nm[100] = "";
            int off = 0;
            BAD(sscanf(line, "# %7s %99s %n", kw, nm, &off) == 2 && (!strcmp(kw, "HELP") || !strcmp(kw, "TYPE")),
                      "line %d: a comment that is not HELP or TYPE: %.200s", ln, line);
            BAD(name_len(nm, 0) == (int)strlen(nm), "line %d: bad metric name '%s'", ln, nm);
            if (strcmp(nm, family)) {  // a new family: close the last one
                if (!strcmp(type, "histogram"))
                    BAD(nbuckets > 0 && inf_count >= 0 && have_sum && count == inf_count,
                              "histogram %s: le=\"+Inf\" %g, _count %g, _sum %d", family, inf_count, count, have_sum);
                for (int i = 0; i < ndone; i++) BAD(strcmp(done[i], nm), "line %d: family %s again", ln, nm);
                BAD(ndone < 64, "too many families");
                snprintf(done[ndone++], 100, "%s", nm);
                snprintf(family, sizeof family, "%s", nm);
                type[0] = 0, nbuckets = 0, last_le = -INFINITY, last_count = 0, inf_count = -1, count = -1, have_sum = 0;
            }
            if (!strcmp(kw, "TYPE")) {
                BAD(!type[0], "line %d: a second TYPE for %s", ln, nm);
                const char *t = line + off;
                BAD(!strcmp(t, "counter") || !strcmp(t, "gauge") || !strcmp(t, "histogram") ||
                              !strcmp(t, "summary") || !strcmp(t, "untyped"),
                          "line %d: unknown type '%s'", ln, t);
                snprintf(type, sizeof type, "%s", t);
            } else {
                for (const char *d = line + off; *d; d++)
                    if (*d == '\\') {
                        BAD(d[1] == '\\' || d[1] == 'n', "line %d: bad escape in HELP", ln);
                        d++;
                    }
            }
            continue;
        }
        // a sample: name{label="value",...} value
        int n = name_len(line, 0);
        BAD(n > 0, "line %d: no metric name: %.200s", ln, line);
        BAD(type[0], "line %d: a sample before its family's TYPE: %.200s", ln, line);
        char nm[100];
        snprintf(nm, sizeof nm, "%.*s", n, line);
        const char *suffix = !strncmp(nm, family, strlen(family)) ? nm + strlen(family) : NULL;
        int hist = !strcmp(type, "histogram");
        BAD(suffix && (hist ? !strcmp(suffix, "_bucket") || !strcmp(suffix, "_sum") || !strcmp(suffix, "_count")
                                  : !*suffix),
                  "line %d: sample %s outside its family %s (%s)", ln, nm, family, type);
        const char *q = line + n;
        char le[100] = "";
        if (*q == '{') {
            q++;
            while (*q != '}') {
                int k = name_len(q, 1);
                BAD(k > 0 && q[k] == '=' && q[k + 1] == '"', "line %d: bad label at '%s'", ln, q);
                char lname[64];
                snprintf(lname, sizeof lname, "%.*s", k, q);
                q += k + 2;
                char val[100];
                int vl = 0;
                for (; *q != '"'; q++) {
                    BAD(*q, "line %d: unterminated label value", ln);
                    if (*q == '\\') {
                        BAD(q[1] == '\\' || q[1] == '"' || q[1] == 'n', "line %d: bad escape", ln);
                        q++;
                    }
                    if (vl < 99) val[vl++] = *q;
                }
                val[vl] = 0;
                q++;
                if (!strcmp(lname, "le")) snprintf(le, sizeof le, "%s", val);
                BAD(*q == ',' || *q == '}', "line %d: bad label list at '%s'", ln, q);
                if (*q == ',') q++;
            }
            q++;
        }
        BAD(*q == ' ', "line %d: no space before the value: %.200s", ln, line);
        double v;
        BAD(parse_value(q + 1, &v) == 0, "line %d: '%s' is not a value", ln, q + 1);
        if (!strcmp(type, "counter")) BAD(v >= 0, "line %d: a negative counter", ln);
        if (hist && !strcmp(suffix, "_bucket")) {
            double b;
            BAD(le[0] && parse_value(le, &b) == 0, "line %d: a bucket without a valid le", ln);
            BAD(b > last_le && v >= last_count, "line %d: buckets must ascend in le and count", ln);
            last_le = b, last_count = v, nbuckets++;
            if (isinf(b)) inf_count = v;
        } else if (hist && !strcmp(suffix, "_count")) {
            count = v;
        } else if (hist) {
            have_sum = 1;
        }
        BAD(e->n < 256, "too many samples");
        snprintf(e->s[e->n].key, sizeof e->s[e->n].key, "%.*s", (int)(strchr(line, ' ') - line), line);
        for (int i = 0; i < e->n; i++) BAD(strcmp(e->s[i].key, e->s[e->n].key), "line %d: a sample again", ln);
        e->s[e->n++].v = v;
    }
    if (!strcmp(type, "histogram"))
        BAD(nbuckets > 0 && inf_count >= 0 && have_sum && count == inf_count, "histogram %s: le=\"+Inf\" %g, _count %g",
            family, inf_count, count);
    return 0;
}
#undef BAD

// The value of sample key, or NaN-free default def when it is not there.
static double sample(const Expo *e, const char *key, double def) {
    for (int i = 0; i < e->n; i++)
        if (!strcmp(e->s[i].key, key)) return e->s[i].v;
    return def;
}

static void scrape(Expo *e) {
    int code;
    char *b = http("GET", "/metrics", NULL, &code);
    cr_assert_eq(code, 200, "%s", b);
    char why[WHY_LEN];
    cr_assert_eq(check_exposition(b, e, why), 0, "/metrics: %s\n%s", why, b);
    free(b);
}

// The checker itself: it takes a good exposition and refuses each fault.
Test(metrics_format, the_checker_refuses_bad_lines) {
    static const char good[] =
        "# HELP a_total Things.\n# TYPE a_total counter\na_total{code=\"200\",x=\"q\\\"\"} 3\n"
        "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.75\nh_count 2\n"
        "# TYPE g gauge\ng NaN\n";
    Expo e;
    char why[WHY_LEN];
    cr_assert_eq(check_exposition(good, &e, why), 0, "%s", why);
    cr_expect_eq(e.n, 6);
    cr_expect_eq(sample(&e, "h_count", -1), 2);
    static const char *const bad[] = {
        "# TYPE a counter\na -1\n",                                             // a negative counter
        "# TYPE a gauge\na 1x\n",                                               // not a number
        "a 1\n",                                                                // no TYPE
        "# TYPE a gauge\n1a 1\n",                                               // bad name
        "# TYPE a gauge\na{l=v} 1\n",                                           // unquoted label
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",  // count falls
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",  // +Inf != _count
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n",           // a family split
        "# TYPE a gauge\nb 1\n",                                                // outside its family
        "# TYPE a gauge\na 1",                                                  // no final newline
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(check_exposition(bad[i], &e, why), -1, "bad exposition %zu was accepted: %s", i, bad[i]);
}

static void start_metrics(void) {
    static const char *const extra[] = {"--slots", "2", "--max-tokens", "32", NULL};
    capture_stderr = 1;
    start_with(extra);
    capture_stderr = 0;
}
TestSuite(serve_metrics, .init = start_metrics, .fini = stop, .timeout = 120);

// Lines of the server's stderr that contain s.
static int log_lines(const char *s) {
    FILE *f = fopen(errlog, "r");
    cr_assert(f, "no stderr file %s", errlog);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, s) != NULL;
    fclose(f);
    return n;
}

Test(serve_metrics, counters_follow_the_requests) {
    NEED_SERVER();
    Expo a, b;
    scrape(&a);
    cr_expect_eq(sample(&a, "glia_slots", -1), 2);
    cr_expect(isnan(sample(&a, "glia_firing_rate{neurons=\"amsu\"}", 0)), "no token yet: the rate is NaN");
    // two completions (one streamed), a 400, a 404 and a 405
    int code;
    char *r = http("POST", "/v1/completions", "{\"prompt\": \"the astrocyte \", \"max_tokens\": 12}", &code);
    cr_expect_eq(code, 200, "%s", r);
    cJSON *j = cJSON_Parse(r);
    cr_assert(j, "%s", r);
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    const int p1 = cJSON_GetObjectItem(u, "prompt_tokens")->valueint, c1 = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
    cr_expect(p1 == 14 && c1 == 12, "usage %d %d", p1, c1);
    cJSON_Delete(j);
    free(r);
    r = http("POST", "/v1/completions", "{\"prompt\": \"calcium\", \"max_tokens\": 5, \"stream\": true}", &code);
    cr_expect_eq(code, 200);
    cr_expect(strstr(r, "data: [DONE]"), "%s", r);
    free(r);
    free(http("POST", "/v1/completions", "{\"prompt\": ", &code));
    cr_expect_eq(code, 400);
    free(http("GET", "/no/such/path", NULL, &code));
    cr_expect_eq(code, 404);
    free(http("POST", "/metrics", "{}", &code));
    cr_expect_eq(code, 405);
    scrape(&b);

    // counters only grow, and by what was sent
    for (int i = 0; i < a.n; i++) {
        const char *k = a.s[i].key;
        if (strstr(k, "_total") || strstr(k, "_bucket") || strstr(k, "_count") || strstr(k, "_sum"))
            cr_expect(sample(&b, k, -1) >= a.s[i].v, "%s fell from %g to %g", k, a.s[i].v, sample(&b, k, -1));
    }
#define DELTA(key) (sample(&b, key, 0) - sample(&a, key, 0))
    cr_expect_eq(DELTA("glia_http_responses_total{code=\"200\"}"), 3, "two completions and the first scrape");
    cr_expect_eq(DELTA("glia_http_responses_total{code=\"400\"}"), 1);
    cr_expect_eq(DELTA("glia_http_responses_total{code=\"404\"}"), 1);
    cr_expect_eq(DELTA("glia_http_responses_total{code=\"405\"}"), 1);
    cr_expect_eq(DELTA("glia_completions_total{finish_reason=\"length\"}"), 2);
    cr_expect_eq(DELTA("glia_completions_total{finish_reason=\"cancelled\"}"), 0);
    cr_expect_eq(DELTA("glia_prompt_tokens_total"), 14 + 7);
    cr_expect_eq(DELTA("glia_completion_tokens_total"), 12 + 5);
    cr_expect_eq(DELTA("glia_time_to_first_token_seconds_count"), 2);
    cr_expect_eq(DELTA("glia_time_per_output_token_seconds_count"), 2);
    cr_expect_gt(DELTA("glia_time_per_output_token_seconds_sum"), 0);
    // the prompts' positions and at least the first decode step's
    cr_expect_geq(DELTA("glia_firing_rate_positions_total"), 14 + 7 + 1);
    for (int k = 0; k < 2; k++) {
        double rate = sample(&b, k ? "glia_firing_rate{neurons=\"ffn\"}" : "glia_firing_rate{neurons=\"amsu\"}", -1);
        cr_expect(rate > 0.01 && rate < 0.99, "firing rate %g", rate);
    }
    cr_expect_eq(sample(&b, "glia_slots_busy", -1), 0);
    cr_expect_eq(sample(&b, "glia_queue_depth", -1), 0);
#undef DELTA

    // one access-log line per request (written once the answer is sent: give it a moment)
    double t0 = now_s();
    while (log_lines("glia serve: GET /metrics 200 0 tokens ") < 2 && now_s() - t0 < 5) usleep(20000);
    cr_expect_eq(log_lines("glia serve: GET /metrics 200 0 tokens "), 2);
    cr_expect_eq(log_lines("glia serve: POST /v1/completions 200 26 tokens "), 1, "14 + 12 tokens");
    cr_expect_eq(log_lines("glia serve: POST /v1/completions 200 12 tokens "), 1, "the stream: 7 + 5 tokens");
    cr_expect_eq(log_lines("glia serve: POST /v1/completions 400 0 tokens "), 1);
    cr_expect_eq(log_lines("glia serve: GET /no/such/path 404 0 tokens "), 1);
    cr_expect_eq(log_lines("glia serve: POST /metrics 405 0 tokens "), 1);
    cr_expect_eq(log_lines(" ms\n"), 7, "every line ends in milliseconds");
}

// --quiet: no access log; a model whose neurons never fire serves a rate of exactly 0.
static void start_quiet_silent(void) {
    static const char *const extra[] = {"--slots", "2", "--max-tokens", "32", "--quiet", NULL};
    capture_stderr = silent_model = 1;
    start_with(extra);
    capture_stderr = silent_model = 0;
}
TestSuite(serve_quiet, .init = start_quiet_silent, .fini = stop, .timeout = 60);

Test(serve_quiet, no_access_log_and_a_silent_model_rates_zero) {
    NEED_SERVER();
    int code;
    free(http("POST", "/v1/completions", "{\"prompt\": \"silence\", \"max_tokens\": 20}", &code));
    cr_expect_eq(code, 200);
    Expo e;
    scrape(&e);
    cr_expect_eq(sample(&e, "glia_firing_rate{neurons=\"amsu\"}", -1), 0);
    cr_expect_eq(sample(&e, "glia_firing_rate{neurons=\"ffn\"}", -1), 0);
    cr_expect_geq(sample(&e, "glia_firing_rate_positions_total", -1), 8);
    usleep(200000);
    cr_expect_eq(log_lines("glia serve: "), 0, "--quiet still logged");
}
