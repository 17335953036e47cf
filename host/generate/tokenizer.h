// tokenizer.h: text in and out of a model, by the tokenizer it was trained
// with: bytes (V = 256, or more for the synthetic tasks) or GPT-2's BPE
// (V = 50257, host/io/bpe.h). The model file records which one
// (checkpoint.h: metadata "tokenizer"); a BPE model needs the ranks file.
#ifndef GLIA_TOKENIZER_H
#define GLIA_TOKENIZER_H

#include <stddef.h>

#include "io/bpe.h"
#include "model/model.h"

typedef struct {
    Bpe *bpe;  // NULL: one token per byte
    int V;
} Tokenizer;

// The tokenizer of a model of config cfg; 0, or -1 with a one-line reason
// (a vocabulary that is neither; a BPE model whose ranks file is missing).
int tokenizer_open(const ModelConfig *cfg, Tokenizer *t, char *err, size_t err_len);
void tokenizer_free(Tokenizer *t);
// Text into ids (malloc'd, *n of them). A BPE tokenizer refuses text that is
// not valid UTF-8: NULL with a reason naming the first bad byte's offset.
int *tokenizer_encode(const Tokenizer *t, const char *text, int len, int *n, char *err, size_t err_len);
// The bytes of token id (len bytes); NULL outside the vocabulary.
const unsigned char *tokenizer_bytes(const Tokenizer *t, int id, int *len);
// Offset of the first byte of s[0..len) that is no part of a valid UTF-8
// character, or -1 when all of it is valid.
long utf8_first_invalid(const char *s, long len);

#endif
