// test_tasks.c: the synthetic memory tasks (tasks.h): generators are pure
// functions of (spec, seed, index), their answer masks are right (checked by
// rebuilding each answer from the sequence), and a tiny model learns a tiny
// recall instance above chance through train_run.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "train/tasks.h"
#include "testutil.h"
#include "train/train.h"

#define B 8

static const TaskSpec RECALL = {TASK_RECALL, 64, 8, 6, 0, 0};
static const TaskSpec COPY = {TASK_COPY, 40, 0, 0, 10, 12};
static const TaskSpec SELECTIVE = {TASK_SELECTIVE, 48, 0, 0, 0, 10};

static int in1[B * 64], tg1[B * 64], in2[B * 64], tg2[B * 64];

Test(tasks, names_and_checks) {
    cr_expect_eq(task_find("recall"), TASK_RECALL);
    cr_expect_eq(task_find("copy"), TASK_COPY);
    cr_expect_eq(task_find("selective"), TASK_SELECTIVE);
    cr_expect_eq(task_find("sort"), -1);
    char err[256];
    const TaskSpec *all[] = {&RECALL, &COPY, &SELECTIVE};
    for (int i = 0; i < 3; i++) cr_expect_eq(task_check(all[i], err, sizeof err), 0, "%s", err);
    TaskSpec s = RECALL;
    s.T = 2 * 8 + 2 * 6 - 1;  // one token short
    cr_expect_eq(task_check(&s, err, sizeof err), -1);
    cr_expect(strstr(err, "--task-len"), "%s", err);
    s = RECALL;
    s.queries = 9;  // more queries than pairs
    cr_expect_eq(task_check(&s, err, sizeof err), -1);
    s = COPY;
    s.T = 2 * 12 + 10;  // the go token does not fit
    cr_expect_eq(task_check(&s, err, sizeof err), -1);
    cr_expect_eq(task_min_len(&COPY), 35);
    cr_expect_float_eq(task_chance(&RECALL), 1.0 / 64, 1e-12);
}

Test(tasks, deterministic_per_seed_and_index) {
    const TaskSpec *all[] = {&RECALL, &COPY, &SELECTIVE};
    for (int i = 0; i < 3; i++) {
        const TaskSpec *s = all[i];
        const size_t n = (size_t)B * s->T;
        task_batch(s, 7, 100, B, s->T, in1, tg1);
        task_batch(s, 7, 100, B, s->T, in2, tg2);
        cr_expect_eq(memcmp(in1, in2, n * sizeof(int)), 0, "%s: same seed, same inputs", task_name(s->kind));
        cr_expect_eq(memcmp(tg1, tg2, n * sizeof(int)), 0, "%s: same seed, same targets", task_name(s->kind));
        // sequence b of a batch from index 100 is the sequence 100 + b alone:
        // what lets a data-parallel rank generate only its share
        for (int b = 0; b < B; b++) {
            task_batch(s, 7, 100 + (uint64_t)b, 1, s->T, in2, tg2);
            cr_expect_eq(memcmp(in1 + (size_t)b * s->T, in2, s->T * sizeof(int)), 0, "%s: sequence %d", task_name(s->kind), b);
            cr_expect_eq(memcmp(tg1 + (size_t)b * s->T, tg2, s->T * sizeof(int)), 0);
        }
        task_batch(s, 8, 100, B, s->T, in2, tg2);  // another seed
        cr_expect_neq(memcmp(in1, in2, n * sizeof(int)), 0, "%s: another seed, other sequences", task_name(s->kind));
        task_batch(s, 7, 101, B, s->T, in2, tg2);  // another index
        cr_expect_neq(memcmp(in1, in2, n * sizeof(int)), 0, "%s: another index, other sequences", task_name(s->kind));
    }
}

static int is_key(int x) { return x >= TASK_KEY0 && x < TASK_KEY0 + TASK_NKEYS; }
static int is_val(int x) { return x >= TASK_VAL0 && x < TASK_VAL0 + TASK_NVALS; }

Test(tasks, recall_answers_are_the_paired_values) {
    const TaskSpec *s = &RECALL;
    const int T = s->T, P = s->pairs;
    for (uint64_t idx = 0; idx < 50; idx++) {
        task_batch(s, 3, idx * B, B, T, in1, tg1);
        for (int b = 0; b < B; b++) {
            const int *in = in1 + b * T, *tg = tg1 + b * T;
            int scored = 0, seen[TASK_NKEYS] = {0};
            for (int i = 0; i < P; i++) {  // the pairs: distinct keys, then values
                cr_assert(is_key(in[2 * i]) && is_val(in[2 * i + 1]), "pair %d: %d %d", i, in[2 * i], in[2 * i + 1]);
                cr_assert(!seen[in[2 * i] - TASK_KEY0]++, "key %d appears twice", in[2 * i]);
                cr_assert_eq(tg[2 * i], -1);
                cr_assert_eq(tg[2 * i + 1], -1);
            }
            for (int t = 2 * P; t < T; t++) {
                if (tg[t] < 0) {
                    cr_assert(in[t] == TASK_FILLER || is_val(in[t]), "unscored token %d at %d", in[t], t);
                    continue;
                }
                scored++;
                cr_assert(is_key(in[t]), "a scored position holds a key, not %d", in[t]);
                cr_assert_eq(in[t + 1], tg[t], "the answer is the next token");
                int want = -1;
                for (int i = 0; i < P; i++)
                    if (in[2 * i] == in[t]) want = in[2 * i + 1];
                cr_assert_eq(tg[t], want, "query %d at %d: target %d, the pair says %d", in[t], t, tg[t], want);
            }
            cr_assert_eq(scored, s->queries, "%d scored, %d queries", scored, s->queries);
        }
    }
}

Test(tasks, copy_answers_are_the_sequence) {
    const TaskSpec *s = &COPY;
    const int T = s->T, S = s->copy_len, go = S + s->delay;
    task_batch(s, 5, 0, B, T, in1, tg1);
    for (int b = 0; b < B; b++) {
        const int *in = in1 + b * T, *tg = tg1 + b * T;
        cr_assert_eq(in[go], TASK_GO);
        for (int t = 0; t < T; t++) {
            if (t < S) cr_assert(is_val(in[t]));
            else if (t < go) cr_assert_eq(in[t], TASK_FILLER, "the delay is fillers");
            if (t >= go && t < go + S) cr_assert_eq(tg[t], in[t - go], "copy position %d", t - go);
            else cr_assert_eq(tg[t], -1, "position %d is not an answer", t);
        }
        for (int i = 0; i < S; i++) cr_assert_eq(in[go + 1 + i], in[i]);
    }
}

Test(tasks, selective_copy_answers_are_the_symbols_in_order) {
    const TaskSpec *s = &SELECTIVE;
    const int T = s->T, S = s->copy_len, R = T - S - 1;
    task_batch(s, 5, 0, B, T, in1, tg1);
    for (int b = 0; b < B; b++) {
        const int *in = in1 + b * T, *tg = tg1 + b * T;
        int sym[64], n = 0;
        for (int t = 0; t < R; t++) {
            cr_assert(in[t] == TASK_FILLER || is_val(in[t]));
            if (in[t] != TASK_FILLER) sym[n++] = in[t];
        }
        cr_assert_eq(n, S, "%d symbols scattered, want %d", n, S);
        cr_assert_eq(in[R], TASK_GO);
        int scored = 0;
        for (int t = 0; t < T; t++)
            if (tg[t] >= 0) {
                cr_assert(t >= R && t < R + S, "answer at %d outside the copy", t);
                cr_assert_eq(tg[t], sym[t - R], "copy position %d", t - R);
                cr_assert_eq(in[t + 1], tg[t]);
                scored++;
            }
        cr_assert_eq(scored, S);
    }
    // the positions vary between sequences
    cr_expect_neq(memcmp(in1, in1 + T, R * sizeof(int)), 0);
}

// The last "val_acc" and "val_loss" of DIR/metrics.jsonl.
static int read_val(const char *dir, double *acc, double *loss) {
    char path[512], line[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        long step;
        if (sscanf(line, "{\"step\": %ld, \"val_loss\": %lf, \"val_acc\": %lf}", &step, loss, acc) == 3) found = 1;
    }
    fclose(f);
    return found ? 0 : -1;
}

static char dir[256];
static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_tasks_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
}
static void rm(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

// A 1-layer, width-32 AM-SU model on recall with 4 pairs in 24 tokens.
// Chance is 1/64 (a value drawn from 64), and ln 64 = 4.16 nats is the loss
// of a model that knows only that a value comes next. Observed (seed 3):
// the loss sits at ln 64 for ~300 steps, then drops: val acc 0.046 at 500
// steps, 0.069 at 750, 0.13 at 2000, while the astro-off model is at 0.027
// after 2000 steps. 200 steps are not enough (still on the plateau), so the
// bound is 800 steps (about 5 s on 1 core): accuracy > 2x chance and the loss
// below ln 64 − 0.1 (observed 3.76 to 3.92 by thread count).
Test(tasks, tiny_model_learns_recall_above_chance, .init = mk, .fini = rm, .timeout = 600) {
    static TaskSpec spec = {TASK_RECALL, 24, 4, 4, 0, 0};
    char out[300];
    snprintf(out, sizeof out, "%s/recall", dir);
    TrainOptions o = {0};
    cr_assert_eq(model_config_named("tiny", &o.cfg), 0);
    o.cfg.L = 1;
    o.task = &spec;
    o.out = out;
    o.steps = 800;
    o.batch = 32;
    o.seq = spec.T;
    o.accum = 1;
    o.lr = 3e-3;
    o.min_lr_frac = 0.1;
    o.weight_decay = 0.1;
    o.clip = 1.0;
    o.warmup = 20;
    o.seed = 1;
    o.eval_every = 800;
    o.eval_batches = 8;  // 256 sequences, 1024 answers
    o.quiet = 1;
    cr_assert_eq(train_run(&o), 0);
    double acc, loss;
    cr_assert_eq(read_val(out, &acc, &loss), 0, "no val_acc in %s/metrics.jsonl", out);
    cr_expect(acc > 2.0 / 64, "val acc %.4f after 800 steps, chance 1/64 = %.4f", acc, 1.0 / 64);
    cr_expect(loss < log(64.0) - 0.1, "val loss %.4f, want below ln 64 - 0.1 = %.4f", loss, log(64.0) - 0.1);

    // glia eval scores the saved model on another seed
    char cmd[1200], log[400], text[4096];
    snprintf(log, sizeof log, "%s/eval.txt", dir);
    snprintf(cmd, sizeof cmd, "'%s' eval --device cpu --task recall --pairs 4 --task-len 24 --ckpt '%s/model.safetensors' "
             "--batch 16 --batches 4 --seed 5 > '%s' 2>&1", GLIA_BIN, out, log);
    int st = system(cmd);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "glia eval failed: %s", text);
    double eacc;
    cr_assert(sscanf(text, "task recall T 24 | accuracy %lf", &eacc) == 1, "%s", text);
    cr_expect(strstr(text, "256 answers in 64 sequences") && strstr(text, "chance 0.0156"), "%s", text);
    cr_expect(eacc > 1.5 / 64, "eval accuracy %.4f on seed 5", eacc);
}

static char output[4096];
#define glia(args) glia_run(output, sizeof output, "%s", args)

Test(tasks, command_errors_and_match_params, .init = mk, .fini = rm) {
    cr_expect_eq(glia("train --device cpu --task sort"), 2);
    cr_expect(strstr(output, "--task: 'sort'"), "%s", output);
    cr_expect_eq(glia("train --device cpu --task recall --pairs 16 --task-len 40"), 2);
    cr_expect(strstr(output, "--task-len 40"), "%s", output);
    cr_expect_eq(glia("train --device cpu --task copy --data x.txt"), 2);
    cr_expect(strstr(output, "exclude"), "%s", output);
    cr_expect_eq(glia("train --device cpu --task recall --resume"), 2);
    cr_expect_eq(glia("train --device cpu --match-params"), 2);
    cr_expect(strstr(output, "--astro off"), "%s", output);
    // the matched width: the smallest multiple of the heads whose LIF model
    // has at least the parameters of the AM-SU model (FFN 4C)
    ModelConfig on;
    cr_assert_eq(model_config_named("tiny", &on), 0);
    ModelConfig off = on;
    off.astro = 0;
    int64_t want = model_config_nparams(&on);
    while (model_config_nparams(&off) < want) off.C += off.Nh, off.F = 4 * off.C;
    ModelConfig below = off;
    below.C -= below.Nh, below.F = 4 * below.C;
    cr_expect_lt(model_config_nparams(&below), want);
    cr_expect_gt(off.C, on.C);
    char want_line[128];
    snprintf(want_line, sizeof want_line, "width %d (FFN %d), %lld parameters", off.C, off.F,
             (long long)model_config_nparams(&off));
    cr_expect_eq(glia_run(output, sizeof output,
                          "train --device cpu --size tiny --astro off --match-params --task recall --pairs 4 "
                          "--task-len 24 --steps 1 --batch 2 --eval-every 0 --ckpt-every 0 --quiet "
                          "--out '%s/mp_run'", dir),
                 0, "%s", output);
    cr_expect(strstr(output, want_line), "want '%s' in: %s", want_line, output);
}
