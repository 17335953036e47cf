// fuzz_checkpoint.c: libFuzzer target for loading a model file.
//
// ckpt_load_model sits on top of st_load and adds its own checks (format,
// configuration metadata, every parameter's presence, shape and finiteness)
// before building a Model, so a bad model file must come back as NULL and one
// line, never as a crash, a read past a tensor or an allocation sized by an
// unchecked number from the file. What loads is touched the way generate
// and eval would (every parameter read) and freed.
#include "model/checkpoint.h"

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("model.safetensors", data, size);
    char err[CKPT_ERR_LEN];
    long step = -1;
    Model *m = ckpt_load_model(path, &step, err);
    if (!m) {
        if (!memchr(err, '\0', sizeof err) || strchr(err, '\n')) abort();
        return 0;
    }
    if (step < 0) abort();
    volatile float sink = 0;
    for (size_t i = 0; i < m->nparams; i++) sink += m->params[i];
    (void)sink;
    model_free(m);
    return 0;
}
