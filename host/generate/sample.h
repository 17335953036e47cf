// sample.h: choosing the next token from logits, and running generation
// with the recurrent state carried from token to token.
#ifndef GLIA_SAMPLE_H
#define GLIA_SAMPLE_H

#include <stdio.h>

#include "generate/tokenizer.h"
#include "model/model.h"
#include "model/rng.h"

typedef struct {
    float temperature;  // 0: greedy (argmax)
    int top_k;          // 0: no limit
    float top_p;        // 1: no limit
} SampleParams;

// One token from logits (V). Uses one random draw unless greedy.
int sample_token(const float *logits, int V, const SampleParams *p, Rng *rng);

// Generation for one sequence: the prompt is run once through the model
// (state carried), then one step per new token. Each new token is written to
// `out` as it is made (its bytes under tokenizer t; its id and a space when
// t is NULL or has no text for it), flushed. The model must have activations for B = 1 and T >= the
// prompt length. Returns the number of tokens generated.
int generate_tokens(Model *m, ModelState *state, const int *prompt, int nprompt, int ntokens,
                    const SampleParams *p, Rng *rng, FILE *out, int *generated, const Tokenizer *t);

#endif
