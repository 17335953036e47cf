// engine.h: batched generation with continuous batching.
//
// A fixed pool of S sequence slots shares one ModelState of S sequences.
// Every sequence carries a fixed-size recurrent state (no KV cache), so a
// slot whose sequence finished takes the next queued request at once: its
// state is zeroed, the prompt is prefilled through the slot's B = 1 view
// (the same forward as training), and from the next step on it decodes with
// the others, one batched forward of the whole pool per token.
//
// Determinism: a request's completion depends only on the request and the
// pool size S, never on what else is in the pool. Prefill always runs one
// slot at a time in fixed chunks, and decode always runs all S rows (idle
// slots get a dummy token and are ignored), so every matmul a request goes
// through has the same shape alone or in company; each slot samples with
// its own Rng seeded from the request.
//
// The engine is single-threaded: one thread owns it (serve's engine thread,
// or the offline loop) and calls engine_submit / engine_step; results come
// back through the request's callbacks, called from engine_step.
#ifndef GLIA_ENGINE_H
#define GLIA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "generate/sample.h"

#define ENGINE_PREFILL_CHUNK 256  // prefill tokens per forward (fixed: part of the determinism)
#define ENGINE_MAX_STOPS 4        // stop strings per request (OpenAI's limit)
#define ENGINE_MAX_STOP_LEN 64    // bytes per stop string

#define ENGINE_MAX_LOGPROBS 5      // top alternatives per token (OpenAI's limit)

typedef struct {
    const char *text;           // the completion (a matched stop string removed); len bytes, any byte value
    int len;
    int prompt_tokens, completion_tokens;
    const char *finish_reason;  // "length", "stop" or "cancelled"
    double ttft_s;              // submit → first token
    double total_s;             // submit → done
    // Log-probabilities (the request's logprobs set), of the model's distribution
    // at temperature 1 whatever the sampling parameters: nlp entries, the
    // echoed prompt's tokens first (echo; the first has none: NaN), then one
    // per completion byte. Each has the token, its logprob and the top_n most
    // likely tokens with theirs (top_ids / top_lp, nlp × top_n, ties by id).
    int nlp, echo_tokens, top_n;
    const unsigned char *lp_tokens;
    const float *lp;
    const int *top_ids;
    const float *top_lp;
} EngineResult;

typedef struct {
    const char *prompt;  // text, copied at submit: any bytes for a byte model, UTF-8 for a BPE one.
    int prompt_len;      // Empty: starts from "\n" (bytes) or <|endoftext|> (BPE)
    const int *prompt_ids;  // not NULL: the prompt as token ids instead (prompt_nids of them)
    int prompt_nids;
    int max_tokens;      // >= 0 (0: only the prompt, e.g. to score it with echo and logprobs)
    SampleParams sp;
    uint64_t seed;
    char stop[ENGINE_MAX_STOPS][ENGINE_MAX_STOP_LEN];  // stop strings as bytes: nstop of them,
    int stop_len[ENGINE_MAX_STOPS];                     // stop_len[i] bytes each (empty ones ignored)
    int nstop;
    int logprobs;        // nonzero: the chosen tokens' log-probabilities (EngineResult.lp)
    int top_logprobs;    // with logprobs: that many alternatives too, 0..ENGINE_MAX_LOGPROBS
    int echo;            // with logprobs: also the prompt's tokens (EngineResult.echo_tokens)
    // Text as it becomes final (never a piece that may still turn out to be
    // part of a stop string, never half a UTF-8 character unless the model
    // made an invalid one). Return nonzero to cancel the request. May be NULL.
    int (*on_text)(void *user, const char *text, int len);
    // Called once, last; r->text is valid only during the call. May be NULL.
    void (*on_done)(void *user, const EngineResult *r);
    void *user;
} EngineRequest;

typedef struct Engine Engine;

// An engine over model m with `slots` sequence slots and prompts of at most
// max_prompt tokens. Text goes through the model's tokenizer (tokenizer.h):
// bytes (V = 256) or GPT-2 BPE (V = 50257; completions are decoded token by
// token, stop strings matched on the decoded text). NULL for any other
// vocabulary or a BPE model without its ranks file (tokenizer_open says why).
// m must outlive the engine.
Engine *engine_new(Model *m, int slots, int max_prompt);
void engine_free(Engine *e);
// Queues a request. Returns its id (>= 0), or -1 with a one-line reason in
// err (bad parameters, prompt over the limit).
long engine_submit(Engine *e, const EngineRequest *r, char *err, size_t err_len);
// One step: queued requests move into free slots (prefill, first token),
// then one batched decode step for all active slots. Returns the number of
// requests still active or queued afterwards (0: idle).
int engine_step(Engine *e);
int engine_active(const Engine *e);
int engine_queued(const Engine *e);
int engine_slots(const Engine *e);
int engine_max_prompt(const Engine *e);

// Ends request id at once, queued or active: its on_done is called with
// "cancelled" before this returns and its slot is free for the next step.
// -1 when no such request is in the engine (already done).
int engine_cancel(Engine *e, long id);

// The served model's spikes, for its firing rate: every prefill position
// is counted, and of the decode steps every ENGINE_SPIKE_EVERY-th (the
// first, then every 16th), its active slots only (idle slots run dummy
// tokens). model_spike_sums reduces on the model's backend, so a counted
// step costs 2·L small reductions and their sums' transfers.
#define ENGINE_SPIKE_EVERY 16
typedef struct {
    double positions;            // token positions counted
    double amsu, ffn;            // spikes there, summed over the layers
    double amsu_rate, ffn_rate;  // spikes / (positions · L · C or F); NaN before any position
} EngineSpikes;
EngineSpikes engine_spikes(const Engine *e);

// Seconds on a monotonic clock.
double engine_now(void);

// Offline batch mode: reads one JSON request per line of prompts_jsonl
// ({"prompt", "max_tokens", "temperature", "top_k", "top_p", "seed",
// "stop"}; missing fields take the defaults given), runs them through an
// engine of `batch` slots and writes one JSON line per request, in input
// order, to out_jsonl: {"index", "prompt", "completion", "tokens",
// "ttft_ms", "finish_reason"} (or {"index", "error"} for a bad line).
// Progress on stderr unless quiet; a summary on stdout. Returns 0, 2 for bad
// input (unreadable file, no requests), 1 when the output cannot be written.
typedef struct {
    int batch, max_prompt, max_tokens;
    float temperature, top_p;
    int top_k;
    uint64_t seed;
    int quiet;
} OfflineOptions;
int generate_offline(Model *m, const char *prompts_jsonl, const char *out_jsonl,
                     const OfflineOptions *o);

// A request as a client sends it (serve's body, one line of --prompts):
// the engine request's fields, plus the prompts (one string; an array of
// token ids; or an array of either: one set of choices per prompt, as
// OpenAI's API), the number of choices per prompt and the answer's options.
typedef struct {
    EngineRequest base;  // every field but the prompt
    int nprompts;
    char **prompts;      // owned copies, any byte value ("" for an id prompt until engine_resolve)
    int *prompt_lens;
    int **prompt_ids;    // an array-of-ids prompt: its ids (prompt_nids of them); NULL for text
    int *prompt_nids;
    int n;               // choices per prompt (default 1)
    int stream, echo;    // echo: the answer's text starts with the prompt
    int logprobs;        // -1: none (null)
} ParsedRequest;

// Reads the request fields of a JSON object into pr (pr->base holds the
// defaults; fields left out keep them): prompt (required), max_tokens,
// temperature, top_p, top_k, seed, n, logprobs (integers where OpenAI's are:
// 1.5 is refused), stop (string or array of strings), stream, echo (bools),
// model and user (strings, ignored). OpenAI parameters that are not
// implemented (best_of, suffix, logit_bias, presence_penalty,
// frequency_penalty) are refused unless they hold their neutral value, so a
// client never believes one was honoured; names OpenAI does not define are
// ignored. 0, or -1 with a one-line reason naming the field (pr left empty).
struct Json;
int engine_parse_request(const struct Json *j, ParsedRequest *pr, char *err, size_t n);
void engine_parsed_free(ParsedRequest *pr);
// Checks every prompt of pr against the engine's model before submitting:
// text a BPE model can take (valid UTF-8), ids inside the vocabulary, at most
// max_prompt tokens; an id prompt's text (for echo) becomes its decoded bytes.
// 0; -1 with a one-line reason (bad prompt: HTTP 400); -2 (too long: 413).
int engine_resolve(const Engine *e, ParsedRequest *pr, char *err, size_t n);
// Usage counts: the number of tokens of a text under the engine's tokenizer.
int engine_is_bpe(const Engine *e);

// JSON-safe copy of bytes: invalid UTF-8 becomes U+FFFD (a zero byte stays
// a zero byte: *out_len, if not NULL, gets the length). Caller frees.
char *engine_utf8_clean(const char *s, int len, int *out_len);

#endif
