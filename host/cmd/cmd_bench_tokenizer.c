// cmd_bench_tokenizer.c: `glia bench tokenizer`, GPT-2 BPE encoding
// throughput of host/io/bpe.c on a text file (default: the KJV), on one
// thread and on --threads, each the median of --reps runs after a warm-up.
// tiktoken's figure for the same file comes from `python3
// tools/bpe_oracle.py --bench FILE` (docs/PERF.md puts them side by side).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/bench.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "glia/util.h"
#include "io/bpe.h"
#include "io/data.h"

int bench_tokenizer(int argc, char **argv) {
    CliFlag flags[] = {
        {"--in", "FILE", "text to encode (default: the KJV)", NULL},
        {"--threads", "N", "threads for the second measurement (default: all cores)", NULL},
        {"--reps", "N", "timed runs per measurement (median)", "5"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("bench tokenizer", "GPT-2 BPE encoding speed (MB/s, tokens/s) on one thread and on many.",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long reps, threads = 0;
    if (cli_int("bench tokenizer", "--reps", cli_get(flags, nf, "--reps"), 1, 1000, &reps)) return 2;
    if (cli_get(flags, nf, "--threads") &&
        cli_int("bench tokenizer", "--threads", cli_get(flags, nf, "--threads"), 1, 1024, &threads))
        return 2;
    char err[DATA_ERR_LEN];
    unsigned char *text = NULL;
    size_t n = 0;
    const char *in = cli_get(flags, nf, "--in");
    if (in) {
        FILE *f = fopen(in, "rb");
        if (!f) {
            fprintf(stderr, "glia bench tokenizer: %s: cannot open\n", in);
            return 2;
        }
        size_t cap = 1 << 20, got;
        text = xmalloc(cap);
        while ((got = fread(text + n, 1, cap - n, f)) > 0)
            if ((n += got) == cap) {
                unsigned char *t = xmalloc(cap * 2);
                memcpy(t, text, n);
                free(text);
                text = t, cap *= 2;
            }
        fclose(f);
    } else if (corpus_default_text(&text, &n, err)) {
        fprintf(stderr, "glia bench tokenizer: %s\n", err);
        return 2;
    }
    char berr[700];
    Bpe *b = bpe_load_default(berr, sizeof berr);
    if (!b) {
        fprintf(stderr, "glia bench tokenizer: %s\n", berr);
        free(text);
        return 2;
    }
    printf("glia bench tokenizer: %s, %zu bytes\n", in ? in : "the KJV", n);
    int tcounts[2] = {1, (int)threads};
    for (int k = 0; k < 2; k++) {
        double *t = xmalloc((size_t)reps * sizeof(double));
        size_t ntok = 0;
        for (long r = -1; r < reps; r++) {
            double t0 = bench_now();
            int *ids = bpe_encode_parallel(b, text, n, tcounts[k], &ntok, NULL);
            if (r >= 0) t[r] = bench_now() - t0;
            free(ids);
        }
        qsort(t, (size_t)reps, sizeof(double), bench_cmp);
        double med = t[reps / 2];
        printf("%-16s %10zu tokens  %8.3f s  %7.2f MB/s  %10.0f tokens/s\n",
               k == 0 ? "1 thread" : tcounts[1] > 0 ? "--threads" : "all threads", ntok, med, n / med / 1e6, ntok / med);
        free(t);
    }
    bpe_free(b);
    free(text);
    return 0;
}
