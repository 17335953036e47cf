// fuzz_import_config.c: libFuzzer target for config.json on `glia import`
// (host/cmd_export.c).
//
// An exported directory may come from anywhere (other code can write the
// same layout), so config.json is untrusted: every key is checked for
// presence, type and range, and the configuration must be valid before
// anything is allocated from it. The fuzzer's bytes become config.json of a
// directory whose model.safetensors is a valid micro model; the whole
// command runs (glia import --in DIR --out FILE), as a user would run it, and
// must exit 0 (only for a configuration that matches the tensors) or 2 with
// one line, never crash, leak or allocate what config.json asks for before
// checking it against the file.
#include "cmd/commands.h"
#include "fuzz_train_common.h"

#include <sys/stat.h>

static char in[4200], out[4300];

static void setup(void) {
    if (in[0]) return;
    snprintf(in, sizeof in, "%s/export", fuzz_dir());
    snprintf(out, sizeof out, "%s/imported.safetensors", fuzz_dir());
    if (mkdir(in, 0777)) abort();
    fuzz_write_checkpoint_files(in, 0, 1, 0);  // model.safetensors: plain parameter names, F32
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    fuzz_write("export/config.json", data, size);
    char *argv[] = {"import", "--in", in, "--out", out, NULL};
    int rc = cmd_import(5, argv);
    if (rc != 0 && rc != 2) abort();  // 1 would be a failure to write out, which cannot happen here
    if (rc == 0) {
        char err[CKPT_ERR_LEN];
        long step;
        Model *m = ckpt_load_model(out, &step, err);
        if (!m) abort();  // what import wrote must load
        model_free(m);
        unlink(out);
    }
    return 0;
}
