// fuzz_train_state.c: libFuzzer target for loading a training state file
// (state.rank<r>.safetensors, host/train_ckpt.c).
//
// The fuzzer's bytes become state.rank0.safetensors of a checkpoint whose
// model file is valid and whose COMPLETE lists the files as they are, so the
// loader gets past the commit record and the model and parses the state:
// metadata (format, versions, rank, world size, ZeRO stage, step, the run's
// options and configuration) and the moments (names, shapes, CRCs). It is
// read the three ways resume reads it: train_ckpt_find (the newest
// checkpoint's options), train_ckpt_load (all moments, no ZeRO) and
// train_ckpt_load_shard with ZeRO-1 (one flat slice). Each must return an
// error or a usable result, never crash, leak or read past a tensor.
#include "fuzz_train_common.h"

#include <sys/stat.h>

static char root[4200], dir[4300];
static long model_size;

static void setup(void) {
    if (root[0]) return;
    snprintf(root, sizeof root, "%s/run", fuzz_dir());
    char ck[4250];
    snprintf(ck, sizeof ck, "%s/ckpt", root);
    snprintf(dir, sizeof dir, "%s/step_%08d", ck, FUZZ_STEP);
    if (mkdir(root, 0777) || mkdir(ck, 0777) || mkdir(dir, 0777)) abort();
    fuzz_write_checkpoint_files(dir, 0, 1, 0);
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat st;
    if (stat(path, &st) != 0) abort();
    model_size = (long)st.st_size;
}

static void touch_all(const float *a, size_t n) {
    volatile float sink = 0;
    for (size_t i = 0; i < n; i++) sink += a[i];
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    char err[CKPT_ERR_LEN], found[4400];
    fuzz_write("run/ckpt/step_00000007/state.rank0.safetensors", data, size);
    // COMPLETE as train_ckpt_write_complete writes it, without its fsyncs
    // (which would cost more than the parsing: 74 inputs/s instead of ~1000)
    char text[256];
    int n = snprintf(text, sizeof text, "glia-checkpoint %d\nstep %d\nfile model.safetensors %ld\n"
                     "file state.rank0.safetensors %zu\nend\n", TRAIN_CKPT_VERSION, FUZZ_STEP, model_size, size);
    fuzz_write("run/ckpt/step_00000007/COMPLETE", (const uint8_t *)text, (size_t)n);

    long step = -1;
    TrainOptions o;
    if (train_ckpt_find(root, found, sizeof found, &step, &o, err) == 0) {
        if (step != FUZZ_STEP || o.world_size < 1 || (o.zero != 0 && o.zero != 1)) abort();
    } else {
        fuzz_check_err(err, sizeof err);
    }

    const ModelConfig cfg = fuzz_micro_config();
    for (int zero = 0; zero <= 1; zero++) {
        TrainShard sh = {.rank = 0, .world = 1, .zero = zero};
        float *m1 = NULL, *m2 = NULL;
        step = -1;
        Model *m = train_ckpt_load_shard(dir, zero ? &cfg : NULL, &sh, &m1, &m2, &step, err);
        if (!m) {
            fuzz_check_err(err, sizeof err);
            if (m1 || m2) abort();
            continue;
        }
        if (step != FUZZ_STEP || !m1 || !m2 || sh.len < (zero ? 1 : m->nparams)) abort();
        touch_all(m1, sh.len);
        touch_all(m2, sh.len);
        touch_all(m->params, m->nparams);
        free(m1);
        free(m2);
        model_free(m);
    }
    return 0;
}
