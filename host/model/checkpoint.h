// checkpoint.h: saving and loading a model's parameters.
//
// A model file is a safetensors file: every parameter under its name in the
// model's table (model.h), F32, and the configuration in the metadata
// (format "glia-model", model_version, V, Vp, L, C, Nh, F, astro, step,
// tokenizer: "byte" for V = 256, "gpt2" for GPT-2's BPE at V = 50257, "byte+"
// for the tasks' byte vocabularies with extra symbols, "none" otherwise; it
// must agree with V, and a file without it takes the one V implies).
// Any safetensors tool can read it; glia checks every tensor's presence and
// shape against the configuration before using a single value. Each tensor's
// CRC-32C is stored in the metadata as crc32c.<name> (8 hex digits) and
// checked on load. A file with no crc32c.* key at all (from before the
// checksums) loads unchecked; a file with any must hold one for every tensor
// and none for a tensor it lacks (one damaged key is an error, never a check
// silently skipped). Saves are
// atomic (temporary file, fsync, rename), so a crash never leaves a torn file
// where the previous one was.
#ifndef GLIA_CHECKPOINT_H
#define GLIA_CHECKPOINT_H

#include <stddef.h>

#include "glia/safetensors.h"
#include "model/model.h"

#define CKPT_ERR_LEN 640

// The tokenizer a model of config c is trained with (see above).
const char *ckpt_tokenizer(const ModelConfig *c);
int ckpt_save_model(const Model *m, const char *path, long step, char err[CKPT_ERR_LEN]);
// Loads a model file into a new Model (parameters only). On failure returns
// NULL and writes a one-line error naming the file and the problem.
Model *ckpt_load_model(const char *path, long *step, char err[CKPT_ERR_LEN]);

// The checksum convention shared with the training state (train_ckpt.c):
// add metadata crc32c.<name> for a tensor about to be written; check a loaded
// tensor against it (required: a missing checksum is an error too). 0 or -1
// with a one-line error naming the file and the tensor.
void ckpt_meta_crc(StWriter *w, const char *name, const float *data, size_t numel);
int ckpt_check_crc(const StFile *f, const char *path, const StTensor *t, int required,
                   char err[CKPT_ERR_LEN]);
// Every crc32c.<name> key of f must name a tensor of f. Returns 1 when f
// declares checksums (has such a key), 0 when it has none, -1 with a one-line
// error naming the key.
int ckpt_check_crc_keys(const StFile *f, const char *path, char err[CKPT_ERR_LEN]);

#endif
