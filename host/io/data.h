// data.h: token shards, datasets and batches.
//
// Training data is stored in llm.c's shard format, so shards made by llm.c's
// scripts load unchanged: a header of 256 int32 (magic 20240520, version 1,
// token count, the rest zero), then the tokens as uint16. A dataset is the
// sorted list of shards of one split ("train" or "val") in a directory.
//
// Batches are drawn so that training is reproducible and resumable without
// any loader state beyond the step number: sequence j of the global batch at
// step s starts at a position derived from (seed, s, j) alone. A data-parallel
// rank reads sequences [first, first + n) of that global batch, so the tokens
// seen per step do not depend on the number of ranks.
#ifndef GLIA_DATA_H
#define GLIA_DATA_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define DATA_ERR_LEN 512

typedef struct {
    char *path;
    const uint16_t *tokens;  // (ntok) into the mapping
    size_t ntok;
    void *map;
    size_t map_len;
} Shard;

// Map and validate a shard: magic, version, a token count that matches the
// file size exactly (a truncated or padded file is an error), at least 2
// tokens. Errors name the file and the problem.
int shard_open(Shard *s, const char *path, char err[DATA_ERR_LEN]);
void shard_close(Shard *s);
// Write a shard atomically (temporary file, fsync, rename).
int shard_write(const char *path, const uint16_t *tokens, size_t ntok, char err[DATA_ERR_LEN]);

typedef struct {
    Shard *shards;  // (nshards) sorted by file name
    int nshards;
    size_t total;   // tokens in all shards
    int max_token;  // largest token id seen (checked against the vocabulary)
} Dataset;

// Open every `*<split>*.bin` file in `dir` (split: "train" or "val").
int dataset_open(Dataset *d, const char *dir, const char *split, char err[DATA_ERR_LEN]);
void dataset_close(Dataset *d);

// Training batch: sequences [first, first + n) of the global batch of `step`.
// inputs, targets (n, T); targets are inputs shifted by one token. Windows
// never cross a shard boundary. Requires every shard to hold more than T
// tokens (dataset_check_seq reports otherwise).
void dataset_sample(const Dataset *d, uint64_t seed, uint64_t step, int first, int n, int T,
                    int *inputs, int *targets);
// Validation windows: the consecutive, non-overlapping windows
// [first, first + n) of length T + 1 read through the dataset in order;
// returns the number of windows filled (fewer at the end of the data).
int dataset_window(const Dataset *d, size_t first, int n, int T, int *inputs, int *targets);
// Number of whole windows of T + 1 tokens dataset_window can return.
size_t dataset_windows(const Dataset *d, int T);
// 0 when every shard holds more than T tokens; else an error naming the shard.
int dataset_check_seq(const Dataset *d, int T, char err[DATA_ERR_LEN]);

// Byte-level tokenizer (V = 256): write `<dir>/<name>_train.bin` (the first
// 1 − val_frac of the text) and `<dir>/<name>_val.bin` (the rest), creating
// dir if needed. Returns 0; 2 when the input is unusable (val_frac outside
// (0, 1), a bad name, a text too short for 2 tokens in each split); 1 when a
// directory or shard cannot be written (the exit statuses of commands.h).
int prepare_bytes(const unsigned char *text, size_t n, double val_frac, const char *dir,
                  const char *name, char err[DATA_ERR_LEN]);

// The same for tokens already made (any tokenizer): tok[0..n) split by position.
int prepare_tokens(const uint16_t *tok, size_t n, double val_frac, const char *dir, const char *name,
                   char err[DATA_ERR_LEN]);

// The default corpus's text (malloc'd, *n bytes), read from the bible-kjv
// packages; 0, or -1 with a one-line reason naming the package to install.
int corpus_default_text(unsigned char **text, size_t *n, char err[DATA_ERR_LEN]);
// The default corpus: the King James Bible from Debian's bible-kjv packages
// (`bible -f gen1:1-rev22:21`, verse references stripped), prepared as byte
// shards under the data cache directory on first use. Writes the directory
// into `dir`. Never downloads anything.
int corpus_default(char *dir, size_t dir_len, char err[DATA_ERR_LEN]);
// The data cache: $GLIA_DATA, else $XDG_CACHE_HOME/glia, else ~/.cache/glia.
void data_cache_dir(char *dir, size_t dir_len);

#endif
