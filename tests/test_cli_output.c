// test_cli_output.c: commands tell the truth about their output. `glia
// generate --prompts` opens --out before generating (a bad path fails at
// once, with no batch run), writes prompts and completions holding NUL
// bytes whole (JSONL read back with lengths), and generate, eval and
// prepare exit non-zero when their standard output cannot be written
// (/dev/full). `glia bench kernels --step` on the CPU: its step breakdown
// adds up to 100 % and counts every matrix product of the step.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "generate/engine.h"
#include "generate/json.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "testutil.h"

static char dir[256], ckpt[300];

static void setup(void) {
    snprintf(dir, sizeof dir, "%s/glia_out_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    Model *m = model_new(&c);
    model_init(m, 5);
    char err[CKPT_ERR_LEN];
    cr_assert_eq(ckpt_save_model(m, ckpt, 0, err), 0, "%s", err);
    model_free(m);
}

static void teardown(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
}

TestSuite(cli_output, .init = setup, .fini = teardown, .timeout = 120);

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
}

Test(cli_output, generate_prompts_checks_out_before_generating) {
    char in[400], out[8192];
    snprintf(in, sizeof in, "%s/in.jsonl", dir);
    write_file(in, "{\"prompt\": \"a\", \"max_tokens\": 4}\n{\"prompt\": \"b\", \"max_tokens\": 4}\n");
    int rc = glia_run(out, sizeof out, "generate --ckpt '%s' --prompts '%s' --out '%s/no/such/dir/out.jsonl' --device cpu",
                      ckpt, in, dir);
    cr_expect_eq(rc, 1, "exit %d: %s", rc, out);
    cr_expect(strstr(out, "cannot write"), "%s", out);
    cr_expect(!strstr(out, "requests"), "the batch ran before --out was checked: %s", out);
}

static int ignore_text(void *u, const char *t, int n) { return 0; }
typedef struct {
    char text[64];
    int len;
} Got;
static void keep(void *u, const EngineResult *r) {
    Got *g = u;
    memcpy(g->text, r->text, (size_t)r->len);
    g->len = r->len;
}

Test(cli_output, generate_prompts_keeps_nul_bytes) {
    char in[400], outp[400], out[8192];
    snprintf(in, sizeof in, "%s/in.jsonl", dir);
    snprintf(outp, sizeof outp, "%s/out.jsonl", dir);
    write_file(in, "{\"prompt\": \"a\\u0000b\\u0000\", \"max_tokens\": 24, \"temperature\": 4, \"seed\": 3}\n");
    int rc = glia_run(out, sizeof out, "generate --ckpt '%s' --prompts '%s' --out '%s' --batch 2 --device cpu", ckpt, in,
                      outp);
    cr_assert_eq(rc, 0, "%s", out);
    // the engine's completion for the same request, pool of 2
    ModelConfig c;
    cr_assert_eq(model_config_named("tiny", &c), 0);
    Model *m = model_new(&c);
    model_init(m, 5);
    Engine *e = engine_new(m, 2, 4096);
    Got g = {0};
    char err[200];
    EngineRequest r = {.prompt = "a\0b\0", .prompt_len = 4, .max_tokens = 24, .sp = {4.0f, 0, 0.95f}, .seed = 3,
                       .on_text = ignore_text, .on_done = keep, .user = &g};
    cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    while (engine_step(e) > 0) {}
    engine_free(e);
    model_free(m);
    int wl;
    char *want = engine_utf8_clean(g.text, g.len, &wl);

    FILE *f = fopen(outp, "r");
    cr_assert(f);
    char line[8192];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    Json *j = json_parse(line, n, err, sizeof err);
    cr_assert(j, "%s: %.*s", err, (int)n, line);
    const Json *p = json_get(j, "prompt"), *comp = json_get(j, "completion");
    cr_assert(p && comp, "%.*s", (int)n, line);
    cr_expect_eq(p->len, 4, "the prompt came back as %d bytes", p->len);
    cr_expect(p->len == 4 && !memcmp(p->str, "a\0b\0", 4));
    cr_expect_eq(comp->len, wl, "the completion came back as %d bytes, the engine made %d", comp->len, wl);
    cr_expect(comp->len == wl && !memcmp(comp->str, want, (size_t)wl), "the completion is not the engine's");
    json_free(j);
    free(want);
}

// Runs glia ARGS with stdout sent to `to` (a shell redirection such as
// ">/dev/full"); stderr is captured into out. Returns the exit status.
static int run_stdout_to(char *out, size_t cap, const char *to, const char *args) {
    char log[400], cmd[2000];
    snprintf(log, sizeof log, "%s/stderr.txt", dir);
    snprintf(cmd, sizeof cmd, "'%s' %s %s 2>'%s'", GLIA_BIN, args, to, log);
    int st = system(cmd);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(out, 1, cap - 1, f) : 0;
    out[n] = 0;
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(cli_output, commands_fail_when_stdout_cannot_be_written) {
    if (access("/dev/full", W_OK)) cr_skip_test("/dev/full is not available");
    char text[400], shards[400], out[8192];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(shards, sizeof shards, "%s/shards", dir);
    FILE *f = fopen(text, "w");
    cr_assert(f);
    for (int i = 0; i < 400; i++) fputs("the astrocyte listens. ", f);
    fclose(f);
    char args[1200];
    snprintf(args, sizeof args, "prepare --in '%s' --out '%s' --val-frac 0.5", text, shards);
    int rc = run_stdout_to(out, sizeof out, ">/dev/full", args);
    cr_expect_neq(rc, 0, "prepare exits 0 with stdout full: %s", out);
    cr_expect(strstr(out, "cannot write"), "%s", out);
    cr_assert_eq(run_stdout_to(out, sizeof out, ">/dev/null", args), 0, "%s", out);
    snprintf(args, sizeof args, "eval --ckpt '%s' --data '%s' --seq 32 --batch 2 --batches 1 --device cpu", ckpt, shards);
    cr_assert_eq(run_stdout_to(out, sizeof out, ">/dev/null", args), 0, "%s", out);
    rc = run_stdout_to(out, sizeof out, ">/dev/full", args);
    cr_expect_neq(rc, 0, "eval exits 0 with stdout full: %s", out);
    snprintf(args, sizeof args, "generate --ckpt '%s' --prompt 'x' --tokens 8 --device cpu", ckpt);
    rc = run_stdout_to(out, sizeof out, ">/dev/full", args);
    cr_expect_neq(rc, 0, "generate exits 0 with stdout full: %s", out);
    rc = run_stdout_to(out, sizeof out, ">&-", args);
    cr_expect_neq(rc, 0, "generate exits 0 with stdout closed: %s", out);
}

// The breakdown of `bench kernels --step tiny --device cpu` over 2 profiled
// steps: shares (the host row included) sum to 100 % ± 0.5; the matmul
// entries' calls are the step's products counted from the model's structure:
// forward W_1 and W_2 in each of the L layers plus the tied head (the AM-SU's
// projections run inside amsu_forward, one call per layer), backward the same.
Test(cli_output, bench_step_breakdown_adds_up) {
    char out[16384];
    int rc = glia_run(out, sizeof out, "bench kernels --device cpu --step tiny --batch 2 --seq 16 --reps 2 --threads 1");
    cr_assert_eq(rc, 0, "%s", out);
    ModelConfig c;
    model_config_named("tiny", &c);
    const char *p = strstr(out, "where the time goes: 2 steps");
    cr_assert(p, "%s", out);
    double share_sum = 0.0;
    long mm_fwd = -1, mm_bwd = -1, amsu_fwd = -1;
    int rows = 0;
    for (p = strstr(p, "\n  "); p; p = strstr(p + 1, "\n  ")) {
        char name[40], calls[16];
        double ms, share;
        if (sscanf(p, " (host, between) %15s %lf %lf%%", calls, &ms, &share) == 3) strcpy(name, "host");
        else if (sscanf(p, " %39s %15s %lf %lf%%", name, calls, &ms, &share) != 4) continue;
        cr_expect(ms >= 0.0, "%s: %.3f ms", name, ms);
        share_sum += share, rows++;
        if (!strcmp(name, "matmul_forward")) mm_fwd = atol(calls);
        if (!strcmp(name, "matmul_backward")) mm_bwd = atol(calls);
        if (!strcmp(name, "amsu_forward")) amsu_fwd = atol(calls);
    }
    cr_expect(rows >= 10, "%d rows: %s", rows, out);
    cr_expect(fabs(share_sum - 100.0) <= 0.5, "shares sum to %.2f %%: %s", share_sum, out);
    cr_expect_eq(mm_fwd, 2 * (2 * c.L + 1), "matmul_forward calls %ld: %s", mm_fwd, out);
    cr_expect_eq(mm_bwd, 2 * (2 * c.L + 1), "matmul_backward calls %ld: %s", mm_bwd, out);
    cr_expect_eq(amsu_fwd, 2 * c.L, "amsu_forward calls %ld", amsu_fwd);
    cr_expect(strstr(out, "MFU"), "%s", out);
}
