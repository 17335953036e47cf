// model.h: the AstroSNN language model of SPEC.md ("Whole model").
//
//   x = E[token];  for each layer: x += AMSU(RMSNorm(x)); x += FFN(RMSNorm(x))
//   logits = RMSNorm_f(x) · E[:V]ᵀ;  loss = mean cross-entropy
//
// Like llm.c, all parameters live in one contiguous buffer (and so do their
// gradients and the AdamW moments), described by a table of named tensors;
// the names are the checkpoint's tensor names. Activations for one (B, T)
// live in a second buffer carved at model_alloc_acts. The functions below
// run on the CPU backend, or on the CUDA backend once model_to_cuda
// (model_cuda.h) has moved the model to the GPU.
#ifndef GLIA_MODEL_H
#define GLIA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"

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
    float *r;       // (B, T, F) FFN spikes
} LayerActs;

typedef struct {      // one layer's recurrent state for B sequences
    AmsuState amsu;   // H (B, Nh, D, D), u (B, C), s (B, C)
    float *w, *r;     // (B, F) FFN membrane and spikes
} LayerState;

// Recurrent state of B sequences (generation). Every tensor is batch-major,
// so sequence b of a state is itself a B = 1 state at fixed offsets: a slot
// view (model_state_slot) points into it without copying, and the serving
// engine prefills one slot of its pool through such a view.
typedef struct {
    LayerState *layers;  // (L)
    float *mem;          // owned storage; NULL for a slot view
    float *base;         // the owner's mem (a slot view's too): device offsets are taken from it
    float *dev;          // CUDA: the device copy of the owner's mem (the state itself), else NULL
    int B, L;
    size_t H1, C, F;     // floats per sequence of H (0 when astro off), of u and s, of w and r
} ModelState;

typedef struct {
    ModelConfig cfg;
    ParamTensor *tensors;  // (ntensors)
    int ntensors;
    size_t nparams;
    float *params;         // (nparams)
    float *grads;          // (nparams), allocated by model_alloc_grads
    LayerParams *layers, *glayers;  // (L) views into params and grads
    float *E, *norm_f, *gE, *gnorm_f;  // E (Vp, C), norm_f (C)

    // activations, allocated for B sequences of T tokens
    int B, T;
    int last_B, last_T, last_scored;  // the last forward's batch; whether it can be backpropagated
    float *acts_mem;
    LayerActs *acts;  // (L)
    float *x_out;     // (B, T, C) residual stream after the last layer
    float *zf;        // (B, T, C)
    float *rstdf;     // (B, T)
    float *logits;    // (B, T, V); after a backward: the probabilities
    float *tmp;       // (B, T, C) residual writes
    float *grad_mem;  // backward scratch: dx, dz (B,T,C), amsu scratch, dc, dr (B,T,F), dlogits
    int *targets;     // (B, T) copy of the last targets (-1: position not scored)

    // test mode (gradient checks only): 0 off, 1 smooth spikes recording the
    // reset factors, 2 smooth spikes with the recorded reset factors held
    int test_mode;
    float *test_keep;  // (L, 2, B, T, max(C, F))
    int shared;        // 1: tensors, params and layers belong to another Model (model_share)
    struct CudaModel *cuda;  // non-NULL: the model runs on the GPU (model_cuda.h)
} Model;

// A model with parameters allocated (zero) for cfg.
Model *model_new(const ModelConfig *cfg);
void model_free(Model *m);
// Seeded initialisation of SPEC.md ("Initialisation").
void model_init(Model *m, uint64_t seed);
void model_alloc_grads(Model *m);
// (Re)allocate activations for B sequences of T tokens.
void model_alloc_acts(Model *m, int B, int T);
const ParamTensor *model_find(const Model *m, const char *name);

// Forward over tokens (B, T) with B, T at most the allocated sizes. With
// targets (B, T; -1 = not scored) returns the mean cross-entropy over scored
// positions, else 0. With state non-NULL the recurrence starts from it and
// leaves the state after the last token in it (no backward then).
double model_forward(Model *m, const int *tokens, const int *targets, int B, int T,
                     ModelState *state);
// Backward of the last forward (which had targets and no state): parameter
// gradients are ADDED into m->grads, with the loss scaled by `scale`
// (1 / micro-batches for accumulation).
void model_backward(Model *m, const int *tokens, float scale);
void model_zero_grad(Model *m);

// Logits row of sequence b at position t of the last forward, (V).
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
// gradients; model_free frees only what it owns. A view of a model on the
// GPU runs on the GPU, on the same device parameters.
Model *model_share(const Model *m);

// Cross-entropy over V logits for one target, in nats.
double model_xent(const float *logits, int V, int target);
// Its gradient times k: dlogits = (softmax(logits) − onehot(target)) · k;
// all zeros when target < 0 (an unscored position).
void model_xent_backward(float *dlogits, const float *logits, int V, int target, float k);

#endif
