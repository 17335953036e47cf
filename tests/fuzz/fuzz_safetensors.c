// fuzz_safetensors.c: libFuzzer target for the safetensors reader.
//
// st_load is the door through which every outside file (fixtures, exports,
// checkpoints, half-written downloads) enters glia, and it promises to turn
// any malformed input into one line of text. This target holds it to that:
// any bytes at all go through st_load, and whatever loads is then used the
// way callers use it (every tensor looked up by name and shape-checked,
// every F32 element read, the metadata looked up), so that a header the
// validator let through with a bad offset shows up as an ASan report here
// rather than as a wrong number in a training run.
#include "glia/safetensors.h"

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("input.safetensors", data, size);
    char err[ST_ERR_LEN];
    StFile *f = st_load(path, err);
    if (!f) {
        // The message must be one terminated line.
        if (!memchr(err, '\0', sizeof err) || strchr(err, '\n')) abort();
        return 0;
    }
    volatile float sink = 0;
    for (int i = 0; i < f->n; i++) {
        const StTensor *t = &f->tensors[i];
        if (st_find(f, t->name) == NULL) abort();
        // Its own shape must match; a wildcard shape must match too.
        int64_t any[ST_MAX_DIMS];
        for (int d = 0; d < ST_MAX_DIMS; d++) any[d] = -1;
        const StTensor *a = st_expect(f, t->name, t->ndim, t->shape, err);
        const StTensor *b = st_expect(f, t->name, t->ndim, any, err);
        if (t->is_f32 && (a != t || b != t)) abort();
        if (t->is_f32)
            for (int64_t k = 0; k < t->numel; k++) sink += t->data[k];
        // A shape that cannot match: one more dim.
        if (t->ndim < ST_MAX_DIMS && st_expect(f, t->name, t->ndim + 1, any, err)) abort();
    }
    for (int i = 0; i < f->nmeta; i++)
        if (st_meta(f, f->meta_keys[i]) == NULL) abort();
    (void)st_find(f, "");
    (void)st_meta(f, "format");
    (void)sink;
    st_free(f);
    return 0;
}
