// model_cuda.h: the AstroSNN model on the CUDA backend, behind model.h.
//
// A Model moved to the GPU (model_to_cuda) keeps its parameter table and
// its host copy of the parameters (what checkpoints read and write), and
// gains device copies of the parameters, gradients, AdamW moments,
// activations and scratch, in the same layout as the CPU's buffers (the
// same offsets). model.h's functions then dispatch here: model_forward,
// model_backward, model_zero_grad, model_alloc_acts, model_alloc_grads,
// model_logits and the recurrent state (which lives on the device) behave
// as on the CPU, so the training loop, evaluation and generation run on
// either backend with the same code. What differs is the optimizer step
// and moving parameters and moments between host and device, below.
//
// Only built with CUDA (GLIA_HAVE_CUDA); model.c guards its calls.
#ifndef GLIA_MODEL_CUDA_H
#define GLIA_MODEL_CUDA_H

#include <stddef.h>

#include "model.h"

// Moves m to the GPU: allocates its device parameters (copied from
// m->params) and, when `moments` > 0 (training), gradients and two AdamW
// moments of `moments` floats each (zero): nparams, or a ZeRO-1 slice. Any
// activations and gradients m had on the host are freed. Returns 0, or -1
// with a one-line message in err when the device memory does not suffice.
int model_to_cuda(Model *m, size_t moments, char *err, size_t err_len);

// Copies the device parameters into m->params, and the device moments into
// mom1 and mom2 (`moments` floats each) when they are non-NULL.
void model_cuda_download(Model *m, float *mom1, float *mom2);
// The reverse: m->params and (when non-NULL) the moments to the device.
void model_cuda_upload(Model *m, const float *mom1, const float *mom2);

// Σ g² over all gradients (fixed summation order).
double model_cuda_grad_norm_sq(Model *m);
// Gradients *= s.
void model_cuda_scale_grads(Model *m, float s);
// One AdamW step over every tensor (decay on matrices only), as train.c does on the CPU.
void model_cuda_adamw(Model *m, float lr, float beta1, float beta2, float eps,
                      float weight_decay, int step);
// ZeRO-1 on the GPU (train.c): the moments given to model_to_cuda are this
// rank's slice [offset, offset + moments) of the parameters padded to
// `padded` floats (train_ckpt.h's TrainShard). zero1_init pads the device
// parameters and gradients to that size (0, or -1 with a message);
// zero1_step replaces the all-reduce, clip and AdamW of a step:
// reduce-scatter, global norm (an MPI scalar all-reduce), clip, AdamW on the
// slice, all-gather, all in place. Returns the global gradient norm before
// clipping. Needs dist_nccl_init, also with one rank.
int model_cuda_zero1_init(Model *m, size_t offset, size_t padded, char *err, size_t err_len);
double model_cuda_zero1_step(Model *m, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float clip, int step);
// With `on`, the next backwards also all-reduce the gradients over the
// ranks (NCCL, dist_nccl_init first), layer by layer as each is finished,
// overlapped with the rest of the backward; off (the default), the
// backward only computes.
void model_cuda_overlap_allreduce(Model *m, int on);
// The device gradient buffer (nparams floats).
float *model_cuda_grads(Model *m);

// model.h dispatches these when m->cuda is set.
void model_cuda_share(const Model *m, Model *view);  // view reads m's device parameters
void model_cuda_free(Model *m);
void model_cuda_alloc_acts(Model *m, int B, int T);
void model_cuda_zero_grad(Model *m);
double model_cuda_forward(Model *m, const int *tokens, const int *targets, int B, int T,
                          ModelState *state);
void model_cuda_backward(Model *m, const int *tokens, float scale);
const float *model_cuda_logits(Model *m, int b, int t);
// Device mirror of a new state (zero), and its release / reset.
void model_cuda_state_new(const Model *m, ModelState *s);
void model_cuda_state_free(ModelState *s);
void model_cuda_state_reset_slot(ModelState *s, int b);

#endif
