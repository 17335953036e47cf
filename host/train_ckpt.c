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
#include "train_ckpt.h"

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
#define STATE_FILE "state.rank0.safetensors"
#define NFILES 2
static const char *const FILES[NFILES] = {MODEL_FILE, STATE_FILE};
#define CKDIR_LEN 4096  // root/ckpt
#define DIR_LEN 4160    // root/ckpt/step_N
#define PATH_LEN 4224   // root/ckpt/step_N/FILE

// ---- COMPLETE ----------------------------------------------------------------------

int train_ckpt_write_complete(const char *dir, long step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], tmp[PATH_LEN], fp_path[PATH_LEN];
    snprintf(path, sizeof path, "%s/COMPLETE", dir);
    snprintf(tmp, sizeof tmp, "%s/COMPLETE.tmp.%ld", dir, (long)getpid());
    long long size[NFILES];
    for (int i = 0; i < NFILES; i++) {
        struct stat st;
        snprintf(fp_path, sizeof fp_path, "%s/%s", dir, FILES[i]);
        if (stat(fp_path, &st) != 0)
            return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot stat: %.120s", fp_path, strerror(errno)), -1;
        size[i] = (long long)st.st_size;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot create: %.120s", tmp, strerror(errno)), -1;
    fprintf(f, "glia-checkpoint %d\nstep %ld\n", TRAIN_CKPT_VERSION, step);
    for (int i = 0; i < NFILES; i++) fprintf(f, "file %s %lld\n", FILES[i], size[i]);
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

// Parses dir/COMPLETE. Returns 1 when valid (step and the listed sizes in
// *step, size[]), 0 when missing or not valid: an incomplete checkpoint.
static int complete_read(const char *dir, long *step, long long size[NFILES]) {
    char path[PATH_LEN], line[512], name[256];
    snprintf(path, sizeof path, "%s/COMPLETE", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int version = 0, ok = 0, seen[NFILES] = {0};
    if (!fgets(line, sizeof line, f) || sscanf(line, "glia-checkpoint %d", &version) != 1 ||
        version != TRAIN_CKPT_VERSION)
        goto out;
    if (!fgets(line, sizeof line, f) || sscanf(line, "step %ld", step) != 1) goto out;
    while (fgets(line, sizeof line, f)) {
        if (!strcmp(line, "end\n")) {
            ok = 1;
            for (int i = 0; i < NFILES; i++) ok &= seen[i];
            break;
        }
        long long n;
        if (sscanf(line, "file %255s %lld", name, &n) != 2 || n < 0) break;
        for (int i = 0; i < NFILES; i++)
            if (!strcmp(name, FILES[i])) seen[i] = 1, size[i] = n;
    }
out:
    fclose(f);
    return ok;
}

// Checks every listed file against its size in COMPLETE.
static int complete_check_sizes(const char *dir, const long long size[NFILES], char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN];
    for (int i = 0; i < NFILES; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        if (stat(path, &st) != 0)
            return snprintf(err, CKPT_ERR_LEN, "%.400s: listed in COMPLETE but cannot be read: %.120s", path,
                            strerror(errno)), -1;
        if (S_ISDIR(st.st_mode))
            return snprintf(err, CKPT_ERR_LEN, "%.400s: is a directory, not a safetensors file", path), -1;
        if ((long long)st.st_size != size[i]) {
            if (st.st_size == 0)
                return snprintf(err, CKPT_ERR_LEN, "%.400s: the file is empty; COMPLETE lists %lld bytes", path,
                                size[i]), -1;
            return snprintf(err, CKPT_ERR_LEN, "%.400s: %.120s: %lld bytes, COMPLETE lists %lld", path,
                            (long long)st.st_size < size[i] ? "truncated" : "wrong size",
                            (long long)st.st_size, size[i]), -1;
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
                      const TrainOptions *o, long step, char err[CKPT_ERR_LEN]) {
    StWriter *w = st_writer_new();
    st_writer_meta(w, "format", "glia-train-state");
    meta_long(w, "ckpt_version", TRAIN_CKPT_VERSION);
    meta_long(w, "model_version", MODEL_VERSION);
    meta_long(w, "step", step);
    meta_long(w, "world_size", 1);
    meta_long(w, "rank", 0);
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
    char name[80];
    for (int k = 0; k < 2; k++) {
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

// Loads the state file and checks its header: format, versions, rank, step
// (== want_step), and reads the run options. Returns the file or NULL.
static StFile *state_open(const char *path, long want_step, TrainOptions *o, char err[CKPT_ERR_LEN]) {
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
    if (get_long(f, path, "world_size", 1, 1, &v[0], err) || get_long(f, path, "rank", 0, 0, &v[0], err))
        goto fail;
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
    if (get_double(f, path, "lr", &o->lr, err) || get_double(f, path, "min_lr_frac", &o->min_lr_frac, err) ||
        get_double(f, path, "weight_decay", &o->weight_decay, err) || get_double(f, path, "clip", &o->clip, err))
        goto fail;
    char cerr[256];
    if (model_config_check(&o->cfg, cerr, sizeof cerr)) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: bad configuration: %.120s", path, cerr);
        goto fail;
    }
    return f;
fail:
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
    long long size[NFILES];
    long cstep = 0;
    for (int i = 0; i < n && found < 0; i++) {
        step_dir(d, sizeof d, ckdir, steps[i]);
        if (complete_read(d, &cstep, size)) found = i;
    }
    long s = found >= 0 ? steps[found] : 0;
    free(steps);
    if (found < 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: no complete checkpoint to resume from", ckdir), -1;
    if (cstep != s)
        return snprintf(err, CKPT_ERR_LEN, "%.400s/COMPLETE: says step %ld in the directory of step %ld", d,
                        cstep, s), -1;
    if (complete_check_sizes(d, size, err)) return -1;
    snprintf(path, sizeof path, "%s/%s", d, STATE_FILE);
    StFile *f = state_open(path, s, o, err);
    if (!f) return -1;
    st_free(f);
    snprintf(dir, dir_len, "%s", d);
    *step = s;
    return 0;
}

static void cfg_describe(char *buf, size_t n, const ModelConfig *c) {
    snprintf(buf, n, "V %d, L %d, C %d, heads %d, FFN %d, astro %s", c->V, c->L, c->C, c->Nh, c->F,
             c->astro ? "on" : "off");
}

static int cfg_equal(const ModelConfig *a, const ModelConfig *b) {
    return a->V == b->V && a->Vp == b->Vp && a->L == b->L && a->C == b->C && a->Nh == b->Nh &&
           a->F == b->F && !a->astro == !b->astro;
}

Model *train_ckpt_load(const char *dir, const ModelConfig *cfg, float **mom1, float **mom2,
                       long *step, char err[CKPT_ERR_LEN]) {
    char path[PATH_LEN], serr[ST_ERR_LEN], a[160], b[160];
    long long size[NFILES];
    long cstep;
    *mom1 = *mom2 = NULL;
    if (!complete_read(dir, &cstep, size))
        return snprintf(err, CKPT_ERR_LEN, "%.400s/COMPLETE: missing or not valid: the checkpoint is incomplete", dir), NULL;
    if (complete_check_sizes(dir, size, err)) return NULL;
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
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    TrainOptions so;
    if (!(f = state_open(path, cstep, &so, err))) goto fail;
    if (!cfg_equal(&m->cfg, &so.cfg)) {
        cfg_describe(a, sizeof a, &so.cfg);
        cfg_describe(b, sizeof b, &m->cfg);
        snprintf(err, CKPT_ERR_LEN, "%.300s: configuration (%.100s) does not match the model file's (%.100s)", path, a, b);
        goto fail;
    }
    if (f->n != 2 * m->ntensors) {
        snprintf(err, CKPT_ERR_LEN, "%.400s: holds %d tensors, the moments of this model are %d", path, f->n,
                 2 * m->ntensors);
        goto fail;
    }
    *mom1 = xmalloc(m->nparams * sizeof(float));
    *mom2 = xmalloc(m->nparams * sizeof(float));
    char name[80];
    for (int k = 0; k < 2; k++) {
        float *mom = k ? *mom2 : *mom1;
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', t->name);
            const StTensor *s = st_expect(f, name, t->ndim, t->shape, serr);
            if (!s) {
                snprintf(err, CKPT_ERR_LEN, "%.400s: %.120s", path, serr);
                goto fail;
            }
            if (ckpt_check_crc(f, path, s, 1, err)) goto fail;
            for (size_t j = 0; j < t->numel; j++)
                if (!isfinite(s->data[j]) || (k && s->data[j] < 0)) {
                    snprintf(err, CKPT_ERR_LEN, "%.400s: tensor '%s': element %zu (%g) is not a valid moment",
                             path, name, j, s->data[j]);
                    goto fail;
                }
            memcpy(mom + t->offset, s->data, t->numel * sizeof(float));
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
        long cstep;
        long long size[NFILES];
        step_dir(d, sizeof d, ckdir, steps[i]);
        int complete = complete_read(d, &cstep, size);
        int drop = complete ? ++ncomplete > keep : ncomplete > 0;
        if (drop && remove_ckpt_dir(d))
            fprintf(stderr, "glia train: warning: cannot delete the old checkpoint %s: %s\n", d, strerror(errno));
    }
    free(steps);
    if (n > 0) glia_sync_parent_dir(d);
}

int train_ckpt_exists(const char *out) {
    char ckdir[CKDIR_LEN], err[CKPT_ERR_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    long *steps = NULL;
    int n = list_steps(ckdir, &steps, err);
    free(steps);
    return n > 0;
}

int train_ckpt_save(const char *out, const Model *m, const float *mom1, const float *mom2,
                    const TrainOptions *o, long step, int keep, char err[CKPT_ERR_LEN]) {
    char ckdir[CKDIR_LEN], d[DIR_LEN], path[PATH_LEN], cerr[CKPT_ERR_LEN];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    step_dir(d, sizeof d, ckdir, step);
    if (glia_mkdirs(d, cerr, sizeof cerr)) return snprintf(err, CKPT_ERR_LEN, "%.400s", cerr), -1;
    // A directory of this step from an interrupted run: no longer complete
    // from here on, until the new COMPLETE is in place.
    snprintf(path, sizeof path, "%s/COMPLETE", d);
    if (unlink(path) == 0) glia_sync_parent_dir(path);
    else if (errno != ENOENT)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot delete: %.120s", path, strerror(errno)), -1;
    if (glia_sync_parent_dir(d) != 0)
        return snprintf(err, CKPT_ERR_LEN, "%.400s: cannot sync: %.120s", ckdir, strerror(errno)), -1;
    snprintf(path, sizeof path, "%s/%s", d, MODEL_FILE);
    if (ckpt_save_model(m, path, step, cerr)) return snprintf(err, CKPT_ERR_LEN, "%.400s", cerr), -1;
    snprintf(path, sizeof path, "%s/%s", d, STATE_FILE);
    if (state_save(path, m, mom1, mom2, o, step, cerr))
        return snprintf(err, CKPT_ERR_LEN, "cannot save the training state: %.400s", cerr), -1;
    if (train_ckpt_write_complete(d, step, err)) return -1;
    prune(ckdir, keep > 0 ? keep : 1);
    return 0;
}
