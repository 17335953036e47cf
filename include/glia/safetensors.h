// safetensors.h: read and write safetensors files (F32 tensors only).
//
// safetensors is the exchange format between glia and other code (PyTorch
// fixtures, `glia amsu`, exported weights): an 8-byte little-endian header
// length N, N bytes of JSON describing each tensor (dtype, shape, byte
// offsets into the data), then the raw data. The reader loads the whole file,
// validates every header entry before handing out a single pointer, and keeps
// the data 4-byte aligned so tensors can be used in place. Errors never abort:
// they return NULL / non-zero and fill a one-line message naming the file and,
// where there is one, the tensor.
#ifndef GLIA_SAFETENSORS_H
#define GLIA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_ERR_LEN 512

typedef struct {
    char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    int is_f32;          // 1 when dtype is F32; other dtypes are listed but not usable
    char dtype[16];      // dtype string as written in the header ("F32", "F16", ...)
    const float *data;   // (numel) points into the loaded file; NULL unless is_f32
} StTensor;

typedef struct {
    StTensor *tensors;   // (n)
    int n;
    char **meta_keys;    // (nmeta) the "__metadata__" string pairs, if any
    char **meta_values;  // (nmeta)
    int nmeta;
    void *buffer;        // owns the file's bytes
} StFile;

// Load and validate a whole file. Returns NULL and writes `err` on failure
// (missing file, short read, bad header length, malformed JSON, offsets out of
// range or overlapping, size not matching dtype and shape).
StFile *st_load(const char *path, char err[ST_ERR_LEN]);
void st_free(StFile *f);

// The tensor called `name`, or NULL.
const StTensor *st_find(const StFile *f, const char *name);
// The metadata value for `key`, or NULL.
const char *st_meta(const StFile *f, const char *key);

// Look up an F32 tensor and check its shape. `ndim` dims are given in
// `shape`; a dim of -1 matches any size. Returns the tensor or NULL with a
// message such as "tensor 'W_I': expected shape [32, 32], got [32, 16]".
const StTensor *st_expect(const StFile *f, const char *name, int ndim,
                          const int64_t *shape, char err[ST_ERR_LEN]);

// Writer: collect tensors (the data is referenced, not copied, until
// st_writer_save), then save atomically (temporary file, fsync, rename), so
// an existing file at `path` is either replaced whole or left untouched.
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_add(StWriter *w, const char *name, int ndim, const int64_t *shape,
                   const float *data);
// A "__metadata__" string pair (copied). Keys must be unique.
void st_writer_meta(StWriter *w, const char *key, const char *value);
int st_writer_save(StWriter *w, const char *path, char err[ST_ERR_LEN]);  // 0 ok
void st_writer_free(StWriter *w);

#endif
