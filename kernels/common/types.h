// types.h: the shapes and tensor bundles every backend's AM-SU shares.
//
// Conventions (all backends): activations row-major (B, T, C), channel
// fastest; weights row-major (out, in). The structs hold pointers into one
// backend's memory (host memory for the CPU, device memory for CUDA); the
// layout of a bundle carved by amsu_acts_bind is the same everywhere, so a
// tensor's offset means the same thing on every backend.
#ifndef GLIA_TYPES_H
#define GLIA_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A bf16 value as its bits (common/bf16.h converts): spikes stored as bf16
// (backend.h spike_bytes) and the bf16 mirror of the weights that read them.
typedef uint16_t bf16_t;

// Astrocyte state is checkpointed every GLIA_CHUNK timesteps in the forward;
// the backward recomputes the states inside a chunk from its checkpoint.
#define GLIA_CHUNK 32

static inline int glia_nchunks(int T) { return (T + GLIA_CHUNK - 1) / GLIA_CHUNK; }

// ---- test mode -------------------------------------------------------------
// Only for finite-difference gradient checks (NULL everywhere else). With
// `smooth`, spikes are Θ̃(m) (whose derivative is exactly the surrogate)
// instead of Θ(m); with `keep` non-NULL the reset factors (1 − s_{t-1}) are
// read from it instead of being computed from the spikes. Together they make
// the forward a smooth function whose exact gradient is what the backward
// computes.
typedef struct {
    int smooth;
    const float *keep;  // (B, T, N): the factor applied to u_{t-1} at step t
} NeuronTestMode;

// ---- the AM-SU token mixer (one layer) ---------------------------------------
typedef struct {
    int B, T, C, Nh;  // D = C / Nh
    int astro;        // 0: SPEC's ablation, o ≡ 0 and no W_K, W_V, W_Q, a_lambda
} AmsuShape;

// The four input projections are one product: W_in stacks W_I, W_K, W_V, W_Q
// (as the model's parameters lie), so each row of P = z W_inᵀ is [I | k | v | q]
// and I, k, v, q (and their gradients) are views with row stride amsu_ld.
static inline int amsu_ld(AmsuShape sh) { return sh.astro ? 4 * sh.C : sh.C; }

typedef struct {
    const float *W_in;      // (ld, C): W_I, W_K, W_V, W_Q stacked (astro off: W_I only)
    const float *W_O;       // (C, C)
    const float *a_lambda;  // (Nh, D)
    const float *a_beta;    // (C)
    const bf16_t *W_O16;    // (C, C) W_O as bf16 where the spikes s are stored as bf16 (backend.h
                            //   spike_bytes 2), else NULL
} AmsuWeights;

typedef struct {
    float *dW_in;      // (ld, C), as W_in
    float *dW_O;       // (C, C)
    float *da_lambda;  // (Nh, D)
    float *da_beta;    // (C)
} AmsuGrads;

typedef struct {       // what the forward keeps for the backward
    float *P;          // (B, T, ld) the projections, each row [I | k | v | q]
    float *I, *k, *v;  // views into P, row stride ld: synaptic current, key / sqrt(D), value,
    float *q;          //   query (k, v, q NULL with astro off)
    float *o, *u, *s;  // (B, T, C) astrocyte output, membrane, spikes (s: bf16 bits with W_O16)
    float *Hckpt;      // (B, Nh, nchunks(T), D, D) astrocyte checkpoints
} AmsuActs;

typedef struct {   // recurrent state carried across calls (streaming inference)
    float *H;     // (B, Nh, D, D) astrocyte calcium
    float *u, *s; // (B, C) membrane and last spikes
} AmsuState;

// Floats needed for the activations of one layer, and carving them from `mem`.
size_t amsu_acts_size(AmsuShape sh);
void amsu_acts_bind(AmsuActs *a, AmsuShape sh, float *mem);

#ifdef __cplusplus
}
#endif

#endif
