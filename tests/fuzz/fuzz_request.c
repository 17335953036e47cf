// fuzz_request.c: libFuzzer target for what glia serve and `glia generate
// --prompts` read from clients: the JSON reader (json.h) and the request
// fields (engine_parse_request). The body is hostile by assumption, so
// beyond not crashing it checks two properties: a string the reader
// returns, written back by json_quote and read again, comes back as the
// same bytes when it is ASCII (NUL and control bytes included; other bytes
// may become U+FFFD); and a request that parses
// holds prompts and stops within their stated lengths.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "generate/engine.h"
#include "generate/json.h"

static void round_trip(const Json *j) {
    for (; j; j = j->next) {
        if (j->type == JSON_STRING) {
            char *q = json_quote(j->str, j->len), err[200];
            Json *back = json_parse(q, strlen(q), err, sizeof err);
            if (!back || back->type != JSON_STRING) abort();  // our own output must read back
            int ascii = 1;  // (control bytes and NUL included: those are escaped)
            for (int i = 0; i < j->len; i++) ascii &= (unsigned char)j->str[i] < 0x80;
            if (ascii && (back->len != j->len || memcmp(back->str, j->str, (size_t)j->len))) abort();
            json_free(back);
            free(q);
        }
        round_trip(j->child);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    Json *j = json_parse((const char *)data, size, err, sizeof err);
    if (!j) return 0;
    round_trip(j);
    ParsedRequest pr = {.base = {.max_tokens = 16, .sp = {1.0f, 0, 1.0f}}};
    if (engine_parse_request(j, &pr, err, sizeof err) == 0) {
        if (pr.nprompts < 1 || pr.n < 1 || pr.base.nstop < 0 || pr.base.nstop > ENGINE_MAX_STOPS) abort();
        for (int i = 0; i < pr.nprompts; i++)
            if (pr.prompt_lens[i] < 0 || (pr.prompt_lens[i] && !pr.prompts[i])) abort();
        for (int i = 0; i < pr.base.nstop; i++)
            if (pr.base.stop_len[i] < 0 || pr.base.stop_len[i] > ENGINE_MAX_STOP_LEN) abort();
        engine_parsed_free(&pr);
    }
    json_free(j);
    return 0;
}
