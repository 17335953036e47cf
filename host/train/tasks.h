// tasks.h: synthetic memory-retention tasks, generated inside glia.
//
// These measure what the astrocyte adds (SPEC.md, "Ablation switch") on
// problems whose answer can only come from remembering earlier tokens, with
// no data files: every sequence is a pure function of (spec, seed, sequence
// index), so training batches follow from the step number exactly as data.h's
// do, and evaluation on another seed is a disjoint sample. Only the positions
// that carry an answer are scored: targets hold the next token there and −1
// (not scored, model_forward) everywhere else.
//
// Token layout in the byte vocabulary (V = 256; any V >= 256 works):
//
//   0          TASK_FILLER  padding, the "nothing here" token
//   1          TASK_GO      "now reproduce" (the copy tasks)
//   [16, 80)   keys         64 keys (recall)
//   [128, 192) values       64 values (recall) and the symbols to copy
//
// The tasks (T tokens each; what does not fit is an error, task_check):
//
//   recall     multi-query associative recall (Zoology's MQAR): `pairs`
//              (key value) pairs with distinct keys, then a region of
//              fillers in which `queries` (key value) pairs of keys from the
//              first part sit at random 2-aligned slots. Scored: each query
//              key's position, whose target is the value paired with that
//              key. Chance: 1/64 (1/pairs for a model that only knows the
//              answer is one of the values in context).
//   copy       delayed copy: `copy_len` symbols, `delay` fillers, TASK_GO,
//              the same symbols again, fillers to T. Scored: TASK_GO's
//              position and the copy's (each target the next symbol), so
//              copy_len positions. Chance 1/64.
//   selective  selective copy: `copy_len` symbols at random distinct
//              positions of a region of T − copy_len − 1 fillers, TASK_GO,
//              the symbols in order. Scored as copy. Chance 1/64.
#ifndef GLIA_TASKS_H
#define GLIA_TASKS_H

#include <stdint.h>

#include "model/model.h"

#define TASK_FILLER 0
#define TASK_GO 1
#define TASK_KEY0 16
#define TASK_NKEYS 64
#define TASK_VAL0 128
#define TASK_NVALS 64

enum { TASK_RECALL, TASK_COPY, TASK_SELECTIVE, TASK_COUNT };

typedef struct {
    int kind;      // TASK_RECALL, TASK_COPY, TASK_SELECTIVE
    int T;         // tokens per sequence
    int pairs;     // recall: key-value pairs (<= TASK_NKEYS)
    int queries;   // recall: queries (<= pairs)
    int delay;     // copy: fillers between the symbols and TASK_GO
    int copy_len;  // copy, selective: symbols to reproduce
} TaskSpec;

// The index of a task name ("recall", "copy", "selective"), or -1.
int task_find(const char *name);
const char *task_name(int kind);
// The shortest T the spec's other lengths allow.
int task_min_len(const TaskSpec *spec);
// 0 when the spec is consistent (lengths fit in T, counts in range), else -1
// with a one-line message naming the flag.
int task_check(const TaskSpec *spec, char *err, int err_len);
// Answer positions per sequence and the chance accuracy (1/#symbols).
int task_scored(const TaskSpec *spec);
double task_chance(const TaskSpec *spec);

// Sequences index, index + 1, ..., index + B − 1 of the stream of `seed`:
// inputs and targets (B, T) with T = spec->T; each sequence is a pure
// function of (spec, seed, its index), so a rank can generate its share of a
// global batch alone. The spec must pass task_check.
void task_batch(const TaskSpec *spec, uint64_t seed, uint64_t index, int B, int T, int *inputs,
                int *targets);

// Scores a model on `nseq` sequences of the stream of `seed` (from index 0),
// B at a time (the model's activations must hold B x spec->T): accuracy of
// the argmax at the answer positions, mean cross-entropy there (nats); *n
// gets the number of scored positions.
void task_eval(Model *m, const TaskSpec *spec, uint64_t seed, int B, long nseq, double *acc,
               double *loss, long *n);

#endif
