// testutil.c: see testutil.h.
#include "testutil.h"
#include "common/step.h"

#include <criterion/criterion.h>
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void rng_seed(TestRng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t rng_next(TestRng *r) {  // splitmix64
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float rng_uniform(TestRng *r) { return (float)((rng_next(r) >> 40) * (1.0 / 16777216.0)); }

float rng_normal(TestRng *r) {
    double u1 = ((rng_next(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void fill_normal(float *x, size_t n, float std, TestRng *r) {
    for (size_t i = 0; i < n; i++) x[i] = std * rng_normal(r);
}

double rel_err(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num || isnan(d)) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0.0 ? num / den : num;
}

double rel_err_d(const double *a, const double *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > num || isnan(d)) num = d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return den > 0.0 ? num / den : num;
}

size_t spike_mismatches(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (a[i] != b[i]);
    return k;
}

const char *fixture_path(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", GLIA_FIXTURES, name);
    return buf;
}

int read_losses(const char *dir, double *loss, int max) {
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"loss\": ");
        if (p) loss[n++] = atof(p + 8);
    }
    fclose(f);
    return n;
}

int read_step_metrics(const char *dir, const char *name, double *loss, double *norm, int max) {
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, name);
    FILE *f = fopen(path, "r");
    cr_assert(f, "%s", path);
    int n = 0;
    long step;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *g = strstr(line, "\"grad_norm\": ");
        if (g && sscanf(line, "{\"step\": %ld, \"loss\": %lf", &step, &loss[n]) == 2 &&
            sscanf(g, "\"grad_norm\": %lf", &norm[n]) == 1)
            n++;
    }
    fclose(f);
    return n;
}

int test_sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

int write_word_corpus(const char *path, int words) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    const char *w[] = {"the", "astrocyte", "neuron", "fires", "slowly", "and", "calcium", "rises"};
    unsigned s = 7;
    for (int i = 0; i < words; i++) {
        s = s * 1103515245u + 12345u;
        fprintf(f, "%s%s", w[(s >> 16) % 8], i % 9 == 8 ? ".\n" : " ");
    }
    return fclose(f) ? -1 : 0;
}

int glia_run(char *out, size_t cap, const char *fmt, ...) {
    char args[3000], cmd[4096], log[512];
    const char *base = getenv("TMPDIR");
    snprintf(log, sizeof log, "%s/glia_run_XXXXXX", base && *base ? base : "/tmp");
    int fd = mkstemp(log);
    if (fd < 0) return -1;
    close(fd);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s' 2>&1", GLIA_BIN, args, log);
    int st = system(cmd);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(out, 1, cap - 1, f) : 0;
    out[n] = 0;
    if (f) fclose(f);
    unlink(log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Random parameters with every path active (cf. tools/reference.py fixtures).
void test_model_randomise(Model *m, uint64_t seed) {
    TestRng r;
    rng_seed(&r, seed);
    model_init(m, seed);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        const char *leaf = strrchr(t->name, '.');
        leaf = leaf ? leaf + 1 : t->name;
        if (!strcmp(leaf, "E")) fill_normal(p, (size_t)m->cfg.V * m->cfg.C, 0.5f, &r);
        else if (!strcmp(leaf, "W_O")) fill_normal(p, t->numel, 1.0f / sqrtf(m->cfg.C), &r);
        else if (!strcmp(leaf, "W_2")) fill_normal(p, t->numel, 1.0f / sqrtf(m->cfg.F), &r);
        else if (leaf[0] == 'a') for (size_t k = 0; k < t->numel; k++) p[k] += 0.3f * rng_normal(&r);
        else if (leaf[0] == 'n') for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f + 0.1f * rng_normal(&r);
    }
}

void test_random_tokens(int *x, int n, int V, TestRng *r) {
    for (int i = 0; i < n; i++) x[i] = (int)(rng_uniform(r) * V) % V;
}

void test_logits(const Model *m, int B, int T, float *out) {
    const size_t V = (size_t)m->cfg.V;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) memcpy(out + ((size_t)b * T + t) * V, model_logits(m, b, t), V * sizeof(float));
}

void test_fill_pad_columns(float *logits, int M, int V, int Vp) {
    static const float garbage[] = {1e30f, -1e30f, 3.4028235e38f, 88.0f};
    for (int i = 0; i < M; i++)
        for (int v = V; v < Vp; v++) logits[(size_t)i * Vp + v] = garbage[(i + v) % 4];
}

void test_xent_oracle(const float *logits, const int *targets, int M, int V, int Vp, double k, double *loss,
                      double *dlogits) {
    for (int i = 0; i < M; i++) {
        const float *l = logits + (size_t)i * Vp;
        double *d = dlogits + (size_t)i * Vp, sum = 0.0;
        for (int v = 0; v < Vp; v++) d[v] = 0.0;
        loss[i] = 0.0;
        if (targets[i] < 0) continue;
        for (int v = 0; v < V; v++) sum += exp((double)l[v]);
        loss[i] = log(sum) - l[targets[i]];
        for (int v = 0; v < V; v++) d[v] = k * (exp((double)l[v]) / sum - (v == targets[i]));
    }
}

void test_require_cuda_build(void) {
#ifndef GLIA_HAVE_CUDA
    cr_skip_test("glia built without CUDA");
#endif
}

void test_require_gpu(void) {
    test_require_cuda_build();
#ifdef GLIA_HAVE_CUDA
    if (cuda_device_count() == 0) cr_skip_test("no CUDA device found");
#endif
}

int test_have_gpu(void) {
#ifdef GLIA_HAVE_CUDA
    return cuda_device_count() > 0;
#else
    return 0;
#endif
}

void test_alloc_train(Model *m) {
    char err[300];
    cr_assert_eq(model_alloc_train(m, 0, 1, 0, 0, m->nparams, m->nparams, err, sizeof err), 0, "%s", err);
}

const char *test_python_torch(void) {
    static const char *found;
    static int tried;
    if (tried) return found;
    tried = 1;
    const char *env = getenv("GLIA_PYTHON");
    const char *candidates[] = {env && *env ? env : "python3", "/usr/bin/python3"};
    for (int i = 0; i < 2 && !found; i++) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "'%s' -c 'import torch' >/dev/null 2>&1", candidates[i]);
        if (system(cmd) == 0) found = candidates[i];
    }
    return found;
}

// Smallest |potential| of any neuron of any layer at positions [0, T) of
// the last forward (B = 1), CPU activations.
static float min_potential(const Model *m, int T) {
    float best = INFINITY;
    const int C = m->cfg.C, F = m->cfg.F;
    for (int l = 0; l < m->cfg.L; l++) {
        const LayerActs *a = &m->acts[l];
        for (size_t i = 0; i < (size_t)T * C; i++) {
            float o = a->amsu.o ? a->amsu.o[i] : 0.0f;
            best = fminf(best, fabsf(step_potential(a->amsu.u[i], o)));
        }
        for (size_t i = 0; i < (size_t)T * F; i++) best = fminf(best, fabsf(step_potential(a->w[i], 0.0f)));
    }
    return best;
}

int test_texts_agree(Model *cpu, const char *prompt, const char *ref, size_t nr, const char *got, size_t ng,
                     char *why, size_t cap) {
    size_t p = 0;
    while (p < nr && p < ng && ref[p] == got[p]) p++;
    if (p == nr && p == ng) return 1;
    if (!prompt[0]) prompt = "\n";
    const size_t np = strlen(prompt);
    const int T = (int)(np + p);
    int *tok = malloc(sizeof(int) * (size_t)T);
    if (!tok) return snprintf(why, cap, "out of memory"), 0;
    for (size_t i = 0; i < np; i++) tok[i] = (unsigned char)prompt[i];
    for (size_t i = 0; i < p; i++) tok[np + i] = (unsigned char)ref[i];
    model_alloc_acts(cpu, 1, T);
    model_forward(cpu, tok, NULL, 1, T, NULL);
    free(tok);
    float margin = min_potential(cpu, T);
    const float *row = model_logits(cpu, 0, T - 1);
    float top = -INFINITY, second = -INFINITY, mag = 0.0f;
    for (int v = 0; v < cpu->cfg.V; v++) {
        mag = fmaxf(mag, fabsf(row[v]));
        if (row[v] > top) second = top, top = row[v];
        else if (row[v] > second) second = row[v];
    }
    if (margin < TEST_SPIKE_MARGIN || top - second <= 1e-4f * mag) return 1;
    snprintf(why, cap, "texts part at byte %zu ('%.*s' vs '%.*s') with no potential within %g of the threshold "
             "(closest %.3g) and no tie (top two logits %.6g, %.6g)", p, (int)(nr - p < 8 ? nr - p : 8), ref + p,
             (int)(ng - p < 8 ? ng - p : 8), got + p, (double)TEST_SPIKE_MARGIN, (double)margin, (double)top,
             (double)second);
    return 0;
}
