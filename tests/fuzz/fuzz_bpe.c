// fuzz_bpe.c: libFuzzer target for the GPT-2 BPE encoder (host/io/bpe.c).
//
// Any bytes (invalid UTF-8, NULs, long runs) must encode without a crash to
// ids inside the vocabulary that decode back to exactly the input, and the
// threaded encoder must give the same ids as one pass. Needs the ranks file
// in the data cache (tools/fetch_gpt2_ranks.sh); without it every input
// returns at once (nothing to test), as its corpus replay then does.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/bpe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static Bpe *b;
    static int tried;
    if (!tried) {
        char err[800];
        tried = 1;
        b = bpe_load_default(err, sizeof err);
    }
    if (!b) return 0;
    int *ids = NULL;
    size_t n = 0, cap = 0;
    bpe_encode(b, data, size, &ids, &n, &cap);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        int len;
        const unsigned char *p = bpe_token_bytes(b, ids[i], &len);
        if (!p || ids[i] == BPE_EOT || at + (size_t)len > size || memcmp(p, data + at, (size_t)len)) abort();
        at += (size_t)len;
    }
    if (at != size) abort();
    size_t np;
    int *par = bpe_encode_parallel(b, data, size, 2, &np, NULL);
    if (np != n || (n && memcmp(par, ids, n * sizeof(int)))) abort();
    free(par);
    free(ids);
    return 0;
}
