// cmd_export.c: `glia export` and `glia import`, a model file to and from a
// directory that PyTorch code can load without glia.
//
// A glia model file already is a safetensors file, but its configuration
// lives in glia's own metadata strings. The usual way to hand weights to
// Python is a directory holding model.safetensors (the parameters under
// their plain names) and config.json (the configuration as typed JSON), so
// that is what `export` writes; tools/reference.py's load_exported reads it
// and runs the same model in PyTorch. `import` is the way back, and because
// such a directory may have been edited or produced by other code it is
// treated as untrusted: config.json is checked key by key (present, of the
// right JSON type, a whole number in range) and against model_config_check,
// the parameter count it implies is compared with what the safetensors file
// actually holds before anything is allocated from it (a config claiming a
// huge model must not turn into a huge allocation), and only then is every
// tensor checked for presence, dtype, shape and finite values, and any tensor
// the model does not have is refused. Every problem is one line naming the
// file and, where there is one, the key or tensor, with exit status 2; a
// destination that cannot be written is exit status 1. config.json is written
// like every other glia output: temporary file, fsync, rename.
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/bpe.h"
#include "model/checkpoint.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "glia/safetensors.h"
#include "glia/util.h"
#include "model/model.h"

#define EXPORT_MODEL_TYPE "astrosnn"

// ---- export -----------------------------------------------------------------------

// Writes text to path atomically. 0, or -1 with err set.
static int write_atomic(const char *path, const char *text, char *err, size_t err_len) {
    size_t cap = strlen(path) + 32;
    char *tmp = xmalloc(cap);
    snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
    const char *step = "cannot create";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd >= 0) {
        size_t n = strlen(text), off = 0;
        step = "cannot write";
        while (off < n) {
            ssize_t k = write(fd, text + off, n - off);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            off += (size_t)k;
        }
        if (off == n) {
            step = "cannot sync";
            if (fsync(fd) == 0) step = NULL;
        }
        int saved = errno;
        if (close(fd) != 0 && !step) step = "cannot close", saved = errno;
        if (!step && rename(tmp, path) != 0) step = "cannot rename over", saved = errno;
        if (!step && glia_sync_parent_dir(path) != 0) step = "cannot sync the directory of", saved = errno;
        errno = saved;
    }
    if (step) {
        int saved = errno;
        unlink(tmp);
        snprintf(err, err_len, "%s: %s: %s", path, step, strerror(saved));
    }
    free(tmp);
    return step ? -1 : 0;
}

static char *read_small_max(const char *path, size_t max, char *err, size_t err_len);
// config.json is a few hundred bytes
static char *read_small(const char *path, char *err, size_t err_len) { return read_small_max(path, 1 << 16, err, err_len); }

static char *config_json(const ModelConfig *c) {
    cJSON *root = cJSON_CreateObject();
    if (!root) fatal("out of memory building config.json");
    cJSON_AddStringToObject(root, "model_type", EXPORT_MODEL_TYPE);
    cJSON_AddNumberToObject(root, "model_version", MODEL_VERSION);
    cJSON_AddNumberToObject(root, "vocab_size", c->V);
    cJSON_AddNumberToObject(root, "vocab_padded", c->Vp);
    cJSON_AddNumberToObject(root, "n_layer", c->L);
    cJSON_AddNumberToObject(root, "n_embd", c->C);
    cJSON_AddNumberToObject(root, "n_head", c->Nh);
    cJSON_AddNumberToObject(root, "ffn_dim", c->F);
    cJSON_AddBoolToObject(root, "astro", c->astro != 0);
    cJSON_AddStringToObject(root, "tokenizer", ckpt_tokenizer(c));  // "gpt2": gpt2.tiktoken beside it
    if (c->V == BPE_VOCAB) cJSON_AddStringToObject(root, "tokenizer_file", BPE_RANKS_FILE);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) fatal("out of memory printing config.json");
    size_t n = strlen(text);
    char *out = xmalloc(n + 2);
    memcpy(out, text, n);
    out[n] = '\n';
    out[n + 1] = '\0';
    cJSON_free(text);
    return out;
}

static const char *EXPORT_SUMMARY =
    "Writes a glia model file as a directory for PyTorch: OUT/model.safetensors (every\n"
    "parameter under its plain name, F32) and OUT/config.json (model_type \"astrosnn\",\n"
    "model_version, vocab_size, vocab_padded, n_layer, n_embd, n_head, ffn_dim, astro,\n"
    "tokenizer); a GPT-2 BPE model's ranks file too (OUT/gpt2.tiktoken, tiktoken's format).\n"
    "tools/reference.py load_exported reads it. OUT is created if needed.\n"
    "exit status: 0 done, 2 bad flags or a bad model file, 1 OUT could not be written.";

int cmd_export(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "the glia model file (model.safetensors of a run)", NULL},
        {"--out", "DIR", "the directory to write", NULL},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("export", EXPORT_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    if (cli_require("export", flags, nf, "--ckpt", "--out", NULL)) return 2;
    const char *ckpt = cli_get(flags, nf, "--ckpt"), *out = cli_get(flags, nf, "--out");
    char err[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(ckpt, NULL, err);
    if (!m) {
        fprintf(stderr, "glia export: %s\n", err);
        return 2;
    }
    char *ranks = NULL;  // a BPE model's tokenizer, checked before anything is written
    if (m->cfg.V == BPE_VOCAB) {
        char rpath[4200], rerr[700];
        bpe_default_path(rpath, sizeof rpath);
        Bpe *b = bpe_load(rpath, rerr, sizeof rerr);
        if (b) ranks = read_small_max(rpath, 4 << 20, rerr, sizeof rerr);
        bpe_free(b);
        if (!ranks) {
            fprintf(stderr, "glia export: %s: the model's tokenizer (GPT-2 BPE): %s\n", ckpt, rerr);
            model_free(m);
            return 2;
        }
    }
    if (glia_mkdirs(out, err, sizeof err) != 0) {
        fprintf(stderr, "glia export: %s\n", err);
        model_free(m);
        free(ranks);
        return 1;
    }
    size_t plen = strlen(out) + 32;
    char *path = xmalloc(plen);

    StWriter *w = st_writer_new();
    st_writer_meta(w, "format", "pt");  // what PyTorch's safetensors writer records
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        st_writer_add(w, t->name, t->ndim, t->shape, m->params + t->offset);
    }
    char serr[ST_ERR_LEN];
    snprintf(path, plen, "%s/model.safetensors", out);
    rc = st_writer_save(w, path, serr);
    st_writer_free(w);
    if (rc) {
        fprintf(stderr, "glia export: %s\n", serr);
        rc = 1;
    } else {
        char *json = config_json(&m->cfg);
        if (ranks) snprintf(path, plen, "%s/%s", out, BPE_RANKS_FILE);
        if (ranks && write_atomic(path, ranks, err, sizeof err) != 0) {
            fprintf(stderr, "glia export: %s\n", err);
            rc = 1;
        } else if (snprintf(path, plen, "%s/config.json", out), write_atomic(path, json, err, sizeof err) != 0) {
            fprintf(stderr, "glia export: %s\n", err);
            rc = 1;
        } else {
            printf("glia export: %s -> %s (model.safetensors, config.json%s; %zu parameters)\n",
                   ckpt, out, ranks ? ", " BPE_RANKS_FILE : "", m->nparams);
        }
        free(json);
    }
    free(path);
    free(ranks);
    model_free(m);
    return rc;
}

// ---- import -----------------------------------------------------------------------

// Reads a whole small text file of at most `max` bytes; NULL with err set.
static char *read_small_max(const char *path, size_t max, char *err, size_t err_len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = max, n = 0;
    char *buf = xmalloc(cap + 1);
    n = fread(buf, 1, cap, fp);
    int bad = ferror(fp), more = !bad && fgetc(fp) != EOF;
    fclose(fp);
    if (bad || more) {
        if (bad) snprintf(err, err_len, "%s: cannot read", path);
        else snprintf(err, err_len, "%s: larger than %zu KiB, not what it should be", path, max >> 10);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

// config[key] as a whole number in [lo, hi]; -1 with err set.
static int json_int_key(const cJSON *root, const char *path, const char *key, long lo, long hi,
                        int *out, char *err, size_t err_len) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it) return snprintf(err, err_len, "%s: key '%s' is missing", path, key), -1;
    double d = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d))
        return snprintf(err, err_len, "%s: key '%s' is not a whole number in [%ld, %ld]", path,
                        key, lo, hi), -1;
    *out = (int)d;
    return 0;
}

// Parses and checks config.json into cfg; -1 with err set.
static int parse_config(const char *text, const char *path, ModelConfig *cfg, char *err,
                        size_t err_len) {
    cJSON *root = cJSON_Parse(text);
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, err_len, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return -1;
    }
    int rc = -1, version = 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *astro = cJSON_GetObjectItemCaseSensitive(root, "astro");
    if (!type)
        snprintf(err, err_len, "%s: key 'model_type' is missing", path);
    else if (!cJSON_IsString(type) || strcmp(type->valuestring, EXPORT_MODEL_TYPE))
        snprintf(err, err_len, "%s: key 'model_type' is not \"%s\"", path, EXPORT_MODEL_TYPE);
    else if (json_int_key(root, path, "model_version", 0, 1 << 30, &version, err, err_len))
        ;
    else if (version != MODEL_VERSION)
        snprintf(err, err_len, "%s: model_version %d, this glia implements version %d", path,
                 version, MODEL_VERSION);
    else if (json_int_key(root, path, "vocab_size", 0, 1 << 30, &cfg->V, err, err_len) ||
             json_int_key(root, path, "vocab_padded", 0, 1 << 30, &cfg->Vp, err, err_len) ||
             json_int_key(root, path, "n_layer", 0, 1 << 30, &cfg->L, err, err_len) ||
             json_int_key(root, path, "n_embd", 0, 1 << 30, &cfg->C, err, err_len) ||
             json_int_key(root, path, "n_head", 0, 1 << 30, &cfg->Nh, err, err_len) ||
             json_int_key(root, path, "ffn_dim", 0, 1 << 30, &cfg->F, err, err_len))
        ;
    else if (!astro)
        snprintf(err, err_len, "%s: key 'astro' is missing", path);
    else if (!cJSON_IsBool(astro))
        snprintf(err, err_len, "%s: key 'astro' is not true or false", path);
    else {
        cfg->astro = cJSON_IsTrue(astro);
        char cerr[256];
        if (model_config_check(cfg, cerr, sizeof cerr))
            snprintf(err, err_len, "%s: bad configuration: %s", path, cerr);
        else
            rc = 0;
    }
    cJSON_Delete(root);
    return rc;
}

static const char *IMPORT_SUMMARY =
    "Reads a directory written by `glia export` (or by other code in the same layout:\n"
    "config.json and model.safetensors) back into a glia model file. Every key of\n"
    "config.json and every tensor is checked; any problem is one line and exit 2.\n"
    "exit status: 0 done, 2 bad flags or bad input, 1 OUT could not be written.";

int cmd_import(int argc, char **argv) {
    CliFlag flags[] = {
        {"--in", "DIR", "the directory (config.json, model.safetensors)", NULL},
        {"--out", "FILE", "the glia model file to write", NULL},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("import", IMPORT_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    if (cli_require("import", flags, nf, "--in", "--out", NULL)) return 2;
    const char *in = cli_get(flags, nf, "--in"), *out = cli_get(flags, nf, "--out");
    size_t plen = strlen(in) + 32;
    char *cpath = xmalloc(plen), *spath = xmalloc(plen);
    snprintf(cpath, plen, "%s/config.json", in);
    snprintf(spath, plen, "%s/model.safetensors", in);

    char err[CKPT_ERR_LEN];
    ModelConfig cfg;
    StFile *f = NULL;
    Model *m = NULL;
    rc = 2;
    char *text = read_small(cpath, err, sizeof err);
    if (!text) goto done;
    int bad = parse_config(text, cpath, &cfg, err, sizeof err);
    free(text);
    if (bad) goto done;

    char serr[ST_ERR_LEN];
    f = st_load(spath, serr);
    if (!f) {
        snprintf(err, sizeof err, "%s", serr);
        goto done;
    }
    // Size check before allocating anything the config asks for.
    int64_t have = 0, want = model_config_nparams(&cfg);
    for (int i = 0; i < f->n; i++) have += f->tensors[i].is_f32 ? f->tensors[i].numel : 0;
    if (have < want) {
        snprintf(err, sizeof err,
                 "%s: holds %lld F32 values, the configuration in %s needs %lld", spath,
                 (long long)have, cpath, (long long)want);
        goto done;
    }
    m = model_new(&cfg);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        const StTensor *s = st_expect(f, t->name, t->ndim, t->shape, serr);
        if (!s) {
            snprintf(err, sizeof err, "%s (configuration from %s)", serr, cpath);
            goto done;
        }
        for (int64_t k = 0; k < s->numel; k++)
            if (!isfinite(s->data[k])) {
                snprintf(err, sizeof err, "%s: tensor '%s': element %lld is not finite", spath,
                         t->name, (long long)k);
                goto done;
            }
        memcpy(m->params + t->offset, s->data, t->numel * sizeof(float));
    }
    for (int i = 0; i < f->n; i++)
        if (!model_find(m, f->tensors[i].name)) {
            snprintf(err, sizeof err, "%s: tensor '%.200s' is not a parameter of this model", spath,
                     f->tensors[i].name);
            goto done;
        }
    if (ckpt_save_model(m, out, 0, err) != 0) {
        rc = 1;
        goto done;
    }
    printf("glia import: %s -> %s (%zu parameters)\n", in, out, m->nparams);
    rc = 0;
done:
    if (rc) fprintf(stderr, "glia import: %s\n", err);
    model_free(m);
    st_free(f);
    free(cpath);
    free(spath);
    return rc;
}
