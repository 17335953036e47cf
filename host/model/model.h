// model.h: the AstroSNN language model of SPEC.md ("Whole model").
//
//   x = E[token];  for each layer: x += AMSU(RMSNorm(x)); x += FFN(RMSNorm(x))
//   logits = RMSNorm_f(x) · E[:V]ᵀ;  loss = mean cross-entropy
//
// The head GEMM runs over all Vp rows of E (N = Vp is 64-aligned, V = 50257
// is not): logits rows have stride Vp, the pad columns [V, Vp) are masked by
// the cross-entropy and never read (docs/CUDA.md, "Padded vocabulary").
//
// Like llm.c, all parameters live in one contiguous buffer (and so do their
// gradients and the AdamW moments), described by a table of named tensors;
// the names are the checkpoint's tensor names. Activations for one (B, T)
// live in a second buffer carved at model_alloc_acts.
//
// The model is written once, against the backend table (common/backend.h):
// it runs wherever model_to_backend put it (the CPU from model_new). Every
// buffer the computation touches (parameters, gradients, moments,
// activations, recurrent state) is in the backend's memory, at the same
// offsets on every backend; `params` is the host copy that checkpoints read
// and write, and is the live buffer itself on host-memory backends.
#ifndef GLIA_MODEL_H
#define GLIA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/acts.h"
#include "common/backend.h"

#define MODEL_VERSION 1  // SPEC.md model_version

typedef struct {
    int V;      // vocabulary
    int Vp;     // V padded to a multiple of 64 (rows of E)
    int L;      // layers
    int C;      // width
    int Nh;     // astrocyte heads (D = C / Nh)
    int F;      // FFN width
    int astro;  // 0: SPEC's ablation (no astrocyte)
} ModelConfig;

// Fills cfg for a SPEC named size (tiny, small, 124m, 1.5b); astro on.
// Returns 0, or -1 for an unknown name.
int model_config_named(const char *name, ModelConfig *cfg);
// Checks a config (sizes positive, Nh divides C, ...); 0 or -1 with a message.
int model_config_check(const ModelConfig *cfg, char *err, size_t err_len);
int model_pad_vocab(int V);
// Parameters of a checked config (what model_new allocates), without
// allocating anything: checks a file's size before trusting its config.
int64_t model_config_nparams(const ModelConfig *cfg);

typedef struct {
    char name[64];
    int ndim;
    int64_t shape[2];
    size_t offset, numel;  // into the parameter buffer, in floats
    int decay;             // 1 for matrices (AdamW weight decay), 0 for gains and logits
} ParamTensor;

typedef struct {     // views into the parameter (or gradient) buffer for one layer
    float *norm1;    // (C)
    float *W_I, *W_K, *W_V, *W_Q, *W_O;  // (C, C); W_K W_V W_Q NULL when astro off
    float *a_lambda; // (Nh, D); NULL when astro off
    float *a_beta;   // (C)
    float *norm2;    // (C)
    float *W_1;      // (F, C)
    float *W_2;      // (C, F)
    float *a_beta_ffn;  // (F)
} LayerParams;

typedef struct {
    float *x_in;    // (B, T, C) residual stream entering the layer
    float *z1;      // (B, T, C) RMSNorm(x_in)
    float *rstd1;   // (B, T)
    AmsuActs amsu;  // the token mixer's saved activations
    float *x_mid;   // (B, T, C) after the token mixer
    float *z2;      // (B, T, C) RMSNorm(x_mid)
    float *rstd2;   // (B, T)
    float *c;       // (B, T, F) FFN current
    float *w;       // (B, T, F) FFN membrane
    float *r;       // (B, T, F) FFN spikes: bf16 bits when Model.spike_bytes is 2 (so is amsu.s)
} LayerActs;

typedef struct {      // one layer's recurrent state for B sequences
    AmsuState amsu;   // H (B, Nh, D, D), u (B, C), s (B, C)
    float *w, *r;     // (B, F) FFN membrane and spikes
} LayerState;

// Recurrent state of B sequences (generation), in the model's backend
// memory. Every tensor is batch-major, so sequence b of a state is itself a
// B = 1 state at fixed offsets: a slot view (model_state_slot) points into it
// without copying, and the serving engine prefills one slot of its pool
// through such a view.
typedef struct {
    LayerState *layers;  // (L)
    float *mem;          // owned storage (backend memory); NULL for a slot view
    const Backend *be;
    int B, L;
    size_t H1, C, F;     // floats per sequence of H (0 when astro off), of u and s, of w and r
} ModelState;

typedef struct {
    ModelConfig cfg;
    const Backend *be;     // where it computes: the CPU from model_new, until model_to_backend
    ParamTensor *tensors;  // (ntensors)
    int ntensors;
    size_t nparams;
    float *params;         // (nparams) host copy (checkpoints); the live buffer on host-memory backends
    float *live;           // (padded) the parameters the backend computes with (backend memory)
    LayerParams *layers, *glayers;  // (L) views into live and grads
    float *E, *norm_f, *gE, *gnorm_f;  // E (Vp, C), norm_f (C), in live and grads

    // training (model_alloc_train), backend memory
    float *grads;          // (padded)
    float *mom1, *mom2;    // (mom_len) AdamW moments: all parameters, or this rank's ZeRO-1 slice
    size_t mom_off, mom_len, padded;  // the slice [mom_off, mom_off + mom_len) of `padded` floats
    int rank, world, zero;
    int reduce, reduced;   // model_set_reduce; whether the last backward all-reduced
    float *host_mom1, *host_mom2;  // host copies for checkpoints (device backends)

    // activations (backend memory), allocated for B sequences of T tokens
    int B, T;
    int last_B, last_T, last_scored;  // the last forward's batch; whether it can be backpropagated
    float *acts_mem;
    size_t acts_bytes;  // what model_alloc_acts carved, token ids included
    // the backend's spike_bytes when the activations were carved: 4, or 2 (bf16
    // spikes s and r), which W16 goes with: the bf16 mirror of the weights that
    // multiply spikes, W_O (C, C) then W_2 (C, F) of each layer in turn,
    // refreshed whenever live changes (a model_share view carves its own when
    // its activations are carved: views serve, their parameters do not change)
    int spike_bytes;
    bf16_t *W16;  // (L, C·C + C·F) with 2-byte spikes, else NULL
    LayerActs *acts;  // (L)
    float *x_out;     // (B, T, C) residual stream after the last layer
    float *zf;        // (B, T, C)
    float *rstdf;     // (B, T)
    float *logits;    // (B, T, Vp), pad columns unused; a backward overwrites them with their gradient
    float *losses;    // (B, T) per-position cross-entropy
    int *tokens, *targets;  // (B, T) the last batch, in backend memory
    // backward scratch: dx, dz (B,T,C), dc, dr (B,T,F), the ops' scratch
    float *grad_mem, *dx, *dz, *dc, *dr, *amsu_scratch, *rms_scratch, *lif_scratch;
    int *emb_scratch;
    // host side
    int *host_targets;   // (B, T) the last targets (-1: position not scored)
    float *host_losses;  // (B, T)
    float *host_row;     // (V) one logits row (model_logits on device backends)

    // test mode (gradient checks only, host-memory backends): 0 off, 1 smooth
    // spikes recording the reset factors, 2 smooth spikes with the recorded
    // reset factors held
    int test_mode;
    float *test_keep;  // (L, 2, B, T, max(C, F))
    int shared;        // 1: tensors, params and live belong to another Model (model_share)
} Model;

// A model with parameters allocated (zero) for cfg, on the CPU backend.
Model *model_new(const ModelConfig *cfg);
// Moves m to backend `be`: its parameters are copied there from m->params
// and any activations are dropped (model_alloc_acts again). Call before
// model_alloc_train. 0, or -1 with a one-line message in err (the backend
// does not run this model's head size, or its memory does not hold it).
int model_to_backend(Model *m, const Backend *be, char *err, size_t err_len);
// After m->params changed on the host: the backend's copy follows.
void model_upload_params(Model *m);
// Before reading m->params on the host: it gets the backend's parameters.
void model_sync_host(Model *m);
void model_free(Model *m);
// Seeded initialisation of SPEC.md ("Initialisation").
void model_init(Model *m, uint64_t seed);
// Training state for rank `rank` of `world`: gradients, and AdamW moments
// (zero) for the slice [mom_off, mom_off + mom_len) of the parameters padded
// to `padded` floats; without ZeRO-1 the slice is all of them (0, nparams,
// nparams). Sets up the backend's collectives when world > 1 or zero. 0, or
// -1 with a message when the memory does not suffice.
int model_alloc_train(Model *m, int rank, int world, int zero, size_t mom_off, size_t mom_len, size_t padded,
                      char *err, size_t err_len);
// The moments, from or to host arrays of mom_len floats (checkpoints).
// model_moments_host's pointers are valid until the next call.
void model_set_moments(Model *m, const float *mom1, const float *mom2);
void model_moments_host(Model *m, const float **mom1, const float **mom2);
// With `on`, the next backwards also all-reduce the gradients over the ranks
// layer by layer as each is finished (overlapped with the rest where the
// backend can); the default is off (model_step then reduces).
void model_set_reduce(Model *m, int on);
// One optimizer step on the gradients of the backwards since the last
// model_zero_grad: all-reduce them over the ranks (unless the backward did),
// or with ZeRO-1 reduce-scatter them; clip to global norm `clip` (0: no
// clipping; the factor is applied inside AdamW, the gradients stay as they
// were); AdamW (β 0.9, 0.95, ε 1e-8; weight decay on matrices only)
// with learning rate lr on this rank's parameters; with ZeRO-1 all-gather
// them. Returns the global gradient norm before clipping.
double model_step(Model *m, float lr, float weight_decay, float clip, int step);
// What training B sequences of T tokens takes in the backend's memory, per
// rank of `world` (ZeRO-1 with `zero`), in bytes, without allocating anything
// (glia train --dry-run). Everything is fp32 (SPEC, Precision) but the spikes
// where the backend stores them as bf16 (backend.h spike_bytes); params then
// includes the bf16 mirror of W_O and W_2 (Model.W16).
typedef struct {
    size_t params, grads, moments;  // padded under ZeRO-1; moments: this rank's two
    size_t acts;                    // the forward's saved activations (model_alloc_acts)
    size_t scratch;                 // the backward's scratch
} ModelMemory;
void model_memory(const ModelConfig *cfg, const Backend *be, int B, int T, int world, int zero, ModelMemory *mm);
// (Re)allocate activations for B sequences of T tokens.
void model_alloc_acts(Model *m, int B, int T);
// The tensors model_alloc_acts carves for B × T, in its order (dst NULL):
// the first *nlayer are one layer's (held once per layer), the rest the
// head's, held once. Returns how many (at most MODEL_ACTS_MAX). The token
// ids beside them (tokens and targets, int32) take model_ids_bytes.
#define MODEL_ACTS_MAX 32
int model_acts_list(const ModelConfig *cfg, const Backend *be, int B, int T, ActsTensor *out, int *nlayer);
size_t model_ids_bytes(int B, int T);
const ParamTensor *model_find(const Model *m, const char *name);

// Forward over tokens (B, T) with B, T at most the allocated sizes. With
// targets (B, T; -1 = not scored) returns the mean cross-entropy over scored
// positions, else 0. With state non-NULL the recurrence starts from it and
// leaves the state after the last token in it (no backward then).
double model_forward(Model *m, const int *tokens, const int *targets, int B, int T,
                     ModelState *state);
// Backward of the last forward (which had targets and no state): parameter
// gradients are ADDED into m->grads, with the loss scaled by `scale`
// (1 / micro-batches for accumulation). Needs model_alloc_train.
void model_backward(Model *m, const int *tokens, float scale);
void model_zero_grad(Model *m);

// Spike statistics of the last forward (computed where the model runs; only
// per-neuron sums come to the host). Per layer: the firing rate of the AM-SU
// and of the FFN neurons over the batch's positions, the fraction of neurons
// that never fired and that fired at every position, and the astrocyte's
// share of the membrane drive, mean |o| / mean |u| (0 with astro off).
// Operations per token: synaptic operations (SOPs: each spike times its
// fan-out, for W_O and W_2, the products whose input is a spike) against the
// multiply-accumulates of the same products with dense inputs, and the
// model's other MACs (projections, W_1, the head). Energy, an ESTIMATE from
// 45 nm figures (Horowitz, ISSCC 2014: 0.9 pJ per fp32 add, 4.6 pJ per fp32
// multiply-add): spiking = SOPs·0.9 + other MACs·4.6 pJ per token; dense
// (the same network with non-spiking activations) = all MACs·4.6.
#define MODEL_PJ_PER_AC 0.9
#define MODEL_PJ_PER_MAC 4.6
typedef struct {
    double amsu_rate, amsu_never, amsu_always;
    double ffn_rate, ffn_never, ffn_always;
    double astro_share;
} LayerStats;
typedef struct {
    int L;
    LayerStats *layer;  // (L), owned: model_stats_free
    double sops, spike_macs, other_macs;  // per token
    double energy_spiking_pj, energy_dense_pj;  // per token, estimates
} ModelStats;
void model_stats(Model *m, ModelStats *st);
void model_stats_free(ModelStats *st);
// Spikes of positions [row0, row0 + rows) of the last forward (its B·T
// positions, sequence-major), summed over the layers: AM-SU spikes into
// *amsu, FFN spikes into *ffn (the serving engine's firing rate). One
// column_sums per layer and kind on the backend; only the sums come back.
void model_spike_sums(Model *m, int row0, int rows, double *amsu, double *ffn);

// Logits row of sequence b at position t of the last forward: its V real
// entries, on the host (valid until the next call).
const float *model_logits(const Model *m, int b, int t);

ModelState *model_state_new(const Model *m, int B);
void model_state_reset(ModelState *s);  // all sequences back to the zero state
void model_state_reset_slot(ModelState *s, int b);  // sequence b back to the zero state
// A B = 1 view of sequence b of `all` (no copy: writes through the view land
// in `all`). Free it with model_state_free; it must not outlive `all`.
ModelState *model_state_slot(const ModelState *all, int b);
void model_state_free(ModelState *s);
// Floats of state one sequence carries (all layers): what a state of B
// sequences costs per sequence, whatever the context length.
size_t model_state_floats(const ModelConfig *cfg);

// A second Model on the same parameters (not copied: `m` must outlive it)
// with its own activations, for running two batch shapes side by side
// without reallocating (the serving engine's prefill and decode). No
// gradients; model_free frees only what it owns. The view runs on m's
// backend, on the same parameters.
Model *model_share(const Model *m);


#endif
