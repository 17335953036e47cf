// testutil.h: helpers shared by the Criterion tests: a seeded normal RNG,
// error measures with the definitions every test states its tolerance in,
// and fixture paths.
#ifndef GLIA_TESTUTIL_H
#define GLIA_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct { uint64_t s; } TestRng;

void rng_seed(TestRng *r, uint64_t seed);
float rng_normal(TestRng *r);              // N(0, 1)
float rng_uniform(TestRng *r);             // [0, 1)
void fill_normal(float *x, size_t n, float std, TestRng *r);

// Normwise relative error: max_i |a_i − b_i| / max_i |b_i| (or the absolute
// error when b is all zero). Every parity tolerance in the tests is stated in
// this measure.
double rel_err(const float *a, const float *b, size_t n);
double rel_err_d(const double *a, const double *b, size_t n);
// Number of positions where two 0/1 spike tensors differ.
size_t spike_mismatches(const float *a, const float *b, size_t n);

// The "loss" values of DIR/metrics.jsonl (a training run), in order; returns
// how many (at most max), or -1 when the file cannot be read.
int read_losses(const char *dir, double *loss, int max);

// Training state for one process (model_alloc_train over all parameters); asserts.
void test_alloc_train(Model *m);

// A small text with structure to learn: `words` words drawn from eight by a
// fixed generator, nine to a line. 0, or -1 if the file cannot be written.
int write_word_corpus(const char *path, int words);

// Runs `glia ARGS` (the binary under test, GLIA_BIN) through the shell, with
// stdout and stderr together captured into out (cap bytes, NUL-terminated).
// Returns the exit status, or -1 if it did not exit normally.
int glia_run(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Random parameters with every path of the model active (spikes in every
// layer, non-trivial gains and decays), from model_init(seed) perturbed.
void test_model_randomise(Model *m, uint64_t seed);
// n token ids uniform in [0, V).
void test_random_tokens(int *x, int n, int V, TestRng *r);

// Skip the running Criterion test, with a one-line reason, unless glia was
// built with CUDA (both) and a CUDA device is found (test_require_gpu).
void test_require_cuda_build(void);
void test_require_gpu(void);

// A Python 3 interpreter that imports torch (tools/reference.py's needs):
// $GLIA_PYTHON when set, else python3 on the PATH, else /usr/bin/python3
// (Debian's python3-torch, when a python3 earlier on the PATH lacks it);
// NULL when none does.
const char *test_python_torch(void);

// Path of a committed fixture: GLIA_FIXTURES "/" name (static buffer).
const char *fixture_path(const char *name);

#endif
