// test_serve.c: `glia serve` end to end. The suite starts GLIA_BIN serve on a
// loopback port the server picks (--port 0; it prints the address) and
// talks to it with curl: health, a completion equal to the engine's for the
// same seed, a streamed one, malformed and wrong-typed requests, unknown
// paths and methods, an over-long prompt, and a burst of concurrent clients.
// The server is killed in the suite's .fini, which runs even when a test
// fails. Skips (with the reason) when curl is missing or the glia binary
// has no serve command. GLIA_TEST_DEVICE=cuda (ctest's test_serve_cuda)
// serves from the GPU with exact fp32 matmuls, against the same CPU engine
// texts; it skips without a GPU.
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "generate/engine.h"
#include "model/model.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif

static char dir[256], ckpt[300];
static pid_t server = -1;
static int port;
static const char *skip_reason;

static Model *tiny_model(void) {
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    Model *m = model_new(&c);
    model_init(m, 5);
    return m;
}

static void start(void) {
    skip_reason = NULL;
    if (system("command -v curl >/dev/null 2>&1")) {
        skip_reason = "curl is not installed";
        return;
    }
    const char *device = getenv("GLIA_TEST_DEVICE") ? getenv("GLIA_TEST_DEVICE") : "cpu";
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
    char err[CKPT_ERR_LEN];
    cr_assert_eq(ckpt_save_model(m, ckpt, 0, err), 0, "%s", err);
    model_free(m);
    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    server = fork();
    cr_assert_geq(server, 0);
    if (server == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl(GLIA_BIN, GLIA_BIN, "serve", "--ckpt", ckpt, "--port", "0", "--slots", "4", "--queue", "32",
              "--max-prompt", "64", "--max-tokens", "32", "--device", device, "--matmul", "fp32",
              (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    char line[512] = "";
    if (!fgets(line, sizeof line, f) || !strstr(line, "listening on")) {
        fclose(f);
        waitpid(server, NULL, 0);
        server = -1;
        skip_reason = "the glia binary has no serve command (add it to host/cmd/main.c's COMMANDS)";
        return;
    }
    fclose(f);  // the server's later lines go to a closed pipe: it ignores SIGPIPE
    char *p = strstr(line, "127.0.0.1:");
    cr_assert(p, "%s", line);
    port = atoi(p + 10);
    cr_assert_gt(port, 0);
}

static void stop(void) {
    if (server > 0) {
        kill(server, SIGTERM);
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

TestSuite(serve, .init = start, .fini = stop, .timeout = 60);

// One request with curl; returns the body (malloc'd) and the status in *code.
static char *http(const char *method, const char *path, const char *body, int *code) {
    char bfile[400], ofile[400], cmd[1400];
    snprintf(bfile, sizeof bfile, "%s/body.json", dir);
    snprintf(ofile, sizeof ofile, "%s/out.txt", dir);
    if (body) {
        FILE *f = fopen(bfile, "w");
        cr_assert(f);
        fputs(body, f);
        fclose(f);
    }
    snprintf(cmd, sizeof cmd,
             "curl -q -s -N --noproxy '*' -o '%s' -w '%%{http_code}' -X %s %s%s%s 'http://127.0.0.1:%d%s'", ofile,
             method, body ? "-H 'Content-Type: application/json' --data-binary @'" : "", body ? bfile : "",
             body ? "'" : "", port, path);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    *code = 0;
    cr_assert_eq(fscanf(p, "%d", code), 1, "curl printed no status for %s %s", method, path);
    pclose(p);
    FILE *f = fopen(ofile, "r");
    cr_assert(f);
    char *out = calloc(1, 1 << 16);
    size_t n = fread(out, 1, (1 << 16) - 1, f);
    out[n] = 0;
    fclose(f);
    return out;
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

static char *engine_text(const char *prompt, int max_tokens, float temp, uint64_t seed);

Test(serve, health_completion_and_stream) {
    if (skip_reason) cr_skip_test("%s", skip_reason);
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
    char *want = engine_text("the astrocyte ", 20, 0.8f, 42);
    cr_expect_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, want, "the server's text is not the engine's");
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
    want = engine_text("the astrocyte ", 20, 0.8f, 42);
    cr_expect_str_eq(text, want, "the streamed text is not the engine's");
    free(want);
    free(b);
}

Test(serve, bad_requests_get_4xx_json) {
    if (skip_reason) cr_skip_test("%s", skip_reason);
    int code;
    char *b = http("POST", "/v1/completions", "{\"prompt\": \"x\", ", &code);
    expect_error(b, code, 400, "JSON");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": \"many\"}", &code);
    expect_error(b, code, 400, "max_tokens");
    free(b);
    b = http("POST", "/v1/completions", "{\"prompt\": [1, 2]}", &code);
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
    char big[200] = "{\"prompt\": \"";
    memset(big + strlen(big), 'a', 100);
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

Test(serve, burst_of_concurrent_clients) {
    if (skip_reason) cr_skip_test("%s", skip_reason);
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
        cJSON_Delete(j);
    }
}

// The completion the engine makes for the same request in a pool of the
// server's size, as JSON text (invalid UTF-8 replaced as the server does).
static int ignore_text(void *u, const char *t, int n) { return 0; }
static void keep_done(void *u, const EngineResult *r) { *(char **)u = engine_utf8_clean(r->text, r->len); }

static char *engine_text(const char *prompt, int max_tokens, float temp, uint64_t seed) {
    Model *m = tiny_model();
    Engine *e = engine_new(m, 4, 64);
    char *out = NULL, err[200];
    EngineRequest r = {.prompt = prompt, .prompt_len = (int)strlen(prompt), .max_tokens = max_tokens,
                       .sp = {temp, 0, 1.0f}, .seed = seed, .on_text = ignore_text, .on_done = keep_done,
                       .user = &out};
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0);
    while (engine_step(e) > 0) {}
    engine_free(e);
    model_free(m);
    cr_assert(out);
    return out;
}
