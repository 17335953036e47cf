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

// The "loss" and "grad_norm" of each step in DIR/NAME/metrics.jsonl, in order;
// returns how many (at most max). Asserts that the file opens.
int read_step_metrics(const char *dir, const char *name, double *loss, double *norm, int max);

// Runs a printf-formatted command line through the shell (system(3)); returns
// its status as system does.
int test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

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

// The spike-flip rule for texts (CPU against another backend, greedy
// decoding): `got` agrees with the CPU's `ref` when they are identical, or
// identical up to their first differing byte p where the CPU model `cpu`,
// run over prompt + ref[0, p), either had some neuron's potential within
// TEST_SPIKE_MARGIN of θ at some position (AM-SU: u + o − θ, FFN: w − θ),
// a spike the other backend's rounding may rightly flip, after which the
// texts may part; or ranked its two best next bytes within 1e-4 of the
// largest logit's magnitude (a tie rounding may break). Returns 1 when they
// agree; else 0 with the reason in why. Prompt "" means "\n" (the engine's).
#define TEST_SPIKE_MARGIN 1e-4f
int test_texts_agree(Model *cpu, const char *prompt, const char *ref, size_t nref, const char *got, size_t ngot,
                     char *why, size_t cap);

// Random parameters with every path of the model active (spikes in every
// layer, non-trivial gains and decays), from model_init(seed) perturbed.
void test_model_randomise(Model *m, uint64_t seed);
// n token ids uniform in [0, V).
void test_random_tokens(int *x, int n, int V, TestRng *r);

// The V real logits of every position of m's last forward (B, T), packed
// into out (B·T·V) through model_logits.
void test_logits(const Model *m, int B, int T, float *out);
// Logits rows of stride Vp: fills the pad columns [V, Vp) of each of the M
// rows with large finite garbage (±1e30, FLT_MAX, 88: each would dominate a
// softmax that read it), as a GEMM over E's pad rows never writes them.
void test_fill_pad_columns(float *logits, int M, int V, int Vp);
// Cross-entropy oracle in double, naively (logits below ~700): over each row's first V entries,
// loss[i] = log Σ_v exp(l_v) − l_target and dlogits (M, Vp) = k · (softmax −
// onehot(target)), 0 in the pad columns; rows with target < 0: loss 0, dlogits 0.
void test_xent_oracle(const float *logits, const int *targets, int M, int V, int Vp, double k, double *loss,
                      double *dlogits);

// Skip the running Criterion test, with a one-line reason, unless glia was
// built with CUDA (both) and a CUDA device is found (test_require_gpu).
void test_require_cuda_build(void);
void test_require_gpu(void);
// 1 when `glia --device cuda` finds a device (a GPU, or the emulator of a
// GLIA_CUDA_EMU build): tests whose expectation depends on it branch here.
int test_have_gpu(void);

// A Python 3 interpreter that imports torch (tools/reference.py's needs):
// $GLIA_PYTHON when set, else python3 on the PATH, else /usr/bin/python3
// (Debian's python3-torch, when a python3 earlier on the PATH lacks it);
// NULL when none does.
const char *test_python_torch(void);

// Path of a committed fixture: GLIA_FIXTURES "/" name (static buffer).
const char *fixture_path(const char *name);

#endif
