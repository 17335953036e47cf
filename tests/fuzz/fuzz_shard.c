// fuzz_shard.c: libFuzzer target for token shards and the dataset reader.
//
// A shard is the largest outside input glia reads and it is used in place
// through mmap, so a header that lies about the token count would turn into
// reads past the mapping. This target writes the bytes as the only shard of
// a one-shard "train" split and exercises both levels: shard_open on the
// file (every token read when it opens), then dataset_open on its directory
// and the reads training and evaluation do: dataset_check_seq, the
// validation windows (dataset_window) and a few sampled batches
// (dataset_sample) at sequence lengths small enough to fit and at the
// largest length the shard allows.
#include "io/data.h"

#include "fuzz_common.h"

enum { MAX_B = 4, MAX_T = 64 };

static void read_dataset(const Dataset *d) {
    static int inputs[MAX_B * MAX_T], targets[MAX_B * MAX_T];
    char err[DATA_ERR_LEN];
    const int Ts[] = {1, 2, 7, MAX_T};
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        int T = Ts[i];
        if (dataset_check_seq(d, T, err) != 0) continue;
        size_t nw = dataset_windows(d, T);
        for (size_t w = 0; w < 3 && w * MAX_B < nw + MAX_B; w++) {
            int got = dataset_window(d, w * MAX_B, MAX_B, T, inputs, targets);
            if (got < 0 || got > MAX_B) abort();
            for (int k = 0; k < got * T; k++)
                if (inputs[k] < 0 || inputs[k] > d->max_token || targets[k] < 0 ||
                    targets[k] > d->max_token)
                    abort();
        }
        for (uint64_t step = 0; step < 3; step++) {
            dataset_sample(d, 1234, step, 1, MAX_B - 1, T, inputs, targets);
            for (int k = 0; k < (MAX_B - 1) * T; k++)
                if (inputs[k] < 0 || inputs[k] > d->max_token) abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("fuzz_train.bin", data, size);
    char err[DATA_ERR_LEN];
    Shard s;
    if (shard_open(&s, path, err) == 0) {
        volatile unsigned sum = 0;
        for (size_t i = 0; i < s.ntok; i++) sum += s.tokens[i];
        (void)sum;
        shard_close(&s);
    } else if (!memchr(err, '\0', sizeof err) || strchr(err, '\n')) {
        abort();
    }
    Dataset d;
    if (dataset_open(&d, fuzz_dir(), "train", err) == 0) {
        if (d.nshards != 1) abort();
        read_dataset(&d);
        dataset_close(&d);
    }
    return 0;
}
