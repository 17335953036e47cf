// model.c: the AstroSNN language model, written once for every backend:
// parameters, initialisation, forward, backward, the optimizer step and the
// recurrent state, as calls into the backend table (common/backend.h).
//
// Forward per layer (the residual adds are folded into the output matmuls,
// out of place: the AM-SU's W_O product reads x_in as its addend and writes
// x_mid, and likewise W_2 reads x_mid and writes x_next):
//   z1 = RMSNorm(x_in; norm1);  x_mid = x_in + AMSU(z1)
//   z2 = RMSNorm(x_mid; norm2); c = z2 W_1ᵀ; r = LIF(c); x_out = x_mid + r W_2ᵀ
// and the backward walks it in reverse with one residual gradient dx. Only
// the per-position losses travel to the host, where they are summed in
// order, so the loss does not depend on the backend's threads.
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dist.h"
#include "glia/util.h"
#include "model/rng.h"

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
        const size_t cc = (size_t)m->cfg.C * m->cfg.C;
        if (m->cfg.astro && (layers[l].W_K != layers[l].W_I + cc || layers[l].W_V != layers[l].W_K + cc ||
                             layers[l].W_Q != layers[l].W_V + cc))
            fatal("model: W_I, W_K, W_V, W_Q of layer %d are not adjacent (the AM-SU reads them as one W_in)", l);
    }
#undef VIEW
    *E = base + model_find(m, "E")->offset;
    *nf = base + model_find(m, "norm_f")->offset;
}

Model *model_new(const ModelConfig *cfg) {
    Model *m = xcalloc(1, sizeof(Model));
    m->cfg = *cfg;
    m->be = backend_cpu();
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
    m->padded = m->nparams;
    m->params = m->live = xcalloc(m->nparams, sizeof(float));
    m->layers = xcalloc(L, sizeof(LayerParams));
    m->glayers = xcalloc(L, sizeof(LayerParams));
    bind_views(m, m->live, m->layers, &m->E, &m->norm_f);
    return m;
}

// Backend memory, or NULL with a message naming what did not fit.
static void *be_alloc(const Backend *be, size_t bytes, const char *what, char *err, size_t err_len) {
    void *p = be->alloc(bytes);
    if (!p && err)
        snprintf(err, err_len, "%s out of memory for the %s (%.2f GiB): %s", be->name, what, bytes / 1073741824.0,
                 be->last_error());
    return p;
}

// Backend memory for the activations of a forward or a backward: not having
// it is not recoverable there, so it ends the process naming what to change.
static void *be_alloc_or_die(const Backend *be, size_t bytes, const char *what) {
    char err[300];
    void *p = be_alloc(be, bytes, what, err, sizeof err);
    if (!p) fatal("%s; try a smaller --batch or --seq", err);
    return p;
}

static void free_acts(Model *m);
static void refresh_mirror(Model *m);

int model_to_backend(Model *m, const Backend *be, char *err, size_t err_len) {
    if (be == m->be) return 0;
    const ModelConfig *c = &m->cfg;
    if (m->shared || m->grads) fatal("model_to_backend: move a model before sharing it or training it");
    if (c->astro && !be->amsu_head_ok(c->C / c->Nh)) {
        snprintf(err, err_len, "the %s backend does not run head size %d (width %d / %d heads): use --device cpu",
                 be->name, c->C / c->Nh, c->C, c->Nh);
        return -1;
    }
    float *live = be->host_memory ? m->params : be_alloc(be, m->nparams * sizeof(float), "parameters", err, err_len);
    if (!live) return -1;
    int B = m->B, T = m->T;
    free_acts(m);
    if (!m->be->host_memory) m->be->free(m->live);
    m->be = be;
    m->live = live;
    if (live != m->params) be->upload(live, m->params, m->nparams * sizeof(float));
    bind_views(m, m->live, m->layers, &m->E, &m->norm_f);
    if (B > 0) model_alloc_acts(m, B, T);
    return 0;
}

void model_upload_params(Model *m) {
    if (m->live != m->params) m->be->upload(m->live, m->params, m->nparams * sizeof(float));
    refresh_mirror(m);
}

void model_sync_host(Model *m) {
    if (m->live != m->params) m->be->download(m->params, m->live, m->nparams * sizeof(float));
}

// Replaces *buf (n floats of backend memory) with a copy padded with zeros to `padded` floats.
static int pad_buffer(const Backend *be, float **buf, size_t n, size_t padded, const char *what, char *err,
                      size_t err_len) {
    float *p = be_alloc(be, padded * sizeof(float), what, err, err_len);
    if (!p) return -1;
    be->copy(p, *buf, n * sizeof(float));
    be->zero(p + n, (padded - n) * sizeof(float));
    be->free(*buf);
    *buf = p;
    return 0;
}

// GLIA_FORCE_OVERLAP=1 (tools/device_check.sh, docs/CUDA.md): the overlapped
// all-reduce runs at world size 1 too (a one-rank NCCL communicator), so a
// one-GPU machine runs the streams and events of that path; its result must
// equal the plain path's bit for bit. Device backends only.
static int force_overlap(void) {
    const char *e = getenv("GLIA_FORCE_OVERLAP");
    return e && !strcmp(e, "1");
}

int model_alloc_train(Model *m, int rank, int world, int zero, size_t mom_off, size_t mom_len, size_t padded,
                      char *err, size_t err_len) {
    const Backend *be = m->be;
    if (m->grads) fatal("model_alloc_train: called twice");
    if (padded < m->nparams || mom_off + mom_len > padded) fatal("model_alloc_train: a slice outside the parameters");
    m->rank = rank, m->world = world, m->zero = zero;
    m->mom_off = mom_off, m->mom_len = mom_len, m->padded = padded;
    if (padded > m->nparams) {  // ZeRO-1: the collectives work in place on padded buffers
        if (pad_buffer(be, &m->live, m->nparams, padded, "padded parameters", err, err_len)) return -1;
        if (be->host_memory) m->params = m->live;
        bind_views(m, m->live, m->layers, &m->E, &m->norm_f);
    }
    const size_t gbytes = padded * sizeof(float), mbytes = (mom_len ? mom_len : 1) * sizeof(float);
    if (!(m->grads = be_alloc(be, gbytes, "gradients", err, err_len)) ||
        !(m->mom1 = be_alloc(be, mbytes, "AdamW moments", err, err_len)) ||
        !(m->mom2 = be_alloc(be, mbytes, "AdamW moments", err, err_len)))
        return -1;
    be->zero(m->grads, gbytes);
    be->zero(m->mom1, mbytes);
    be->zero(m->mom2, mbytes);
    bind_views(m, m->grads, m->glayers, &m->gE, &m->gnorm_f);
    if (world > 1 || zero || (force_overlap() && !be->host_memory)) be->comm_init(rank, world, dist_self()->local_rank);
    return 0;
}

void model_set_moments(Model *m, const float *mom1, const float *mom2) {
    m->be->upload(m->mom1, mom1, m->mom_len * sizeof(float));
    m->be->upload(m->mom2, mom2, m->mom_len * sizeof(float));
}

void model_moments_host(Model *m, const float **mom1, const float **mom2) {
    if (m->be->host_memory) {
        *mom1 = m->mom1, *mom2 = m->mom2;
        return;
    }
    if (!m->host_mom1) {
        m->host_mom1 = xmalloc((m->mom_len ? m->mom_len : 1) * sizeof(float));
        m->host_mom2 = xmalloc((m->mom_len ? m->mom_len : 1) * sizeof(float));
    }
    m->be->download(m->host_mom1, m->mom1, m->mom_len * sizeof(float));
    m->be->download(m->host_mom2, m->mom2, m->mom_len * sizeof(float));
    *mom1 = m->host_mom1, *mom2 = m->host_mom2;
}

void model_zero_grad(Model *m) { m->be->zero(m->grads, m->padded * sizeof(float)); }

void model_set_reduce(Model *m, int on) {
    m->reduce = on && (m->world > 1 || (force_overlap() && !m->be->host_memory)) && !m->zero;
}

double model_step(Model *m, float lr, float weight_decay, float clip, int step) {
    const Backend *be = m->be;
    const size_t lo = m->mom_off, hi = m->mom_off + m->mom_len;
    double sq;
    if (m->zero) {  // this rank's summed slice lands in grads[lo, hi)
        be->reduce_scatter(m->grads, m->mom_len);
        sq = be->grad_norm_sq(m->grads + lo, m->mom_len);
        dist_allreduce_sum_double(&sq, 1);
    } else {
        if (m->world > 1 && !m->reduced) {
            be->allreduce_begin(m->grads, m->nparams);
            be->allreduce_wait();
        }
        sq = be->grad_norm_sq(m->grads, m->nparams);
    }
    m->reduced = 0;
    const double norm = sqrt(sq);
    const float gscale = clip > 0 && norm > clip ? (float)(clip / norm) : 1.0f;  // applied inside AdamW
    for (int i = 0; i < m->ntensors; i++) {  // each tensor's part inside the slice
        const ParamTensor *t = &m->tensors[i];
        size_t a = t->offset > lo ? t->offset : lo, b = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        if (a >= b) continue;
        be->adamw(m->live + a, m->grads + a, gscale, m->mom1 + (a - lo), m->mom2 + (a - lo), b - a, lr, 0.9f, 0.95f,
                  1e-8f, t->decay ? weight_decay : 0.0f, step);
    }
    if (m->zero) be->allgather(m->live, m->mom_len);
    refresh_mirror(m);
    return norm;
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

static int spike_bytes(const Backend *be) { return be->spike_bytes ? be->spike_bytes() : 4; }

// Layer l's W_O and W_2 in the bf16 mirror: (C, C) then (C, F).
static bf16_t *WO_16(const Model *m, int l) {
    return m->W16 + (size_t)l * ((size_t)m->cfg.C * m->cfg.C + (size_t)m->cfg.C * m->cfg.F);
}
static bf16_t *W2_16(const Model *m, int l) { return WO_16(m, l) + (size_t)m->cfg.C * m->cfg.C; }

// The bf16 mirror from the fp32 parameters: after every change of live.
static void refresh_mirror(Model *m) {
    if (!m->W16) return;
    const size_t C = m->cfg.C, F = m->cfg.F;
    for (int l = 0; l < m->cfg.L; l++) {
        m->be->to_bf16(WO_16(m, l), m->layers[l].W_O, C * C);
        m->be->to_bf16(W2_16(m, l), m->layers[l].W_2, C * F);
    }
}

static void free_acts(Model *m) {
    const Backend *be = m->be;
    if (m->acts_mem) be->free(m->acts_mem);
    if (m->W16) be->free(m->W16);
    m->W16 = NULL;
    if (m->grad_mem) be->free(m->grad_mem);
    if (m->tokens) be->free(m->tokens);
    if (m->emb_scratch) be->free(m->emb_scratch);
    free(m->acts);
    free(m->host_targets);
    free(m->host_losses);
    free(m->host_row);
    free(m->test_keep);
    m->acts_mem = m->grad_mem = NULL;
    m->tokens = m->targets = m->emb_scratch = NULL;
    m->acts = NULL;
    m->host_targets = NULL;
    m->host_losses = m->host_row = m->test_keep = NULL;
    m->B = m->T = 0;
}

// The activations model_alloc_acts carves for B × T: one layer's (bound to
// *a; each layer carves them again), then the head's (bound to *h's fields,
// the logits first; model_alloc_acts carves the head before the layers).
// Returns how many; the first *nlayer of them are the layer's.
// spike_bytes: the backend's (2: the spikes are bf16).
static int acts_list(const ModelConfig *c, int spike_bytes, int B, int T, LayerActs *a, Model *h, ActsTensor *e,
                     int *nlayer) {
    const size_t b = B, t = T, C = c->C, F = c->F, Vp = c->Vp;
    int n = 0;
    e[n++] = (ActsTensor){"x_in", "B,T,C", 3, {b, t, C}, &a->x_in, 4};
    e[n++] = (ActsTensor){"z1", "B,T,C", 3, {b, t, C}, &a->z1, 4};
    e[n++] = (ActsTensor){"rstd1", "B,T", 2, {b, t}, &a->rstd1, 4};
    n += amsu_acts_list((AmsuShape){B, T, c->C, c->Nh, c->astro}, spike_bytes, &a->amsu, e + n);
    e[n++] = (ActsTensor){"x_mid", "B,T,C", 3, {b, t, C}, &a->x_mid, 4};
    e[n++] = (ActsTensor){"z2", "B,T,C", 3, {b, t, C}, &a->z2, 4};
    e[n++] = (ActsTensor){"rstd2", "B,T", 2, {b, t}, &a->rstd2, 4};
    e[n++] = (ActsTensor){"c", "B,T,F", 3, {b, t, F}, &a->c, 4};
    e[n++] = (ActsTensor){"w", "B,T,F", 3, {b, t, F}, &a->w, 4};
    e[n++] = (ActsTensor){"r", "B,T,F", 3, {b, t, F}, &a->r, spike_bytes};
    *nlayer = n;
    e[n++] = (ActsTensor){"logits", "B,T,Vp", 3, {b, t, Vp}, &h->logits, 4};
    e[n++] = (ActsTensor){"x_out", "B,T,C", 3, {b, t, C}, &h->x_out, 4};
    e[n++] = (ActsTensor){"zf", "B,T,C", 3, {b, t, C}, &h->zf, 4};
    e[n++] = (ActsTensor){"rstdf", "B,T", 2, {b, t}, &h->rstdf, 4};
    e[n++] = (ActsTensor){"losses", "B,T", 2, {b, t}, &h->losses, 4};
    return n;
}

int model_acts_list(const ModelConfig *c, const Backend *be, int B, int T, ActsTensor *out, int *nlayer) {
    LayerActs a;
    Model h;
    int n = acts_list(c, spike_bytes(be), B, T, &a, &h, out, nlayer);
    for (int i = 0; i < n; i++) out[i].dst = NULL;
    return n;
}

size_t model_ids_bytes(int B, int T) { return 2 * (size_t)B * T * sizeof(int); }

// Bytes of the activations for B × T on be: the list's, each layer's L times.
static size_t acts_total(const ModelConfig *c, const Backend *be, int B, int T) {
    ActsTensor e[MODEL_ACTS_MAX];
    int nl, n = model_acts_list(c, be, B, T, e, &nl);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (i < nl ? (size_t)c->L : 1) * acts_bytes(&e[i]);
    return total;
}

// Elements of the bf16 mirror (Model.W16) on be: none with fp32 spikes.
static size_t mirror_numel(const ModelConfig *c, const Backend *be) {
    return spike_bytes(be) == 2 ? (size_t)c->L * ((size_t)c->C * c->C + (size_t)c->C * c->F) : 0;
}

// Floats of the backward's scratch for B × T on `be` (alloc_grad_scratch's layout).
static size_t grad_scratch_floats(const ModelConfig *c, const Backend *be, int B, int T) {
    const int M = B * T;
    const AmsuShape sh = {B, T, c->C, c->Nh, c->astro};
    return 2 * (size_t)M * c->C + 2 * (size_t)M * c->F + be->amsu_scratch(sh) + be->rmsnorm_scratch(M, c->C) +
           be->neuron_scratch(B, c->F);
}

void model_memory(const ModelConfig *c, const Backend *be, int B, int T, int world, int zero, ModelMemory *mm) {
    const size_t P = (size_t)model_config_nparams(c), padded = zero ? (P + world - 1) / world * world : P;
    mm->params = padded * sizeof(float) + mirror_numel(c, be) * sizeof(bf16_t);
    mm->grads = padded * sizeof(float);
    mm->moments = 2 * (zero ? padded / world : P) * sizeof(float);
    mm->acts = acts_total(c, be, B, T) + model_ids_bytes(B, T);
    mm->scratch = grad_scratch_floats(c, be, B, T) * sizeof(float) + be->embedding_scratch(B * T) * sizeof(int);
}

void model_alloc_acts(Model *m, int B, int T) {
    if (m->acts_mem && m->B == B && m->T == T) return;
    free_acts(m);
    m->B = B, m->T = T;
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const size_t bt = (size_t)B * T;
    m->spike_bytes = spike_bytes(be);
    m->acts_mem = be_alloc_or_die(be, acts_total(c, be, B, T), "activations");
    m->acts = xcalloc(c->L, sizeof(LayerActs));
    float *p = m->acts_mem;
    ActsTensor e[MODEL_ACTS_MAX];
    int nl = 0, n = acts_list(c, m->spike_bytes, B, T, &m->acts[0], m, e, &nl);
    p = acts_carve(e + nl, n - nl, p);  // the head first: rows of Vp logits keep the allocation's alignment
    for (int l = 0; l < c->L; l++) {
        acts_list(c, m->spike_bytes, B, T, &m->acts[l], m, e, &nl);
        p = acts_carve(e, nl, p);
        amsu_acts_views(&m->acts[l].amsu, amsu_shape(m, B, T));
    }
    m->acts_bytes = (size_t)((char *)p - (char *)m->acts_mem) + model_ids_bytes(B, T);
    const size_t mirror = mirror_numel(c, be);
    if (mirror) {
        m->W16 = be_alloc_or_die(be, mirror * sizeof(bf16_t), "bf16 mirror of W_O and W_2");
        refresh_mirror(m);
    }
    m->tokens = be_alloc_or_die(be, model_ids_bytes(B, T), "token ids");
    m->targets = m->tokens + bt;
    m->host_targets = xmalloc(bt * sizeof(int));
    m->host_losses = xmalloc(bt * sizeof(float));
    m->host_row = be->host_memory ? NULL : xmalloc((size_t)c->V * sizeof(float));
}

// The backward's scratch, sized for the allocated batch (any smaller one fits too).
static void alloc_grad_scratch(Model *m) {
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const int B = m->B, T = m->T, C = c->C, F = c->F, M = B * T;
    const size_t btc = (size_t)M * C, btf = (size_t)M * F;
    const size_t amsu = be->amsu_scratch(amsu_shape(m, B, T)), rms = be->rmsnorm_scratch(M, C);
    const size_t lif = be->neuron_scratch(B, F);
    m->grad_mem = be_alloc_or_die(be, grad_scratch_floats(c, be, B, T) * sizeof(float), "backward pass");
    float *p = m->grad_mem;
#define TAKE(n) (p += (n), p - (n))
    m->dx = TAKE(btc), m->dz = TAKE(btc), m->dc = TAKE(btf), m->dr = TAKE(btf);
    m->amsu_scratch = TAKE(amsu), m->rms_scratch = TAKE(rms), m->lif_scratch = TAKE(lif);
#undef TAKE
    size_t emb = be->embedding_scratch(M);
    m->emb_scratch = be_alloc_or_die(be, (emb ? emb : 1) * sizeof(int), "embedding backward");
}

// ---- test mode (gradient checks) --------------------------------------------------------

// The test mode's neuron settings for neuron `which` (0 AM-SU, 1 FFN) of layer l.
static const NeuronTestMode *test_for(Model *m, int l, int which, NeuronTestMode *buf) {
    if (!m->test_mode) return NULL;
    if (!m->be->host_memory) fatal("the gradient-check test mode runs on host-memory backends only");
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

// ---- forward -------------------------------------------------------------------------

// W_in is W_I with W_K, W_V, W_Q after it (model_new's order; bind_views checks).
// W_O16: the bf16 mirror of W_O with bf16 spikes, else NULL.
static AmsuWeights amsu_weights(const LayerParams *p, const bf16_t *W_O16) {
    return (AmsuWeights){p->W_I, p->W_O, p->a_lambda, p->a_beta, W_O16};
}

double model_forward(Model *m, const int *tokens, const int *targets, int B, int T, ModelState *state) {
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    if (B < 1 || T < 1 || B > m->B || T > m->T)
        fatal("model_forward: batch %dx%d does not fit the activations allocated for %dx%d", B, T, m->B, m->T);
    if (state && state->B != B) fatal("model_forward: state holds %d sequences, batch has %d", state->B, B);
    if (state && state->be != be) fatal("model_forward: the state is on another backend than the model");
    if (spike_bytes(be) != m->spike_bytes)
        fatal("model_forward: the backend's spike storage changed after the activations were carved (set the "
              "matmul mode first)");
    const int C = c->C, F = c->F, V = c->V, Vp = c->Vp, M = B * T;
    const AmsuShape sh = amsu_shape(m, B, T);
    NeuronTestMode tb;
    m->last_B = B, m->last_T = T, m->last_scored = targets != NULL && !state;

    be->upload(m->tokens, tokens, (size_t)M * sizeof(int));
    be->embedding_forward(m->acts[0].x_in, m->tokens, m->E, M, C);
    for (int l = 0; l < c->L; l++) {
        LayerActs *a = &m->acts[l];
        const LayerParams *p = &m->layers[l];
        const AmsuWeights w = amsu_weights(p, m->W16 ? WO_16(m, l) : NULL);
        LayerState *ls = state ? &state->layers[l] : NULL;
        float *x_next = l + 1 < c->L ? m->acts[l + 1].x_in : m->x_out;
        // token mixer: x_mid = x_in + AMSU(RMSNorm(x_in))
        be->rmsnorm_forward(a->z1, a->rstd1, a->x_in, p->norm1, M, C);
        be->amsu_forward(a->x_mid, &a->amsu, a->z1, &w, sh, ls ? &ls->amsu : NULL, a->x_in,
                         test_for(m, l, 0, &tb));
        test_record(m, l, 0, a->amsu.s, B, T, C);
        // channel mixer: x_next = x_mid + r W_2ᵀ, r = LIF(RMSNorm(x_mid) W_1ᵀ)
        be->rmsnorm_forward(a->z2, a->rstd2, a->x_mid, p->norm2, M, C);
        be->matmul_forward(a->c, a->z2, p->W_1, M, C, F, 1.0f, NULL);
        be->neuron_forward(a->w, a->r, a->c, NULL, p->a_beta_ffn, ls ? ls->w : NULL, ls ? ls->r : NULL, B, T, F,
                           F, test_for(m, l, 1, &tb));
        test_record(m, l, 1, a->r, B, T, F);
        if (m->spike_bytes == 2)
            be->spike_matmul_forward(x_next, (const bf16_t *)a->r, W2_16(m, l), M, F, C, a->x_mid);
        else
            be->matmul_forward(x_next, a->r, p->W_2, M, F, C, 1.0f, a->x_mid);
    }
    be->rmsnorm_forward(m->zf, m->rstdf, m->x_out, m->norm_f, M, C);
    be->matmul_forward(m->logits, m->zf, m->E, M, C, Vp, 1.0f, NULL);  // tied head over all Vp rows
    if (!targets) return 0.0;

    memcpy(m->host_targets, targets, (size_t)M * sizeof(int));
    be->upload(m->targets, targets, (size_t)M * sizeof(int));
    be->xent_forward(m->losses, m->logits, m->targets, M, V, Vp);
    be->download(m->host_losses, m->losses, (size_t)M * sizeof(float));
    double loss = 0.0;
    int scored = 0;
    for (int i = 0; i < M; i++) {  // in order: the loss does not depend on threads
        if (targets[i] < 0) continue;
        loss += m->host_losses[i];
        scored++;
    }
    return scored ? loss / scored : 0.0;
}

const float *model_logits(const Model *m, int b, int t) {
    const float *row = m->logits + ((size_t)b * m->last_T + t) * m->cfg.Vp;
    if (m->be->host_memory) return row;
    m->be->download(m->host_row, row, (size_t)m->cfg.V * sizeof(float));
    return m->host_row;
}

// ---- spike statistics --------------------------------------------------------------------

// sum (N) = spikes per neuron over the rows [row0, row0 + rows) of s (·, N),
// stored as the model stores spikes.
static void spike_sums(const Model *m, double *sum, const float *s, int row0, int rows, int N) {
    if (m->spike_bytes == 2) m->be->spike_column_sums(sum, (const bf16_t *)s + (size_t)row0 * N, rows, N);
    else m->be->column_sums(sum, s + (size_t)row0 * N, rows, N, 0);
}

// Rate, never and always fired of N neurons over M positions, from their spike counts.
static void rates(const double *count, int M, int N, double *rate, double *never, double *always) {
    double total = 0.0;
    int nv = 0, al = 0;
    for (int n = 0; n < N; n++) {
        total += count[n];
        nv += count[n] == 0.0;
        al += count[n] == (double)M;
    }
    *rate = total / ((double)M * N), *never = (double)nv / N, *always = (double)al / N;
}

void model_stats(Model *m, ModelStats *st) {
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const int M = m->last_B * m->last_T, C = c->C, F = c->F;
    const double dC = C, dF = F;
    double *sum = xmalloc((size_t)(C > F ? C : F) * 2 * sizeof(double)), *sum2 = sum + (C > F ? C : F);
    st->L = c->L;
    st->layer = xcalloc(c->L, sizeof(LayerStats));
    double spikes = 0.0;  // Σ over layers of the AM-SU and FFN spikes per token
    for (int l = 0; l < c->L; l++) {
        const LayerActs *a = &m->acts[l];
        LayerStats *ls = &st->layer[l];
        spike_sums(m, sum, a->amsu.s, 0, M, C);
        rates(sum, M, C, &ls->amsu_rate, &ls->amsu_never, &ls->amsu_always);
        spikes += ls->amsu_rate * dC;
        spike_sums(m, sum, a->r, 0, M, F);
        rates(sum, M, F, &ls->ffn_rate, &ls->ffn_never, &ls->ffn_always);
        spikes += ls->ffn_rate * dF;
        if (c->astro) {
            double so = 0.0, su = 0.0;
            be->column_sums(sum, a->amsu.o, M, C, 1);
            be->column_sums(sum2, a->amsu.u, M, C, 1);
            for (int n = 0; n < C; n++) so += sum[n], su += sum2[n];
            ls->astro_share = su > 0.0 ? so / su : 0.0;
        }
    }
    free(sum);
    // per token: W_O (C x C) reads s, W_2 (C x F) reads r: each spike reaches C outputs
    st->sops = spikes * dC;
    st->spike_macs = c->L * (dC * dC + dF * dC);
    st->other_macs = c->L * ((c->astro ? 4.0 : 1.0) * dC * dC + dC * dF) + dC * c->V;
    st->energy_spiking_pj = st->sops * MODEL_PJ_PER_AC + st->other_macs * MODEL_PJ_PER_MAC;
    st->energy_dense_pj = (st->spike_macs + st->other_macs) * MODEL_PJ_PER_MAC;
}

void model_spike_sums(Model *m, int row0, int rows, double *amsu, double *ffn) {
    const ModelConfig *c = &m->cfg;
    const int C = c->C, F = c->F;
    if (row0 < 0 || rows < 1 || row0 + rows > m->last_B * m->last_T)
        fatal("model_spike_sums: positions %d..%d outside the last forward's %d", row0, row0 + rows,
              m->last_B * m->last_T);
    double *sum = xmalloc((size_t)(C > F ? C : F) * sizeof(double));
    *amsu = *ffn = 0.0;
    for (int l = 0; l < c->L; l++) {
        const LayerActs *a = &m->acts[l];
        spike_sums(m, sum, a->amsu.s, row0, rows, C);
        for (int n = 0; n < C; n++) *amsu += sum[n];
        spike_sums(m, sum, a->r, row0, rows, F);
        for (int n = 0; n < F; n++) *ffn += sum[n];
    }
    free(sum);
}

void model_stats_free(ModelStats *st) {
    free(st->layer);
    st->layer = NULL;
}

// ---- backward ------------------------------------------------------------------------
// With m->reduce (data parallelism without ZeRO), each finished range of
// gradients goes to the backend's all-reduce as soon as the backward has
// issued it. The parameter table is E, then each layer's tensors in turn,
// then norm_f, and the backward finishes them in the opposite order: layer
// L-1 together with norm_f (the head), then each layer, then E (tied: head
// and embedding) last. Every rank begins the same reductions in the same
// order, as NCCL requires; where the backend overlaps them (CUDA) they run
// while the next layers compute.

void model_backward(Model *m, const int *tokens, float scale) {
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const int B = m->last_B, T = m->last_T, C = c->C, F = c->F, V = c->V, Vp = c->Vp, M = B * T;
    const AmsuShape sh = amsu_shape(m, B, T);
    NeuronTestMode tb;
    if (!m->grads) fatal("model_backward: no training state (model_alloc_train)");
    if (!m->last_scored) fatal("model_backward: the last forward had no targets, or carried state");
    if (!m->grad_mem) alloc_grad_scratch(m);

    // cross-entropy: dlogits = (softmax − onehot) · scale / scored, in place of the logits;
    // 0 in the pad columns, so E's pad rows get no gradient and stay 0 under AdamW
    int scored = 0;
    for (int i = 0; i < M; i++) scored += m->host_targets[i] >= 0;
    be->xent_backward(m->logits, m->targets, scored ? scale / (float)scored : 0.0f, M, V, Vp);
    m->last_scored = 0;  // the logits are gone
    float *dlogits = m->logits, *dx = m->dx, *dz = m->dz;
    // logits = zf Eᵀ over all Vp rows
    be->matmul_backward(dz, m->gE, dlogits, m->zf, m->E, M, C, Vp, 1.0f, 0);
    be->zero(dx, (size_t)M * C * sizeof(float));
    be->rmsnorm_backward(dx, m->gnorm_f, m->rms_scratch, dz, m->x_out, m->norm_f, m->rstdf, M, C);

    for (int l = c->L - 1; l >= 0; l--) {
        LayerActs *a = &m->acts[l];
        const LayerParams *p = &m->layers[l];
        LayerParams *g = &m->glayers[l];
        // x_out = x_mid + r W_2ᵀ
        if (m->spike_bytes == 2) {  // dz is free until W_1's backward: dx as bf16 there
            be->matmul_backward(m->dr, NULL, dx, NULL, p->W_2, M, F, C, 1.0f, 0);
            be->spike_matmul_dW(g->W_2, (bf16_t *)dz, dx, (const bf16_t *)a->r, M, F, C);
        } else {
            be->matmul_backward(m->dr, g->W_2, dx, a->r, p->W_2, M, F, C, 1.0f, 0);
        }
        be->neuron_backward(m->dc, NULL, g->a_beta_ffn, m->lif_scratch, m->dr, a->w, NULL, a->r, p->a_beta_ffn, B,
                            T, F, F, test_for(m, l, 1, &tb));
        be->matmul_backward(dz, g->W_1, m->dc, a->z2, p->W_1, M, C, F, 1.0f, 0);
        be->rmsnorm_backward(dx, g->norm2, m->rms_scratch, dz, a->x_mid, p->norm2, a->rstd2, M, C);
        // x_mid = x_in + AMSU(z1)
        const AmsuWeights w = amsu_weights(p, m->W16 ? WO_16(m, l) : NULL);
        AmsuGrads ag = {g->W_I, g->W_O, g->a_lambda, g->a_beta};
        be->amsu_backward(dz, &ag, m->amsu_scratch, dx, a->z1, &a->amsu, &w, sh, test_for(m, l, 0, &tb));
        be->rmsnorm_backward(dx, g->norm1, m->rms_scratch, dz, a->x_in, p->norm1, a->rstd1, M, C);
        if (m->reduce) {  // this layer's gradients are final: from its first tensor to the next layer's
            size_t lo = (size_t)(g->norm1 - m->grads);
            size_t hi = l + 1 < c->L ? (size_t)(m->glayers[l + 1].norm1 - m->grads) : m->nparams;
            be->allreduce_begin(m->grads + lo, hi - lo);  // the last layer's range ends with norm_f
        }
    }
    // x = E[token]: each token's rows summed in position order
    be->embedding_backward(m->gE, dx, tokens, m->emb_scratch, M, C);
    if (m->reduce) {
        be->allreduce_begin(m->gE, (size_t)c->Vp * C);
        be->allreduce_wait();  // nothing reads the gradients before every reduction is done
        m->reduced = 1;
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
    size_t D = (size_t)(c->C / c->Nh), bytes = (size_t)B * model_state_floats(c) * sizeof(float);
    ModelState *s = xcalloc(1, sizeof(ModelState));
    s->be = m->be;
    s->B = B, s->L = c->L;
    s->H1 = c->astro ? (size_t)c->Nh * D * D : 0, s->C = (size_t)c->C, s->F = (size_t)c->F;
    s->layers = xcalloc(c->L, sizeof(LayerState));
    s->mem = be_alloc_or_die(s->be, bytes ? bytes : 1, "recurrent state");
    s->be->zero(s->mem, bytes);
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
    const Backend *be = s->be;
    for (int l = 0; l < s->L; l++) {
        LayerState *ls = &s->layers[l];
        if (ls->amsu.H) be->zero(ls->amsu.H + b * s->H1, s->H1 * sizeof(float));
        be->zero(ls->amsu.u + b * s->C, s->C * sizeof(float));
        be->zero(ls->amsu.s + b * s->C, s->C * sizeof(float));
        be->zero(ls->w + b * s->F, s->F * sizeof(float));
        be->zero(ls->r + b * s->F, s->F * sizeof(float));
    }
}

void model_state_reset(ModelState *s) {
    for (int b = 0; b < s->B; b++) model_state_reset_slot(s, b);
}

void model_state_free(ModelState *s) {
    if (!s) return;
    if (s->mem) s->be->free(s->mem);
    free(s->layers);
    free(s);
}

Model *model_share(const Model *m) {
    Model *v = xcalloc(1, sizeof(Model));
    v->cfg = m->cfg;
    v->be = m->be;
    v->tensors = m->tensors, v->ntensors = m->ntensors, v->nparams = m->nparams, v->padded = m->padded;
    v->params = m->params, v->live = m->live, v->layers = m->layers, v->E = m->E, v->norm_f = m->norm_f;
    v->shared = 1;
    return v;
}

void model_free(Model *m) {
    if (!m) return;
    const Backend *be = m->be;
    free_acts(m);
    if (!m->shared) {
        if (m->live != m->params) be->free(m->live);
        free(m->tensors);
        free(m->params);
        free(m->layers);
    }
    if (m->grads) be->free(m->grads);
    if (m->mom1) be->free(m->mom1);
    if (m->mom2) be->free(m->mom2);
    free(m->host_mom1);
    free(m->host_mom2);
    free(m->glayers);
    free(m);
}
