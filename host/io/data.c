// data.c: see host/data.h.
//
// Why it is built this way. Token shards are the one input whose size grows
// with the ambition of a run (a few MB for the default corpus, tens of GB for
// a web crawl), so they are never read into memory: each shard is mapped
// read-only and the tokens are used in place, letting the page cache decide
// what stays resident. Before a shard is mapped its 1 KiB header is read with
// pread and checked against the file's exact size, so a truncated download, a
// file padded by a careless copy or something that is not a shard at all is
// reported as one line naming the file, never as a crash or as silently
// wrong tokens. The tokens are used as host uint16, so like llm.c the code
// assumes a little-endian host and refuses to build on another.
//
// Sampling keeps no state. Sequence j of the global batch at step s starts at
// position h mod V, with h a 64-bit hash of (seed, s, j) made by chaining
// splitmix64 (a bijection, so distinct j give distinct hashes), and V the
// number of valid starts: shard k contributes ntok_k − T of them, the starts
// whose T + 1 tokens (inputs plus the one extra target) stay inside the shard.
// The map from h mod V to (shard, offset) is one-to-one onto those starts,
// so every window can be drawn and none crosses into the next shard; and a
// resumed run, or a rank that owns sequences [first, first + n), reads
// exactly what a single process would.
// (The bias of `mod V` is below V / 2^64, far below anything measurable.)
// Validation windows instead tile each shard in order with non-overlapping
// windows of T + 1 tokens, dropping each shard's tail that cannot hold a whole
// one, so that a validation pass sees every window once.
//
// Writing goes through a temporary file in the destination directory, fsync,
// rename and an fsync of the directory, so a crash or a full disk leaves
// either the old shard or the new one, never half of one; and since a shard
// is replaced by rename, never rewritten in place, a process that has the
// old one mapped keeps reading valid (old) tokens. The default corpus is
// built from Debian's bible-kjv package rather than downloaded, because glia
// must work on machines with no network.
#include "io/data.h"

#include "glia/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "glia's token shards are used in place as uint16 and need a little-endian host"
#endif

#define HEADER_BYTES ((size_t)SHARD_HEADER_INTS * sizeof(int32_t))
// The default corpus: every verse of Debian's KJV, one per line.
#define KJV_COMMAND "bible -f gen1:1-rev22:21"
// The text with references stripped is about 4.14 MB; anything much smaller
// means the package is damaged or is not the full KJV.
#define KJV_MIN_BYTES ((size_t)4000000)
#define KJV_INSTALL_HINT \
    "install Debian's bible-kjv and bible-kjv-text (tools/setup.sh does) or pass --data"

// ---- small helpers ------------------------------------------------------------

static void set_err(char err[DATA_ERR_LEN], const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, DATA_ERR_LEN, fmt, ap);
    va_end(ap);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

// splitmix64's finaliser: a bijection on 64-bit words with good avalanche.
static uint64_t splitmix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t sample_hash(uint64_t seed, uint64_t step, uint64_t j) {
    return splitmix64(splitmix64(splitmix64(seed) ^ step) ^ j);
}

// Read exactly n bytes at offset off; 0 on success, else -1 (errno set, or 0
// when the file ended first).
static int pread_full(int fd, void *buf, size_t n, off_t off) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = 0;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// ---- shards ---------------------------------------------------------------------

int shard_open(Shard *s, const char *path, char err[DATA_ERR_LEN]) {
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        set_err(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        set_err(err, "%s: is a directory, not a token shard", path);
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, "%s: not a regular file, so not a token shard", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        set_err(err, "%s: empty file, not a token shard", path);
        close(fd);
        return -1;
    }
    if (size < HEADER_BYTES) {
        set_err(err, "%s: truncated: %zu bytes, shorter than the %zu-byte shard header", path,
                size, HEADER_BYTES);
        close(fd);
        return -1;
    }
    int32_t header[SHARD_HEADER_INTS];
    if (pread_full(fd, header, HEADER_BYTES, 0) != 0) {
        set_err(err, "%s: cannot read the header: %s", path,
                errno ? strerror(errno) : "file ended early");
        close(fd);
        return -1;
    }
    size_t have = (size - HEADER_BYTES) / sizeof(uint16_t);
    const char *odd = (size - HEADER_BYTES) % 2 ? " and a stray byte" : "";
    if (header[0] != SHARD_MAGIC) {
        set_err(err, "%s: not a token shard: magic number is %ld, expected %d", path,
                (long)header[0], SHARD_MAGIC);
    } else if (header[1] != SHARD_VERSION) {
        set_err(err, "%s: unsupported shard version %ld (glia reads version %d)", path,
                (long)header[1], SHARD_VERSION);
    } else if (header[2] < 0) {
        set_err(err, "%s: corrupt header: token count is %ld", path, (long)header[2]);
    } else if ((size_t)header[2] > have) {
        set_err(err, "%s: truncated: header says %ld tokens, file holds %zu%s", path,
                (long)header[2], have, odd);
    } else if ((size_t)header[2] < have || *odd) {
        set_err(err, "%s: padded: header says %ld tokens, file holds %zu%s", path,
                (long)header[2], have, odd);
    } else if (header[2] < 2) {
        set_err(err, "%s: too few tokens: header says %ld, a shard needs at least 2", path,
                (long)header[2]);
    } else {
        void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            set_err(err, "%s: cannot map: %s", path, strerror(errno));
        } else {
            close(fd);
            s->path = dup_str(path);
            s->map = map;
            s->map_len = size;
            s->tokens = (const uint16_t *)((const unsigned char *)map + HEADER_BYTES);
            s->ntok = (size_t)header[2];
            return 0;
        }
    }
    close(fd);
    return -1;
}

void shard_close(Shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_len);
    free(s->path);
    memset(s, 0, sizeof *s);
}

int shard_write(const char *path, const uint16_t *tokens, size_t ntok, char err[DATA_ERR_LEN]) {
    if (ntok < 2 || ntok > (size_t)INT32_MAX) {
        set_err(err, "%s: cannot write a shard of %zu tokens (a shard holds 2 to %ld)", path,
                ntok, (long)INT32_MAX);
        return -1;
    }
    size_t cap = strlen(path) + 16;
    char *tmp = xmalloc(cap);
    snprintf(tmp, cap, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        set_err(err, "%s: cannot create a temporary file %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)ntok};
    const char *step = "cannot set permissions of";
    if (fchmod(fd, 0644) != 0) goto fail;
    step = "cannot write";
    if (write_full(fd, header, sizeof header) != 0 ||
        write_full(fd, tokens, ntok * sizeof(uint16_t)) != 0)
        goto fail;
    step = "cannot sync";
    if (fsync(fd) != 0) goto fail;
    step = "cannot close";
    int rc = close(fd);
    fd = -1;
    if (rc != 0) goto fail;
    step = "cannot rename over the destination";
    if (rename(tmp, path) != 0) goto fail;
    free(tmp);
    if (glia_sync_parent_dir(path) != 0) {
        set_err(err, "%s: written, but cannot sync its directory: %s", path, strerror(errno));
        return -1;
    }
    return 0;

fail:;
    int saved = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    set_err(err, "%s: %s %s: %s", path, step, tmp, strerror(saved));
    free(tmp);
    return -1;
}

// ---- datasets --------------------------------------------------------------------

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// 1 when `split` is one of the '_'-separated words of a .bin shard's name
// (kjv_val.bin, fineweb_train_000001.bin): a corpus named "eval" must not make
// its eval_train.bin a validation shard.
static int names_split(const char *name, const char *split) {
    size_t n = strlen(name) - 4, m = strlen(split);  // without ".bin"
    for (size_t i = 0; i + m <= n; i++)
        if ((i == 0 || name[i - 1] == '_') && !strncmp(name + i, split, m) && (i + m == n || name[i + m] == '_'))
            return 1;
    return 0;
}

int dataset_open(Dataset *d, const char *dir, const char *split, char err[DATA_ERR_LEN]) {
    memset(d, 0, sizeof *d);
    DIR *dp = opendir(dir);
    if (!dp) {
        set_err(err, "%s: cannot open directory: %s", dir, strerror(errno));
        return -1;
    }
    // Collect the matching names.
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (!ends_with(e->d_name, ".bin") || !names_split(e->d_name, split)) continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *path = xmalloc(len);
        snprintf(path, len, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = xmalloc((size_t)cap * sizeof *grown);
            if (n) memcpy(grown, names, (size_t)n * sizeof *grown);
            free(names);
            names = grown;
        }
        names[n++] = path;
    }
    closedir(dp);
    if (n == 0) {
        set_err(err, "%s: no *_%s*.bin shards (the split a word of the name: NAME_%s.bin)", dir, split, split);
        free(names);
        return -1;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_names);

    d->shards = xcalloc((size_t)n, sizeof(Shard));
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && shard_open(&d->shards[i], names[i], err) != 0) rc = -1;
        if (rc == 0) d->nshards = i + 1;
        free(names[i]);
    }
    free(names);
    if (rc != 0) {
        dataset_close(d);
        return -1;
    }
    for (int i = 0; i < d->nshards; i++) {
        const Shard *s = &d->shards[i];
        // One pass over every token (a large dataset is read from disk here
        // once); the threads split it.
        const uint16_t *tok = s->tokens;
        long long nt = (long long)s->ntok;
        int mx = 0;
#pragma omp parallel for reduction(max : mx) schedule(static)
        for (long long t = 0; t < nt; t++) mx = tok[t] > mx ? tok[t] : mx;
        if (mx > d->max_token) d->max_token = mx;
        d->total += s->ntok;
    }
    return 0;
}

void dataset_close(Dataset *d) {
    if (!d) return;
    for (int i = 0; i < d->nshards; i++) shard_close(&d->shards[i]);
    free(d->shards);
    memset(d, 0, sizeof *d);
}

int dataset_check_seq(const Dataset *d, int T, char err[DATA_ERR_LEN]) {
    if (T < 1) {
        set_err(err, "sequence length %d: must be at least 1", T);
        return -1;
    }
    for (int i = 0; i < d->nshards; i++)
        if (d->shards[i].ntok <= (size_t)T) {
            set_err(err, "%s: holds %zu tokens, too few for one sequence of %d (it needs %d)",
                    d->shards[i].path, d->shards[i].ntok, T, T + 1);
            return -1;
        }
    return 0;
}

// Valid training starts in a shard: positions whose T + 1 tokens fit in it.
static size_t valid_starts(const Shard *s, int T) {
    return s->ntok > (size_t)T ? s->ntok - (size_t)T : 0;
}

void dataset_sample(const Dataset *d, uint64_t seed, uint64_t step, int first, int n, int T,
                    int *inputs, int *targets) {
    size_t V = 0;
    for (int k = 0; k < d->nshards; k++) V += valid_starts(&d->shards[k], T);
    if (V == 0) fatal("dataset_sample: no shard holds more than T = %d tokens", T);
    for (int i = 0; i < n; i++) {
        uint64_t h = sample_hash(seed, step, (uint64_t)first + (uint64_t)i);
        size_t p = (size_t)(h % (uint64_t)V);
        int k = 0;
        while (p >= valid_starts(&d->shards[k], T)) p -= valid_starts(&d->shards[k++], T);
        const uint16_t *tok = d->shards[k].tokens + p;
        int *in = inputs + (size_t)i * T, *tg = targets + (size_t)i * T;
        for (int t = 0; t < T; t++) {
            in[t] = tok[t];
            tg[t] = tok[t + 1];
        }
    }
}

size_t dataset_windows(const Dataset *d, int T) {
    size_t w = 0;
    for (int k = 0; k < d->nshards; k++) w += d->shards[k].ntok / ((size_t)T + 1);
    return w;
}

int dataset_window(const Dataset *d, size_t first, int n, int T, int *inputs, int *targets) {
    if (n <= 0) return 0;
    size_t span = (size_t)T + 1, w = first;
    int k = 0;
    // Find the shard holding window w and its index inside that shard.
    while (k < d->nshards && w >= d->shards[k].ntok / span) w -= d->shards[k++].ntok / span;
    int filled = 0;
    while (filled < n && k < d->nshards) {
        if (w >= d->shards[k].ntok / span) {
            k++;
            w = 0;
            continue;
        }
        const uint16_t *tok = d->shards[k].tokens + w * span;
        int *in = inputs + (size_t)filled * T, *tg = targets + (size_t)filled * T;
        for (int t = 0; t < T; t++) {
            in[t] = tok[t];
            tg[t] = tok[t + 1];
        }
        filled++;
        w++;
    }
    return filled;
}

// ---- byte-level corpora ------------------------------------------------------------

int prepare_tokens(const uint16_t *tok, size_t n, double val_frac, const char *dir, const char *name,
                   char err[DATA_ERR_LEN]) {
    if (!(val_frac > 0.0 && val_frac < 1.0)) {
        set_err(err, "validation fraction %g: must be between 0 and 1 (exclusive)", val_frac);
        return 2;
    }
    if (!dir[0]) {
        set_err(err, "no output directory given");
        return 2;
    }
    if (!name[0] || strchr(name, '/')) {
        set_err(err, "dataset name '%s': must be non-empty and contain no '/'", name);
        return 2;
    }
    size_t ntrain = (size_t)floor((double)n * (1.0 - val_frac));
    if (ntrain > n) ntrain = n;
    size_t nval = n - ntrain;
    if (ntrain < 2 || nval < 2) {
        set_err(err,
                "text of %zu tokens is too short: a validation fraction of %g leaves %zu train and "
                "%zu val tokens, and each split needs at least 2",
                n, val_frac, ntrain, nval);
        return 2;
    }
    if (ntrain > (size_t)INT32_MAX || nval > (size_t)INT32_MAX) {
        set_err(err, "text of %zu tokens is too long: a shard holds at most %ld tokens", n,
                (long)INT32_MAX);
        return 2;
    }
    if (glia_mkdirs(dir, err, DATA_ERR_LEN) != 0) return 1;

    size_t cap = strlen(dir) + strlen(name) + 16;
    char *path = xmalloc(cap);
    int rc = 0;
    snprintf(path, cap, "%s/%s_train.bin", dir, name);
    if (shard_write(path, tok, ntrain, err) != 0) rc = 1;
    snprintf(path, cap, "%s/%s_val.bin", dir, name);
    if (rc == 0 && shard_write(path, tok + ntrain, nval, err) != 0) rc = 1;
    free(path);
    return rc;
}

int prepare_bytes(const unsigned char *text, size_t n, double val_frac, const char *dir,
                  const char *name, char err[DATA_ERR_LEN]) {
    uint16_t *tok = xmalloc((n ? n : 1) * sizeof *tok);
    for (size_t i = 0; i < n; i++) tok[i] = text[i];
    int rc = prepare_tokens(tok, n, val_frac, dir, name, err);
    free(tok);
    return rc;
}

void data_cache_dir(char *dir, size_t dir_len) {
    const char *g = getenv("GLIA_DATA"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (g && *g) {
        snprintf(dir, dir_len, "%s", g);
    } else if (x && *x == '/') {  // the XDG spec ignores relative paths
        snprintf(dir, dir_len, "%s/glia", x);
    } else {
        if (!h || !*h) {
            const struct passwd *pw = getpwuid(getuid());
            h = pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : "/tmp";
        }
        snprintf(dir, dir_len, "%s/.cache/glia", h);
    }
}

static int kjv_ready(const char *dir) {
    char path[4096], err[DATA_ERR_LEN];
    const char *splits[2] = {"train", "val"};
    for (int i = 0; i < 2; i++) {
        Shard s;
        snprintf(path, sizeof path, "%s/kjv_%s.bin", dir, splits[i]);
        if (shard_open(&s, path, err) != 0) return 0;
        shard_close(&s);
    }
    return 1;
}

int corpus_default_text(unsigned char **out, size_t *out_n, char err[DATA_ERR_LEN]) {
    FILE *p = popen(KJV_COMMAND " 2>/dev/null", "r");
    if (!p) {
        set_err(err, "default corpus: cannot run '%s': %s", KJV_COMMAND, strerror(errno));
        return -1;
    }
    // Every line is "Ge1:1 In the beginning ...": keep what follows the
    // reference, newline included.
    size_t n = 0, cap = (size_t)1 << 23;
    unsigned char *text = xmalloc(cap);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, p)) > 0) {
        const char *sp = memchr(line, ' ', (size_t)got);
        if (!sp) continue;
        size_t keep = (size_t)got - (size_t)(sp + 1 - line);
        if (n + keep > cap) {
            while (n + keep > cap) cap *= 2;
            unsigned char *grown = xmalloc(cap);
            memcpy(grown, text, n);
            free(text);
            text = grown;
        }
        memcpy(text + n, sp + 1, keep);
        n += keep;
    }
    free(line);
    int status = pclose(p);
    if (status == -1) {
        set_err(err, "default corpus: cannot run '%s': %s", KJV_COMMAND, strerror(errno));
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        set_err(err, "default corpus: the 'bible' command was not found; " KJV_INSTALL_HINT);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        set_err(err, "default corpus: '%s' failed (%s %d); " KJV_INSTALL_HINT, KJV_COMMAND,
                WIFEXITED(status) ? "exit status" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    } else if (n <= KJV_MIN_BYTES) {
        set_err(err,
                "default corpus: '%s' gave only %zu bytes of text, expected over %zu (the whole "
                "KJV); " KJV_INSTALL_HINT,
                KJV_COMMAND, n, KJV_MIN_BYTES);
    } else {
        *out = text, *out_n = n;
        return 0;
    }
    free(text);
    return -1;
}

int corpus_default(char *dir, size_t dir_len, char err[DATA_ERR_LEN]) {
    char cache[4096];
    data_cache_dir(cache, sizeof cache);
    int len = snprintf(dir, dir_len, "%s/kjv", cache);
    if (len < 0 || (size_t)len >= dir_len || (size_t)len + 16 >= sizeof cache) {
        set_err(err, "default corpus: the data directory path %s/kjv is too long", cache);
        return -1;
    }
    if (kjv_ready(dir)) return 0;

    unsigned char *text;
    size_t n;
    if (corpus_default_text(&text, &n, err) != 0) return -1;
    int rc = -1;
    fprintf(stderr, "glia: preparing the default corpus (the King James Bible, %zu bytes) in %s\n", n, dir);
    char perr[DATA_ERR_LEN];
    if (prepare_bytes(text, n, 0.1, dir, "kjv", perr) == 0)
        rc = 0;
    else
        set_err(err, "default corpus: %s", perr);
    free(text);
    return rc;
}
