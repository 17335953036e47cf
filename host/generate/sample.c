// sample.c: see sample.h.
//
// Sampling works on a sorted copy of the probabilities so that top-k and
// top-p are both one cut of the same list; ties are broken by token id, so
// the choice depends only on the logits and the random draw.
#include "generate/sample.h"

#include <math.h>
#include <stdlib.h>

#include "glia/util.h"

typedef struct {
    float p;
    int id;
} Cand;

static int cand_cmp(const void *a, const void *b) {
    const Cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int sample_token(const float *logits, int V, const SampleParams *p, Rng *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (p->temperature <= 0.0f) return best;
    Cand *c = xmalloc((size_t)V * sizeof(Cand));
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        c[i].p = expf((logits[i] - logits[best]) / p->temperature);
        c[i].id = i;
        sum += c[i].p;
    }
    qsort(c, V, sizeof(Cand), cand_cmp);
    int n = V;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            acc += c[i].p / sum;
            if (acc >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    double kept = 0.0;
    for (int i = 0; i < n; i++) kept += c[i].p;
    double r = rng_unif(rng) * kept, acc = 0.0;
    int tok = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) {
            tok = c[i].id;
            break;
        }
    }
    free(c);
    return tok;
}

static void emit(FILE *out, const Tokenizer *t, int tok) {
    if (!out) return;
    int len;
    const unsigned char *b = t ? tokenizer_bytes(t, tok, &len) : NULL;
    if (b)
        fwrite(b, 1, (size_t)len, out);  // bytes as they come: a character split over tokens joins up in the stream
    else
        fprintf(out, "%d ", tok);
    fflush(out);
}

int generate_tokens(Model *m, ModelState *state, const int *prompt, int nprompt, int ntokens,
                    const SampleParams *p, Rng *rng, FILE *out, int *generated, const Tokenizer *t) {
    int V = m->cfg.V;
    model_forward(m, prompt, NULL, 1, nprompt, state);
    int tok = sample_token(model_logits(m, 0, nprompt - 1), V, p, rng);
    for (int i = 0; i < ntokens; i++) {
        if (generated) generated[i] = tok;
        emit(out, t, tok);
        if (i + 1 == ntokens || (out && ferror(out))) return i + 1;  // output failed: the caller reports it
        model_forward(m, &tok, NULL, 1, 1, state);
        tok = sample_token(model_logits(m, 0, 0), V, p, rng);
    }
    return ntokens;
}
