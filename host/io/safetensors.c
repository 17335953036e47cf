// safetensors.c: see include/glia/safetensors.h.
//
// Why it is built this way. A safetensors file comes from outside glia (a
// PyTorch fixture, an export, a half-written download), so the reader treats
// it as untrusted: it parses and checks every header entry (dtype known,
// shape sane, element count without overflow, offsets inside the data and
// matching dtype x shape, no two tensors sharing bytes) before it hands out a
// single pointer, and it turns every problem into one line of text instead of
// aborting. Only the 8-byte length and the JSON header are read first; the
// data section is then read straight into its own malloc'd block, which is
// aligned for any type, so F32 tensors can be used in place without a second
// copy of a possibly large file. Headers written by other tools may place an
// F32 tensor at an offset that is not a multiple of 4 (after a small I8
// tensor, say); such tensors are copied into a tail area of the same block so
// that every `data` pointer handed out is properly aligned. The JSON is
// handled by cJSON, which stores numbers as doubles: integers above 2^53
// cannot be represented exactly and are rejected rather than rounded. The
// writer prints integers itself (as cJSON raw items) so that no offset is
// ever written in exponent notation, pads the header with spaces so the data
// starts on an 8-byte boundary, and saves through a temporary file, fsync and
// rename, so that a crash or a full disk never leaves a half-written file
// where a good one used to be. The data is used in place as host floats, so
// the code assumes a little-endian host and refuses to build on another.
#define _POSIX_C_SOURCE 200809L

#include "glia/safetensors.h"

#include "glia/util.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "glia's safetensors code uses tensor data in place and needs a little-endian host"
#endif

// Largest header accepted; real headers are kilobytes, this only stops a
// corrupt length field from asking for an absurd allocation.
#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)
// Largest integer a double (and so cJSON) holds exactly.
#define ST_MAX_EXACT ((int64_t)1 << 53)

// ---- small helpers ------------------------------------------------------------

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

// Error messages are one line: control characters that came in through a
// tensor name or a path are replaced.
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f) *s = '?';
}

// "<path>: tensor '<name>': <message>", with either prefix left out when NULL.
static void set_err(char *err, const char *path, const char *tensor, const char *fmt, ...) {
    if (!err) return;
    size_t len = 0;
    err[0] = '\0';
    if (path) {
        int k = snprintf(err, ST_ERR_LEN, "%s: ", path);
        len = k < 0 ? 0 : (size_t)k;
    }
    if (tensor && len < ST_ERR_LEN) {
        int k = snprintf(err + len, ST_ERR_LEN - len, "tensor '%s': ", tensor);
        len += k < 0 ? 0 : (size_t)k;
    }
    if (len < ST_ERR_LEN) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + len, ST_ERR_LEN - len, fmt, ap);
        va_end(ap);
    }
    err[ST_ERR_LEN - 1] = '\0';
    one_line(err);
}

// Appends "[a, b, c]" to buf (size cap, currently holding a string); a dim of
// -1 prints as '*' when `wildcards` is set.
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape, int wildcards) {
    size_t len = strlen(buf);
    for (int i = -1; i <= ndim && len < cap; i++) {
        int k;
        if (i == -1)
            k = snprintf(buf + len, cap - len, "[");
        else if (i == ndim)
            k = snprintf(buf + len, cap - len, "]");
        else if (wildcards && shape[i] == -1)
            k = snprintf(buf + len, cap - len, "%s*", i ? ", " : "");
        else
            k = snprintf(buf + len, cap - len, "%s%" PRId64, i ? ", " : "", shape[i]);
        len += k < 0 ? 0 : (size_t)k;
    }
}

// numel of a shape, or -1 when it does not fit in int64 (a zero dim anywhere
// makes the product 0 however large the others are).
static int64_t shape_numel(int ndim, const int64_t *shape) {
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

static int dtype_size(const char *dtype) {
    static const struct { const char *name; int size; } known[] = {
        {"F64", 8},  {"F32", 4},  {"F16", 2},  {"BF16", 2},    {"F8_E4M3", 1}, {"F8_E5M2", 1},
        {"I64", 8},  {"I32", 4},  {"I16", 2},  {"I8", 1},      {"U64", 8},     {"U32", 4},
        {"U16", 2},  {"U8", 1},   {"BOOL", 1},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(dtype, known[i].name) == 0) return known[i].size;
    return 0;
}

// Reads exactly n bytes unless the file ends first; returns the count read or
// -1 on an error (errno set).
static long long read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got;
        if (chunk > ((size_t)1 << 30)) chunk = (size_t)1 << 30;
        ssize_t k = read(fd, (char *)buf + got, chunk);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (k == 0) break;
        got += (size_t)k;
    }
    return (long long)got;
}

// A JSON number that is an integer in [0, 2^53]; returns 0 and sets *out, or -1.
static int json_uint(const cJSON *item, int64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > (double)ST_MAX_EXACT || d != (double)(int64_t)d) return -1;
    *out = (int64_t)d;
    return 0;
}

// ---- reader -------------------------------------------------------------------

typedef struct {
    int64_t begin, end;
    int idx;
} Range;

static int cmp_range(const void *a, const void *b) {
    const Range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx;
}

static int cmp_name(const void *a, const void *b) {
    const StTensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

void st_free(StFile *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->buffer);
    free(f);
}

// Checks one header entry and fills t (name, dtype, shape, numel) and its
// byte range r. Returns 0 or -1 with err set.
static int parse_entry(const char *path, const cJSON *entry, int64_t data_size, StTensor *t,
                       Range *r, char *err) {
    const char *name = entry->string;
    if (!cJSON_IsObject(entry)) {
        set_err(err, path, name, "entry is not a JSON object");
        return -1;
    }

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!dtype) {
        set_err(err, path, name, "missing dtype");
        return -1;
    }
    if (!cJSON_IsString(dtype) || !dtype->valuestring) {
        set_err(err, path, name, "dtype is not a string");
        return -1;
    }
    int elsize = dtype_size(dtype->valuestring);
    if (elsize == 0) {
        set_err(err, path, name, "unknown dtype '%.32s'", dtype->valuestring);
        return -1;
    }
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype->valuestring);
    t->is_f32 = strcmp(t->dtype, "F32") == 0;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!shape) {
        set_err(err, path, name, "missing shape");
        return -1;
    }
    if (!cJSON_IsArray(shape)) {
        set_err(err, path, name, "shape is not an array");
        return -1;
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS) {
        set_err(err, path, name, "shape has %d dims, more than the limit of %d", ndim,
                ST_MAX_DIMS);
        return -1;
    }
    t->ndim = ndim;
    int d = 0;
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        if (json_uint(dim, &t->shape[d]) != 0) {
            set_err(err, path, name, "shape[%d] is not a non-negative integer (at most 2^53)", d);
            return -1;
        }
    }
    char shape_text[160] = "";
    format_shape(shape_text, sizeof shape_text, ndim, t->shape, 0);
    t->numel = shape_numel(ndim, t->shape);
    if (t->numel < 0 || t->numel > INT64_MAX / elsize) {
        set_err(err, path, name, "shape %s has too many elements", shape_text);
        return -1;
    }
    int64_t nbytes = t->numel * elsize;

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!offs) {
        set_err(err, path, name, "missing data_offsets");
        return -1;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        json_uint(offs->child, &r->begin) != 0 || json_uint(offs->child->next, &r->end) != 0) {
        set_err(err, path, name,
                "data_offsets is not an array of two non-negative integers (at most 2^53)");
        return -1;
    }
    if (r->begin > r->end) {
        set_err(err, path, name, "data_offsets [%" PRId64 ", %" PRId64 "] end before they begin",
                r->begin, r->end);
        return -1;
    }
    if (r->end > data_size) {
        set_err(err, path, name,
                "data_offsets [%" PRId64 ", %" PRId64 "] run past the end of the data section "
                "(%" PRId64 " bytes; file truncated?)",
                r->begin, r->end, data_size);
        return -1;
    }
    if (r->end - r->begin != nbytes) {
        set_err(err, path, name,
                "data_offsets [%" PRId64 ", %" PRId64 "] do not match shape %s of %s (%" PRId64
                " bytes)",
                r->begin, r->end, shape_text, t->dtype, nbytes);
        return -1;
    }
    return 0;
}

// Parses and validates the header; on success fills f->tensors / f->n and
// ranges (one per tensor, same order). Returns 0 or -1 with err set.
// The "__metadata__" object: string keys to string values.
static int parse_metadata(const char *path, const cJSON *meta, StFile *f, char *err) {
    if (f->meta_keys) {
        set_err(err, path, NULL, "__metadata__ appears more than once in the header");
        return -1;
    }
    if (!cJSON_IsObject(meta)) {
        set_err(err, path, NULL, "__metadata__ is not a JSON object");
        return -1;
    }
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = xcalloc((size_t)n + 1, sizeof(char *));
    f->meta_values = xcalloc((size_t)n + 1, sizeof(char *));
    for (const cJSON *e = meta->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            set_err(err, path, NULL, "__metadata__ value of '%.200s' is not a string", e->string);
            return -1;
        }
        f->meta_keys[f->nmeta] = xstrdup(e->string);
        f->meta_values[f->nmeta] = xstrdup(e->valuestring);
        f->nmeta++;
    }
    return 0;
}

static int parse_header(const char *path, const char *header, size_t hlen, int64_t data_size,
                        StFile *f, Range **ranges_out, char *err) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= header ? (size_t)(end - header) : 0;
        set_err(err, path, NULL, "header is not valid JSON (error near byte %zu of %zu)", at, hlen);
        return -1;
    }
    for (const char *p = end; p < header + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            set_err(err, path, NULL, "header has data after the JSON value (at byte %zu of %zu)",
                    (size_t)(p - header), hlen);
            cJSON_Delete(root);
            return -1;
        }
    }
    if (!cJSON_IsObject(root)) {
        set_err(err, path, NULL, "header is not a JSON object");
        cJSON_Delete(root);
        return -1;
    }

    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    f->tensors = xcalloc((size_t)n, sizeof *f->tensors);
    Range *ranges = xcalloc((size_t)n, sizeof *ranges);

    int rc = 0;
    for (const cJSON *e = root->child; e && rc == 0; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            rc = parse_metadata(path, e, f, err);
            continue;
        }
        StTensor *t = &f->tensors[f->n];
        t->name = xstrdup(e->string);
        f->n++;  // counted now so that st_free frees the name on failure
        ranges[f->n - 1].idx = f->n - 1;
        rc = parse_entry(path, e, data_size, t, &ranges[f->n - 1], err);
    }
    cJSON_Delete(root);

    if (rc == 0 && n > 1) {  // duplicate names (JSON allows repeated keys)
        const StTensor **by_name = xmalloc((size_t)n * sizeof *by_name);
        for (int i = 0; i < n; i++) by_name[i] = &f->tensors[i];
        qsort(by_name, (size_t)n, sizeof *by_name, cmp_name);
        for (int i = 1; i < n && rc == 0; i++) {
            if (strcmp(by_name[i - 1]->name, by_name[i]->name) == 0) {
                set_err(err, path, by_name[i]->name, "appears more than once in the header");
                rc = -1;
            }
        }
        free(by_name);
    }

    if (rc == 0 && n > 1) {  // overlapping byte ranges; empty ranges hold no bytes
        Range *sorted = xmalloc((size_t)n * sizeof *sorted);
        memcpy(sorted, ranges, (size_t)n * sizeof *sorted);
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_range);
        const Range *prev = NULL;  // the non-empty range reaching furthest so far
        for (int i = 0; i < n && rc == 0; i++) {
            const Range *cur = &sorted[i];
            if (cur->begin == cur->end) continue;
            if (prev && cur->begin < prev->end) {
                set_err(err, path, f->tensors[cur->idx].name,
                        "data_offsets [%" PRId64 ", %" PRId64 "] overlap those of tensor '%.200s' "
                        "[%" PRId64 ", %" PRId64 "]",
                        cur->begin, cur->end, f->tensors[prev->idx].name, prev->begin, prev->end);
                rc = -1;
            }
            if (!prev || cur->end > prev->end) prev = cur;
        }
        free(sorted);
    }

    if (rc != 0) {
        free(ranges);
        return -1;
    }
    *ranges_out = ranges;
    return 0;
}

StFile *st_load(const char *path, char err[ST_ERR_LEN]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, path, NULL, "cannot open: %s", strerror(errno));
        return NULL;
    }
    StFile *f = NULL;
    char *header = NULL;
    Range *ranges = NULL;

    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        set_err(err, path, NULL, "cannot stat: %s", strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        set_err(err, path, NULL, "is a directory, not a safetensors file");
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        set_err(err, path, NULL, "is not a regular file");
        goto fail;
    }
    uint64_t file_size = (uint64_t)sb.st_size;
    if (file_size < 8) {
        set_err(err, path, NULL,
                "file is %" PRIu64 " bytes, too short for the 8-byte header length", file_size);
        goto fail;
    }
    if (file_size > (uint64_t)INT64_MAX || file_size > (uint64_t)SIZE_MAX) {
        set_err(err, path, NULL, "file is too large (%" PRIu64 " bytes)", file_size);
        goto fail;
    }

    unsigned char lenbuf[8];
    long long got = read_full(fd, lenbuf, 8);
    if (got != 8) {
        set_err(err, path, NULL, "cannot read the header length: %s",
                got < 0 ? strerror(errno) : "unexpected end of file");
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
    if (hlen > ST_MAX_HEADER) {
        set_err(err, path, NULL, "header length %" PRIu64 " is larger than the limit of %" PRIu64
                " bytes", hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > file_size - 8) {
        set_err(err, path, NULL,
                "header length %" PRIu64 " is larger than the %" PRIu64
                " bytes that follow it in the file",
                hlen, file_size - 8);
        goto fail;
    }

    // NUL-terminated copy: cJSON is given the length, the terminator is a
    // second guard against reading past it.
    header = xmalloc((size_t)hlen + 1);
    got = read_full(fd, header, (size_t)hlen);
    if (got != (long long)hlen) {
        set_err(err, path, NULL, "cannot read the header: %s",
                got < 0 ? strerror(errno) : "unexpected end of file");
        goto fail;
    }
    header[hlen] = '\0';

    int64_t data_size = (int64_t)(file_size - 8 - hlen);
    f = xcalloc(1, sizeof *f);
    if (parse_header(path, header, (size_t)hlen, data_size, f, &ranges, err) != 0) goto fail;
    free(header);
    header = NULL;

    // One block: the data section, then aligned copies of any F32 tensors
    // whose offset is not a multiple of 4.
    size_t tail = ((size_t)data_size + 15) & ~(size_t)15;
    size_t total = tail;
    for (int i = 0; i < f->n; i++)
        if (f->tensors[i].is_f32 && ranges[i].begin % 4 != 0)
            total += (size_t)(ranges[i].end - ranges[i].begin);
    f->buffer = xmalloc(total);
    got = read_full(fd, f->buffer, (size_t)data_size);
    if (got != (long long)data_size) {
        set_err(err, path, NULL, "cannot read the data section: %s",
                got < 0 ? strerror(errno) : "unexpected end of file (file shrank while reading?)");
        goto fail;
    }
    close(fd);
    fd = -1;

    char *base = f->buffer;
    for (int i = 0; i < f->n; i++) {
        StTensor *t = &f->tensors[i];
        if (!t->is_f32) {
            t->data = NULL;
            continue;
        }
        size_t nbytes = (size_t)(ranges[i].end - ranges[i].begin);
        if (ranges[i].begin % 4 == 0) {
            t->data = (const float *)(const void *)(base + ranges[i].begin);
        } else {
            memcpy(base + tail, base + ranges[i].begin, nbytes);
            t->data = (const float *)(const void *)(base + tail);
            tail += nbytes;
        }
    }
    free(ranges);
    return f;

fail:
    if (fd >= 0) close(fd);
    free(header);
    free(ranges);
    st_free(f);
    return NULL;
}

const StTensor *st_find(const StFile *f, const char *name) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

const StTensor *st_expect(const StFile *f, const char *name, int ndim, const int64_t *shape,
                          char err[ST_ERR_LEN]) {
    const StTensor *t = st_find(f, name);
    if (!t) {
        set_err(err, NULL, name ? name : "(null)", "missing");
        return NULL;
    }
    if (!t->is_f32) {
        set_err(err, NULL, name, "dtype %s, expected F32", t->dtype);
        return NULL;
    }
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape)) {
        set_err(err, NULL, name, "invalid expected shape (%d dims)", ndim);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] != -1 && shape[i] != t->shape[i]) ok = 0;
    if (!ok) {
        char want[160] = "", got[160] = "";
        format_shape(want, sizeof want, ndim, shape, 1);
        format_shape(got, sizeof got, t->ndim, t->shape, 0);
        set_err(err, NULL, name, "expected shape %s, got %s", want, got);
        return NULL;
    }
    return t;
}

// ---- writer -------------------------------------------------------------------

typedef struct {
    char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const float *data;
} WEntry;

struct StWriter {
    WEntry *entries;
    int n, cap;
    char **meta;              // (2 * nmeta) key, value, key, value, ...
    int nmeta;
    int failed;               // an st_writer_add was invalid; save refuses
    char error[ST_ERR_LEN];   // the first such problem
};

StWriter *st_writer_new(void) {
    return xcalloc(1, sizeof(StWriter));
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->entries);
    for (int i = 0; i < 2 * w->nmeta; i++) free(w->meta[i]);
    free(w->meta);
    free(w);
}

// st_writer_add has no error return: a bad tensor is remembered and reported
// by st_writer_save, which then writes nothing.
void st_writer_add(StWriter *w, const char *name, int ndim, const int64_t *shape,
                   const float *data) {
    if (!w || w->failed) return;
    const char *why = NULL;
    int64_t numel = 0;
    if (!name)
        why = "no name";
    else if (strcmp(name, "__metadata__") == 0)
        why = "name is reserved for metadata";
    else if (ndim < 0 || ndim > ST_MAX_DIMS)
        why = "bad number of dims";
    else if (ndim > 0 && !shape)
        why = "no shape given";
    else {
        for (int i = 0; i < ndim && !why; i++)
            if (shape[i] < 0 || shape[i] > ST_MAX_EXACT) why = "dim out of range";
        if (!why) {
            numel = shape_numel(ndim, shape);
            if (numel < 0 || numel > ST_MAX_EXACT / 4) why = "too many elements";
            else if (numel > 0 && !data) why = "no data";
        }
    }
    for (int i = 0; i < w->n && !why; i++)
        if (strcmp(w->entries[i].name, name) == 0) why = "added twice";
    if (why) {
        w->failed = 1;
        set_err(w->error, NULL, name ? name : "(null)", "%s", why);
        return;
    }

    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        WEntry *grown = xmalloc((size_t)cap * sizeof *grown);
        if (w->n) memcpy(grown, w->entries, (size_t)w->n * sizeof *grown);
        free(w->entries);
        w->entries = grown;
        w->cap = cap;
    }
    WEntry *e = &w->entries[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->numel = numel;
    e->data = data;
}

void st_writer_meta(StWriter *w, const char *key, const char *value) {
    if (!w || w->failed) return;
    const char *why = !key || !value ? "metadata key or value missing" : NULL;
    for (int i = 0; i < w->nmeta && !why; i++)
        if (strcmp(w->meta[2 * i], key) == 0) why = "metadata key added twice";
    if (why) {
        w->failed = 1;
        set_err(w->error, NULL, NULL, "%s (%.100s)", why, key ? key : "(null)");
        return;
    }
    char **grown = xmalloc((size_t)(w->nmeta + 1) * 2 * sizeof(char *));
    if (w->nmeta) memcpy(grown, w->meta, (size_t)w->nmeta * 2 * sizeof(char *));
    free(w->meta);
    w->meta = grown;
    w->meta[2 * w->nmeta] = xstrdup(key);
    w->meta[2 * w->nmeta + 1] = xstrdup(value);
    w->nmeta++;
}

// cJSON returns NULL only when out of memory.
static cJSON *jchk(cJSON *item) {
    if (!item) fatal("out of memory building a safetensors header");
    return item;
}

static cJSON *json_int(int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return jchk(cJSON_CreateRaw(buf));
}

// The header text, padded with spaces to a multiple of 8 bytes (the 8-byte
// length field before it keeps the data section 8-aligned). Caller frees.
static char *build_header(const StWriter *w, size_t *len_out) {
    cJSON *root = jchk(cJSON_CreateObject());
    if (w->nmeta) {
        cJSON *meta = jchk(cJSON_CreateObject());
        cJSON_AddItemToObject(root, "__metadata__", meta);
        for (int i = 0; i < w->nmeta; i++)
            cJSON_AddItemToObject(meta, w->meta[2 * i], jchk(cJSON_CreateString(w->meta[2 * i + 1])));
    }
    int64_t offset = 0;
    for (int i = 0; i < w->n; i++) {
        const WEntry *e = &w->entries[i];
        cJSON *entry = jchk(cJSON_CreateObject());
        cJSON_AddItemToObject(root, e->name, entry);
        cJSON_AddItemToObject(entry, "dtype", jchk(cJSON_CreateString("F32")));
        cJSON *shape = jchk(cJSON_CreateArray());
        cJSON_AddItemToObject(entry, "shape", shape);
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, json_int(e->shape[d]));
        cJSON *offs = jchk(cJSON_CreateArray());
        cJSON_AddItemToObject(entry, "data_offsets", offs);
        cJSON_AddItemToArray(offs, json_int(offset));
        offset += e->numel * 4;
        cJSON_AddItemToArray(offs, json_int(offset));
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) fatal("out of memory printing a safetensors header");
    size_t len = strlen(text);
    size_t padded = (len + 7) & ~(size_t)7;
    char *out = xmalloc(padded + 1);
    memcpy(out, text, len);
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    cJSON_free(text);
    *len_out = padded;
    return out;
}

int st_writer_save(StWriter *w, const char *path, char err[ST_ERR_LEN]) {
    if (!w || !path) {
        set_err(err, path ? path : "(null)", NULL, "no writer or no path");
        return -1;
    }
    if (w->failed) {
        set_err(err, path, NULL, "not written: %s", w->error);
        return -1;
    }

    size_t hlen = 0;
    char *header = build_header(w, &hlen);
    size_t tmp_cap = strlen(path) + 32;
    char *tmp = xmalloc(tmp_cap);
    snprintf(tmp, tmp_cap, "%s.tmp.%ld", path, (long)getpid());

    FILE *fp = NULL;
    int created = 0;
    const char *step = "";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        step = "cannot create";
        goto fail;
    }
    created = 1;
    fp = fdopen(fd, "wb");
    if (!fp) {
        step = "cannot open";
        int saved = errno;
        close(fd);
        errno = saved;
        goto fail;
    }

    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    step = "cannot write";
    errno = EIO;  // in case fwrite fails without saying why
    if (fwrite(lenbuf, 1, 8, fp) != 8 || fwrite(header, 1, hlen, fp) != hlen) goto fail;
    for (int i = 0; i < w->n; i++) {
        const WEntry *e = &w->entries[i];
        if (e->numel && fwrite(e->data, sizeof(float), (size_t)e->numel, fp) != (size_t)e->numel)
            goto fail;
    }
    if (fflush(fp) != 0) goto fail;
    step = "cannot sync";
    if (fsync(fileno(fp)) != 0) goto fail;
    step = "cannot close";
    int rc = fclose(fp);
    fp = NULL;
    if (rc != 0) goto fail;
    step = "cannot rename over the destination";
    if (rename(tmp, path) != 0) goto fail;
    created = 0;  // it is `path` now

    free(header);
    free(tmp);
    if (glia_sync_parent_dir(path) != 0) {
        set_err(err, path, NULL, "written, but cannot sync its directory: %s", strerror(errno));
        return -1;
    }
    return 0;

fail:;
    int saved = errno;
    if (fp) fclose(fp);
    if (created) unlink(tmp);
    set_err(err, path, NULL, "%s %s: %s", step, tmp, strerror(saved));
    free(header);
    free(tmp);
    return -1;
}
