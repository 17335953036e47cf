// train_ckpt.c: see train_ckpt.h.
//
// COMPLETE is plain text, one item a line, so a person can read it:
//   glia-checkpoint 1
//   step 123
//   file model.safetensors 140136
//   file state.rank0.safetensors 280392
//   end
// It is valid only whole (through "end"), with both files listed; resume then
// checks each file's size against it before reading a byte of the file.
#include "train/train_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "glia/safetensors.h"
#include "glia/util.h"

#define MODEL_FILE "model.safetensors"
#define MAX_WORLD (1 << 16)  // more ranks than any COMPLETE we read may list
#define CKDIR_LEN 4096  // root/ckpt
#define DIR_LEN 4160    // root/ckpt/step_N
#define PATH_LEN 4224   // root/ckpt/step_N/FILE

void train_shard_init(TrainShard *sh, size_t nparams, int rank, int world, int zero) {
    sh->rank = rank;
    sh->world = world;
    sh->zero = zero;
    if (zero) {
        sh->padded = (nparams + (size_t)world - 1) / (size_t)world * (size_t)world;
        sh->len = sh->padded / (size_t)world;
        sh->offset = (size_t)rank * sh->len;
    } else {
        sh->padded = sh->len = nparams;
        sh->offset = 0;
    }
}

// File i of a checkpoint of `world` ranks: 0 the model, 1 + r rank r's state.
static void file_name(char *buf, size_t n, int i) {
    if (i == 0) snprintf(buf, n, "%s", MODEL_FILE);
    else snprintf(buf, n, "state.rank%d.safetensors", i - 1);
}

// ---- COMPLETE ----------------------------------------------------------------------

typedef struct {
    long step;
    int world;
    long long *size;  // (world + 1): file i as file_name numbers them
} Complete;

static int write_complete(const char *dir, long step, int world, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], tmp[PATH_LEN], fp_path[PATH_LEN], name[64];
    snprintf(path, sizeof path, "%s/COMPLETE", dir);
    snprintf(tmp, sizeof tmp, "%s/COMPLETE.tmp.%ld", dir, (long)getpid());
    long long *size = xmalloc(((size_t)world + 1) * sizeof *size);
    for (int i = 0; i <= world; i++) {
        struct stat st;
        file_name(name, sizeof name, i);
        snprintf(fp_path, sizeof fp_path, "%s/%s", dir, name);
        if (stat(fp_path, &st) != 0) {
            free(size);
            return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot stat: %.120s", fp_path, strerror(errno)), -1;
        }
        size[i] = (long long)st.st_size;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(size);
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot create: %.120s", tmp, strerror(errno)), -1;
    }
    fprintf(f, "glia-checkpoint %d\nstep %ld\n", TRAIN_CKPT_VERSION, step);
    if (world > 1) fprintf(f, "world %d\n", world);  // absent: 1, as glia before MPI wrote it
    for (int i = 0; i <= world; i++) {
        file_name(name, sizeof name, i);
        fprintf(f, "file %s %lld\n", name, size[i]);
    }
    free(size);
    fprintf(f, "end\n");
    errno = EIO;  // in case a stdio call fails without saying why
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) bad = 1, saved = errno;
    if (!bad && rename(tmp, path) != 0) bad = 1, saved = errno;
    if (bad) {
        unlink(tmp);
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot write: %.120s", path, strerror(saved)), -1;
    }
    if (glia_sync_parent_dir(path) != 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: written, but cannot sync its directory: %.120s", path,
                        strerror(errno)), -1;
    return 0;
}

int train_ckpt_write_complete(const char *dir, long step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], name[64];
    int world = 1;  // as many consecutive state.rank<r> files as there are
    for (;; world++) {
        struct stat st;
        file_name(name, sizeof name, world + 1);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (world >= MAX_WORLD || stat(path, &st) != 0) break;
    }
    return write_complete(dir, step, world, err);
}

// Parses dir/COMPLETE. Returns 1 when valid (into *c; free c->size), 0 when
// missing or not valid: an incomplete checkpoint. Valid means whole (through
// "end") and listing the model file and the state file of every rank.
static int complete_read(const char *dir, Complete *c) {
    char path[PATH_LEN], line[512], name[256];
    snprintf(path, sizeof path, "%s/COMPLETE", dir);
    c->size = NULL;
    c->world = 1;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int version = 0, ok = 0, r;
    char *seen = NULL;
    if (!fgets(line, sizeof line, f) || sscanf(line, "glia-checkpoint %d", &version) != 1 ||
        version != TRAIN_CKPT_VERSION)
        goto out;
    if (!fgets(line, sizeof line, f) || sscanf(line, "step %ld", &c->step) != 1) goto out;
    long pos = ftell(f);
    if (fgets(line, sizeof line, f) && sscanf(line, "world %d", &c->world) == 1) {
        if (c->world < 1 || c->world > MAX_WORLD) goto out;
    } else {
        fseek(f, pos, SEEK_SET);
    }
    c->size = xcalloc((size_t)c->world + 1, sizeof *c->size);
    seen = xcalloc((size_t)c->world + 1, 1);
    while (fgets(line, sizeof line, f)) {
        if (!strcmp(line, "end\n")) {
            ok = 1;
            for (int i = 0; i <= c->world; i++) ok &= seen[i];
            break;
        }
        long long n;
        if (sscanf(line, "file %255s %lld", name, &n) != 2 || n < 0) break;
        char want[64];
        if (!strcmp(name, MODEL_FILE)) seen[0] = 1, c->size[0] = n;
        else if (sscanf(name, "state.rank%d", &r) == 1 && r >= 0 && r < c->world &&
                 (file_name(want, sizeof want, r + 1), !strcmp(name, want)))
            seen[r + 1] = 1, c->size[r + 1] = n;
        else break;  // a file of another world size, or unknown
    }
out:
    fclose(f);
    free(seen);
    if (!ok) {
        free(c->size);
        c->size = NULL;
    }
    return ok;
}

// Checks the listed files (the model, and the state of `rank`, or all ranks
// when rank < 0) against their sizes in COMPLETE.
static int complete_check_sizes(const char *dir, const Complete *c, int rank, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], name[64];
    for (int i = 0; i <= c->world; i++) {
        if (rank >= 0 && i != 0 && i != rank + 1) continue;
        struct stat st;
        file_name(name, sizeof name, i);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (stat(path, &st) != 0)
            return snprintf(err, CKPT_ERR_LEN, "%.400s: listed in COMPLETE but cannot be read: %.120s", path,
                            strerror(errno)), -1;
        if (S_ISDIR(st.st_mode))
            return snprintf(err, CKPT_ERR_LEN, "%.400s: is a directory, not a safetensors file", path), -1;
        if ((long long)st.st_size != c->size[i]) {
            if (st.st_size == 0)
                return snprintf(err, CKPT_ERR_LEN, "%.400s: the file is empty; COMPLETE lists %lld bytes", path,
                                c->size[i]), -1;
            return snprintf(err, CKPT_ERR_LEN, "%.400s: %.120s: %lld bytes, COMPLETE lists %lld", path,
                            (long long)st.st_size < c->size[i] ? "truncated" : "wrong size",
                            (long long)st.st_size, c->size[i]), -1;
        }
    }
    return 0;
}

// ---- the state file --------------------------------------------------------------------

static void meta_long(StWriter *w, const char *key, long long v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    st_writer_meta(w, key, buf);
}

static void meta_double(StWriter *w, const char *key, double v) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);  // round-trips exactly
    st_writer_meta(w, key, buf);
}

static int state_save(const char *path, const Model *m, const float *mom1, const float *mom2,
                      const TrainShard *sh, const TrainOptions *o, long step, char err[CKPT_ERR_LEN]) {
    StWriter *w = st_writer_new();
    st_writer_meta(w, "format", "glia-train-state");
    meta_long(w, "ckpt_version", TRAIN_CKPT_VERSION);
    meta_long(w, "model_version", MODEL_VERSION);
    meta_long(w, "step", step);
    meta_long(w, "world_size", sh->world);
    meta_long(w, "rank", sh->rank);
    meta_long(w, "zero", sh->zero);
    meta_long(w, "shard_offset", (long long)sh->offset);
    meta_long(w, "shard_len", (long long)sh->len);
    const ModelConfig *c = &o->cfg;
    meta_long(w, "V", c->V);
    meta_long(w, "Vp", c->Vp);
    meta_long(w, "L", c->L);
    meta_long(w, "C", c->C);
    meta_long(w, "Nh", c->Nh);
    meta_long(w, "F", c->F);
    meta_long(w, "astro", c->astro);
    meta_long(w, "steps", o->steps);
    meta_long(w, "batch", o->batch);
    meta_long(w, "seq", o->seq);
    meta_long(w, "accum", o->accum);
    meta_long(w, "warmup", o->warmup);
    meta_long(w, "seed", (long long)o->seed);
    meta_double(w, "lr", o->lr);
    meta_double(w, "min_lr_frac", o->min_lr_frac);
    meta_double(w, "weight_decay", o->weight_decay);
    meta_double(w, "clip", o->clip);
    // The options that do not change the arithmetic, restored on resume
    // unless given again; data: the --data path ("" for the default corpus).
    st_writer_meta(w, "data", o->data ? o->data : "");
    meta_long(w, "ckpt_every", o->ckpt_every);
    meta_long(w, "eval_every", o->eval_every);
    meta_long(w, "eval_batches", o->eval_batches);
    meta_long(w, "keep", o->keep);
    char name[80];
    for (int k = 0; k < 2 && sh->zero; k++) {  // ZeRO-1: this rank's slice, flat
        snprintf(name, sizeof name, "%c.shard", k ? 'v' : 'm');
        int64_t shape[1] = {(int64_t)sh->len};
        st_writer_add(w, name, 1, shape, k ? mom2 : mom1);
        ckpt_meta_crc(w, name, k ? mom2 : mom1, sh->len);
    }
    for (int k = 0; k < 2 && !sh->zero; k++) {
        const float *mom = k ? mom2 : mom1;
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', t->name);
            st_writer_add(w, name, t->ndim, t->shape, mom + t->offset);
            ckpt_meta_crc(w, name, mom + t->offset, t->numel);
        }
    }
    char serr[ST_ERR_LEN];
    int rc = st_writer_save(w, path, serr);
    st_writer_free(w);
    if (rc) snprintf(err, CKPT_ERR_LEN, "%.400s", serr);
    return rc;
}

static int get_long(const StFile *f, const char *path, const char *key, long long lo, long long hi,
                    long long *out, char err[CKPT_ERR_LEN]) {
    const char *s = st_meta(f, key);
    if (!s) return snprintf(err, CKPT_ERR_LEN, "%.400s: metadata '%s' is missing", path, key), -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: metadata '%s' = '%.40s' is not a whole number in [%lld, %lld]",
                        path, key, s, lo, hi), -1;
    *out = v;
    return 0;
}

static int get_double(const StFile *f, const char *path, const char *key, double *out,
                      char err[CKPT_ERR_LEN]) {
    const char *s = st_meta(f, key);
    if (!s) return snprintf(err, CKPT_ERR_LEN, "%.400s: metadata '%s' is missing", path, key), -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: metadata '%s' = '%.40s' is not a number >= 0", path, key, s), -1;
    *out = v;
    return 0;
}

// Loads the state file and checks its header: format, versions, rank (==
// want_rank), step (== want_step), and reads the run options, with the
// world size and ZeRO stage of the run that wrote it. Returns the file or NULL.
static StFile *state_open(const char *path, long want_step, int want_rank, TrainOptions *o,
                          char err[CKPT_ERR_LEN]) {
    char serr[ST_ERR_LEN];
    StFile *f = st_load(path, serr);
    if (!f) return snprintf(err, CKPT_ERR_LEN, "%.400s", serr), NULL;
    const char *format = st_meta(f, "format");
    if (!format || strcmp(format, "glia-train-state")) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: not a glia training state file (metadata format is %.40s)", path,
                 format ? format : "missing");
        goto fail;
    }
    long long v[20];
    const long long BIG = 1LL << 40;
    if (get_long(f, path, "ckpt_version", 0, BIG, &v[0], err)) goto fail;
    if (v[0] != TRAIN_CKPT_VERSION) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: ckpt_version %lld, this glia reads version %d", path, v[0],
                 TRAIN_CKPT_VERSION);
        goto fail;
    }
    if (get_long(f, path, "model_version", 0, BIG, &v[0], err)) goto fail;
    if (v[0] != MODEL_VERSION) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: model_version %lld, this glia implements version %d", path,
                 v[0], MODEL_VERSION);
        goto fail;
    }
    long long world, rank, zero = 0;
    if (get_long(f, path, "world_size", 1, MAX_WORLD, &world, err) ||
        get_long(f, path, "rank", 0, world - 1, &rank, err))
        goto fail;
    if (rank != want_rank) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: metadata says rank %lld, but it is the file of rank %d", path, rank,
                 want_rank);
        goto fail;
    }
    if (st_meta(f, "zero") && get_long(f, path, "zero", 0, 1, &zero, err)) goto fail;  // absent: 0
    if (get_long(f, path, "step", 0, BIG, &v[0], err)) goto fail;
    if (v[0] != want_step) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: step %lld, but its directory and COMPLETE say step %ld", path,
                 v[0], want_step);
        goto fail;
    }
    static const char *const keys[] = {"V", "Vp", "L", "C", "Nh", "F", "astro", "steps", "batch",
                                       "seq", "accum", "warmup", "seed"};
    for (int i = 0; i < 13; i++)
        if (get_long(f, path, keys[i], i == 6 ? 0 : 1, i == 12 ? (1LL << 62) : BIG, &v[i], err)) goto fail;
    memset(o, 0, sizeof *o);
    o->cfg = (ModelConfig){(int)v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], v[6] != 0};
    o->steps = (long)v[7];
    o->batch = (int)v[8];
    o->seq = (int)v[9];
    o->accum = (int)v[10];
    o->warmup = (long)v[11];
    o->seed = (uint64_t)v[12];
    o->world_size = (int)world;
    o->zero = (int)zero;
    if (get_double(f, path, "lr", &o->lr, err) || get_double(f, path, "min_lr_frac", &o->min_lr_frac, err) ||
        get_double(f, path, "weight_decay", &o->weight_decay, err) || get_double(f, path, "clip", &o->clip, err))
        goto fail;
    // Stored since issue 14; absent in older checkpoints (-1, data NULL).
    static const char *const opt_keys[4] = {"ckpt_every", "eval_every", "eval_batches", "keep"};
    long *opt[4] = {&o->ckpt_every, &o->eval_every, &o->eval_batches, NULL};
    for (int i = 0; i < 4; i++) {
        long long x = -1;
        if (st_meta(f, opt_keys[i]) && get_long(f, path, opt_keys[i], 0, BIG, &x, err)) goto fail;
        if (opt[i]) *opt[i] = (long)x;
        else o->keep = x > (1 << 20) ? (1 << 20) : (int)x;
    }
    static char data[4096];
    const char *sd = st_meta(f, "data");
    if (sd && strlen(sd) >= sizeof data) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: metadata 'data' is longer than a path", path);
        goto fail;
    }
    if (sd) snprintf(data, sizeof data, "%s", sd);
    o->data = sd ? data : NULL;
    if (ckpt_check_crc_keys(f, path, err) < 0) goto fail;
    char cerr[256];
    if (model_config_check(&o->cfg, cerr, sizeof cerr)) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: bad configuration: %.120s", path, cerr);
        goto fail;
    }
    return f;
fail:
    for (char *c = err; *c; c++) if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f) *c = '?';  // values quoted from the file: keep one line
    st_free(f);
    return NULL;
}

// ---- finding, loading ----------------------------------------------------------------

// The step of a directory entry named step_<digits>, or -1.
static long entry_step(const char *name) {
    if (strncmp(name, "step_", 5) || !name[5]) return -1;
    char *end;
    long s = strtol(name + 5, &end, 10);
    return *end || s < 0 ? -1 : s;
}

// The step_* entries of root/ckpt, newest first, into *steps (malloc'd).
// Returns the count, or -1 with err set when the directory cannot be read.
static int list_steps(const char *ckdir, long **steps, char err[CKPT_ERR_LEN]) {
    DIR *d = opendir(ckdir);
    if (!d) {
        int saved = errno;
        snprintf(err, CKPT_ERR_LEN, "%.400s: cannot read: %.120s", ckdir, strerror(saved));
        errno = saved;
        return -1;
    }
    int n = 0, cap = 16;
    long *s = xmalloc((size_t)cap * sizeof *s);
    struct dirent *e;
    while ((e = readdir(d))) {
        long st = entry_step(e->d_name);
        if (st < 0) continue;
        if (n == cap) {
            long *grown = xmalloc((size_t)cap * 2 * sizeof *s);
            memcpy(grown, s, (size_t)n * sizeof *s);
            free(s);
            s = grown;
            cap *= 2;
        }
        s[n++] = st;
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // insertion sort, descending
        for (int j = i; j > 0 && s[j] > s[j - 1]; j--) {
            long t = s[j];
            s[j] = s[j - 1];
            s[j - 1] = t;
        }
    *steps = s;
    return n;
}

static void step_dir(char *buf, size_t n, const char *ckdir, long step) {
    snprintf(buf, n, "%s/step_%08ld", ckdir, step);
}

int train_ckpt_find(const char *root, char *dir, size_t dir_len, long *step, TrainOptions *o,
                    char err[CKPT_ERR_LEN]) {
    char ckdir[CKDIR_LEN], d[DIR_LEN], path[PATH_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", root);
    long *steps = NULL;
    int n = list_steps(ckdir, &steps, err);
    if (n < 0) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: no checkpoint to resume from (cannot read the directory: %.120s)",
                 ckdir, strerror(errno));
        return -1;
    }
    int found = -1;
    Complete c = {0};
    for (int i = 0; i < n && found < 0; i++) {
        step_dir(d, sizeof d, ckdir, steps[i]);
        if (complete_read(d, &c)) found = i;
    }
    long s = found >= 0 ? steps[found] : 0;
    free(steps);
    if (found < 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: no complete checkpoint to resume from", ckdir), -1;
    int rc = -1;
    if (c.step != s) {
        snprintf(err, CKPT_ERR_LEN, "%.400s/COMPLETE: says step %ld in the directory of step %ld", d, c.step, s);
        goto out;
    }
    if (complete_check_sizes(d, &c, -1, err)) goto out;
    snprintf(path, sizeof path, "%s/state.rank0.safetensors", d);
    StFile *f = state_open(path, s, 0, o, err);
    if (!f) goto out;
    st_free(f);
    if (o->world_size != c.world) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: world_size %d, but COMPLETE lists the state files of %d ranks", path,
                 o->world_size, c.world);
        goto out;
    }
    snprintf(dir, dir_len, "%s", d);
    *step = s;
    rc = 0;
out:
    free(c.size);
    return rc;
}

static void cfg_describe(char *buf, size_t n, const ModelConfig *c) {
    snprintf(buf, n, "V %d, L %d, C %d, heads %d, FFN %d, astro %s", c->V, c->L, c->C, c->Nh, c->F,
             c->astro ? "on" : "off");
}

static int cfg_equal(const ModelConfig *a, const ModelConfig *b) {
    return a->V == b->V && a->Vp == b->Vp && a->L == b->L && a->C == b->C && a->Nh == b->Nh &&
           a->F == b->F && !a->astro == !b->astro;
}

// Reads moment tensor `name` of `numel` floats (shape as in the file must be
// ndim/shape) into dst, checking its CRC and values (v >= 0).
static int moment_read(const StFile *f, const char *path, const char *name, int ndim, const int64_t *shape,
                       size_t numel, int is_v, float *dst, char err[CKPT_ERR_LEN]) {
    char serr[ST_ERR_LEN];
    const StTensor *t = st_expect(f, name, ndim, shape, serr);
    if (!t) return snprintf(err, CKPT_ERR_LEN, "%.400s: %.120s", path, serr), -1;
    if (ckpt_check_crc(f, path, t, 1, err)) return -1;
    for (size_t j = 0; j < numel; j++)
        if (!isfinite(t->data[j]) || (is_v && t->data[j] < 0))
            return snprintf(err, CKPT_ERR_LEN, "%.400s: tensor '%s': element %zu (%g) is not a valid moment", path,
                            name, j, t->data[j]), -1;
    memcpy(dst, t->data, numel * sizeof(float));
    return 0;
}

Model *train_ckpt_load(const char *dir, const ModelConfig *cfg, float **mom1, float **mom2,
                       long *step, char err[CKPT_ERR_LEN]) {
    TrainShard sh = {0, 1, 0, 0, 0, 0};
    return train_ckpt_load_shard(dir, cfg, &sh, mom1, mom2, step, err);
}

Model *train_ckpt_load_shard(const char *dir, const ModelConfig *cfg, TrainShard *sh, float **mom1,
                             float **mom2, long *step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], a[160], b[160];
    Complete c;
    *mom1 = *mom2 = NULL;
    if (!complete_read(dir, &c))
        return snprintf(err, CKPT_ERR_LEN, "%.400s/COMPLETE: missing or not valid: the checkpoint is incomplete", dir), NULL;
    long cstep = c.step;
    int cworld = c.world;
    int bad = complete_check_sizes(dir, &c, sh->rank < c.world ? sh->rank : -1, err);
    free(c.size);
    if (bad) return NULL;
    if (cworld != sh->world)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: written by %d processes (world size %d); resume it with the "
                        "same number of ranks (mpirun -np %d), not %d", dir, cworld, cworld, cworld, sh->world), NULL;
    snprintf(path, sizeof path, "%s/%s", dir, MODEL_FILE);
    long mstep;
    Model *m = ckpt_load_model(path, &mstep, err);
    if (!m) return NULL;
    StFile *f = NULL;
    if (mstep != cstep) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: step %ld, but COMPLETE says step %ld", path, mstep, cstep);
        goto fail;
    }
    if (cfg && !cfg_equal(&m->cfg, cfg)) {
        cfg_describe(a, sizeof a, &m->cfg);
        cfg_describe(b, sizeof b, cfg);
        snprintf(err, CKPT_ERR_LEN, "%.300s: the checkpoint's model (%.100s) does not match the requested one (%.100s)",
                 path, a, b);
        goto fail;
    }
    file_name(a, sizeof a, sh->rank + 1);
    snprintf(path, sizeof path, "%s/%s", dir, a);
    TrainOptions so;
    if (!(f = state_open(path, cstep, sh->rank, &so, err))) goto fail;
    if (!cfg_equal(&m->cfg, &so.cfg)) {
        cfg_describe(a, sizeof a, &so.cfg);
        cfg_describe(b, sizeof b, &m->cfg);
        snprintf(err, CKPT_ERR_LEN, "%.300s: configuration (%.100s) does not match the model file's (%.100s)", path, a, b);
        goto fail;
    }
    if (so.world_size != sh->world || so.zero != sh->zero) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: written with world size %d and --zero %d; resume it with the same "
                 "(this run: world size %d, --zero %d)", path, so.world_size, so.zero, sh->world, sh->zero);
        goto fail;
    }
    train_shard_init(sh, m->nparams, sh->rank, sh->world, sh->zero);
    int want = sh->zero ? 2 : 2 * m->ntensors;
    if (f->n != want) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: holds %d tensors, the moments of this model are %d", path, f->n, want);
        goto fail;
    }
    *mom1 = xcalloc(sh->len, sizeof(float));
    *mom2 = xcalloc(sh->len, sizeof(float));
    char name[80];
    for (int k = 0; k < 2; k++) {
        float *mom = k ? *mom2 : *mom1;
        if (sh->zero) {
            snprintf(name, sizeof name, "%c.shard", k ? 'v' : 'm');
            int64_t shape[1] = {(int64_t)sh->len};
            if (moment_read(f, path, name, 1, shape, sh->len, k, mom, err)) goto fail;
            continue;
        }
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', t->name);
            if (moment_read(f, path, name, t->ndim, t->shape, t->numel, k, mom + t->offset, err)) goto fail;
        }
    }
    st_free(f);
    *step = cstep;
    return m;
fail:
    st_free(f);
    model_free(m);
    free(*mom1);
    free(*mom2);
    *mom1 = *mom2 = NULL;
    return NULL;
}

// ---- saving, pruning ---------------------------------------------------------------------

// Deletes a checkpoint directory: COMPLETE first, so that a crash midway
// leaves an incomplete directory (ignored, deleted next time), never a
// complete-looking one with files missing.
static int remove_ckpt_dir(const char *dir) {
    char path[DIR_LEN + 260];
    snprintf(path, sizeof path, "%s/COMPLETE", dir);
    if (unlink(path) != 0 && errno != ENOENT) return -1;
    glia_sync_parent_dir(path);
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) rc = -1;
    }
    closedir(d);
    if (rc || rmdir(dir) != 0) return -1;
    return 0;
}

// Keeps the newest `keep` complete checkpoints; deletes older complete ones
// and incomplete directories older than the newest complete one. Failures
// to delete are reported as warnings: the new checkpoint is safe anyway.
static void prune(const char *ckdir, int keep) {
    char err[CKPT_ERR_LEN], d[DIR_LEN];
    long *steps = NULL;
    int n = list_steps(ckdir, &steps, err);
    if (n < 0) return;
    int ncomplete = 0;
    for (int i = 0; i < n; i++) {
        Complete c;
        step_dir(d, sizeof d, ckdir, steps[i]);
        int complete = complete_read(d, &c);
        free(c.size);
        int drop = complete ? ++ncomplete > keep : ncomplete > 0;
        if (drop && remove_ckpt_dir(d))
            fprintf(stderr, "glia train: warning: cannot delete the old checkpoint %s: %s\n", d, strerror(errno));
    }
    free(steps);
    if (n > 0) glia_sync_parent_dir(d);
}

int train_ckpt_exists(const char *out) {
    char ckdir[CKDIR_LEN], d[DIR_LEN], err[CKPT_ERR_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    long *steps = NULL;
    int n = list_steps(ckdir, &steps, err), found = 0;
    for (int i = 0; i < n && !found; i++) {  // only a complete checkpoint is a saved run
        Complete c;
        step_dir(d, sizeof d, ckdir, steps[i]);
        found = complete_read(d, &c);
        if (found) free(c.size);
    }
    free(steps);
    return found;
}

// 1 for the name of a temporary file of glia's atomic saves: NAME.tmp.<pid>.
static int is_tmp_name(const char *name) {
    const char *t = NULL;  // the last ".tmp."
    for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp.")) t = p;
    if (!t || t == name || !t[5]) return 0;
    for (const char *d = t + 5; *d; d++)
        if (*d < '0' || *d > '9') return 0;
    return 1;
}

// Deletes the temporary files in one directory; returns how many.
static int clean_tmp_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    char path[PATH_LEN + 256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (is_tmp_name(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) == 0) n++;
        }
    closedir(d);
    return n;
}

int train_ckpt_clean_tmp(const char *out) {
    char ckdir[CKDIR_LEN], d[DIR_LEN], err[CKPT_ERR_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    int n = clean_tmp_in(out) + clean_tmp_in(ckdir);
    long *steps = NULL;
    int ns = list_steps(ckdir, &steps, err);
    for (int i = 0; i < ns; i++) {
        step_dir(d, sizeof d, ckdir, steps[i]);
        n += clean_tmp_in(d);
    }
    free(steps);
    return n;
}

int train_ckpt_auto(const char *out, char err[CKPT_ERR_LEN]) {
    if (train_ckpt_exists(out)) return 1;
    // No complete checkpoint: fresh only if out holds nothing but what a run
    // writes before its first checkpoint is complete.
    DIR *d = opendir(out);
    if (!d) {
        if (errno == ENOENT) return 0;
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot read: %.120s", out, strerror(errno)), -1;
    }
    char ckdir[CKDIR_LEN], what[300] = "";
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    struct dirent *e;
    while (!what[0] && (e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, TRAIN_LOCK_NAME) || !strcmp(n, "metrics.jsonl") ||
            !strcmp(n, "data") || is_tmp_name(n))
            continue;
        if (!strcmp(n, "ckpt")) {
            DIR *c = opendir(ckdir);
            struct dirent *ce;
            while (c && !what[0] && (ce = readdir(c)))
                if (strcmp(ce->d_name, ".") && strcmp(ce->d_name, "..") && entry_step(ce->d_name) < 0 &&
                    !is_tmp_name(ce->d_name))
                    snprintf(what, sizeof what, "ckpt/%.200s", ce->d_name);
            if (c) closedir(c);
            else snprintf(what, sizeof what, "ckpt (not a readable directory)");
            continue;
        }
        snprintf(what, sizeof what, "%.250s", n);
    }
    closedir(d);
    if (!what[0]) return 0;
    snprintf(err, CKPT_ERR_LEN, "--resume auto: %.400s holds %s but no complete checkpoint: neither a run to "
             "continue nor an empty directory; move it away or give another --out", out, what);
    return -1;
}

int train_ckpt_begin(const char *out, long step, char *dir, size_t dir_len, char err[CKPT_ERR_LEN]) {
    char ckdir[CKDIR_LEN], d[DIR_LEN], path[PATH_LEN], cerr[CKPT_ERR_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    step_dir(d, sizeof d, ckdir, step);
    snprintf(dir, dir_len, "%s", d);
    if (glia_mkdirs(d, cerr, sizeof cerr)) return snprintf(err, CKPT_ERR_LEN, "%.400s", cerr), -1;
    // A directory of this step from an interrupted run: no longer complete
    // from here on, until the new COMPLETE is in place.
    snprintf(path, sizeof path, "%s/COMPLETE", d);
    if (unlink(path) == 0) glia_sync_parent_dir(path);
    else if (errno != ENOENT)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot delete: %.120s", path, strerror(errno)), -1;
    // The step directory into ckpt, ckpt into OUT and OUT into its parent: the
    // first save creates them, and a commit is durable only with their entries.
    if (glia_sync_parent_dir(d) != 0 || glia_sync_parent_dir(ckdir) != 0 || glia_sync_parent_dir(out) != 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot sync: %.120s", ckdir, strerror(errno)), -1;
    return 0;
}

int train_ckpt_save_model(const char *dir, const Model *m, long step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], cerr[CKPT_ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", dir, MODEL_FILE);
    if (ckpt_save_model(m, path, step, cerr)) return snprintf(err, CKPT_ERR_LEN, "%.400s", cerr), -1;
    return 0;
}

int train_ckpt_save_state(const char *dir, const Model *m, const float *mom1, const float *mom2,
                          const TrainShard *sh, const TrainOptions *o, long step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], name[64], cerr[CKPT_ERR_LEN];
    file_name(name, sizeof name, sh->rank + 1);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (state_save(path, m, mom1, mom2, sh, o, step, cerr))
        return snprintf(err, CKPT_ERR_LEN, "cannot save the training state: %.400s", cerr), -1;
    return 0;
}

int train_ckpt_commit(const char *out, const char *dir, long step, int world, int keep, char err[CKPT_ERR_LEN]) {
    char ckdir[CKDIR_LEN];
    if (write_complete(dir, step, world, err)) return -1;
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    prune(ckdir, keep > 0 ? keep : 1);
    return 0;
}

int train_ckpt_save(const char *out, const Model *m, const float *mom1, const float *mom2,
                    const TrainOptions *o, long step, int keep, char err[CKPT_ERR_LEN]) {
    char d[DIR_LEN];
    TrainShard sh;
    train_shard_init(&sh, m->nparams, 0, 1, 0);
    if (train_ckpt_begin(out, step, d, sizeof d, err) || train_ckpt_save_model(d, m, step, err) ||
        train_ckpt_save_state(d, m, mom1, mom2, &sh, o, step, err))
        return -1;
    return train_ckpt_commit(out, d, step, 1, keep, err);
}
