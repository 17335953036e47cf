// test_export.c: `glia export` / `glia import` (host/cmd/cmd_export.c).
//
// The commands are called in-process through their entry points
// (commands.h) with stderr redirected to a file, so the tests check the exit
// status and that every error is exactly one line naming the file and the
// key or tensor. The round trip must give back the same parameters bit for
// bit. The last test is the point of the export: a model trained by glia,
// exported, and run by the independent PyTorch reference
// (tools/reference.py logits) must give glia's own logits to 1e-5
// (normwise relative error, testutil.h); it is skipped where PyTorch and
// safetensors are not installed.
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "cmd/commands.h"
#include "glia/safetensors.h"
#include "model/model.h"
#include "testutil.h"

static char dir[4096];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(dir, sizeof dir, "%s/glia_export_XXXXXX", base);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp under %s failed", base);
}

static void teardown(void) {
    if (!dir[0]) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(export, .init = setup, .fini = teardown);

static const char *path_in(const char *name) {
    static char buf[8][4200];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", dir, name);
    return p;
}

// Runs `glia <args...>` in-process; returns the exit status and leaves what
// it wrote to stderr in `errbuf`.
static int run_cmd(char *errbuf, size_t cap, int (*cmd)(int, char **), char **args) {
    int argc = 0;
    while (args[argc]) argc++;
    const char *errpath = path_in("stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    int rc = cmd(argc, args);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(errpath, "rb");
    cr_assert_not_null(fp);
    size_t n = fread(errbuf, 1, cap - 1, fp);
    errbuf[n] = '\0';
    fclose(fp);
    return rc;
}

// Exactly one non-empty line containing `needle`.
static void assert_one_line(const char *err, const char *needle) {
    size_t n = strlen(err);
    cr_assert(n > 1 && err[n - 1] == '\n', "expected one line on stderr, got '%s'", err);
    cr_assert_null(memchr(err, '\n', n - 1), "more than one line on stderr: '%s'", err);
    cr_assert_not_null(strstr(err, needle), "'%s' does not mention '%s'", err, needle);
}

// A small astro-on model file with seeded parameters.
static const char *make_model(const char *name, int astro) {
    ModelConfig cfg = {70, 128, 2, 16, 2, 48, astro};
    Model *m = model_new(&cfg);
    model_init(m, 7);
    char err[CKPT_ERR_LEN];
    const char *p = path_in(name);
    cr_assert_eq(ckpt_save_model(m, p, 5, err), 0, "%s", err);
    model_free(m);
    return p;
}

static int do_export(const char *ckpt, const char *out, char *err, size_t cap) {
    char *args[] = {"export", "--ckpt", (char *)ckpt, "--out", (char *)out, NULL};
    return run_cmd(err, cap, cmd_export, args);
}

static int do_import(const char *in, const char *out, char *err, size_t cap) {
    char *args[] = {"import", "--in", (char *)in, "--out", (char *)out, NULL};
    return run_cmd(err, cap, cmd_import, args);
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    fputs(text, fp);
    cr_assert_eq(fclose(fp), 0);
}

static void assert_same_params(const char *a, const char *b) {
    char err[CKPT_ERR_LEN];
    Model *x = ckpt_load_model(a, NULL, err);
    cr_assert_not_null(x, "%s", err);
    Model *y = ckpt_load_model(b, NULL, err);
    cr_assert_not_null(y, "%s", err);
    cr_assert_eq(memcmp(&x->cfg, &y->cfg, sizeof x->cfg), 0);
    cr_assert_eq(x->nparams, y->nparams);
    cr_assert_eq(memcmp(x->params, y->params, x->nparams * sizeof(float)), 0);
    model_free(x);
    model_free(y);
}

Test(export, round_trip_is_exact) {
    char err[2048];
    for (int astro = 0; astro <= 1; astro++) {
        const char *model = make_model(astro ? "on.safetensors" : "off.safetensors", astro);
        const char *out = path_in(astro ? "exp_on" : "exp_off");
        const char *back = path_in(astro ? "back_on.safetensors" : "back_off.safetensors");
        cr_assert_eq(do_export(model, out, err, sizeof err), 0, "%s", err);
        // The export is plain safetensors + config.json.
        char st_err[ST_ERR_LEN];
        char p[4300];
        snprintf(p, sizeof p, "%s/model.safetensors", out);
        StFile *f = st_load(p, st_err);
        cr_assert_not_null(f, "%s", st_err);
        cr_assert_not_null(st_find(f, "E"));
        cr_assert_not_null(st_find(f, "blocks.1.W_I"));
        cr_assert_eq(st_find(f, "blocks.0.W_K") != NULL, astro);
        st_free(f);
        snprintf(p, sizeof p, "%s/config.json", out);
        FILE *fp = fopen(p, "rb");
        cr_assert_not_null(fp);
        char json[2048];
        json[fread(json, 1, sizeof json - 1, fp)] = '\0';
        fclose(fp);
        cr_assert_not_null(strstr(json, "\"model_type\":\t\"astrosnn\""), "%s", json);
        cr_assert_not_null(strstr(json, astro ? "\"astro\":\ttrue" : "\"astro\":\tfalse"));

        cr_assert_eq(do_import(out, back, err, sizeof err), 0, "%s", err);
        assert_same_params(model, back);
    }
}

static const char *GOOD_CONFIG =
    "{\"model_type\": \"astrosnn\", \"model_version\": 1, \"vocab_size\": 70, "
    "\"vocab_padded\": 128, \"n_layer\": 2, \"n_embd\": 16, \"n_head\": 2, \"ffn_dim\": 48, "
    "\"astro\": true}";

// Exports the seeded model to `name`, then replaces its config.json.
static const char *export_with_config(const char *name, const char *config) {
    char err[2048];
    const char *model = make_model("src.safetensors", 1);
    const char *out = path_in(name);
    cr_assert_eq(do_export(model, out, err, sizeof err), 0, "%s", err);
    if (config) {
        char p[4300];
        snprintf(p, sizeof p, "%s/config.json", out);
        write_text(p, config);
    }
    return out;
}

// Replaces one key's "value" in GOOD_CONFIG; NULL value removes the key.
static char *config_with(const char *key, const char *value) {
    static char buf[1024];
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *at = strstr(GOOD_CONFIG, pat);
    cr_assert_not_null(at);
    const char *end = at + strlen(pat);
    while (*end != ',' && *end != '}') end++;
    size_t head = (size_t)(at - GOOD_CONFIG);
    if (value)
        snprintf(buf, sizeof buf, "%.*s%s%s%s", (int)head, GOOD_CONFIG, pat, value, end);
    else if (*end == ',')
        snprintf(buf, sizeof buf, "%.*s%s", (int)head, GOOD_CONFIG, end + 2);
    else  // last key: drop the ", " before it
        snprintf(buf, sizeof buf, "%.*s%s", (int)head - 2, GOOD_CONFIG, end);
    return buf;
}

Test(export, good_config_text_imports) {
    char err[2048];
    const char *out = export_with_config("good", GOOD_CONFIG);
    cr_assert_eq(do_import(out, path_in("good.safetensors"), err, sizeof err), 0, "%s", err);
    assert_same_params(path_in("src.safetensors"), path_in("good.safetensors"));
}

Test(export, bad_configs_are_one_line_errors) {
    static const struct { const char *key, *value, *needle; } cases[] = {
        {"n_head", NULL, "'n_head' is missing"},
        {"astro", NULL, "'astro' is missing"},
        {"model_type", "\"gpt2\"", "model_type"},
        {"model_version", "2", "model_version 2"},
        {"n_embd", "16.5", "'n_embd' is not a whole number"},
        {"n_embd", "\"16\"", "'n_embd' is not a whole number"},
        {"vocab_size", "-3", "'vocab_size'"},
        {"astro", "1", "'astro' is not true or false"},
        {"n_head", "3", "bad configuration"},
        {"vocab_padded", "100", "bad configuration"},
        // A config far bigger than the file: refused before any allocation.
        {"n_embd", "65536", "needs"},
        // A config of the right size class but different shapes.
        {"ffn_dim", "40", "tensor 'blocks.0.W_1'"},
        {"n_layer", "1", "is not a parameter of this model"},
    };
    char err[2048];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu", i);
        const char *out = export_with_config(name, config_with(cases[i].key, cases[i].value));
        int rc = do_import(out, path_in("never.safetensors"), err, sizeof err);
        cr_assert_eq(rc, 2, "case %zu (%s): exit %d, stderr '%s'", i, cases[i].needle, rc, err);
        assert_one_line(err, cases[i].needle);
        cr_assert_not_null(strstr(err, "config.json") ? err : strstr(err, "model.safetensors"),
                           "no file named in '%s'", err);
        cr_assert_neq(access(path_in("never.safetensors"), F_OK), 0);
    }
    // Not JSON at all, and no config.json.
    const char *out = export_with_config("notjson", "{\"model_type\": ");
    cr_assert_eq(do_import(out, path_in("never.safetensors"), err, sizeof err), 2);
    assert_one_line(err, "config.json: not a JSON object");
    cr_assert_eq(do_import(dir, path_in("never.safetensors"), err, sizeof err), 2);
    assert_one_line(err, "config.json: cannot open");
}

Test(export, wrong_tensor_is_named) {
    char err[2048];
    const char *out = export_with_config("wrongshape", NULL);
    char p[4300];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    // Rewrite the tensors with blocks.1.W_O transposed to a wrong shape.
    char st_err[ST_ERR_LEN];
    StFile *f = st_load(p, st_err);
    cr_assert_not_null(f, "%s", st_err);
    StWriter *w = st_writer_new();
    for (int i = 0; i < f->n; i++) {
        const StTensor *t = &f->tensors[i];
        int64_t shape[2] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 1};
        if (!strcmp(t->name, "blocks.1.W_O")) shape[0] = 8, shape[1] = 32;
        st_writer_add(w, t->name, t->ndim, shape, t->data);
    }
    cr_assert_eq(st_writer_save(w, path_in("tmp.safetensors"), st_err), 0, "%s", st_err);
    st_writer_free(w);
    st_free(f);
    cr_assert_eq(rename(path_in("tmp.safetensors"), p), 0);
    cr_assert_eq(do_import(out, path_in("never.safetensors"), err, sizeof err), 2);
    assert_one_line(err, "tensor 'blocks.1.W_O': expected shape [16, 16], got [8, 32]");

    // A missing model.safetensors is named too.
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(do_import(out, path_in("never.safetensors"), err, sizeof err), 2);
    assert_one_line(err, "model.safetensors: cannot open");
}

Test(export, bad_checkpoint_and_flags) {
    char err[2048];
    write_text(path_in("junk.safetensors"), "not a model");
    cr_assert_eq(do_export(path_in("junk.safetensors"), path_in("x"), err, sizeof err), 2);
    assert_one_line(err, "junk.safetensors");
    char *args[] = {"export", "--ckpt", (char *)path_in("junk.safetensors"), NULL};
    cr_assert_eq(run_cmd(err, sizeof err, cmd_export, args), 2);
    assert_one_line(err, "--out is required");
}

// ---- parity with the PyTorch reference ------------------------------------------

Test(export, pytorch_reference_gives_glia_logits, .timeout = 300) {
    const char *py = test_python_torch();
    if (!py) cr_skip_test("PyTorch not installed (tools/setup.sh installs Debian's python3-torch)");
    char cmd[16384];
    // A tiny model, trained for 3 steps on a short text.
    const char *text = path_in("text.txt");
    FILE *fp = fopen(text, "wb");
    cr_assert_not_null(fp);
    for (int i = 0; i < 40; i++)
        fputs("In the beginning God created the heaven and the earth. ", fp);
    cr_assert_eq(fclose(fp), 0);
    const char *run = path_in("run");
    snprintf(cmd, sizeof cmd,
             "'%s' train --device cpu --size tiny --steps 3 --batch 1 --seq 8 --data '%s' --out '%s' "
             "--sample-tokens 0 --eval-every 0 --threads 1 --quiet > '%s/train.log' 2>&1",
             GLIA_BIN, text, run, dir);
    cr_assert_eq(system(cmd), 0, "glia train failed: see %s/train.log", dir);

    char model[4300], err[2048];
    snprintf(model, sizeof model, "%s/model.safetensors", run);
    const char *out = path_in("exported");
    cr_assert_eq(do_export(model, out, err, sizeof err), 0, "%s", err);

    static const int tokens[] = {73, 110, 32, 116, 104, 101, 32, 98, 101, 103, 105, 110, 0, 255};
    const int T = sizeof tokens / sizeof tokens[0];
    char list[256] = "";
    for (int t = 0; t < T; t++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", t ? "," : "", tokens[t]);
    // GLIA_FIXTURES is <repo>/tests/fixtures.
    const char *logits_path = path_in("ref_logits.safetensors");
    snprintf(cmd, sizeof cmd,
             "'%s' '%s/../../tools/reference.py' logits --model '%s' --tokens %s --out '%s'",
             py, GLIA_FIXTURES, out, list, logits_path);
    cr_assert_eq(system(cmd), 0, "reference.py logits failed");

    char ckerr[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(model, NULL, ckerr);
    cr_assert_not_null(m, "%s", ckerr);
    model_alloc_acts(m, 1, T);
    model_forward(m, tokens, NULL, 1, T, NULL);
    int V = m->cfg.V;
    float *mine = malloc((size_t)T * V * sizeof(float));
    cr_assert_not_null(mine);
    for (int t = 0; t < T; t++) memcpy(mine + (size_t)t * V, model_logits(m, 0, t), V * sizeof(float));

    char st_err[ST_ERR_LEN];
    StFile *f = st_load(logits_path, st_err);
    cr_assert_not_null(f, "%s", st_err);
    const int64_t shape[3] = {1, T, V};
    const StTensor *ref = st_expect(f, "logits", 3, shape, st_err);
    cr_assert_not_null(ref, "%s", st_err);
    double e = rel_err(mine, ref->data, (size_t)T * V);
    cr_assert_leq(e, 1e-5, "glia vs PyTorch logits: normwise relative error %.3g", e);
    st_free(f);
    free(mine);
    model_free(m);
}
