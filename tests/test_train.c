// test_train.c: training end to end on the CPU backend: a tiny model learns
// a small corpus, runs are bit-identical for the same seed and thread count,
// and the train / generate / eval commands handle good and bad input.
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/backend.h"  // AMSU_SCAN, AMSU_CHUNK
#include "cpu/cpu.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "testutil.h"
#include "train/train.h"

static char dir[256];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_train_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(path, 12000), 0, "cannot write %s", path);
}

static void rm(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(train, .init = mk, .fini = rm, .timeout = 300);

static TrainOptions tiny_options(const char *out) {
    static char corpus[512];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    TrainOptions o = {0};
    cr_assert_eq(model_config_named("tiny", &o.cfg), 0);
    o.data = corpus;
    o.out = out;
    o.steps = 60;
    o.batch = 8;
    o.seq = 32;
    o.accum = 1;
    o.lr = 1e-2;
    o.min_lr_frac = 0.1;
    o.weight_decay = 0.1;
    o.clip = 1.0;
    o.warmup = 5;
    o.seed = 3;
    o.eval_every = 0;
    o.eval_batches = 4;
    o.ckpt_every = 0;
    o.sample_tokens = 0;
    o.quiet = 1;
    return o;
}


Test(train, tiny_model_learns) {
    char out[300];
    snprintf(out, sizeof out, "%s/run", dir);
    TrainOptions o = tiny_options(out);
    cr_assert_eq(train_run(&o), 0);
    double loss[64];
    cr_assert_eq(read_losses(out, loss, 64), 60);
    // starts at the uniform loss ln 256 ≈ 5.55; the corpus carries ln 8 nats
    // per word of about 7 characters (≈ 0.3 nats per character). Observed:
    // 0.66 after 60 steps; a model that learns nothing stays near 5.5, one
    // that only learns character frequencies near 2.5.
    cr_expect(fabs(loss[0] - log(256.0)) < 0.3, "first loss %.3f is not ≈ ln 256", loss[0]);
    double tail = (loss[57] + loss[58] + loss[59]) / 3;
    cr_expect(tail < 1.2, "after 60 steps the loss is %.3f, expected < 1.2", tail);
}

// The chunked astrocyte trains like the scan: the same 60 steps from the same
// seed, at T 80 so that chunk states carry over. Step 1 runs on the same
// weights, so its loss (the forward) and its gradient norm (the backward)
// agree to rounding. After that the runs agree only until a spike flips near
// θ, and the two chaotic trajectories part, so the later steps are compared
// as means over windows of 10 steps. Measured over seeds 1..8, with the
// cross-entropy's exp in double and in float: step 1's loss and norm agree to
// all 7 printed digits; a window mean differs by at most 3.2 % (single steps
// by up to 6.1 %). A backward that reads the previous chunk's state moves
// step 1's norm by 1.5e-4 to 1e-3 while its loss trajectories look like the
// flips; a forward without the decay inside a chunk parts by 28 % in the
// first window.
Test(train, chunked_amsu_trains_like_the_scan) {
    double loss[2][64], norm[2][64];
    for (int m = 0; m < 2; m++) {
        char out[300];
        snprintf(out, sizeof out, "%s/%s", dir, m ? "chunk" : "scan");
        TrainOptions o = tiny_options(out);
        o.seq = 80;  // three chunks of GLIA_CHUNK (the last partial): the state passes between them
        cpu_set_amsu(m ? AMSU_CHUNK : AMSU_SCAN);
        cr_assert_eq(train_run(&o), 0);
        cr_assert_eq(read_step_metrics(dir, m ? "chunk" : "scan", loss[m], norm[m], 64), 60);
    }
    cpu_set_amsu(AMSU_SCAN);
    cr_expect(fabs(loss[1][0] - loss[0][0]) <= 1e-5 * loss[0][0], "step 1 loss: %.7g vs %.7g", loss[1][0], loss[0][0]);
    cr_expect(fabs(norm[1][0] - norm[0][0]) <= 1e-5 * norm[0][0], "step 1 gradient norm: %.7g vs %.7g", norm[1][0],
              norm[0][0]);
    for (int w = 0; w < 6; w++) {
        double s0 = 0.0, s1 = 0.0;
        for (int i = 10 * w; i < 10 * w + 10; i++) s0 += loss[0][i], s1 += loss[1][i];
        cr_log_info("chunk vs scan, steps %d-%d: mean loss %.4f vs %.4f", 10 * w + 1, 10 * w + 10, s1 / 10, s0 / 10);
        cr_expect(fabs(s1 - s0) <= 0.06 * s0, "steps %d-%d: mean loss %.4f vs the scan's %.4f", 10 * w + 1,
                  10 * w + 10, s1 / 10, s0 / 10);
    }
    cr_expect((loss[1][57] + loss[1][58] + loss[1][59]) / 3 < 1.2, "the chunked run does not learn");
}

// --dry-run: the sizes without allocating anything or touching --out. The
// parameter bytes are the config's count × 4 (model_config_nparams, checked
// against every tensor of a real model in test_model.c); a 1.5b model at
// T 4096 (194 GiB) must print as fast as a tiny one.
Test(train, dry_run_prints_memory_and_allocates_nothing) {
    char out[16384];
    int rc = glia_run(out, sizeof out, "train --size 1.5b --batch 8 --seq 4096 --device cpu --dry-run --out %s/dry", dir);
    cr_assert_eq(rc, 0, "%s", out);
    ModelConfig c;
    model_config_named("1.5b", &c);
    const char *p = strstr(out, "\n  parameters ");
    double gib;
    cr_assert(p && sscanf(p, " parameters %lf GiB", &gib) == 1, "%s", out);
    cr_expect(fabs(gib - model_config_nparams(&c) * 4.0 / 1073741824.0) < 1e-3, "parameters %.3f GiB", gib);
    cr_expect(strstr(out, "activations") && strstr(out, "total"), "%s", out);
    char path[400];
    snprintf(path, sizeof path, "%s/dry", dir);
    cr_expect_neq(access(path, F_OK), 0, "--dry-run created %s", path);
}

// --dry-run's activation table: one row per kept tensor kind, its bytes
// summing to the activations line and that to model_memory's; the grand
// total the sum of its five lines. The oracle for the activations is the
// model's structure counted by hand (SPEC, "Whole model"): per layer x_in,
// z1, x_mid, z2 and the AM-SU's P = [I k v q] (B·T·4C) o u s (11 of B·T·C),
// rstd1, rstd2 (B·T), Hckpt (B·Nh·T/32·D²), c w r (3 of B·T·F); then logits
// (B·T·Vp), x_out, zf (B·T·C), rstdf, losses (B·T), and the ids (2·B·T
// int32). And
// model_alloc_acts carves exactly model_memory's bytes (tiny, astro on and off).
Test(train, dry_run_activation_table) {
    char out[16384];
    int rc = glia_run(out, sizeof out, "train --size 124m --batch 8 --seq 1024 --device cpu --dry-run --out %s/dry", dir);
    cr_assert_eq(rc, 0, "%s", out);
    ModelConfig c;
    model_config_named("124m", &c);
    const size_t B = 8, T = 1024, bt = B * T, D = c.C / c.Nh;
    const size_t layer = 11 * bt * c.C + 2 * bt + B * c.Nh * (T / 32) * D * D + 3 * bt * c.F;
    const size_t want = 4 * (c.L * layer + 2 * bt * c.C + 2 * bt + bt * c.Vp) + 2 * bt * 4;
    size_t rows = 0, sum = 0, each, total, count;
    char name[32], dims[32], num[64], type[8];
    for (const char *p = strstr(out, "\n  "); p; p = strstr(p + 1, "\n  ")) {
        if (sscanf(p, " %31s %31s %63s %7s %zu %zu %zu", name, dims, num, type, &each, &count, &total) != 7) continue;
        cr_expect_eq(total, each * count, "%s: %zu x %zu != %zu", name, each, count, total);
        cr_expect(count == 1 || count == (size_t)c.L, "%s: x %zu", name, count);
        rows++, sum += total;
    }
    const char *names[] = {"\n  x_in ", "\n  P=[I|k|v|q] ", "\n  Hckpt ", "\n  r ", "\n  logits ", "\n  tokens,targets "};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) cr_expect(strstr(out, names[i]), "no row%s", names[i]);
    cr_expect_eq(rows, 20, "%zu rows: %s", rows, out);
    ModelMemory mm;
    model_memory(&c, backend_cpu(), (int)B, (int)T, 1, 0, &mm);
    size_t v[6];
    const char *lines[6] = {"parameters", "gradients", "AdamW moments", "activations", "backward scratch", "total"};
    for (int i = 0; i < 6; i++) {
        char key[40];
        snprintf(key, sizeof key, "\n  %s ", lines[i]);
        const char *p = strstr(out, key);
        double gib;
        cr_assert(p && sscanf(p + strlen(key), " %lf GiB %zu bytes", &gib, &v[i]) == 2, "no %s line: %s", lines[i], out);
    }
    cr_expect_eq(sum, want, "the rows sum to %zu bytes, the model's structure to %zu", sum, want);
    cr_expect_eq(v[3], sum, "activations line %zu, rows %zu", v[3], sum);
    cr_expect_eq(v[3], mm.acts, "activations line %zu, model_memory %zu", v[3], mm.acts);
    cr_expect_eq(v[5], v[0] + v[1] + v[2] + v[3] + v[4], "total %zu", v[5]);
    cr_expect_eq(v[5], mm.params + mm.grads + mm.moments + mm.acts + mm.scratch, "total %zu", v[5]);
    for (int astro = 0; astro < 2; astro++) {
        model_config_named("tiny", &c);
        c.astro = astro;
        Model *m = model_new(&c);
        model_alloc_acts(m, 3, 40);
        model_memory(&c, backend_cpu(), 3, 40, 1, 0, &mm);
        cr_expect_eq(m->acts_bytes, mm.acts, "astro %d: model_alloc_acts carved %zu bytes, model_memory says %zu", astro,
                     m->acts_bytes, mm.acts);
        model_free(m);
    }
}

Test(train, same_seed_same_threads_bit_identical) {
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    TrainOptions o = tiny_options(a);
    o.steps = 15;
    cr_assert_eq(train_run(&o), 0);
    o.out = b;
    cr_assert_eq(train_run(&o), 0);
    double la[20], lb[20];
    int n = read_losses(a, la, 20);
    cr_assert_eq(n, 15);
    cr_assert_eq(read_losses(b, lb, 20), 15);
    for (int i = 0; i < n; i++) cr_expect_eq(la[i], lb[i], "step %d: %.6f vs %.6f", i + 1, la[i], lb[i]);
    // and the saved parameters are identical byte for byte
    char cmd[800];
    snprintf(cmd, sizeof cmd, "cmp -s '%s/model.safetensors' '%s/model.safetensors'", a, b);
    cr_expect_eq(system(cmd), 0, "model files differ");
    // a different seed gives a different run
    char c[300];
    snprintf(c, sizeof c, "%s/c", dir);
    o.seed = 4;
    o.out = c;
    cr_assert_eq(train_run(&o), 0);
    read_losses(c, lb, 20);
    cr_expect_neq(la[14], lb[14]);
}

// --init: a fresh run starting from another run's parameters. With lr 0 the
// parameters come out exactly as they went in; the first loss is the trained
// model's, not a fresh one's; a model of another size is refused.
Test(train, init_from_a_model_file) {
    char a[300], b[300], c[300], path[400];
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    snprintf(c, sizeof c, "%s/c", dir);
    TrainOptions o = tiny_options(a);
    o.steps = 30;
    cr_assert_eq(train_run(&o), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", a);
    o = tiny_options(b);
    o.steps = 2;
    o.lr = 0.0;
    o.init = path;
    cr_assert_eq(train_run(&o), 0);
    char err[CKPT_ERR_LEN], pb[400];
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    Model *ma = ckpt_load_model(path, NULL, err), *mb = ckpt_load_model(pb, NULL, err);
    cr_assert(ma && mb, "%s", err);
    cr_expect_eq(memcmp(ma->params, mb->params, ma->nparams * sizeof(float)), 0,
                 "lr 0 from --init must keep the parameters");
    double la[40], lb[4];
    cr_assert_eq(read_losses(a, la, 40), 30);
    cr_assert_eq(read_losses(b, lb, 4), 2);
    cr_expect(lb[0] < 0.5 * (la[0] + la[29]) + 0.1 * la[0], "first loss %.4f: not the trained model's (%.4f -> %.4f)",
              lb[0], la[0], la[29]);
    model_free(ma);
    model_free(mb);
    o = tiny_options(c);
    o.cfg.C = 64;
    o.cfg.F = 256;
    o.init = path;
    cr_assert_eq(train_run(&o), 2, "a model of another width must be refused");
}

// ---- the commands ------------------------------------------------------------------

static char output[16384];

#define run_glia(...) glia_run(output, sizeof output, __VA_ARGS__)

static void expect_error(int status, const char *what) {
    cr_expect_eq(status, 2, "exit status %d: %s", status, output);
    cr_expect(strstr(output, what), "error should mention '%s': %s", what, output);
    const char *nl = strchr(output, '\n');
    cr_expect(nl && nl[1] == 0, "error should be one line: %s", output);
}

Test(train, commands_train_generate_eval) {
    int st = run_glia("train --device cpu --size tiny --data '%s/corpus.txt' --out '%s/cli' --steps 5 --batch 4 "
                      "--seq 16 --eval-every 5 --eval-batches 2 --sample-tokens 20 --threads 1",
                      dir, dir);
    cr_assert_eq(st, 0, "glia train failed: %s", output);
    cr_expect(strstr(output, "val loss"), "train reports the val loss: %s", output);
    cr_expect(strstr(output, "---- sample"), "train prints a sample");

    st = run_glia("generate --device cpu --ckpt '%s/cli/model.safetensors' --prompt 'the ' --tokens 30 --seed 5", dir);
    cr_assert_eq(st, 0, "glia generate failed: %s", output);
    cr_expect_eq(strncmp(output, "the ", 4), 0, "output starts with the prompt: %s", output);
    cr_expect_eq(strlen(output), 4 + 30 + 1, "prompt + 30 bytes + newline, got %zu", strlen(output));
    char first[128];
    snprintf(first, sizeof first, "%.127s", output);
    st = run_glia("generate --device cpu --ckpt '%s/cli/model.safetensors' --prompt 'the ' --tokens 30 --seed 5", dir);
    cr_expect_str_eq(output, first, "same seed, same text");

    st = run_glia("eval --device cpu --ckpt '%s/cli/model.safetensors' --data '%s/cli/data' --batch 4 --seq 16 --batches 3",
                  dir, dir);
    cr_assert_eq(st, 0, "glia eval failed: %s", output);
    cr_expect(strstr(output, "bits/byte") && strstr(output, "perplexity"), "%s", output);
}

Test(train, command_errors) {
    expect_error(run_glia("train --device cpu --size huge"), "--size: 'huge'");
    expect_error(run_glia("train --device cpu --steps many"), "--steps: 'many'");
    expect_error(run_glia("train --device cpu --batch 0"), "--batch: 0 is out of range");
    expect_error(run_glia("train --device tpu"), "--device: 'tpu'");
    // --device cuda: an error without a device; with one (or the emulator),
    // it trains (a one-step run, so the line means the same on every machine)
    if (test_have_gpu()) {
        int st = run_glia("train --device cuda --size tiny --data '%s/corpus.txt' --out '%s/gpu' --steps 1 "
                          "--batch 2 --seq 8 --eval-every 0 --ckpt-every 0 --sample-tokens 0 --threads 1", dir, dir);
        cr_expect_eq(st, 0, "--device cuda with a device: %s", output);
        cr_expect(strstr(output, "on cuda"), "%s", output);
    } else {
        expect_error(run_glia("train --device cuda"), "--device cuda");
    }
    expect_error(run_glia("train --device cpu --width 30 --heads 4"), "heads 4 do not divide the width 30");
    expect_error(run_glia("train --device cpu --data '%s/none.txt' --out '%s/x'", dir, dir), "none.txt");
    expect_error(run_glia("train --device cpu --frobnicate"), "unknown flag '--frobnicate'");
    expect_error(run_glia("generate --device cpu --prompt hi"), "--ckpt is required");
    expect_error(run_glia("generate --device cpu --ckpt '%s/corpus.txt'", dir), "corpus.txt");
    expect_error(run_glia("generate --device cpu --ckpt x --top-p 2"), "--top-p: 2 is out of range");
    expect_error(run_glia("eval --device cpu --ckpt '%s/none.safetensors'", dir), "none.safetensors");
    // a sequence longer than the validation text can hold
    cr_assert_eq(run_glia("prepare --in '%s/corpus.txt' --out '%s/shards'", dir, dir), 0, "%s", output);
    expect_error(run_glia("train --device cpu --size tiny --data '%s/shards' --out '%s/y' --seq 100000", dir, dir),
                 "corpus_train.bin");
}

// ---- metrics.jsonl holds no NaN (issue 14) ------------------------------------------

// JSON has no NaN or infinity: such a value is written as null.
Test(train, metrics_numbers_are_json) {
    char b[40];
    cr_expect_str_eq(train_json_num(b, "%.6f", NAN), "null");
    cr_expect_str_eq(train_json_num(b, "%.6f", INFINITY), "null");
    cr_expect_str_eq(train_json_num(b, "%.6f", -INFINITY), "null");
    cr_expect_str_eq(train_json_num(b, "%.6f", 1.5), "1.500000");
    cr_expect_str_eq(train_json_num(b, "%.1f", -0.25), "-0.2");
}

// A --seq the validation split cannot hold one window of used to log a val
// loss of nan at every evaluation; it is refused before training, and a run
// with evaluations logs only numbers.
Test(train, val_split_too_short_for_seq_refused) {
    // the corpus: about 80 kB, of which the last 10 % (about 8 kB) is validation
    expect_error(run_glia("train --device cpu --size tiny --data '%s/corpus.txt' --out '%s/short' --seq 20000 --batch 1 "
                          "--steps 1 --threads 1", dir, dir), "val split");
    cr_expect(strstr(output, "--seq 20000"), "%s", output);
    // without validation the same --seq is not the val split's problem
    int st = run_glia("train --device cpu --size tiny --data '%s/corpus.txt' --out '%s/short2' --seq 20000 --batch 1 "
                      "--steps 1 --threads 1 --eval-every 0 --sample-tokens 0 --quiet", dir, dir);
    cr_expect_eq(st, 0, "%s", output);
    st = run_glia("train --device cpu --size tiny --data '%s/corpus.txt' --out '%s/ev' --seq 16 --batch 4 --steps 6 "
                  "--eval-every 2 --eval-batches 2 --threads 1 --sample-tokens 0 --quiet", dir, dir);
    cr_assert_eq(st, 0, "%s", output);
    char path[400], line[1024];
    snprintf(path, sizeof path, "%s/ev/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f);
    int evals = 0;
    while (fgets(line, sizeof line, f)) {
        cr_expect(!strstr(line, "nan") && !strstr(line, "inf"), "not JSON: %s", line);
        evals += strstr(line, "val_loss") != NULL;
    }
    fclose(f);
    cr_expect_eq(evals, 3);
}
