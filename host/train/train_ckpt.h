// train_ckpt.h: training checkpoints: everything needed to continue a run
// exactly where it stopped, saved so that a crash never loses more than the
// steps since the last save.
//
// A checkpoint is a directory OUT/ckpt/step_00000123/ holding
//   model.safetensors        the model file of checkpoint.h, unchanged, so
//                            `glia generate/eval --ckpt` read it as it is;
//   state.rank<r>.safetensors  one per rank r of the run (mpirun -np N: N of
//                            them): the AdamW moments m.<param> and
//                            v.<param> (every rank holds all of them), or
//                            with ZeRO-1 (--zero 1) only rank r's slice of
//                            the padded, flattened moments as m.shard and
//                            v.shard; in the metadata format
//                            "glia-train-state", ckpt_version,
//                            model_version, step, the options that define
//                            the run and the configuration, world_size,
//                            rank, zero, shard_offset and shard_len, and
//                            the options restored on resume unless given
//                            again (data, ckpt_every, eval_every,
//                            eval_batches, keep);
//   COMPLETE                 written last (by rank 0, after every rank has
//                            written its file): each file's name and size,
//                            and the world size when it is above 1.
// Every tensor's CRC-32C is in its file's metadata (crc32c.<name>).
//
// Why this shape: safetensors is already glia's robust container, so the
// state is one more safetensors file rather than a new format. One state
// file per rank, so data-parallel ranks can later each write their own
// without coordinating on one file. Nothing else needs saving: the data
// loader's position IS the step (a batch is a pure function of (seed, step),
// data.h) and training has no other random state. Each file is written
// atomically (temporary, fsync, rename), and COMPLETE, written last the same
// way, is the commit record: a directory without a valid COMPLETE is an
// interrupted save and resume ignores it. So a crash mid-save leaves at worst
// an incomplete directory next to the previous, untouched checkpoint.
#ifndef GLIA_TRAIN_CKPT_H
#define GLIA_TRAIN_CKPT_H

#include "model/checkpoint.h"
#include "train/train.h"

#define TRAIN_CKPT_VERSION 1

// Which part of the AdamW moments a rank holds. Without ZeRO: all of them
// (offset 0, len = padded = nparams). With ZeRO-1 the parameter vector is
// padded with zeros to `padded`, a multiple of the world size, and rank r
// owns the contiguous slice [offset, offset + len) = [r·len, (r+1)·len).
typedef struct {
    int rank, world, zero;
    size_t offset, len, padded;
} TrainShard;
void train_shard_init(TrainShard *sh, size_t nparams, int rank, int world, int zero);

// Saves the checkpoint of `step` under out/ckpt, then keeps the newest
// `keep` complete checkpoints (deleting older ones and incomplete directories
// older than the newest complete one). 0, or -1 with a one-line error.
int train_ckpt_save(const char *out, const Model *m, const float *mom1, const float *mom2,
                    const TrainOptions *o, long step, int keep, char err[CKPT_ERR_LEN]);

// The same in the steps a data-parallel run takes (train.c): rank 0 creates
// the directory (begin) and writes the model file; every rank writes its
// state file; when all have (a barrier), rank 0 writes COMPLETE listing the
// model and `world` state files and prunes old checkpoints (commit).
int train_ckpt_begin(const char *out, long step, char *dir, size_t dir_len, char err[CKPT_ERR_LEN]);
int train_ckpt_save_model(const char *dir, const Model *m, long step, char err[CKPT_ERR_LEN]);
int train_ckpt_save_state(const char *dir, const Model *m, const float *mom1, const float *mom2,
                          const TrainShard *sh, const TrainOptions *o, long step, char err[CKPT_ERR_LEN]);
int train_ckpt_commit(const char *out, const char *dir, long step, int world, int keep, char err[CKPT_ERR_LEN]);

// Deletes the temporary files of interrupted saves (NAME.tmp.<pid>, left by
// a process killed mid-save) in out, out/ckpt and out/ckpt/step_*; returns
// how many. Only safe while the caller holds out's run lock (train.h) and no
// rank of its own run is saving: then no process writes there, so every such
// file is stale, whatever host or PID wrote it.
int train_ckpt_clean_tmp(const char *out);

// What `--resume auto` does with the run directory out: 1 to resume (out/ckpt
// holds a complete checkpoint), 0 to start fresh (out is missing, empty, or
// holds only what a run writes before its first checkpoint completes: the
// run lock, metrics.jsonl, data/, temporary files, and ckpt/ with nothing
// but incomplete step_* directories), -1 with a one-line error naming what
// makes it ambiguous (anything else, e.g. a model.safetensors whose
// checkpoints are gone, or files of something other than a glia run).
int train_ckpt_auto(const char *out, char err[CKPT_ERR_LEN]);

// 1 when out/ckpt holds a complete checkpoint: a run that starts afresh
// there would overwrite an earlier run's saved work, so it is refused. (Only
// incomplete directories, from a run killed before its first save completed,
// hold nothing to lose: a fresh run replaces them.)
int train_ckpt_exists(const char *out);

// The newest complete checkpoint under root/ckpt: its directory (into dir),
// step and stored run options (o: cfg, steps, batch, seq, accum, lr, warmup,
// min_lr_frac, weight_decay, clip, seed, and the world_size and zero of the
// run that wrote it; ckpt_every, eval_every, eval_batches and keep, -1 in a
// checkpoint from before they were stored; data: the --data path, "" for
// the default corpus, NULL when not stored (a static buffer, valid until
// the next call); other fields zero). Checks the
// COMPLETE sizes and the state file's format and versions. 0, or -1 with a
// one-line error naming the file and the problem.
int train_ckpt_find(const char *root, char *dir, size_t dir_len, long *step, TrainOptions *o,
                    char err[CKPT_ERR_LEN]);

// Loads the checkpoint directory `dir` fully, verifying COMPLETE, every
// tensor's shape and CRC, and that its configuration is `cfg` (NULL: any).
// Returns the model (parameters) and new moment buffers (nparams each), or
// NULL with a one-line error.
Model *train_ckpt_load(const char *dir, const ModelConfig *cfg, float **mom1, float **mom2,
                       long *step, char err[CKPT_ERR_LEN]);
// The same for rank sh->rank of a run of sh->world ranks with ZeRO stage
// sh->zero (set those three; the rest is filled in): refuses a checkpoint
// written by another world size or ZeRO stage; the moments are sh->len each.
Model *train_ckpt_load_shard(const char *dir, const ModelConfig *cfg, TrainShard *sh, float **mom1,
                             float **mom2, long *step, char err[CKPT_ERR_LEN]);

// Writes dir/COMPLETE for the files of a checkpoint as they are now on disk
// (the model and state.rank0.. as many ranks as have a file; tests use it to
// forge consistent bad checkpoints).
int train_ckpt_write_complete(const char *dir, long step, char err[CKPT_ERR_LEN]);

#endif
