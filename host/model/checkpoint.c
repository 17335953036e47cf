// checkpoint.c: see checkpoint.h.
#include "model/checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/crc32c.h"
#include "glia/safetensors.h"

void ckpt_meta_crc(StWriter *w, const char *name, const float *data, size_t numel) {
    char key[128], hex[16];
    snprintf(key, sizeof key, "crc32c.%s", name);
    snprintf(hex, sizeof hex, "%08x", (unsigned)crc32c(data, numel * sizeof(float)));
    st_writer_meta(w, key, hex);
}

int ckpt_check_crc(const StFile *f, const char *path, const StTensor *t, int required,
                   char err[CKPT_ERR_LEN]) {
    char key[128];
    snprintf(key, sizeof key, "crc32c.%s", t->name);
    const char *want = st_meta(f, key);
    if (!want) {
        if (!required) return 0;
        snprintf(err, CKPT_ERR_LEN, "%s: tensor '%s': metadata '%s' (its checksum) is missing", path,
                 t->name, key);
        return -1;
    }
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", (unsigned)crc32c(t->data, (size_t)t->numel * sizeof(float)));
    if (strcmp(want, hex)) {
        snprintf(err, CKPT_ERR_LEN, "%s: tensor '%s': CRC32C mismatch (stored %.16s, computed %s): the file is corrupt",
                 path, t->name, want, hex);
        return -1;
    }
    return 0;
}

int ckpt_check_crc_keys(const StFile *f, const char *path, char err[CKPT_ERR_LEN]) {
    int n = 0;
    for (int i = 0; i < f->nmeta; i++) {
        const char *k = f->meta_keys[i];
        if (strncmp(k, "crc32c.", 7)) continue;
        n++;
        if (!st_find(f, k + 7)) {
            snprintf(err, CKPT_ERR_LEN, "%s: metadata '%.200s' is the checksum of no tensor in the file (a damaged "
                     "checksum key)", path, k);
            return -1;
        }
    }
    return n > 0;
}

const char *ckpt_tokenizer(const ModelConfig *c) {
    return c->V == 256 ? "byte" : c->V == 50257 ? "gpt2" : c->V > 256 ? "byte+" : "none";
}

int ckpt_save_model(const Model *m, const char *path, long step, char err[CKPT_ERR_LEN]) {
    const ModelConfig *c = &m->cfg;
    char buf[8][32];
    StWriter *w = st_writer_new();
    st_writer_meta(w, "format", "glia-model");
    snprintf(buf[0], 32, "%d", MODEL_VERSION);
    st_writer_meta(w, "model_version", buf[0]);
    int vals[7] = {c->V, c->Vp, c->L, c->C, c->Nh, c->F, c->astro};
    const char *keys[7] = {"V", "Vp", "L", "C", "Nh", "F", "astro"};
    for (int i = 0; i < 7; i++) {
        snprintf(buf[1], 32, "%d", vals[i]);
        st_writer_meta(w, keys[i], buf[1]);
    }
    snprintf(buf[2], 32, "%ld", step);
    st_writer_meta(w, "step", buf[2]);
    st_writer_meta(w, "tokenizer", ckpt_tokenizer(c));
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        st_writer_add(w, t->name, t->ndim, t->shape, m->params + t->offset);
        ckpt_meta_crc(w, t->name, m->params + t->offset, t->numel);
    }
    char serr[ST_ERR_LEN];
    int rc = st_writer_save(w, path, serr);
    st_writer_free(w);
    if (rc) snprintf(err, CKPT_ERR_LEN, "cannot save the model: %s", serr);
    return rc;
}

// A metadata integer in [lo, hi], or -1 after writing err.
static int meta_int(const StFile *f, const char *path, const char *key, long lo, long hi,
                    long *out, char *err) {
    const char *s = st_meta(f, key);
    if (!s) return snprintf(err, CKPT_ERR_LEN, "%s: not a glia model file: metadata '%s' is missing", path, key), -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return snprintf(err, CKPT_ERR_LEN, "%s: metadata '%s' = '%.40s' is not a whole number in [%ld, %ld]", path, key, s, lo, hi), -1;
    *out = v;
    return 0;
}

Model *ckpt_load_model(const char *path, long *step, char err[CKPT_ERR_LEN]) {
    char serr[ST_ERR_LEN];
    StFile *f = st_load(path, serr);
    if (!f) {
        snprintf(err, CKPT_ERR_LEN, "%s", serr);
        return NULL;
    }
    Model *m = NULL;
    const char *format = st_meta(f, "format");
    if (!format || strcmp(format, "glia-model")) {
        snprintf(err, CKPT_ERR_LEN, "%s: not a glia model file (metadata format is %s)", path,
                 format ? format : "missing");
        goto fail;
    }
    long version, v[7], st = 0;
    if (meta_int(f, path, "model_version", 0, 1 << 30, &version, err)) goto fail;
    if (version != MODEL_VERSION) {
        snprintf(err, CKPT_ERR_LEN, "%s: model_version %ld, this glia implements version %d", path,
                 version, MODEL_VERSION);
        goto fail;
    }
    const char *keys[7] = {"V", "Vp", "L", "C", "Nh", "F", "astro"};
    for (int i = 0; i < 7; i++)
        if (meta_int(f, path, keys[i], 0, 1 << 30, &v[i], err)) goto fail;
    if (meta_int(f, path, "step", 0, 1L << 40, &st, err)) goto fail;
    ModelConfig cfg = {(int)v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], v[6] != 0};
    char cerr[256];
    if (model_config_check(&cfg, cerr, sizeof cerr)) {
        snprintf(err, CKPT_ERR_LEN, "%s: bad configuration: %s", path, cerr);
        goto fail;
    }
    const char *tk = st_meta(f, "tokenizer");  // files from before it: implied by V
    if (tk && strcmp(tk, ckpt_tokenizer(&cfg))) {
        snprintf(err, CKPT_ERR_LEN, "%s: metadata tokenizer '%.40s' does not fit a vocabulary of %d (expected '%s')",
                 path, tk, cfg.V, ckpt_tokenizer(&cfg));
        goto fail;
    }
    // The file must hold the parameters its configuration asks for before
    // anything sized by that configuration is allocated (a forged header
    // could otherwise ask for terabytes).
    int64_t have = 0, want = model_config_nparams(&cfg);
    for (int i = 0; i < f->n; i++) have += f->tensors[i].is_f32 ? f->tensors[i].numel : 0;
    if (have < want) {
        snprintf(err, CKPT_ERR_LEN, "%s: holds %lld F32 values, its configuration needs %lld", path,
                 (long long)have, (long long)want);
        goto fail;
    }
    // A file that declares checksums must carry one for every tensor, each
    // naming a tensor of the file: a damaged key must not switch a check off.
    int declares = ckpt_check_crc_keys(f, path, err);
    if (declares < 0) goto fail;
    m = model_new(&cfg);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        const StTensor *s = st_expect(f, t->name, t->ndim, t->shape, serr);
        if (!s) {
            snprintf(err, CKPT_ERR_LEN, "%s: %s", path, serr);
            goto fail;
        }
        if (ckpt_check_crc(f, path, s, declares, err)) goto fail;
        for (int64_t k = 0; k < s->numel; k++)
            if (!isfinite(s->data[k])) {
                snprintf(err, CKPT_ERR_LEN, "%s: tensor '%s': element %lld is not finite", path,
                         t->name, (long long)k);
                goto fail;
            }
        memcpy(m->params + t->offset, s->data, t->numel * sizeof(float));
    }
    if (f->n != m->ntensors) {
        snprintf(err, CKPT_ERR_LEN, "%s: holds %d tensors, a model of this configuration has %d",
                 path, f->n, m->ntensors);
        goto fail;
    }
    st_free(f);
    if (step) *step = st;
    return m;
fail:
    // values quoted from the file may hold control characters: keep one line
    for (char *c = err; *c; c++)
        if ((unsigned char)*c < 0x20) *c = '?';
    model_free(m);
    st_free(f);
    return NULL;
}
