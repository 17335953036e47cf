// step.h: the per-timestep math of the AM-SU, shared by every backend.
//
// SPEC.md defines one AM-SU timestep as a handful of scalar rules: the
// astrocyte calcium update, the modulation read-out, the LIF membrane with
// hard reset, the spike and its surrogate gradient, and the backward of each. Each rule is written here
// once, as a static inline function that compiles both as C (CPU backend) and
// as CUDA `__host__ __device__` code, so the CPU reference and the CUDA
// kernels compute the same expressions by construction; the kernels differ
// only in how they loop and where they keep state.
//
// Every rule is written to be evaluated with fp32 operands and fp32 results;
// the state (H, u, w) is always fp32 (SPEC, Precision).
#ifndef GLIA_STEP_H
#define GLIA_STEP_H

#ifdef __CUDACC__
#define GLIA_HD __host__ __device__ __forceinline__
#else
#define GLIA_HD static inline
#endif

#include <math.h>

#define GLIA_THETA 1.0f          // firing threshold θ (SPEC: constant)
#define GLIA_ALPHA 2.0f          // ATan surrogate sharpness α
#define GLIA_PI 3.14159265358979323846f
#define GLIA_RMS_EPS 1e-5f       // RMSNorm epsilon

// Spike generation: Θ(m) = 1 if m >= 0 else 0.
GLIA_HD float step_spike(float m) { return m >= 0.0f ? 1.0f : 0.0f; }

// The smooth stand-in for Θ used only by gradient checks: its derivative is
// exactly the surrogate below. Θ̃(m) = arctan(π·α·m/2)/π + 1/2.
GLIA_HD float step_spike_smooth(float m) {
    return atanf(GLIA_PI * GLIA_ALPHA * m * 0.5f) / GLIA_PI + 0.5f;
}

// ATan surrogate of dΘ/dm: α / (2·(1 + (π·α·m/2)²)).
GLIA_HD float step_surrogate(float m) {
    float x = GLIA_PI * GLIA_ALPHA * m * 0.5f;
    return GLIA_ALPHA / (2.0f * (1.0f + x * x));
}

GLIA_HD float step_sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

// LIF membrane with hard reset: u_t = β·u_{t-1}·keep + I_t, where
// keep = 1 − s_{t-1} (a constant in the backward pass: detached reset).
GLIA_HD float step_membrane(float beta, float u_prev, float keep, float current) {
    return beta * u_prev * keep + current;
}

// Pre-spike potential m_t = u_t + o_t − θ (o = 0 for the FFN neuron).
GLIA_HD float step_potential(float u, float o) { return u + o - GLIA_THETA; }

// Astrocyte calcium update of one entry of H:
// H_t[i,j] = λ_i·H_{t-1}[i,j] + (1 − λ_i)·k_t[i]·v_t[j].
// `gain_k` is the precomputed (1 − λ_i)·k_t[i], shared by the whole row i.
GLIA_HD float step_calcium(float lambda, float h_prev, float gain_k, float v) {
    return lambda * h_prev + gain_k * v;
}

// ---- backward: one rule per entry, in the order SPEC's backward applies them

// The reset factor of step t: keep_t = 1 − s_{t-1} (detached: a constant
// in the backward), 1 at the first step of a zero start.
GLIA_HD float step_keep(float s_prev) { return 1.0f - s_prev; }

// ∂L/∂m_t = ∂L/∂s_t · surrogate(m_t) (also ∂L/∂o_t, since m = u + o − θ).
GLIA_HD float step_spike_grad(float ds, float m) { return ds * step_surrogate(m); }

// Backward of the membrane recursion for one neuron at one step:
// du_t = dm_t + β·(1 − s_t)·du_{t+1}, where keep_next = 1 − s_t.
GLIA_HD float step_membrane_grad(float dm, float beta, float keep_next, float du_next) {
    return dm + beta * keep_next * du_next;
}

// One step's term of ∂L/∂β: du_t · u_{t-1} · keep_t.
GLIA_HD float step_beta_grad(float du, float u_prev, float keep) { return du * u_prev * keep; }

// Astrocyte: one entry of G_t = ∂L/∂H_t (total), walking t backward:
// G_t[i,j] = q_t[i]·do_t[j] + λ_i·G_{t+1}[i,j].
GLIA_HD float step_calcium_grad(float lambda, float g_next, float q_i, float do_j) {
    return q_i * do_j + lambda * g_next;
}

// One entry's term of ∂L/∂λ_i: G_t[i,j]·(H_{t-1}[i,j] − k_t[i]·v_t[j]).
GLIA_HD float step_lambda_grad(float g, float h_prev, float k_i, float v_j) { return g * (h_prev - k_i * v_j); }

// A parameter behind a sigmoid (λ = σ(a_λ), β = σ(a_β)): ∂L/∂a = ∂L/∂σ · σ(1 − σ),
// with sig = σ(a) as the forward computed it.
GLIA_HD float step_sigmoid_grad(float grad, float sig) { return grad * sig * (1.0f - sig); }

#endif
