// test_parity.c: the CPU backend against the independent PyTorch reference.
//
// tools/reference.py implements SPEC.md in float64 with autograd (no
// hand-written backward) and wrote the fixtures in tests/fixtures: inputs
// (<case>.in.safetensors) and every output and gradient
// (<case>.out.safetensors). Here the CPU ops run on the same inputs and must
// give the same spikes exactly and every other tensor to a normwise relative
// error (testutil.h) of at most 1e-5. The generator keeps every membrane at
// least 1e-4 away from the threshold, so an fp32 computation cannot flip a
// spike by rounding.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"  // AMSU_CHUNK
#include "cpu/cpu.h"
#include "model/model.h"
#include "glia/safetensors.h"
#include "testutil.h"

#define PARITY_TOL 1e-5

static StFile *load_fixture(const char *name) {
    char err[ST_ERR_LEN];
    StFile *f = st_load(fixture_path(name), err);
    cr_assert(f, "fixture: %s", err);
    return f;
}

static const float *tensor(const StFile *f, const char *name, int64_t *numel) {
    const StTensor *t = st_find(f, name);
    cr_assert(t && t->is_f32, "fixture tensor '%s' missing or not F32", name);
    if (numel) *numel = t->numel;
    return t->data;
}

static void expect_close(const StFile *ref, const char *name, const float *got, size_t n) {
    int64_t m;
    const float *want = tensor(ref, name, &m);
    cr_assert_eq((size_t)m, n, "%s: %zu elements, reference has %lld", name, n, (long long)m);
    double err = rel_err(got, want, n);
    cr_log_info("parity %-10s err=%.2e", name, err);
    cr_expect(err <= PARITY_TOL, "%s: relative error %.3e over %.0e", name, err, PARITY_TOL);
}

static void expect_spikes(const StFile *ref, const char *name, const float *got, size_t n) {
    int64_t m;
    const float *want = tensor(ref, name, &m);
    cr_assert_eq((size_t)m, n);
    size_t bad = spike_mismatches(got, want, n), fired = 0;
    for (size_t i = 0; i < n; i++) fired += want[i] != 0.0f;
    cr_expect_eq(bad, 0, "%s: %zu of %zu spikes differ", name, bad, n);
    cr_assert(fired > 0 && fired < n, "%s: the fixture must have both spikes and silence", name);
}

static void check_model_case(const char *name);

static void check_amsu_case(const char *name, int astro) {
    char in_name[128], out_name[128];
    snprintf(in_name, sizeof in_name, "%s.in.safetensors", name);
    snprintf(out_name, sizeof out_name, "%s.out.safetensors", name);
    StFile *in = load_fixture(in_name), *ref = load_fixture(out_name);
    const StTensor *zt = st_find(in, "z");
    cr_assert(zt && zt->ndim == 3);
    int B = zt->shape[0], T = zt->shape[1], C = zt->shape[2], Nh = 1;
    if (astro) Nh = st_find(in, "a_lambda")->shape[0];
    AmsuShape sh = {B, T, C, Nh, astro};
    size_t n = (size_t)B * T * C, cc = (size_t)C * C;
    float *w_in = malloc(4 * cc * sizeof(float));  // W_I, W_K, W_V, W_Q stacked
    const char *names[4] = {"W_I", "W_K", "W_V", "W_Q"};
    for (int i = 0; i < (astro ? 4 : 1); i++) memcpy(w_in + i * cc, tensor(in, names[i], 0), cc * sizeof(float));
    AmsuWeights w = {w_in, tensor(in, "W_O", 0), astro ? tensor(in, "a_lambda", 0) : NULL, tensor(in, "a_beta", 0), NULL};
    float *mem = calloc(amsu_acts_size(sh) + amsu_scratch_size(sh) + 2 * n + 5 * cc + 2 * C,
                        sizeof(float));
    AmsuActs acts;
    amsu_acts_bind(&acts, sh, mem);
    float *scratch = mem + amsu_acts_size(sh), *y = scratch + amsu_scratch_size(sh);
    float *dz = y + n, *gp = dz + n;
    AmsuGrads g = {gp, gp + 4 * cc, gp + 5 * cc, gp + 5 * cc + C};
    amsu_forward(y, &acts, tensor(in, "z", 0), &w, sh, NULL, NULL, NULL);
    amsu_backward(dz, &g, scratch, tensor(in, "dy", 0), tensor(in, "z", 0), &acts, &w, sh, NULL);

    expect_spikes(ref, "s", acts.s, n);
    expect_close(ref, "y", y, n);
    expect_close(ref, "u", acts.u, n);
    expect_close(ref, "o", acts.o, n);
    expect_close(ref, "dz", dz, n);
    expect_close(ref, "dW_I", g.dW_in, cc);
    expect_close(ref, "dW_O", g.dW_O, cc);
    expect_close(ref, "da_beta", g.da_beta, C);
    if (astro) {
        expect_close(ref, "dW_K", g.dW_in + cc, cc);
        expect_close(ref, "dW_V", g.dW_in + 2 * cc, cc);
        expect_close(ref, "dW_Q", g.dW_in + 3 * cc, cc);
        expect_close(ref, "da_lambda", g.da_lambda, C);
    }
    free(mem), free(w_in);
    st_free(in);
    st_free(ref);
}

// the per-timestep scan (amsu.c); the chunked astrocyte is the CPU's default
Test(parity, amsu_small) {
    cpu_set_amsu(AMSU_SCAN);
    check_amsu_case("amsu_small", 1);
}
Test(parity, amsu_odd_heads) {
    cpu_set_amsu(AMSU_SCAN);
    check_amsu_case("amsu_odd", 1);
}
Test(parity, amsu_long_multichunk) {
    cpu_set_amsu(AMSU_SCAN);
    check_amsu_case("amsu_long", 1);
}
Test(parity, amsu_astro_off) { check_amsu_case("amsu_off", 0); }
// the chunked astrocyte (astro_chunk.c) against the same fp64 fixtures
Test(parity, amsu_chunked) {
    cpu_set_amsu(AMSU_CHUNK);
    check_amsu_case("amsu_small", 1);
    check_amsu_case("amsu_odd", 1);
    check_amsu_case("amsu_long", 1);
}
Test(parity, model_tiny_scan) {
    cpu_set_amsu(AMSU_SCAN);
    check_model_case("tiny");
}

Test(parity, lif_neuron) {
    StFile *in = load_fixture("lif.in.safetensors"), *ref = load_fixture("lif.out.safetensors");
    const StTensor *ct = st_find(in, "c");
    cr_assert(ct && ct->ndim == 3);
    int B = ct->shape[0], T = ct->shape[1], F = ct->shape[2];
    size_t n = (size_t)B * T * F;
    float *w = malloc(n * sizeof(float)), *r = malloc(n * sizeof(float));
    float *dc = malloc(n * sizeof(float)), *dbeta = calloc(F, sizeof(float));
    const float *a_beta = tensor(in, "a_beta", 0);
    neuron_forward(w, r, ct->data, NULL, a_beta, NULL, NULL, B, T, F, F, NULL);
    neuron_backward(dc, NULL, dbeta, tensor(in, "ds", 0), w, NULL, r, a_beta, B, T, F, F, NULL);
    expect_spikes(ref, "r", r, n);
    expect_close(ref, "w", w, n);
    expect_close(ref, "dc", dc, n);
    expect_close(ref, "da_beta", dbeta, F);
    free(w), free(r), free(dc), free(dbeta);
    st_free(in);
    st_free(ref);
}

Test(parity, rmsnorm) {
    StFile *in = load_fixture("rmsnorm.in.safetensors"), *ref = load_fixture("rmsnorm.out.safetensors");
    const StTensor *xt = st_find(in, "x");
    cr_assert(xt && xt->ndim == 2);
    int N = xt->shape[0], C = xt->shape[1];
    float *y = malloc((size_t)N * C * sizeof(float)), *rstd = malloc(N * sizeof(float));
    float *dx = calloc((size_t)N * C, sizeof(float)), *dg = calloc(C, sizeof(float));
    rmsnorm_forward(y, rstd, xt->data, tensor(in, "g", 0), N, C);
    rmsnorm_backward(dx, dg, tensor(in, "dy", 0), xt->data, tensor(in, "g", 0), rstd, N, C);
    expect_close(ref, "y", y, (size_t)N * C);
    expect_close(ref, "dx", dx, (size_t)N * C);
    expect_close(ref, "dg", dg, C);
    free(y), free(rstd), free(dx), free(dg);
    st_free(in);
    st_free(ref);
}

// ---- the whole model -------------------------------------------------------------

static int meta_int(const StFile *f, const char *key) {
    const char *s = st_meta(f, key);
    cr_assert(s, "fixture metadata '%s' missing", key);
    return atoi(s);
}

static void check_model_case(const char *name) {
    char in_name[128], out_name[128];
    snprintf(in_name, sizeof in_name, "model_%s.in.safetensors", name);
    snprintf(out_name, sizeof out_name, "model_%s.out.safetensors", name);
    StFile *in = load_fixture(in_name), *ref = load_fixture(out_name);
    ModelConfig cfg = {meta_int(in, "V"), meta_int(in, "Vp"), meta_int(in, "L"), meta_int(in, "C"),
                       meta_int(in, "Nh"), meta_int(in, "F"), meta_int(in, "astro")};
    int B = meta_int(in, "B"), T = meta_int(in, "T");
    Model *m = model_new(&cfg);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        int64_t n;
        const float *src = tensor(in, t->name, &n);
        cr_assert_eq((size_t)n, t->numel, "%s: size", t->name);
        memcpy(m->params + t->offset, src, t->numel * sizeof(float));
    }
    int *tok = malloc(B * T * sizeof(int)), *tgt = malloc(B * T * sizeof(int));
    const float *ft = tensor(in, "tokens", 0), *fg = tensor(in, "targets", 0);
    for (int i = 0; i < B * T; i++) tok[i] = (int)ft[i], tgt[i] = (int)fg[i];
    test_alloc_train(m);
    model_alloc_acts(m, B, T);
    model_zero_grad(m);
    float loss = (float)model_forward(m, tok, tgt, B, T, NULL);
    float *logits = malloc((size_t)B * T * cfg.V * sizeof(float));
    test_logits(m, B, T, logits);
    expect_close(ref, "logits", logits, (size_t)B * T * cfg.V);
    free(logits);
    model_backward(m, tok, 1.0f);
    expect_close(ref, "loss", &loss, 1);
    for (int i = 0; i < m->ntensors; i++) {
        char gname[96];
        snprintf(gname, sizeof gname, "grad.%s", m->tensors[i].name);
        expect_close(ref, gname, m->grads + m->tensors[i].offset, m->tensors[i].numel);
    }
    free(tok), free(tgt);
    model_free(m);
    st_free(in);
    st_free(ref);
}

Test(parity, model_tiny) { check_model_case("tiny"); }
Test(parity, model_tiny_astro_off) { check_model_case("tiny_off"); }
Test(parity, model_padded_vocab) { check_model_case("padded"); }
