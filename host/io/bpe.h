// bpe.h: GPT-2's byte-level BPE tokenizer (tiktoken's "gpt2" encoding).
//
// The vocabulary is a ranks file (gpt2.tiktoken: "base64(bytes) rank" per
// line, 50 256 ranks, each rank a token id) checked against its sha256; id
// 50256 is <|endoftext|>. tools/fetch_gpt2_ranks.sh puts the file in the data
// cache; nothing is downloaded here.
//
// Encoding: the text is cut into its valid UTF-8 runs; a byte that belongs
// to no valid character is one token (its single-byte rank). Each run is
// pre-tokenized with GPT-2's pattern (PCRE2, JIT) and each piece is merged
// pair by pair, lowest rank first, as tiktoken does, so valid UTF-8 text
// encodes exactly as tiktoken's encode_ordinary. Decoding concatenates each
// token's bytes (docs/TRAINING.md: "Tokenizers").
#ifndef GLIA_BPE_H
#define GLIA_BPE_H

#include <stddef.h>
#include <stdint.h>

#define BPE_EOT 50256    // <|endoftext|>
#define BPE_VOCAB 50257  // GPT-2's vocabulary: the ranks and <|endoftext|>
#define BPE_RANKS_FILE "gpt2.tiktoken"
#define BPE_RANKS_SHA256 "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
#define BPE_FETCH_HINT "bash tools/fetch_gpt2_ranks.sh (tools/setup.sh runs it)"

typedef struct Bpe Bpe;

// Loads and checks a ranks file (sha256, then every line). NULL with a
// one-line error naming the file in err.
Bpe *bpe_load(const char *path, char *err, size_t err_len);
// The ranks file in the data cache (data_cache_dir()/gpt2.tiktoken); a
// missing file is an error that names the command that provides it.
Bpe *bpe_load_default(char *err, size_t err_len);
void bpe_default_path(char *path, size_t len);
void bpe_free(Bpe *b);

// Appends the tokens of text[0..n) to *out (realloc'd; *nout tokens, *cap
// its capacity). Thread-safe: one Bpe may encode on many threads.
void bpe_encode(const Bpe *b, const unsigned char *text, size_t n, int **out, size_t *nout, size_t *cap);
// The whole text on `threads` threads (< 1: OpenMP's default), cut only
// where no token can change, so the ids equal one bpe_encode's. progress, if
// not NULL, is called now and then from one thread. Returns *ntok ids.
int *bpe_encode_parallel(const Bpe *b, const unsigned char *text, size_t n, int threads, size_t *ntok,
                         void (*progress)(size_t done, size_t total));
// The bytes of token id (len bytes; "<|endoftext|>" for BPE_EOT); NULL for an
// id outside [0, BPE_VOCAB).
const unsigned char *bpe_token_bytes(const Bpe *b, int id, int *len);

// SHA-256 of data[0..n) as 64 lowercase hex digits and a NUL.
void bpe_sha256_hex(const unsigned char *data, size_t n, char hex[65]);

#endif
