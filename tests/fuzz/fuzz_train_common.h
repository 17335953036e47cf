// fuzz_train_common.h: the fixed, valid files the training-checkpoint and
// import fuzz targets put next to the fuzzed one.
//
// Each of those targets fuzzes one file of a checkpoint (or export)
// directory; the others must be valid so the reader gets past them and on to
// the fuzzed bytes. They are written once per process, for a micro model
// (V 2, one layer, width 2, astro on: 168 parameters) so a state file is a
// couple of KiB and the fuzzer's mutations stay within -max_len.
#ifndef GLIA_FUZZ_TRAIN_COMMON_H
#define GLIA_FUZZ_TRAIN_COMMON_H

#include "model/checkpoint.h"
#include "fuzz_common.h"
#include "train/train_ckpt.h"

#define FUZZ_STEP 7  // the step of the fixed files (their directory: step_00000007)

static ModelConfig fuzz_micro_config(void) {
    return (ModelConfig){.V = 2, .Vp = 64, .L = 1, .C = 2, .Nh = 1, .F = 2, .astro = 1};
}

// The run options a state file stores (any valid values will do).
static TrainOptions fuzz_micro_options(void) {
    TrainOptions o;
    memset(&o, 0, sizeof o);
    o.cfg = fuzz_micro_config();
    o.steps = 10;
    o.batch = 2;
    o.seq = 4;
    o.accum = 1;
    o.lr = 1e-3;
    o.min_lr_frac = 0.1;
    o.weight_decay = 0.1;
    o.clip = 1.0;
    o.warmup = 2;
    o.seed = 1;
    return o;
}

// Writes <dir>/model.safetensors (step FUZZ_STEP) and, for each of
// `nstates` ranks r of a run of `world` ranks with ZeRO stage `zero`,
// <dir>/state.rank<r>.safetensors with moments 0.5 and 0.25. Aborts on failure.
static void fuzz_write_checkpoint_files(const char *dir, int nstates, int world, int zero) {
    char path[4400], err[CKPT_ERR_LEN];
    ModelConfig cfg = fuzz_micro_config();
    TrainOptions o = fuzz_micro_options();
    Model *m = model_new(&cfg);
    model_init(m, 1);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (ckpt_save_model(m, path, FUZZ_STEP, err) != 0) {
        fprintf(stderr, "glia fuzz: %s\n", err);
        abort();
    }
    for (int r = 0; r < nstates; r++) {
        TrainShard sh;
        train_shard_init(&sh, m->nparams, r, world, zero);
        float *m1 = malloc(sh.len * sizeof(float)), *m2 = malloc(sh.len * sizeof(float));
        if (!m1 || !m2) abort();
        for (size_t i = 0; i < sh.len; i++) m1[i] = 0.5f, m2[i] = 0.25f;
        if (train_ckpt_save_state(dir, m, m1, m2, &sh, &o, FUZZ_STEP, err) != 0) {
            fprintf(stderr, "glia fuzz: %s\n", err);
            abort();
        }
        free(m1);
        free(m2);
    }
    model_free(m);
}

// A one-line error: NUL-terminated inside its buffer, no newline.
static inline void fuzz_check_err(const char *err, size_t len) {
    if (!memchr(err, '\0', len) || strchr(err, '\n')) abort();
}

#endif
