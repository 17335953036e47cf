// cmd_prepare.c: `glia prepare`, a text file into token shards.
//
// --tokenizer byte: every byte of the file is one token (V = 256);
// --tokenizer gpt2: GPT-2's BPE (host/io/bpe.h, V = 50257), the text taken
// as one document that starts with <|endoftext|> as llm.c's scripts do, and
// encoded on many threads. The first 1 − val_frac of the tokens become
// <name>_train.bin and the rest <name>_val.bin, in llm.c's shard format
// (host/io/data.h). The split is by position, so val is one held-out stretch
// of the text. Without --in, the text is the default corpus (the KJV). The
// shards are written atomically: a rerun replaces each file whole or not at all.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd/cli.h"
#include "cmd/commands.h"
#include "io/bpe.h"
#include "io/data.h"
#include "glia/util.h"

static const char *PREPARE_SUMMARY =
    "Turns a text file into token shards: one token per byte (--tokenizer byte, V = 256)\n"
    "or GPT-2's BPE (--tokenizer gpt2, V = 50257; <|endoftext|> first). OUT/NAME_train.bin\n"
    "holds the first 1 - val-frac of the tokens, OUT/NAME_val.bin the rest, in llm.c's\n"
    "shard format. OUT is created if needed. Without --in: the default corpus (KJV).\n"
    "exit status: 0 done, 2 bad flags or bad input, 1 the shards could not be written.";

// The file's basename without its last extension ("data/tiny.txt" -> "tiny").
static void default_name(const char *path, char *name, size_t cap) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(name, cap, "%s", base);
    char *dot = strrchr(name, '.');
    if (dot && dot != name) *dot = '\0';
}

// Reads a whole regular file; NULL after printing a one-line error.
static unsigned char *read_text(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "glia prepare: %s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "glia prepare: %s: not a regular file\n", path);
        fclose(f);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    unsigned char *text = xmalloc(size);
    size_t got = fread(text, 1, size, f);
    int bad = ferror(f) || got != size;
    fclose(f);
    if (bad) {
        fprintf(stderr, "glia prepare: %s: cannot read: %s\n", path,
                got != size ? "file changed while reading" : strerror(errno));
        free(text);
        return NULL;
    }
    *n = size;
    return text;
}

static double prep_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress(size_t done, size_t total) {
    static double last;
    double now = prep_seconds();
    if (done < total && now - last < 0.2) return;
    last = now;
    fprintf(stderr, "\rglia prepare: encoded %.1f of %.1f MB (%3.0f%%)", done / 1e6, total / 1e6,
            total ? 100.0 * done / total : 100.0);
}

int cmd_prepare(int argc, char **argv) {
    CliFlag flags[] = {
        {"--in", "FILE", "the text to tokenize (default: the KJV, name kjv)", NULL},
        {"--tokenizer", "byte|gpt2", "one token per byte, or GPT-2's BPE", "byte"},
        {"--threads", "N", "threads encoding (gpt2; default: all cores)", NULL},
        {"--out", "DIR", "where to write the shards", NULL},
        {"--name", "NAME", "shard name prefix (default: FILE's name without extension)", NULL},
        {"--val-frac", "F", "fraction of the text (its end) kept for validation", "0.1"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("prepare", PREPARE_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    if (cli_require("prepare", flags, nf, "--out", NULL)) return 2;
    static const char *const toks[] = {"byte", "gpt2"};
    int tk;
    if (cli_choice("prepare", "--tokenizer", cli_get(flags, nf, "--tokenizer"), toks, 2, &tk)) return 2;
    long threads = 0;
    if (cli_get(flags, nf, "--threads") && cli_int("prepare", "--threads", cli_get(flags, nf, "--threads"), 1, 1024, &threads))
        return 2;
    const char *in = cli_get(flags, nf, "--in"), *out = cli_get(flags, nf, "--out");
    double val_frac;
    if (cli_float("prepare", "--val-frac", cli_get(flags, nf, "--val-frac"), 0.0, 1.0, &val_frac))
        return 2;
    if (val_frac <= 0.0 || val_frac >= 1.0) {
        fprintf(stderr, "glia prepare: --val-frac: %g must be strictly between 0 and 1\n",
                val_frac);
        return 2;
    }
    char name[256];
    const char *given = cli_get(flags, nf, "--name");
    if (given) {
        if (strlen(given) >= sizeof name) {
            fprintf(stderr, "glia prepare: --name: longer than %zu characters\n",
                    sizeof name - 1);
            return 2;
        }
        snprintf(name, sizeof name, "%s", given);
    } else {
        default_name(in ? in : "kjv", name, sizeof name);
    }

    size_t n = 0;
    unsigned char *text;
    char err[DATA_ERR_LEN];
    if (in) {
        text = read_text(in, &n);
        if (!text) return 2;
    } else if (corpus_default_text(&text, &n, err) != 0) {
        fprintf(stderr, "glia prepare: %s\n", err);
        return 2;
    }
    if (!in) in = "the default corpus";
    if (tk == 0) {
        rc = prepare_bytes(text, n, val_frac, out, name, err);
    } else {
        char berr[700];
        Bpe *b = bpe_load_default(berr, sizeof berr);
        if (!b) {
            fprintf(stderr, "glia prepare: %s\n", berr);
            free(text);
            return 2;
        }
        size_t ntok;
        int *ids = bpe_encode_parallel(b, text, n, (int)threads, &ntok, progress);
        fputc('\n', stderr);
        uint16_t *tok = xmalloc((ntok + 1) * sizeof(uint16_t));
        tok[0] = BPE_EOT;
        for (size_t i = 0; i < ntok; i++) tok[i + 1] = (uint16_t)ids[i];
        free(ids);
        bpe_free(b);
        rc = prepare_tokens(tok, ntok + 1, val_frac, out, name, err);
        free(tok);
    }
    free(text);
    if (rc) {
        // Input problems are about the text: name it.
        if (rc == 2)
            fprintf(stderr, "glia prepare: %s: %s\n", in, err);
        else
            fprintf(stderr, "glia prepare: %s\n", err);
        return rc;
    }
    // Report what was written, read back through the loader.
    const char *splits[2] = {"train", "val"};
    for (int i = 0; i < 2; i++) {
        char path[4096];
        Shard s;
        snprintf(path, sizeof path, "%s/%s_%s.bin", out, name, splits[i]);
        if (shard_open(&s, path, err) != 0) {
            fprintf(stderr, "glia prepare: written but unreadable: %s\n", err);
            return 1;
        }
        printf("glia prepare: %-5s %10zu tokens  %s\n", splits[i], s.ntok, path);
        shard_close(&s);
    }
    return 0;
}
