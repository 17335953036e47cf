// acts.h: saved activations as a list of named fp32 tensors (bf16: the
// spikes of BF16 mode) carved in order from one buffer. The list is the one
// description that sizes the buffer, carves it and reports it
// (model_alloc_acts, `glia train --dry-run`).
#ifndef GLIA_ACTS_H
#define GLIA_ACTS_H

#include <stddef.h>

#include "common/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *name;  // "x_in"
    const char *dims;  // the shape in symbols: "B,T,C"
    int ndim;
    size_t shape[5];
    float **dst;  // the pointer acts_carve sets; NULL: counted only
    int bytes;    // element size: 4 (fp32) or 2 (bf16, the bits in a float *)
} ActsTensor;

#define ACTS_AMSU_MAX 8

size_t acts_numel(const ActsTensor *t);
// Bytes a tensor takes in the buffer: a bf16 tensor's rounded up to a multiple
// of 256, so every tensor after it keeps the alignment it had.
size_t acts_bytes(const ActsTensor *t);
// Points each of the n tensors' dst at its place in mem, in order; returns the end.
float *acts_carve(const ActsTensor *t, int n, float *mem);
// The AM-SU layer's tensors, bound to a's fields; at most ACTS_AMSU_MAX,
// returns how many. After carving them, amsu_acts_views points I, k, v, q
// into P (NULL without the astrocyte, Hckpt too).
// spike_bytes: s's element size, 4 or 2 (backend.h). amsu_acts_size and
// amsu_acts_bind carve fp32 spikes.
int amsu_acts_list(AmsuShape sh, int spike_bytes, AmsuActs *a, ActsTensor *out);
void amsu_acts_views(AmsuActs *a, AmsuShape sh);

#ifdef __cplusplus
}
#endif

#endif
