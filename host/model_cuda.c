// model_cuda.c: the AstroSNN model on the CUDA backend: device buffers and
// the order of the kernel calls, forward and backward.
//
// This is model.c's forward and backward with every op replaced by its
// CUDA counterpart from kernels/cuda (cuda.h), which keeps the CPU's
// contracts, so the two files read side by side. The differences:
// - Buffers: one device allocation each for parameters, gradients, the two
//   AdamW moments, activations and backward scratch, carved with the same
//   offsets as on the host (a tensor's device address is the device base
//   plus its host offset), so the parameter table serves both.
// - The AM-SU recurrence runs fused (amsu.cu): astrocyte and neuron in one
//   kernel forward, one kernel backward, instead of the CPU's two passes.
// - Residual adds are folded into the output matmuls (a copy of x, then
//   the GEMM accumulates into it), so no separate add kernel exists.
// - The embedding backward is grouped by token on the host (the tokens are
//   there anyway), so the device sums each token's rows in position order
//   with no atomics: gradients are bit-identical from run to run.
// - Only the per-row losses travel to the host, where they are summed in
//   order as on the CPU.
// Everything runs on the default stream, in order; the host waits only where
// it needs a value (the loss, the gradient norm, logits for sampling).
#ifdef GLIA_HAVE_CUDA

#include "model_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda.h"
#include "dist.h"
#include "glia/util.h"

typedef struct {  // model.h's LayerActs, on the device
    float *x_in, *z1, *rstd1;   // (B, T, C), (B, T, C), (B, T)
    AmsuActs amsu;              // I k v q o u s (B, T, C), Hckpt: cpu.h's layout
    float *x_mid, *z2, *rstd2;  // (B, T, C), (B, T, C), (B, T)
    float *c, *w, *r;           // (B, T, F) FFN current, membrane, spikes
} DevLayerActs;

struct CudaModel {
    float *params, *grads;                // (nparams) each; grads NULL unless training
    float *mom1, *mom2;                   // (mom_len) each: all parameters, or a ZeRO-1 slice
    size_t mom_len;
    // ZeRO-1 (model_cuda_zero1_init): this rank's slice [z_offset, z_offset + mom_len)
    // of the parameters; params and grads are then padded (with zeros) to a multiple of
    // the world size, so NCCL reduce-scatters and all-gathers them in place
    size_t z_offset;
    // the gradient all-reduce overlapped with the backward (model_cuda_overlap_allreduce)
    int overlap;
    void *comm;                           // NCCL's stream
    void **ev;                            // (L + 2): after each layer, after the embedding, comm done
    int B, T;                             // activations allocated for
    float *acts_mem;
    DevLayerActs *acts;                   // (L)
    float *x_out, *zf, *rstdf, *logits;   // (B, T, C), (B, T, C), (B, T), (B, T, V)
    int *tokens, *targets;                // (B, T) device copies of the last batch
    float *losses;                        // (B, T)
    // backward scratch
    float *grad_mem;
    float *dx, *dz;                           // (B, T, C) each
    float *dc, *dr;                           // (B, T, F)
    float *amsu_scratch, *rms_scratch, *lif_scratch;  // amsu_backward_cuda's, ... , (B, F)
    int *emb_plan;                        // order (B·T), starts (B·T + 1), uniq (B·T)
    double *norm;                         // (1 + grad_norm_scratch_doubles())
    // host side
    int *host_targets, *host_plan;        // (B, T), (3·B·T + 1)
    float *host_losses;                   // (B, T)
    float *host_logits;                   // (V) one row, for model_logits
    int last_B, last_T, last_scored;
    int shared;                           // 1: params belong to another Model (model_share)
};

static void *dev_alloc_or_die(size_t bytes, const char *what) {
    void *p = cuda_alloc(bytes);
    if (!p) fatal("GPU out of memory for %s: %s; try a smaller --batch or --seq", what,
                  cuda_last_error_message());
    return p;
}

// Device address of parameter (or gradient) pointer p of the host buffer.
static float *dev_of(const Model *m, float *dev_base, const float *host_ptr) {
    return host_ptr ? dev_base + (host_ptr - m->params) : NULL;
}

int model_to_cuda(Model *m, size_t moments, char *err, size_t err_len) {
    if (m->cuda) return 0;
    const ModelConfig *c = &m->cfg;
    if (c->astro && !amsu_head_size_supported(c->C / c->Nh)) {
        snprintf(err, err_len,
                 "the CUDA backend runs head sizes 8, 16, 32, 64 and 128; this model's is %d "
                 "(width %d / %d heads): use --device cpu",
                 c->C / c->Nh, c->C, c->Nh);
        return -1;
    }
    if (cuda_device_count() == 0) {
        snprintf(err, err_len, "--device cuda: no CUDA device found");
        return -1;
    }
    struct CudaModel *g = xcalloc(1, sizeof *g);
    const size_t bytes = m->nparams * sizeof(float), mbytes = moments * sizeof(float);
    float **bufs[] = {&g->params, &g->grads, &g->mom1, &g->mom2};
    const char *names[] = {"parameters", "gradients", "AdamW moments", "AdamW moments"};
    for (int i = 0; i < (moments ? 4 : 1); i++) {
        *bufs[i] = cuda_alloc(i < 2 ? bytes : mbytes);
        if (!*bufs[i]) {
            snprintf(err, err_len, "GPU out of memory for the %s (%.2f GiB): %s", names[i],
                     (i < 2 ? bytes : mbytes) / 1073741824.0, cuda_last_error_message());
            for (int j = 0; j < i; j++) cuda_free(*bufs[j]);
            free(g);
            return -1;
        }
    }
    cuda_upload(g->params, m->params, bytes);
    g->mom_len = moments;
    if (moments) {
        cuda_memset(g->grads, 0, bytes, NULL);
        cuda_memset(g->mom1, 0, mbytes, NULL);
        cuda_memset(g->mom2, 0, mbytes, NULL);
    }
    g->host_logits = xmalloc((size_t)c->V * sizeof(float));
    // the host's activations and gradients are not used any more
    free(m->grads), m->grads = NULL;
    free(m->acts_mem), m->acts_mem = NULL;
    free(m->acts), m->acts = NULL;
    free(m->grad_mem), m->grad_mem = NULL;
    m->cuda = g;
    if (m->B > 0) model_cuda_alloc_acts(m, m->B, m->T);
    return 0;
}

void model_cuda_download(Model *m, float *mom1, float *mom2) {
    struct CudaModel *g = m->cuda;
    const size_t mbytes = g->mom_len * sizeof(float);
    cuda_download(m->params, g->params, m->nparams * sizeof(float));
    if (mom1 && g->mom1) cuda_download(mom1, g->mom1, mbytes);
    if (mom2 && g->mom2) cuda_download(mom2, g->mom2, mbytes);
}

void model_cuda_upload(Model *m, const float *mom1, const float *mom2) {
    struct CudaModel *g = m->cuda;
    const size_t mbytes = g->mom_len * sizeof(float);
    cuda_upload(g->params, m->params, m->nparams * sizeof(float));
    if (mom1 && g->mom1) cuda_upload(g->mom1, mom1, mbytes);
    if (mom2 && g->mom2) cuda_upload(g->mom2, mom2, mbytes);
}

static void free_acts(struct CudaModel *g) {
    cuda_free(g->acts_mem);
    cuda_free(g->grad_mem);
    cuda_free(g->tokens);
    cuda_free(g->targets);
    cuda_free(g->emb_plan);
    free(g->acts);
    free(g->host_targets);
    free(g->host_plan);
    free(g->host_losses);
    g->acts_mem = g->grad_mem = NULL;
    g->tokens = g->targets = g->emb_plan = NULL;
    g->acts = NULL;
    g->host_targets = g->host_plan = NULL;
    g->host_losses = NULL;
}

void model_cuda_free(Model *m) {
    struct CudaModel *g = m->cuda;
    if (!g) return;
    free_acts(g);
    if (!g->shared) cuda_free(g->params);
    cuda_free(g->grads);
    cuda_free(g->mom1);
    cuda_free(g->mom2);
    if (g->ev)
        for (int i = 0; i < m->cfg.L + 2; i++) cuda_event_free(g->ev[i]);
    free(g->ev);
    cuda_stream_free(g->comm);
    cuda_free(g->norm);
    free(g->host_logits);
    free(g);
    m->cuda = NULL;
}

void model_cuda_share(const Model *m, Model *view) {
    struct CudaModel *g = xcalloc(1, sizeof *g);
    g->params = m->cuda->params;
    g->shared = 1;
    g->host_logits = xmalloc((size_t)m->cfg.V * sizeof(float));
    view->cuda = g;
}

void model_cuda_alloc_acts(Model *m, int B, int T) {
    struct CudaModel *g = m->cuda;
    if (g->acts_mem && g->B == B && g->T == T) return;
    free_acts(g);
    g->B = B, g->T = T;
    const ModelConfig *c = &m->cfg;
    const size_t bt = (size_t)B * T, btc = bt * c->C, btf = bt * c->F, btv = bt * c->V;
    const AmsuShape sh = {B, T, c->C, c->Nh, c->astro};
    const size_t per_layer = 4 * btc + 2 * bt + amsu_acts_size(sh) + 3 * btf;
    const size_t total = c->L * per_layer + 2 * btc + 2 * bt + btv;
    g->acts_mem = dev_alloc_or_die(total * sizeof(float), "the activations");
    g->acts = xcalloc(c->L, sizeof(DevLayerActs));
    float *p = g->acts_mem;
#define TAKE(n) (p += (n), p - (n))
    for (int l = 0; l < c->L; l++) {
        DevLayerActs *a = &g->acts[l];
        a->x_in = TAKE(btc), a->z1 = TAKE(btc), a->rstd1 = TAKE(bt);
        amsu_acts_bind(&a->amsu, sh, TAKE(amsu_acts_size(sh)));
        a->x_mid = TAKE(btc), a->z2 = TAKE(btc), a->rstd2 = TAKE(bt);
        a->c = TAKE(btf), a->w = TAKE(btf), a->r = TAKE(btf);
    }
    g->x_out = TAKE(btc), g->zf = TAKE(btc), g->rstdf = TAKE(bt), g->losses = TAKE(bt);
    g->logits = TAKE(btv);
#undef TAKE
    g->tokens = dev_alloc_or_die(bt * sizeof(int), "the token ids");
    g->targets = dev_alloc_or_die(bt * sizeof(int), "the targets");
    g->host_targets = xmalloc(bt * sizeof(int));
    g->host_losses = xmalloc(bt * sizeof(float));
    g->grad_mem = NULL;  // allocated by the first backward
}

// ---- gradients and the optimizer ------------------------------------------------------

float *model_cuda_grads(Model *m) { return m->cuda->grads; }

void model_cuda_zero_grad(Model *m) {
    cuda_memset(m->cuda->grads, 0, m->nparams * sizeof(float), NULL);
}

double model_cuda_grad_norm_sq(Model *m) {
    struct CudaModel *g = m->cuda;
    if (!g->norm)
        g->norm = dev_alloc_or_die((1 + grad_norm_scratch_doubles()) * sizeof(double),
                                   "the gradient norm");
    grad_norm_sq_cuda(g->norm, g->norm + 1, g->grads, m->nparams, NULL);
    double sq;
    cuda_download(&sq, g->norm, sizeof sq);
    return sq;
}

void model_cuda_scale_grads(Model *m, float s) {
    scale_inplace_cuda(m->cuda->grads, m->nparams, s, NULL);
}

void model_cuda_adamw(Model *m, float lr, float beta1, float beta2, float eps,
                      float weight_decay, int step) {
    struct CudaModel *g = m->cuda;
    if (g->mom_len != m->nparams) fatal("model_cuda_adamw: the moments are a ZeRO-1 slice");
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        adamw_update_cuda(g->params + t->offset, g->grads + t->offset, g->mom1 + t->offset,
                          g->mom2 + t->offset, t->numel, lr, beta1, beta2, eps,
                          t->decay ? weight_decay : 0.0f, step, NULL);
    }
}

// ---- ZeRO-1 ------------------------------------------------------------------------------
// train.c's CPU ZeRO-1 step on the device, in place: the gradient buffer,
// padded with zeros, is reduce-scattered into its own block `rank` (NCCL's
// in-place form), so this rank's summed slice is grads[lo, hi); the global
// norm is the sum of every slice's Σg² (one double all-reduced over MPI);
// clip, AdamW on each tensor's part of the slice, then the padded
// parameters are all-gathered in place. Device memory: parameters and
// gradients (padded) plus 2/N of the moments, against 4 buffers without
// ZeRO.

// Replaces *buf (n floats) with a zero-padded copy of `padded` floats.
static int pad_buffer(float **buf, size_t n, size_t padded, const char *what, char *err,
                      size_t err_len) {
    float *p = cuda_alloc(padded * sizeof(float));
    if (!p) {
        snprintf(err, err_len, "GPU out of memory for the padded %s (%.2f GiB): %s; try a smaller model",
                 what, padded * 4 / 1073741824.0, cuda_last_error_message());
        return -1;
    }
    cuda_memset(p + n, 0, (padded - n) * sizeof(float), NULL);
    cuda_copy(p, *buf, n * sizeof(float), NULL);
    cuda_free(*buf);
    *buf = p;
    return 0;
}

int model_cuda_zero1_init(Model *m, size_t offset, size_t padded, char *err, size_t err_len) {
    struct CudaModel *g = m->cuda;
    g->z_offset = offset;
    return pad_buffer(&g->params, m->nparams, padded, "parameters", err, err_len) ||
                   pad_buffer(&g->grads, m->nparams, padded, "gradients", err, err_len)
               ? -1
               : 0;
}

double model_cuda_zero1_step(Model *m, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float clip, int step) {
    struct CudaModel *g = m->cuda;
    const size_t lo = g->z_offset, len = g->mom_len, hi = lo + len;
    float *slice = g->grads + lo;
    dist_nccl_reduce_scatter(g->grads, len, NULL);
    if (!g->norm)
        g->norm = dev_alloc_or_die((1 + grad_norm_scratch_doubles()) * sizeof(double),
                                   "the gradient norm");
    grad_norm_sq_cuda(g->norm, g->norm + 1, slice, len, NULL);
    double sq;
    cuda_download(&sq, g->norm, sizeof sq);
    dist_allreduce_sum_double(&sq, 1);
    const double norm = sqrt(sq);
    if (clip > 0 && norm > clip) scale_inplace_cuda(slice, len, (float)(clip / norm), NULL);
    for (int i = 0; i < m->ntensors; i++) {  // each tensor's part inside the slice
        const ParamTensor *t = &m->tensors[i];
        size_t a = t->offset > lo ? t->offset : lo;
        size_t b = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        if (a >= b) continue;
        adamw_update_cuda(g->params + a, g->grads + a, g->mom1 + (a - lo), g->mom2 + (a - lo), b - a,
                          lr, beta1, beta2, eps, t->decay ? weight_decay : 0.0f, step, NULL);
    }
    dist_nccl_allgather(g->params, len, NULL);
    return norm;
}

// ---- forward ---------------------------------------------------------------------------

double model_cuda_forward(Model *m, const int *tokens, const int *targets, int B, int T,
                          ModelState *state) {
    struct CudaModel *g = m->cuda;
    const ModelConfig *c = &m->cfg;
    if (B < 1 || T < 1 || B > g->B || T > g->T)
        fatal("model_forward: batch %dx%d does not fit the activations allocated for %dx%d", B,
              T, g->B, g->T);
    if (state && state->B != B)
        fatal("model_forward: state holds %d sequences, batch has %d", state->B, B);
    const int C = c->C, F = c->F, V = c->V, M = B * T;
    const size_t btc = (size_t)M * C;
    const AmsuShape sh = {B, T, C, c->Nh, c->astro};
    g->last_B = B, g->last_T = T, g->last_scored = targets != NULL && !state;

    cuda_upload(g->tokens, tokens, (size_t)M * sizeof(int));
    embedding_forward_cuda(g->acts[0].x_in, g->tokens, dev_of(m, g->params, m->E), M, C, NULL);
    for (int l = 0; l < c->L; l++) {
        DevLayerActs *a = &g->acts[l];
        const LayerParams *hp = &m->layers[l];
#define P(field) dev_of(m, g->params, hp->field)
        float *x_next = l + 1 < c->L ? g->acts[l + 1].x_in : g->x_out;
        AmsuState st = {0};
        float *w_st = NULL, *r_st = NULL;
        if (state) {  // the device copies of this layer's state
            const LayerState *ls = &state->layers[l];
            st.H = ls->amsu.H ? state->dev + (ls->amsu.H - state->base) : NULL;
            st.u = state->dev + (ls->amsu.u - state->base);
            st.s = state->dev + (ls->amsu.s - state->base);
            w_st = state->dev + (ls->w - state->base);
            r_st = state->dev + (ls->r - state->base);
        }
        // token mixer: x_mid = x_in + AMSU(RMSNorm(x_in))
        const AmsuWeights w = {P(W_I), P(W_K), P(W_V), P(W_Q), P(W_O), P(a_lambda), P(a_beta)};
        rmsnorm_forward_cuda(a->z1, a->rstd1, a->x_in, P(norm1), M, C, NULL);
        cuda_copy(a->x_mid, a->x_in, btc * sizeof(float), NULL);
        amsu_forward_cuda(a->x_mid, &a->amsu, a->z1, &w, sh, state ? &st : NULL, 1, NULL);
        // channel mixer: x_next = x_mid + W_2 r, r = LIF(W_1 RMSNorm(x_mid))
        rmsnorm_forward_cuda(a->z2, a->rstd2, a->x_mid, P(norm2), M, C, NULL);
        matmul_forward_cuda(a->c, a->z2, P(W_1), M, C, F, 1.0f, 0, NULL);
        amsu_recurrence_forward_cuda(NULL, a->w, a->r, NULL, a->c, NULL, NULL, NULL, NULL,
                                     P(a_beta_ffn), NULL, w_st, r_st, B, T, F, 1, 0, NULL);
        cuda_copy(x_next, a->x_mid, btc * sizeof(float), NULL);
        matmul_forward_cuda(x_next, a->r, P(W_2), M, F, C, 1.0f, 1, NULL);
#undef P
    }
    rmsnorm_forward_cuda(g->zf, g->rstdf, g->x_out, dev_of(m, g->params, m->norm_f), M, C, NULL);
    matmul_forward_cuda(g->logits, g->zf, dev_of(m, g->params, m->E), M, C, V, 1.0f, 0, NULL);
    if (!targets) return 0.0;

    memcpy(g->host_targets, targets, (size_t)M * sizeof(int));
    cuda_upload(g->targets, targets, (size_t)M * sizeof(int));
    xent_forward_cuda(g->losses, g->logits, g->targets, M, V, NULL);
    cuda_download(g->host_losses, g->losses, (size_t)M * sizeof(float));
    double loss = 0.0;
    int scored = 0;
    for (int i = 0; i < M; i++) {  // in order, as on the CPU
        if (targets[i] < 0) continue;
        loss += g->host_losses[i];
        scored++;
    }
    return scored ? loss / scored : 0.0;
}

const float *model_cuda_logits(Model *m, int b, int t) {
    struct CudaModel *g = m->cuda;
    const int V = m->cfg.V;
    cuda_download(g->host_logits, g->logits + ((size_t)b * g->last_T + t) * V,
                  (size_t)V * sizeof(float));
    return g->host_logits;
}

// ---- backward --------------------------------------------------------------------------

// Data parallelism without ZeRO: the gradient all-reduce, overlapped with
// the backward. The parameter table is E, then each layer's tensors in
// turn, then norm_f (model.c), and the backward finishes them in the
// opposite order: norm_f with the head, layer L-1 ... 0 one by one, and E
// (tied: head and embedding) last. So as soon as layer l's backward is
// issued, its contiguous range (layer L-1's with norm_f) is handed to NCCL
// on its own stream, which waits for an event recorded after that layer on
// the default stream and then reduces while the next layers compute; E
// goes last, and the default stream waits for NCCL's last reduction before
// anything reads the gradients. All ranks issue the same reductions in the
// same order, as NCCL requires.
void model_cuda_overlap_allreduce(Model *m, int on) {
    struct CudaModel *g = m->cuda;
    g->overlap = on;
    if (!on || g->comm) return;
    g->comm = cuda_stream_new();
    g->ev = xcalloc((size_t)m->cfg.L + 2, sizeof(void *));
    for (int i = 0; i < m->cfg.L + 2; i++) g->ev[i] = cuda_event_new();
}

// Hands grads [lo, hi) to NCCL once the default stream has passed `ev`.
static void reduce_after(struct CudaModel *g, void *ev, size_t lo, size_t hi) {
    cuda_event_record(ev, NULL);
    cuda_stream_wait(g->comm, ev);
    dist_nccl_allreduce_sum(g->grads + lo, hi - lo, g->comm);
}

static void alloc_grad_scratch(Model *m) {
    struct CudaModel *g = m->cuda;
    const ModelConfig *c = &m->cfg;
    const int B = g->B, T = g->T, C = c->C, F = c->F, M = B * T;
    const size_t btc = (size_t)M * C, btf = (size_t)M * F;
    const size_t amsu = amsu_scratch_floats_cuda((AmsuShape){B, T, C, c->Nh, c->astro});
    const size_t rms = rmsnorm_backward_scratch_floats(M, C);
    const size_t lif = (size_t)B * F;
    g->grad_mem = dev_alloc_or_die((2 * btc + 2 * btf + amsu + rms + lif) * sizeof(float),
                                   "the backward pass");
    float *p = g->grad_mem;
#define TAKE(n) (p += (n), p - (n))
    g->dx = TAKE(btc), g->dz = TAKE(btc);
    g->dc = TAKE(btf), g->dr = TAKE(btf);
    g->amsu_scratch = TAKE(amsu), g->rms_scratch = TAKE(rms), g->lif_scratch = TAKE(lif);
#undef TAKE
    g->emb_plan = dev_alloc_or_die((3 * (size_t)M + 1) * sizeof(int), "the embedding backward");
    g->host_plan = xmalloc((3 * (size_t)M + 1) * sizeof(int));
}

void model_cuda_backward(Model *m, const int *tokens, float scale) {
    struct CudaModel *g = m->cuda;
    const ModelConfig *c = &m->cfg;
    const int B = g->last_B, T = g->last_T, C = c->C, F = c->F, V = c->V, M = B * T;
    const AmsuShape sh = {B, T, C, c->Nh, c->astro};
    if (!g->grads) fatal("model_backward: the model was moved to the GPU without gradients");
    if (!g->last_scored) fatal("model_backward: the last forward had no targets, or carried state");
    if (!g->grad_mem) alloc_grad_scratch(m);
    float *gp = g->grads, *pp = g->params;

    // cross-entropy: dlogits = (softmax − onehot) · scale / scored, in place of the logits
    int scored = 0;
    for (int i = 0; i < M; i++) scored += g->host_targets[i] >= 0;
    xent_backward_cuda(g->logits, g->targets, scored ? scale / (float)scored : 0.0f, M, V, NULL);
    float *dlogits = g->logits;
    g->last_scored = 0;  // the logits are gone
    // logits = zf E[:V]ᵀ
    matmul_backward_cuda(g->dz, dev_of(m, gp, m->E), dlogits, g->zf, dev_of(m, pp, m->E), M, C,
                         V, 1.0f, 0, NULL);
    cuda_memset(g->dx, 0, (size_t)M * C * sizeof(float), NULL);
    rmsnorm_backward_cuda(g->dx, dev_of(m, gp, m->norm_f), g->rms_scratch, g->dz, g->x_out,
                          dev_of(m, pp, m->norm_f), g->rstdf, M, C, NULL);

    for (int l = c->L - 1; l >= 0; l--) {
        DevLayerActs *a = &g->acts[l];
        const LayerParams *hp = &m->layers[l];
#define P(field) dev_of(m, pp, hp->field)
#define G(field) dev_of(m, gp, hp->field)
        // x_out = x_mid + r W_2ᵀ
        matmul_backward_cuda(g->dr, G(W_2), g->dx, a->r, P(W_2), M, F, C, 1.0f, 0, NULL);
        neuron_backward_cuda(g->dc, NULL, G(a_beta_ffn), g->lif_scratch, g->dr, a->w, NULL, a->r,
                             P(a_beta_ffn), B, T, F, NULL);
        matmul_backward_cuda(g->dz, G(W_1), g->dc, a->z2, P(W_1), M, C, F, 1.0f, 0, NULL);
        rmsnorm_backward_cuda(g->dx, G(norm2), g->rms_scratch, g->dz, a->x_mid, P(norm2),
                              a->rstd2, M, C, NULL);
        // x_mid = x_in + AMSU(z1)
        const AmsuWeights w = {P(W_I), P(W_K), P(W_V), P(W_Q), P(W_O), P(a_lambda), P(a_beta)};
        AmsuGrads ag = {G(W_I), G(W_K), G(W_V), G(W_Q), G(W_O), G(a_lambda), G(a_beta)};
        amsu_backward_cuda(g->dz, &ag, g->amsu_scratch, g->dx, a->z1, &a->amsu, &w, sh, NULL);
        rmsnorm_backward_cuda(g->dx, G(norm1), g->rms_scratch, g->dz, a->x_in, P(norm1),
                              a->rstd1, M, C, NULL);
#undef P
#undef G
        if (g->overlap) {  // this layer's gradients are final: from its first tensor to the next layer's
            size_t lo = (size_t)(hp->norm1 - m->params);
            size_t hi = l + 1 < c->L ? (size_t)(m->layers[l + 1].norm1 - m->params) : m->nparams;
            reduce_after(g, g->ev[l], lo, hi);  // the last layer's range ends with norm_f
        }
    }
    // x = E[token]: each token's rows summed in position order (no atomics)
    int *order = g->host_plan, *starts = order + M, *uniq = starts + M + 1;
    int nuniq = embedding_backward_plan(tokens, M, order, starts, uniq);
    int *d_order = g->emb_plan, *d_starts = d_order + M, *d_uniq = d_starts + M + 1;
    cuda_upload(d_order, order, (size_t)M * sizeof(int));
    cuda_upload(d_starts, starts, (size_t)(nuniq + 1) * sizeof(int));
    cuda_upload(d_uniq, uniq, (size_t)nuniq * sizeof(int));
    embedding_backward_cuda(dev_of(m, gp, m->E), g->dx, d_order, d_starts, d_uniq, nuniq, C,
                            NULL);
    if (g->overlap) {
        reduce_after(g, g->ev[c->L], (size_t)(m->E - m->params),
                     (size_t)(m->E - m->params) + (size_t)c->Vp * C);
        cuda_event_record(g->ev[c->L + 1], g->comm);
        cuda_stream_wait(NULL, g->ev[c->L + 1]);  // nothing reads the gradients before NCCL is done
    }
}

// ---- recurrent state ------------------------------------------------------------------

void model_cuda_state_new(const Model *m, ModelState *s) {
    size_t bytes = (size_t)s->B * model_state_floats(&m->cfg) * sizeof(float);
    s->dev = dev_alloc_or_die(bytes, "the recurrent state");
    cuda_memset(s->dev, 0, bytes, NULL);
}

void model_cuda_state_free(ModelState *s) {
    if (s->mem) cuda_free(s->dev);  // a slot view does not own the device copy
    s->dev = NULL;
}

void model_cuda_state_reset_slot(ModelState *s, int b) {
    for (int l = 0; l < s->L; l++) {
        LayerState *ls = &s->layers[l];
        if (ls->amsu.H)
            cuda_memset(s->dev + (ls->amsu.H + b * s->H1 - s->base), 0, s->H1 * sizeof(float), NULL);
        cuda_memset(s->dev + (ls->amsu.u + b * s->C - s->base), 0, s->C * sizeof(float), NULL);
        cuda_memset(s->dev + (ls->amsu.s + b * s->C - s->base), 0, s->C * sizeof(float), NULL);
        cuda_memset(s->dev + (ls->w + b * s->F - s->base), 0, s->F * sizeof(float), NULL);
        cuda_memset(s->dev + (ls->r + b * s->F - s->base), 0, s->F * sizeof(float), NULL);
    }
}

#endif  // GLIA_HAVE_CUDA
