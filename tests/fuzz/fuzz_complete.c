// fuzz_complete.c: libFuzzer target for a checkpoint's commit record, the
// COMPLETE file (host/train_ckpt.c).
//
// COMPLETE is a small text file ("glia-checkpoint 1", "step N", optionally
// "world W", then "file NAME SIZE" lines and "end") that decides whether a
// checkpoint directory counts at all, and its world size decides how many
// sizes are allocated and compared. The fuzzer's bytes become COMPLETE of a
// directory holding a valid model file and two state files (rank 0 of a
// one-rank run, rank 1 of a two-rank run), so listed files exist and the
// parser's results reach the size checks and the loaders. It is read as
// resume and a fresh run read it: train_ckpt_exists, train_ckpt_find,
// train_ckpt_load_shard for one rank and for rank 1 of two.
#include "fuzz_train_common.h"

#include <sys/stat.h>

static char root[4200], dir[4300];

static void setup(void) {
    if (root[0]) return;
    snprintf(root, sizeof root, "%s/run", fuzz_dir());
    char ck[4250];
    snprintf(ck, sizeof ck, "%s/ckpt", root);
    snprintf(dir, sizeof dir, "%s/step_%08d", ck, FUZZ_STEP);
    if (mkdir(root, 0777) || mkdir(ck, 0777) || mkdir(dir, 0777)) abort();
    fuzz_write_checkpoint_files(dir, 1, 1, 0);     // state.rank0 of a one-rank run
    fuzz_write_checkpoint_files(dir, 2, 2, 1);     // state.rank0/1 of a two-rank ZeRO-1 run
    fuzz_write_checkpoint_files(dir, 1, 1, 0);     // rank 0 back to the one-rank run's
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    char err[CKPT_ERR_LEN], found[4400];
    fuzz_write("run/ckpt/step_00000007/COMPLETE", data, size);

    int exists = train_ckpt_exists(root);
    if (exists != 0 && exists != 1) abort();
    long step = -1;
    TrainOptions o;
    if (train_ckpt_find(root, found, sizeof found, &step, &o, err) == 0) {
        if (!exists || step != FUZZ_STEP) abort();  // found means complete, and the files say step 7
    } else {
        fuzz_check_err(err, sizeof err);
    }
    for (int world = 1; world <= 2; world++) {
        TrainShard sh = {.rank = world - 1, .world = world, .zero = world - 1};
        float *m1 = NULL, *m2 = NULL;
        Model *m = train_ckpt_load_shard(dir, NULL, &sh, &m1, &m2, &step, err);
        if (!m) {
            fuzz_check_err(err, sizeof err);
            continue;
        }
        if (!exists || step != FUZZ_STEP || !m1 || !m2) abort();
        free(m1);
        free(m2);
        model_free(m);
    }
    return 0;
}
