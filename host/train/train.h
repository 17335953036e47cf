// train.h: the training loop of `glia train`, callable from tests.
#ifndef GLIA_TRAIN_H
#define GLIA_TRAIN_H

#include <stdint.h>

#include "io/data.h"
#include "model/model.h"
#include "train/tasks.h"

typedef struct {
    ModelConfig cfg;
    const char *data;  // directory of shards, a text file, or NULL: the default corpus
    const TaskSpec *task;  // non-NULL: train on task_batch (tasks.h) instead of data; seq = task->T
    const char *out;   // run directory (created)
    long steps;
    int batch, seq, accum;  // batch: sequences per micro-batch of the whole job, split across ranks
    double lr, min_lr_frac, weight_decay, clip;
    long warmup;
    uint64_t seed;
    long eval_every, eval_batches, ckpt_every;
    int sample_tokens;
    double max_seconds;  // stop (and save) after this long; 0: no limit
    int quiet;           // no per-step lines
    int keep;            // complete checkpoints kept in out/ckpt (train_ckpt.h); 0: 3
    const char *resume;  // a checkpoint directory to continue from (train_ckpt_find), or NULL
    const char *init;    // a model file whose parameters start a fresh run (same config), or NULL
    long stop_after;     // testing aid: stop after this step, saving, as if killed; 0: off
    int zero;            // ZeRO stage: 1 shards the AdamW moments across the ranks (dist.h); 0: off
    int world_size;      // filled by train_ckpt_find: the world size of the run that wrote it
    long stats_every;    // spike statistics into metrics.jsonl every N steps and at evaluations (0: never)
    const Backend *backend;  // where the model runs (chosen once: host/cmd_device.c); NULL: the CPU
} TrainOptions;

// The exit status of a run stopped by SIGTERM or SIGINT: the step in progress
// was finished and saved; `glia train --resume` continues it (75 is
// EX_TEMPFAIL of sysexits.h: "try again later").
#define TRAIN_EXIT_INTERRUPTED 75

// Runs training; returns 0, 2 for bad input (data, options, a run directory
// in use), 1 for failures of the environment (a file that cannot be
// written), TRAIN_EXIT_INTERRUPTED after a signal. Prints one-line errors.
// Takes the run lock of o->out (below) unless this process holds it, and
// releases it before returning.
int train_run(const TrainOptions *o);

// The run lock: rank 0 holds flock(LOCK_EX) on OUT/train.lock from before
// it writes anything in OUT until the run ends; the kernel releases it when
// the process dies, however it dies. The file holds the holder's
// "PID HOST". train_lock creates OUT if needed and returns 0 (held; again 0
// when this process already holds it), 2 when another process holds it (err
// names its PID), 1 when the file cannot be created or locked.
#define TRAIN_LOCK_NAME "train.lock"
int train_lock(const char *out, char *err, size_t err_len);
void train_unlock(void);

// Learning rate at step s (1-based): linear warmup, then cosine to min_frac·lr.
double train_lr(double lr, double min_frac, long warmup, long steps, long s);

// The seed of a task run's validation sequences: a stream disjoint from training's.
#define TASK_VAL_SEED_OFFSET 1000003

// Mean cross-entropy (nats per token) over the first `batches` batches of
// B·world consecutive validation windows of T tokens; *windows gets the count
// used. Under data parallelism B is the per-rank batch (what m's activations
// hold) and every rank must call it: rank r scores windows [r·B, (r+1)·B) of
// each batch and the sums are all-reduced, so every world size scores the
// same windows (equal to rounding).
double train_eval(Model *m, const Dataset *val, int B, int T, long batches, long *windows);

// A number for metrics.jsonl formatted with fmt into buf, or "null" when v is
// not finite: JSON has no NaN or infinity, so readers see "no value" rather
// than a parse error or a silent NaN.
const char *train_json_num(char buf[40], const char *fmt, double v);

// Resolves --data: a shard directory as is; a text file is prepared into
// <out>/data; NULL prepares the default corpus. Writes the directory to dir.
int train_data_dir(const char *data, const char *out, char *dir, size_t dir_len, char *err);

#endif
