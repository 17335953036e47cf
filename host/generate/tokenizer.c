// tokenizer.c: see tokenizer.h (bytes or GPT-2 BPE, picked by the vocabulary).
#include "generate/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/util.h"

static unsigned char BYTES[256];

int tokenizer_open(const ModelConfig *cfg, Tokenizer *t, char *err, size_t n) {
    for (int i = 0; i < 256; i++) BYTES[i] = (unsigned char)i;
    t->bpe = NULL, t->V = cfg->V;
    if (cfg->V == BPE_VOCAB) {
        char berr[700];
        t->bpe = bpe_load_default(berr, sizeof berr);
        if (!t->bpe) return snprintf(err, n, "the model's tokenizer (GPT-2 BPE) is not available: %s", berr), -1;
        return 0;
    }
    if (cfg->V < 256)
        return snprintf(err, n, "the model's vocabulary (%d) is neither bytes (256) nor GPT-2 BPE (%d): no tokenizer for text",
                        cfg->V, BPE_VOCAB), -1;
    return 0;
}

void tokenizer_free(Tokenizer *t) {
    bpe_free(t->bpe);
    t->bpe = NULL;
}

long utf8_first_invalid(const char *s, long len) {
    const unsigned char *p = (const unsigned char *)s;
    for (long i = 0; i < len;) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need = c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 0;
        if (!need || i + need > len) return i;
        for (int k = 1; k < need; k++)
            if ((p[i + k] & 0xC0) != 0x80) return i;
        if ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xED && p[i + 1] > 0x9F) || (c == 0xF0 && p[i + 1] < 0x90) ||
            (c == 0xF4 && p[i + 1] > 0x8F))
            return i;
        i += need;
    }
    return -1;
}

int *tokenizer_encode(const Tokenizer *t, const char *text, int len, int *n, char *err, size_t err_len) {
    if (!t->bpe) {
        int *ids = xmalloc((size_t)(len > 0 ? len : 1) * sizeof(int));
        for (int i = 0; i < len; i++) ids[i] = (unsigned char)text[i];
        *n = len;
        return ids;
    }
    long bad = utf8_first_invalid(text, len);
    if (bad >= 0) {
        snprintf(err, err_len, "the prompt is not valid UTF-8 (byte 0x%02X at offset %ld); a GPT-2 BPE model takes text",
                 (unsigned char)text[bad], bad);
        return NULL;
    }
    int *ids = NULL;
    size_t nids = 0, cap = 0;
    bpe_encode(t->bpe, (const unsigned char *)text, (size_t)len, &ids, &nids, &cap);
    if (!ids) ids = xmalloc(sizeof(int));
    *n = (int)nids;
    return ids;
}

const unsigned char *tokenizer_bytes(const Tokenizer *t, int id, int *len) {
    if (t->bpe) return bpe_token_bytes(t->bpe, id, len);
    if (id < 0 || id >= 256) return NULL;  // task vocabularies beyond the bytes: no text
    *len = 1;
    return BYTES + id;
}
