// cmd_prepare.c: `glia prepare`, a text file into byte-level token shards.
//
// This is the way to train on your own text without any Python: every byte
// of the file is one token (V = 256), the first 1 − val_frac of the file
// becomes <name>_train.bin and the rest <name>_val.bin, both in llm.c's shard
// format (host/data.h), which every dataset reader in glia takes. The split
// is by position, not by random lines, so val is one held-out stretch of the
// text rather than lines interleaved with the training text. The text is
// read whole: byte-level shards take twice its size again, and a corpus too
// big for that wants a real tokenizer (tools/tokenize_gpt2.py) anyway. The shards are written atomically, so
// rerunning over an existing directory replaces each file whole or not at all.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/cli.h"
#include "cmd/commands.h"
#include "io/data.h"
#include "glia/util.h"

static const char *PREPARE_SUMMARY =
    "Turns a text file into byte-level token shards (one token per byte, V = 256):\n"
    "OUT/NAME_train.bin holds the first 1 - val-frac of the bytes, OUT/NAME_val.bin\n"
    "the rest, in llm.c's shard format. OUT is created if needed.\n"
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

int cmd_prepare(int argc, char **argv) {
    CliFlag flags[] = {
        {"--in", "FILE", "the text to tokenize", NULL},
        {"--out", "DIR", "where to write the shards", NULL},
        {"--name", "NAME", "shard name prefix (default: FILE's name without extension)", NULL},
        {"--val-frac", "F", "fraction of the text (its end) kept for validation", "0.1"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("prepare", PREPARE_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    if (cli_require("prepare", flags, nf, "--in", "--out", NULL)) return 2;
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
        default_name(in, name, sizeof name);
    }

    size_t n = 0;
    unsigned char *text = read_text(in, &n);
    if (!text) return 2;
    char err[DATA_ERR_LEN];
    rc = prepare_bytes(text, n, val_frac, out, name, err);
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
