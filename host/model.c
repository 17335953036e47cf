// model.c: the AstroSNN language model on the CPU backend: parameters,
// initialisation, forward, backward.
//
// The model is a straight line of ops from kernels/cpu (the same ops the
// tests check one by one), so this file is mostly bookkeeping: where each
// tensor lives, and the order of the calls. Forward per layer:
//   z1 = RMSNorm(x_in; norm1);  x_mid = x_in + AMSU(z1)
//   z2 = RMSNorm(x_mid; norm2); c = z2 W_1ᵀ; r = LIF(c); x_out = x_mid + r W_2ᵀ
// and the backward walks it in reverse with one residual gradient dx.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/util.h"
#include "rng.h"
#ifdef GLIA_HAVE_CUDA
#include "model_cuda.h"
#define ON_CUDA(m) ((m)->cuda != NULL)
#else
#define ON_CUDA(m) 0
#endif

// ---- configuration -------------------------------------------------------------

int model_pad_vocab(int V) { return (V + 63) / 64 * 64; }

int model_config_named(const char *name, ModelConfig *cfg) {
    static const struct {
        const char *name;
        int L, C, Nh, F, V;
    } sizes[] = {
        {"tiny", 2, 32, 2, 128, 256},
        {"small", 4, 128, 4, 512, 256},
        {"124m", 12, 768, 12, 3072, 50257},
        {"1.5b", 24, 2048, 16, 8192, 50257},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (strcmp(name, sizes[i].name)) continue;
        *cfg = (ModelConfig){.V = sizes[i].V, .Vp = model_pad_vocab(sizes[i].V), .L = sizes[i].L,
                             .C = sizes[i].C, .Nh = sizes[i].Nh, .F = sizes[i].F, .astro = 1};
        return 0;
    }
    return -1;
}

int model_config_check(const ModelConfig *c, char *err, size_t n) {
    if (c->V < 2 || c->V > 65536) return snprintf(err, n, "vocabulary %d is out of range [2, 65536]", c->V), -1;
    if (c->Vp < c->V || c->Vp % 64) return snprintf(err, n, "padded vocabulary %d is not V = %d rounded up to 64", c->Vp, c->V), -1;
    if (c->L < 1 || c->L > 256) return snprintf(err, n, "layers %d is out of range [1, 256]", c->L), -1;
    if (c->C < 1 || c->C > 65536) return snprintf(err, n, "width %d is out of range", c->C), -1;
    if (c->F < 1 || c->F > 262144) return snprintf(err, n, "FFN width %d is out of range", c->F), -1;
    if (c->Nh < 1 || c->C % c->Nh)
        return snprintf(err, n, "heads %d do not divide the width %d", c->Nh, c->C), -1;
    return 0;
}

int64_t model_config_nparams(const ModelConfig *c) {
    int64_t C = c->C, F = c->F;
    int64_t per = 3 * C + 2 * C * C + 2 * F * C + F;  // norms, a_beta; W_I W_O; W_1 W_2; a_beta_ffn
    if (c->astro) per += 3 * C * C + C;                // W_K W_V W_Q; a_lambda (Nh x C/Nh)
    return (int64_t)c->Vp * C + c->L * per + C;        // E; blocks; norm_f
}

// ---- parameters --------------------------------------------------------------------

static void add_tensor(Model *m, const char *name, int ndim, int64_t d0, int64_t d1, int decay) {
    ParamTensor *t = &m->tensors[m->ntensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 1;
    t->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    t->offset = m->nparams;
    t->decay = decay;
    m->nparams += t->numel;
}

const ParamTensor *model_find(const Model *m, const char *name) {
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

// Points the layer views at buffer `base` (parameters or gradients).
static void bind_views(const Model *m, float *base, LayerParams *layers, float **E, float **nf) {
    char name[64];
#define VIEW(field, suffix)                                            \
    do {                                                               \
        snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);         \
        const ParamTensor *t = model_find(m, name);                    \
        layers[l].field = t ? base + t->offset : NULL;                 \
    } while (0)
    for (int l = 0; l < m->cfg.L; l++) {
        VIEW(norm1, "norm1");
        VIEW(W_I, "W_I");
        VIEW(W_K, "W_K");
        VIEW(W_V, "W_V");
        VIEW(W_Q, "W_Q");
        VIEW(W_O, "W_O");
        VIEW(a_lambda, "a_lambda");
        VIEW(a_beta, "a_beta");
        VIEW(norm2, "norm2");
        VIEW(W_1, "W_1");
        VIEW(W_2, "W_2");
        VIEW(a_beta_ffn, "a_beta_ffn");
    }
#undef VIEW
    *E = base + model_find(m, "E")->offset;
    *nf = base + model_find(m, "norm_f")->offset;
}

Model *model_new(const ModelConfig *cfg) {
    Model *m = xcalloc(1, sizeof(Model));
    m->cfg = *cfg;
    int L = cfg->L, C = cfg->C, F = cfg->F, Nh = cfg->Nh;
    m->tensors = xcalloc((size_t)2 + 12 * L, sizeof(ParamTensor));
    char name[64];
    add_tensor(m, "E", 2, cfg->Vp, C, 1);
    for (int l = 0; l < L; l++) {
#define ADD(suffix, ndim, d0, d1, decay)                        \
    do {                                                         \
        snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);  \
        add_tensor(m, name, ndim, d0, d1, decay);                \
    } while (0)
        ADD("norm1", 1, C, 0, 0);
        ADD("W_I", 2, C, C, 1);
        if (cfg->astro) {
            ADD("W_K", 2, C, C, 1);
            ADD("W_V", 2, C, C, 1);
            ADD("W_Q", 2, C, C, 1);
        }
        ADD("W_O", 2, C, C, 1);
        if (cfg->astro) ADD("a_lambda", 2, Nh, C / Nh, 0);
        ADD("a_beta", 1, C, 0, 0);
        ADD("norm2", 1, C, 0, 0);
        ADD("W_1", 2, F, C, 1);
        ADD("W_2", 2, C, F, 1);
        ADD("a_beta_ffn", 1, F, 0, 0);
#undef ADD
    }
    add_tensor(m, "norm_f", 1, C, 0, 0);
    m->params = xcalloc(m->nparams, sizeof(float));
    m->layers = xcalloc(L, sizeof(LayerParams));
    m->glayers = xcalloc(L, sizeof(LayerParams));
    bind_views(m, m->params, m->layers, &m->E, &m->norm_f);
    return m;
}

void model_alloc_grads(Model *m) {
    if (m->grads || ON_CUDA(m)) return;  // on the GPU: model_to_cuda allocated them
    m->grads = xcalloc(m->nparams, sizeof(float));
    bind_views(m, m->grads, m->glayers, &m->gE, &m->gnorm_f);
}

void model_zero_grad(Model *m) {
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) {
        model_cuda_zero_grad(m);
        return;
    }
#endif
    memset(m->grads, 0, m->nparams * sizeof(float));
}

void model_init(Model *m, uint64_t seed) {
    const ModelConfig *c = &m->cfg;
    Rng rng;
    rng_init(&rng, seed);
    double std_in = 1.0 / sqrt((double)c->C);                    // unit-scale synaptic currents
    double std_out = 0.02 / sqrt(2.0 * c->L);                    // small residual writes
    int D = c->C / c->Nh;
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        const char *leaf = strrchr(t->name, '.');
        leaf = leaf ? leaf + 1 : t->name;
        if (!strcmp(leaf, "E")) {
            for (size_t k = 0; k < (size_t)c->V * c->C; k++) p[k] = (float)(0.02 * rng_gauss(&rng));
            memset(p + (size_t)c->V * c->C, 0, (size_t)(c->Vp - c->V) * c->C * sizeof(float));
        } else if (!strcmp(leaf, "W_O") || !strcmp(leaf, "W_2")) {
            for (size_t k = 0; k < t->numel; k++) p[k] = (float)(std_out * rng_gauss(&rng));
        } else if (leaf[0] == 'W') {  // W_I W_K W_V W_Q W_1
            for (size_t k = 0; k < t->numel; k++) p[k] = (float)(std_in * rng_gauss(&rng));
        } else if (!strcmp(leaf, "a_lambda")) {
            // λ_i = 1 − 2^-(1 + 9 i / (D − 1)): time constants from 1.4 to ≈ 1000 tokens
            for (size_t k = 0; k < t->numel; k++) {
                int ch = (int)(k % D);
                double lam = 1.0 - pow(2.0, -(1.0 + 9.0 * (D > 1 ? (double)ch / (D - 1) : 0.0)));
                p[k] = (float)log(lam / (1.0 - lam));
            }
        } else if (!strncmp(leaf, "a_beta", 6)) {
            memset(p, 0, t->numel * sizeof(float));  // β = 0.5
        } else {  // RMSNorm gains
            for (size_t k = 0; k < t->numel; k++) p[k] = 1.0f;
        }
    }
}

// ---- activations -------------------------------------------------------------------

static AmsuShape amsu_shape(const Model *m, int B, int T) {
    return (AmsuShape){B, T, m->cfg.C, m->cfg.Nh, m->cfg.astro};
}

void model_alloc_acts(Model *m, int B, int T) {
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) {
        m->B = B, m->T = T;
        model_cuda_alloc_acts(m, B, T);
        return;
    }
#endif
    if (m->acts_mem && m->B == B && m->T == T) return;
    free(m->acts_mem);
    free(m->grad_mem);
    free(m->targets);
    free(m->test_keep);
    free(m->acts);
    m->B = B, m->T = T;
    const ModelConfig *c = &m->cfg;
    size_t bt = (size_t)B * T, btc = bt * c->C, btf = bt * c->F, btv = bt * c->V;
    AmsuShape sh = amsu_shape(m, B, T);
    size_t per_layer = 4 * btc + 2 * bt + amsu_acts_size(sh) + 3 * btf;
    size_t total = c->L * per_layer + 3 * btc + bt + btv;
    m->acts_mem = xmalloc(total * sizeof(float));
    m->acts = xcalloc(c->L, sizeof(LayerActs));
    float *p = m->acts_mem;
#define TAKE(n) (p += (n), p - (n))
    for (int l = 0; l < c->L; l++) {
        LayerActs *a = &m->acts[l];
        a->x_in = TAKE(btc);
        a->z1 = TAKE(btc);
        a->rstd1 = TAKE(bt);
        amsu_acts_bind(&a->amsu, sh, TAKE(amsu_acts_size(sh)));
        a->x_mid = TAKE(btc);
        a->z2 = TAKE(btc);
        a->rstd2 = TAKE(bt);
        a->c = TAKE(btf);
        a->w = TAKE(btf);
        a->r = TAKE(btf);
    }
    m->x_out = TAKE(btc);
    m->zf = TAKE(btc);
    m->rstdf = TAKE(bt);
    m->logits = TAKE(btv);
    m->tmp = TAKE(btc);
#undef TAKE
    m->grad_mem = NULL;  // allocated by the first backward
    m->targets = xmalloc(bt * sizeof(int));
    m->test_keep = NULL;
}

// ---- forward -------------------------------------------------------------------------

static void add_into(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

double model_xent(const float *logits, int V, int target) {
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
    return log(sum) + mx - logits[target];
}

void model_xent_backward(float *dlogits, const float *logits, int V, int target, float k) {
    if (target < 0) {
        memset(dlogits, 0, V * sizeof(float));
        return;
    }
    float mx = logits[0];
    for (int v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = 0.0;
    for (int v = 0; v < V; v++) sum += exp((double)logits[v] - mx);
    float inv = (float)(1.0 / sum);
    for (int v = 0; v < V; v++) dlogits[v] = expf(logits[v] - mx) * inv * k;
    dlogits[target] -= k;
}

// The test mode's neuron settings for neuron `which` (0 AM-SU, 1 FFN) of layer l.
static const NeuronTestMode *test_for(Model *m, int l, int which, NeuronTestMode *buf) {
    if (!m->test_mode) return NULL;
    const ModelConfig *c = &m->cfg;
    size_t stride = (size_t)m->B * m->T * (c->C > c->F ? c->C : c->F);
    buf->smooth = 1;
    buf->keep = m->test_mode == 2 ? m->test_keep + (size_t)(2 * l + which) * stride : NULL;
    return buf;
}

// In recording test mode, keep[b,t,n] = 1 − s[b,t−1,n] (1 at t = 0).
static void test_record(Model *m, int l, int which, const float *s, int B, int T, int N) {
    if (m->test_mode != 1) return;
    const ModelConfig *c = &m->cfg;
    size_t stride = (size_t)m->B * m->T * (c->C > c->F ? c->C : c->F);
    if (!m->test_keep) m->test_keep = xmalloc(2 * (size_t)c->L * stride * sizeof(float));
    float *keep = m->test_keep + (size_t)(2 * l + which) * stride;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                size_t i = ((size_t)b * T + t) * N + n;
                keep[i] = t == 0 ? 1.0f : 1.0f - s[i - N];
            }
}

static AmsuWeights amsu_weights(const LayerParams *p) {
    return (AmsuWeights){p->W_I, p->W_K, p->W_V, p->W_Q, p->W_O, p->a_lambda, p->a_beta};
}

double model_forward(Model *m, const int *tokens, const int *targets, int B, int T,
                     ModelState *state) {
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) return model_cuda_forward(m, tokens, targets, B, T, state);
#endif
    const ModelConfig *c = &m->cfg;
    if (B < 1 || T < 1 || B > m->B || T > m->T)
        fatal("model_forward: batch %dx%d does not fit the activations allocated for %dx%d", B,
              T, m->B, m->T);
    if (state && state->B != B) fatal("model_forward: state holds %d sequences, batch has %d", state->B, B);
    int C = c->C, F = c->F, M = B * T;
    size_t btc = (size_t)M * C;
    AmsuShape sh = amsu_shape(m, B, T);
    NeuronTestMode tb;
    m->last_B = B, m->last_T = T, m->last_scored = targets != NULL && !state;

    float *x = m->acts[0].x_in;
    for (int i = 0; i < M; i++) memcpy(x + (size_t)i * C, m->E + (size_t)tokens[i] * C, C * sizeof(float));
    for (int l = 0; l < c->L; l++) {
        LayerActs *a = &m->acts[l];
        const LayerParams *p = &m->layers[l];
        AmsuWeights w = amsu_weights(p);
        float *x_next = l + 1 < c->L ? m->acts[l + 1].x_in : m->x_out;
        // token mixer
        rmsnorm_forward(a->z1, a->rstd1, a->x_in, p->norm1, M, C);
        amsu_forward(m->tmp, &a->amsu, a->z1, &w, sh, state ? &state->layers[l].amsu : NULL,
                     test_for(m, l, 0, &tb));
        test_record(m, l, 0, a->amsu.s, B, T, C);
        add_into(a->x_mid, a->x_in, m->tmp, btc);
        // channel mixer
        rmsnorm_forward(a->z2, a->rstd2, a->x_mid, p->norm2, M, C);
        matmul_forward(a->c, a->z2, p->W_1, M, C, F, 1.0f, 0);
        neuron_forward(a->w, a->r, a->c, NULL, p->a_beta_ffn,
                       state ? state->layers[l].w : NULL, state ? state->layers[l].r : NULL, B, T, F, test_for(m, l, 1, &tb));
        test_record(m, l, 1, a->r, B, T, F);
        matmul_forward(m->tmp, a->r, p->W_2, M, F, C, 1.0f, 0);
        add_into(x_next, a->x_mid, m->tmp, btc);
    }
    rmsnorm_forward(m->zf, m->rstdf, m->x_out, m->norm_f, M, C);
    matmul_forward(m->logits, m->zf, m->E, M, C, c->V, 1.0f, 0);  // tied head, real rows only
    if (!targets) return 0.0;

    memcpy(m->targets, targets, (size_t)M * sizeof(int));
    double loss = 0.0;
    int scored = 0;
    for (int i = 0; i < M; i++) {  // in order: the loss does not depend on threads
        if (targets[i] < 0) continue;
        loss += model_xent(m->logits + (size_t)i * c->V, c->V, targets[i]);
        scored++;
    }
    return scored ? loss / scored : 0.0;
}

const float *model_logits(const Model *m, int b, int t) {
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) return model_cuda_logits((Model *)m, b, t);
#endif
    return m->logits + ((size_t)b * m->last_T + t) * m->cfg.V;
}

// ---- backward ------------------------------------------------------------------------

void model_backward(Model *m, const int *tokens, float scale) {
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) {
        model_cuda_backward(m, tokens, scale);
        return;
    }
#endif
    const ModelConfig *c = &m->cfg;
    int B = m->last_B, T = m->last_T, C = c->C, F = c->F, V = c->V, M = B * T;
    size_t btc = (size_t)M * C, btf = (size_t)M * F;
    AmsuShape sh = amsu_shape(m, B, T);
    if (!m->grads) fatal("model_backward: gradients not allocated");
    if (!m->last_scored) fatal("model_backward: the last forward had no targets, or carried state");
    if (!m->grad_mem) {  // sized for the allocated batch, so any smaller one fits too
        AmsuShape full = amsu_shape(m, m->B, m->T);
        size_t mbt = (size_t)m->B * m->T;
        m->grad_mem = xmalloc((mbt * (2 * C + 2 * F + V) + amsu_scratch_size(full)) * sizeof(float));
    }
    float *dx = m->grad_mem, *dz = dx + btc, *scratch = dz + btc;
    float *dc = scratch + amsu_scratch_size(sh), *dr = dc + btf, *dlogits = dr + btf;
    NeuronTestMode tb;

    // cross-entropy: dlogits = (softmax − onehot) · scale / scored
    int scored = 0;
    for (int i = 0; i < M; i++) scored += m->targets[i] >= 0;
    float k = scored ? scale / (float)scored : 0.0f;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        model_xent_backward(dlogits + (size_t)i * V, m->logits + (size_t)i * V, V, m->targets[i], k);
    // logits = zf E[:V]ᵀ
    matmul_backward(dz, m->gE, dlogits, m->zf, m->E, M, C, V, 1.0f, 0);
    memset(dx, 0, btc * sizeof(float));
    rmsnorm_backward(dx, m->gnorm_f, dz, m->x_out, m->norm_f, m->rstdf, M, C);

    for (int l = c->L - 1; l >= 0; l--) {
        LayerActs *a = &m->acts[l];
        const LayerParams *p = &m->layers[l];
        LayerParams *g = &m->glayers[l];
        // x_out = x_mid + r W_2ᵀ
        matmul_backward(dr, g->W_2, dx, a->r, p->W_2, M, F, C, 1.0f, 0);
        neuron_backward(dc, NULL, g->a_beta_ffn, dr, a->w, NULL, a->r, p->a_beta_ffn, B, T, F,
                        test_for(m, l, 1, &tb));
        matmul_backward(dz, g->W_1, dc, a->z2, p->W_1, M, C, F, 1.0f, 0);
        rmsnorm_backward(dx, g->norm2, dz, a->x_mid, p->norm2, a->rstd2, M, C);
        // x_mid = x_in + AMSU(z1)
        AmsuWeights w = amsu_weights(p);
        AmsuGrads ag = {g->W_I, g->W_K, g->W_V, g->W_Q, g->W_O, g->a_lambda, g->a_beta};
        amsu_backward(dz, &ag, scratch, dx, a->z1, &a->amsu, &w, sh, test_for(m, l, 0, &tb));
        rmsnorm_backward(dx, g->norm1, dz, a->x_in, p->norm1, a->rstd1, M, C);
    }
    // x = E[token]: in token order, so the sums do not depend on threads
    for (int i = 0; i < M; i++) {
        float *ge = m->gE + (size_t)tokens[i] * C;
        const float *d = dx + (size_t)i * C;
        for (int j = 0; j < C; j++) ge[j] += d[j];
    }
}

// ---- recurrent state ------------------------------------------------------------------

size_t model_state_floats(const ModelConfig *c) {
    size_t D = (size_t)(c->C / c->Nh), H = c->astro ? (size_t)c->Nh * D * D : 0;
    return (size_t)c->L * (H + 2 * (size_t)c->C + 2 * (size_t)c->F);
}

// Layout of mem: per layer H (B, Nh, D, D), u (B, C), s (B, C), w (B, F), r (B, F).
ModelState *model_state_new(const Model *m, int B) {
    const ModelConfig *c = &m->cfg;
    size_t D = (size_t)(c->C / c->Nh);
    ModelState *s = xcalloc(1, sizeof(ModelState));
    s->B = B, s->L = c->L;
    s->H1 = c->astro ? (size_t)c->Nh * D * D : 0, s->C = (size_t)c->C, s->F = (size_t)c->F;
    s->layers = xcalloc(c->L, sizeof(LayerState));
    s->mem = s->base = xcalloc((size_t)B * model_state_floats(c), sizeof(float));
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) model_cuda_state_new(m, s);  // the state lives on the device
#endif
    float *p = s->mem;
    for (int l = 0; l < c->L; l++) {
        LayerState *ls = &s->layers[l];
        ls->amsu.H = c->astro ? p : NULL;
        p += B * s->H1;
        ls->amsu.u = p, p += B * s->C;
        ls->amsu.s = p, p += B * s->C;
        ls->w = p, p += B * s->F;
        ls->r = p, p += B * s->F;
    }
    return s;
}

ModelState *model_state_slot(const ModelState *all, int b) {
    if (b < 0 || b >= all->B) fatal("model_state_slot: slot %d of a state of %d", b, all->B);
    ModelState *v = xcalloc(1, sizeof(ModelState));
    *v = *all;
    v->B = 1, v->mem = NULL;
    v->layers = xcalloc(all->L, sizeof(LayerState));
    for (int l = 0; l < all->L; l++) {
        const LayerState *a = &all->layers[l];
        LayerState *ls = &v->layers[l];
        ls->amsu.H = a->amsu.H ? a->amsu.H + b * all->H1 : NULL;
        ls->amsu.u = a->amsu.u + b * all->C;
        ls->amsu.s = a->amsu.s + b * all->C;
        ls->w = a->w + b * all->F;
        ls->r = a->r + b * all->F;
    }
    return v;
}

void model_state_reset_slot(ModelState *s, int b) {
#ifdef GLIA_HAVE_CUDA
    if (s->dev) model_cuda_state_reset_slot(s, b);
#endif
    for (int l = 0; l < s->L; l++) {
        LayerState *ls = &s->layers[l];
        if (ls->amsu.H) memset(ls->amsu.H + b * s->H1, 0, s->H1 * sizeof(float));
        memset(ls->amsu.u + b * s->C, 0, s->C * sizeof(float));
        memset(ls->amsu.s + b * s->C, 0, s->C * sizeof(float));
        memset(ls->w + b * s->F, 0, s->F * sizeof(float));
        memset(ls->r + b * s->F, 0, s->F * sizeof(float));
    }
}

void model_state_reset(ModelState *s) {
    for (int b = 0; b < s->B; b++) model_state_reset_slot(s, b);
}

void model_state_free(ModelState *s) {
    if (!s) return;
#ifdef GLIA_HAVE_CUDA
    if (s->dev) model_cuda_state_free(s);
#endif
    free(s->layers);
    free(s->mem);
    free(s);
}

Model *model_share(const Model *m) {
    Model *v = xcalloc(1, sizeof(Model));
    v->cfg = m->cfg;
    v->tensors = m->tensors, v->ntensors = m->ntensors, v->nparams = m->nparams;
    v->params = m->params, v->layers = m->layers, v->E = m->E, v->norm_f = m->norm_f;
    v->shared = 1;
#ifdef GLIA_HAVE_CUDA
    if (ON_CUDA(m)) model_cuda_share(m, v);  // the view runs on the GPU too, on m's parameters
#endif
    return v;
}

void model_free(Model *m) {
    if (!m) return;
#ifdef GLIA_HAVE_CUDA
    model_cuda_free(m);
#endif
    if (!m->shared) {
        free(m->tensors);
        free(m->params);
        free(m->layers);
    }
    free(m->grads);
    free(m->glayers);
    free(m->acts_mem);
    free(m->acts);
    free(m->grad_mem);
    free(m->targets);
    free(m->test_keep);
    free(m);
}
