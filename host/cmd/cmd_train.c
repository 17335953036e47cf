// cmd_train.c: `glia train`, `glia eval` and `glia generate`: flags in, the
// library (train.c, model.c, sample.c) does the work.
//
// The three commands share how a model is described on the command line (a
// named size plus overrides, or a checkpoint) and how the device and thread
// count are chosen, so they live together.
//
// Under mpirun every rank parses the same flags and reaches the same
// verdict; only rank 0 lets its messages through (cmd_train), so a bad flag
// is one line, not one per rank.
#define _XOPEN_SOURCE 700  // realpath
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "generate/engine.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "cpu/cpu.h"  // the CPU's threads and cross-entropy
#include "common/dist.h"
#include "glia/util.h"
#include "generate/sample.h"
#include "train/train.h"
#include "train/train_ckpt.h"

#define GET(name) cli_get(flags, nf, name)

static int set_threads(const char *cmd, const char *value) {
    if (!value) return 0;
    long n;
    if (cli_int(cmd, "--threads", value, 1, 4096, &n)) return 2;
    cpu_set_threads((int)n);
    return 0;
}

// The task flags shared by train and eval (tasks.h). Returns 0 with *spec
// filled (and kind -1 when --task is not given), or 2 after an error.
#define TASK_FLAGS                                                                                  \
    {"--task", "NAME", "synthetic task instead of --data: recall, copy, selective (tasks.h)", NULL}, \
    {"--task-len", "T", "task: tokens per sequence (default: the shortest that fits)", NULL},      \
    {"--pairs", "P", "recall: key-value pairs", "16"},                                               \
    {"--queries", "Q", "recall: queries (default: --pairs)", NULL},                                  \
    {"--delay", "N", "copy: fillers between the sequence and its copy", "32"},                       \
    {"--copy-len", "S", "copy, selective: symbols to reproduce", "16"}

static int task_flags(const char *cmd, CliFlag *flags, int nf, TaskSpec *spec) {
    memset(spec, 0, sizeof *spec);
    spec->kind = -1;
    if (!GET("--task")) return 0;
    if ((spec->kind = task_find(GET("--task"))) < 0) {
        fprintf(stderr, "glia %s: --task: '%s' is not one of recall, copy, selective\n", cmd, GET("--task"));
        return 2;
    }
    long v;
    if (cli_int(cmd, "--pairs", GET("--pairs"), 1, TASK_NKEYS, &v)) return 2;
    spec->pairs = spec->queries = (int)v;
    if (GET("--queries") && cli_int(cmd, "--queries", GET("--queries"), 1, TASK_NKEYS, &v)) return 2;
    if (GET("--queries")) spec->queries = (int)v;
    if (cli_int(cmd, "--delay", GET("--delay"), 0, 1 << 20, &v)) return 2;
    spec->delay = (int)v;
    if (cli_int(cmd, "--copy-len", GET("--copy-len"), 1, 1 << 20, &v)) return 2;
    spec->copy_len = (int)v;
    spec->T = task_min_len(spec);
    if (GET("--task-len") && cli_int(cmd, "--task-len", GET("--task-len"), 1, 1 << 20, &v)) return 2;
    if (GET("--task-len")) spec->T = (int)v;
    char err[256];
    if (task_check(spec, err, sizeof err)) {
        fprintf(stderr, "glia %s: %s\n", cmd, err);
        return 2;
    }
    return 0;
}

static const char *TRAIN_SUMMARY =
    "Trains an AstroSNN language model (SPEC.md) on the CPU backend and writes\n"
    "metrics.jsonl, model.safetensors and sample.txt into --out.\n"
    "--data: a directory of llm.c-format shards (*train*.bin, *val*.bin), or a text\n"
    "file (prepared with the byte tokenizer into OUT/data); default: the King James\n"
    "Bible from Debian's bible-kjv packages, prepared on first use.\n"
    "Sizes (SPEC): tiny, small, 124m, 1.5b; --layers/--width/--heads/--ffn override.\n"
    "Checkpoints go to OUT/ckpt/step_N/ (the newest --keep are kept). --resume (or\n"
    "--resume-from DIR) continues a run bit for bit from its newest complete\n"
    "checkpoint, with the options stored in it (--data included); a flag that\n"
    "contradicts them is an error. --resume auto resumes when OUT holds a complete\n"
    "checkpoint and starts fresh when OUT is new or empty (batch jobs that requeue).\n"
    "One trainer per OUT: a second one exits 2 naming the PID in OUT/train.lock.\n"
    "SIGTERM or SIGINT (Ctrl-C): the step in progress finishes, a checkpoint is\n"
    "saved, and glia exits with status 75 (interrupted, resumable: --resume).\n"
    "Data parallel: mpirun -np N glia train ... splits each --batch (the global batch)\n"
    "across N processes; --zero 1 also shards the AdamW state (docs/DISTRIBUTED.md).\n"
    "--task trains on generated memory tasks instead (scored on the answers only;\n"
    "validation uses seed + 1000003); --astro off --match-params widens the ablation\n"
    "until it has at least the parameters of the astro-on model (docs/RESULTS.md).";

// Parses the flags of `glia train` into *po. Returns -1 when training should
// run, else the exit status (0 for --help).
// --dry-run: the size and what one rank holds in the backend's memory: each
// kind of saved activation from model_acts_list (the list model_alloc_acts
// carves), then the totals of model_memory, which sums the same list.
static void dry_run(const TrainOptions *o) {
    const Dist *d = dist_self();
    const int world = d->world, B = o->batch / world > 0 ? o->batch / world : 1, T = o->seq;
    ModelMemory mm;
    model_memory(&o->cfg, o->backend, B, T, world, o->zero, &mm);
    if (d->rank) return;
    const double GiB = 1073741824.0;
    printf("glia train --dry-run: %s model, %.2f M parameters (L %d, C %d, heads %d, FFN %d, vocab %d padded to %d)\n",
           o->cfg.astro ? "AM-SU" : "LIF", model_config_nparams(&o->cfg) / 1e6, o->cfg.L, o->cfg.C, o->cfg.Nh,
           o->cfg.F, o->cfg.V, o->cfg.Vp);
    const int s16 = o->backend->spike_bytes && o->backend->spike_bytes() == 2;
    printf("per rank (%d rank%s%s), on %s, %d sequences x %d tokens, %s:\n", world, world > 1 ? "s" : "",
           o->zero ? ", ZeRO-1" : "", o->backend->name, B, T,
           s16 ? "fp32 but the spikes s and r (bf16)" : "fp32 throughout");
    ActsTensor e[MODEL_ACTS_MAX];
    int nl, n = model_acts_list(&o->cfg, o->backend, B, T, e, &nl);
    printf("activations kept for the backward (x %d: once per layer):\n  %-15s %-14s %-20s %-6s %14s %4s %14s %10s\n",
           o->cfg.L, "tensor", "shape", "", "type", "bytes each", "x", "bytes", "MiB");
    for (int i = 0; i <= n; i++) {  // the last row: the token ids
        char num[64] = "", *q = num;
        size_t each, count = i < nl ? (size_t)o->cfg.L : 1;
        if (i < n) {
            for (int k = 0; k < e[i].ndim; k++) q += sprintf(q, "%s%zu", k ? "x" : "", e[i].shape[k]);
            each = acts_bytes(&e[i]);
        } else {
            snprintf(num, sizeof num, "2x%dx%d", B, T);
            each = model_ids_bytes(B, T);
        }
        printf("  %-15s %-14s %-20s %-6s %14zu %4zu %14zu %10.1f\n", i < n ? e[i].name : "tokens,targets",
               i < n ? e[i].dims : "2,B,T", num, i < n ? (e[i].bytes == 2 ? "bf16" : "fp32") : "int32", each, count,
               each * count, each * count / 1048576.0);
    }
    const size_t total = mm.params + mm.grads + mm.moments + mm.acts + mm.scratch;
    printf("  parameters         %9.3f GiB %16zu bytes%s\n  gradients          %9.3f GiB %16zu bytes\n"
           "  AdamW moments      %9.3f GiB %16zu bytes%s\n  activations        %9.3f GiB %16zu bytes  (the table)\n"
           "  backward scratch   %9.3f GiB %16zu bytes\n  total              %9.3f GiB %16zu bytes\n",
           mm.params / GiB, mm.params, s16 ? "  (and the bf16 mirror of W_O, W_2)" : "", mm.grads / GiB, mm.grads,
           mm.moments / GiB, mm.moments, o->zero ? "  (this rank's slice)" : "", mm.acts / GiB, mm.acts,
           mm.scratch / GiB, mm.scratch, total / GiB, total);
}

static int train_parse(int argc, char **argv, TrainOptions *po) {
    static char data_abs[4096];  // --data made absolute: it is stored in checkpoints
    CliFlag flags[] = {
        {"--size", "NAME", "named model size", "small"},
        {"--layers", "N", "override: layers", NULL},
        {"--width", "N", "override: model width C", NULL},
        {"--heads", "N", "override: astrocyte heads", NULL},
        {"--ffn", "N", "override: FFN width (default 4C when --width is given)", NULL},
        {"--vocab", "N", "vocabulary size (default: the size's; 256 for tiny and small)", NULL},
        {"--astro", "on|off", "astrocyte modulation (off: SPEC's ablation)", "on"},
        {"--data", "PATH", "shard directory or text file (default: KJV Bible)", NULL},
        {"--out", "DIR", "run directory", "runs/train"},
        {"--steps", "N", "optimizer steps", "800"},
        {"--batch", "N", "sequences per micro-batch", "16"},
        {"--seq", "N", "tokens per sequence", "128"},
        {"--accum", "N", "micro-batches per step (gradient accumulation)", "1"},
        {"--lr", "X", "peak learning rate", "3e-3"},
        {"--warmup", "N", "warmup steps", "20"},
        {"--min-lr", "X", "final learning rate, as a fraction of --lr", "0.1"},
        {"--weight-decay", "X", "AdamW weight decay (matrices only)", "0.1"},
        {"--clip", "X", "gradient-norm clip (0: off)", "1.0"},
        {"--seed", "N", "seed of the initialisation and the batches", "1"},
        {"--eval-every", "N", "validation every N steps and at the end (0: never)", "100"},
        {"--eval-batches", "N", "validation batches", "20"},
        {"--stats-every", "N", "spike statistics (firing rates, astrocyte share, SOPs) into metrics.jsonl every N "
                               "steps and at each evaluation (0: never)", "100"},
        {"--ckpt-every", "N", "save the model and a checkpoint every N steps (and at the end)", "200"},
        {"--keep", "K", "complete checkpoints kept in OUT/ckpt", "3"},
        {"--resume", NULL, "continue from the newest complete checkpoint in --out; `--resume auto`: resume if "
                           "there is one, start fresh if --out is new or empty, refuse anything else", NULL},
        {"--resume-auto", NULL, NULL, NULL},  // what `--resume auto` becomes (cmd_train)
        {"--resume-from", "DIR", "continue from the newest complete checkpoint of run DIR", NULL},
        {"--init", "FILE", "start from the parameters of a model file of the same size (fresh optimizer "
                           "and schedule: fine-tuning, curricula)", NULL},
        {"--stop-after", "N", NULL, NULL},  // testing aid (docs/TRAINING.md): stop after step N as if killed
        {"--sample-tokens", "N", "tokens of text to sample at the end", "400"},
        {"--max-seconds", "S", "stop (and save) after S seconds; 0: no limit", "0"},
        {"--threads", "N", "CPU threads (default: all cores)", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32 or bf16 (tensor cores, fp32 accumulation) or fp32 (exact)", "tf32"},
        {"--amsu", "scan|chunk", "the astrocyte recurrence: per timestep, or in chunks of matrix products (default: the faster on the device)", NULL},
        {"--quiet", NULL, "no per-step lines", NULL},
        {"--dry-run", NULL, "print the model's size and the memory a rank needs, then exit (nothing allocated)", NULL},
        {"--zero", "0|1", "ZeRO stage under mpirun: 1 shards the AdamW state across the ranks", "0"},
        {"--nccl-timeout", "S", "GPU ranks (NCCL): seconds a collective may take before this rank aborts it "
                                "and exits, naming itself (a dead or stuck peer)", "300"},
        {"--match-params", NULL, "with --astro off: the smallest width (a multiple of the heads) with at "
                                 "least the parameters of the same model with astro on", NULL},
        TASK_FLAGS,
    };
    int nf = sizeof flags / sizeof flags[0];
    const char *defaults[64];  // to tell a flag given on the command line from its default
    _Static_assert(sizeof flags / sizeof flags[0] <= 64, "defaults[] and given[] hold 64 flags");
    for (int i = 0; i < nf; i++) defaults[i] = flags[i].value;
    int rc = cli_parse("train", TRAIN_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    const Backend *be;
    if (device_pick("train", GET("--device"), GET("--matmul"), &be) || device_set_amsu("train", be, GET("--amsu")) ||
        set_threads("train", GET("--threads")))
        return 2;

    TrainOptions o = {0};
    o.backend = be;
    if (model_config_named(GET("--size"), &o.cfg)) {
        fprintf(stderr, "glia train: --size: '%s' is not one of tiny, small, 124m, 1.5b\n", GET("--size"));
        return 2;
    }
    long v;
    double d;
    static const char *const onoff[] = {"off", "on"};
    if (GET("--layers")) { if (cli_int("train", "--layers", GET("--layers"), 1, 256, &v)) return 2; o.cfg.L = (int)v; }
    if (GET("--width")) {
        if (cli_int("train", "--width", GET("--width"), 1, 65536, &v)) return 2;
        o.cfg.C = (int)v;
        o.cfg.F = 4 * o.cfg.C;
    }
    if (GET("--heads")) { if (cli_int("train", "--heads", GET("--heads"), 1, 65536, &v)) return 2; o.cfg.Nh = (int)v; }
    if (GET("--ffn")) { if (cli_int("train", "--ffn", GET("--ffn"), 1, 262144, &v)) return 2; o.cfg.F = (int)v; }
    if (GET("--vocab")) {
        if (cli_int("train", "--vocab", GET("--vocab"), 2, 65536, &v)) return 2;
        o.cfg.V = (int)v;
    }
    o.cfg.Vp = model_pad_vocab(o.cfg.V);
    if (cli_choice("train", "--astro", GET("--astro"), onoff, 2, &o.cfg.astro)) return 2;
    char err[256];
    if (model_config_check(&o.cfg, err, sizeof err)) {
        fprintf(stderr, "glia train: %s\n", err);
        return 2;
    }
    if (GET("--match-params")) {
        if (o.cfg.astro) {
            fprintf(stderr, "glia train: --match-params widens the ablation: it needs --astro off\n");
            return 2;
        }
        ModelConfig on = o.cfg;
        on.astro = 1;
        const int64_t want = model_config_nparams(&on);
        const int ffn_tied = !GET("--ffn");  // F follows the width (4C) unless --ffn fixes it
        while (model_config_nparams(&o.cfg) < want) {
            o.cfg.C += o.cfg.Nh;
            if (ffn_tied) o.cfg.F = 4 * o.cfg.C;
        }
        printf("glia train: --match-params: width %d (FFN %d), %lld parameters; astro on at width %d: %lld\n",
               o.cfg.C, o.cfg.F, (long long)model_config_nparams(&o.cfg), on.C, (long long)want);
    }
    static TaskSpec task;
    if (task_flags("train", flags, nf, &task)) return 2;
    if (task.kind >= 0) {
        if (GET("--data")) {
            fprintf(stderr, "glia train: --task and --data exclude each other\n");
            return 2;
        }
        if (GET("--resume") || GET("--resume-from") || GET("--resume-auto")) {
            fprintf(stderr, "glia train: --task runs cannot be resumed yet (the checkpoint does not record the task)\n");
            return 2;
        }
        o.task = &task;
    }
    o.data = GET("--data");
    if (o.data && realpath(o.data, data_abs)) o.data = data_abs;  // a missing file: train_run names it
    o.out = GET("--out");
    if (cli_int("train", "--steps", GET("--steps"), 1, 1L << 40, &o.steps)) return 2;
    if (cli_int("train", "--batch", GET("--batch"), 1, 1 << 20, &v)) return 2;
    o.batch = (int)v;
    if (cli_int("train", "--seq", GET("--seq"), 1, 1 << 20, &v)) return 2;
    o.seq = o.task ? o.task->T : (int)v;
    if (cli_int("train", "--accum", GET("--accum"), 1, 1 << 20, &v)) return 2;
    o.accum = (int)v;
    if (cli_float("train", "--lr", GET("--lr"), 0, 10, &o.lr)) return 2;
    if (cli_int("train", "--warmup", GET("--warmup"), 0, 1L << 40, &o.warmup)) return 2;
    if (cli_float("train", "--min-lr", GET("--min-lr"), 0, 1, &o.min_lr_frac)) return 2;
    if (cli_float("train", "--weight-decay", GET("--weight-decay"), 0, 10, &o.weight_decay)) return 2;
    if (cli_float("train", "--clip", GET("--clip"), 0, 1e9, &o.clip)) return 2;
    if (cli_int("train", "--seed", GET("--seed"), 0, 1L << 62, &v)) return 2;
    o.seed = (uint64_t)v;
    if (cli_int("train", "--eval-every", GET("--eval-every"), 0, 1L << 40, &o.eval_every)) return 2;
    if (cli_int("train", "--eval-batches", GET("--eval-batches"), 1, 1L << 30, &o.eval_batches)) return 2;
    if (cli_int("train", "--stats-every", GET("--stats-every"), 0, 1L << 40, &o.stats_every)) return 2;
    if (cli_int("train", "--ckpt-every", GET("--ckpt-every"), 0, 1L << 40, &o.ckpt_every)) return 2;
    if (cli_int("train", "--sample-tokens", GET("--sample-tokens"), 0, 1 << 24, &v)) return 2;
    o.sample_tokens = o.task ? 0 : (int)v;
    if (cli_float("train", "--max-seconds", GET("--max-seconds"), 0, 1e9, &d)) return 2;
    o.max_seconds = d;
    o.quiet = GET("--quiet") != NULL;
    if (cli_int("train", "--keep", GET("--keep"), 1, 1 << 20, &v)) return 2;
    o.keep = (int)v;
    if (GET("--stop-after") && cli_int("train", "--stop-after", GET("--stop-after"), 1, 1L << 40, &o.stop_after))
        return 2;
    if (cli_int("train", "--zero", GET("--zero"), 0, 1, &v)) return 2;
    o.zero = (int)v;
    // read by the NCCL communicator when it is made (kernels/cuda/nccl.cu)
    if (cli_int("train", "--nccl-timeout", GET("--nccl-timeout"), 1, 1L << 30, &v)) return 2;
    char tmo[32];
    snprintf(tmo, sizeof tmo, "%ld", v);
    setenv("GLIA_NCCL_TIMEOUT_S", tmo, 1);
    o.init = GET("--init");
    const char *from = GET("--resume-from") ? GET("--resume-from") : GET("--resume") ? o.out : NULL;
    if (from && GET("--resume-auto")) {
        fprintf(stderr, "glia train: --resume auto decides by itself; give it without --resume-from or a second --resume\n");
        return 2;
    }
    if (GET("--dry-run")) return dry_run(&o), 0;
    // The run lock (train.h) before anything reads or writes --out, so no
    // other trainer changes the run directory under the decisions below
    // (train_run keeps the lock). Every rank agrees on the outcome.
    char cerr[CKPT_ERR_LEN];
    int lrc = dist_is_root() ? train_lock(o.out, cerr, sizeof cerr) : 0;
    if (lrc) fprintf(stderr, "glia train: %s\n", cerr);
    if ((lrc = dist_allreduce_max_int(lrc))) return lrc;
    if (GET("--resume-auto")) {
        int a = train_ckpt_auto(o.out, cerr);
        if (a < 0) {
            fprintf(stderr, "glia train: %s\n", cerr);
            return 2;
        }
        // --init only starts a run: a job requeued with the same command line
        // continues from its checkpoint, which already holds what --init gave
        if (a) from = o.out, o.init = NULL;
        else printf("glia train: --resume auto: no checkpoint in %s; starting a fresh run\n", o.out);
    }
    if (from && o.init) {
        fprintf(stderr, "glia train: --init starts a fresh run; it cannot be combined with --resume\n");
        return 2;
    }
    if (!from) {
        *po = o;
        return -1;
    }

    // Resuming: the checkpoint's options are the defaults; one given on the
    // command line must agree with it (a changed --steps would change the
    // learning-rate schedule of the steps already taken, so it is refused too).
    static char ckdir[4200];
    long step;
    TrainOptions s;
    if (train_ckpt_find(from, ckdir, sizeof ckdir, &step, &s, cerr)) {
        fprintf(stderr, "glia train: --resume: %s\n", cerr);
        return 2;
    }
    if (s.world_size != dist_self()->world) {
        fprintf(stderr, "glia train: --resume: %s was written by a run of %d processes; resume it with the same "
                "number (mpirun -np %d), not %d\n", ckdir, s.world_size, s.world_size, dist_self()->world);
        return 2;
    }
    int given[64];
    for (int i = 0; i < nf; i++) given[i] = flags[i].value != defaults[i];
#define GIVEN(name) given[cli_index(flags, nf, name)]
    static const char *const model_flags[] = {"--size", "--layers", "--width", "--heads", "--ffn", "--vocab", "--astro"};
    int model_given = 0;
    for (int i = 0; i < 7; i++) model_given |= GIVEN(model_flags[i]);
    if (model_given && memcmp(&o.cfg, &s.cfg, sizeof o.cfg)) {
        fprintf(stderr, "glia train: %s/model.safetensors: the checkpoint's model (V %d, L %d, C %d, heads %d, FFN %d, astro %s) "
                "does not match the requested one (V %d, L %d, C %d, heads %d, FFN %d, astro %s)\n",
                ckdir, s.cfg.V, s.cfg.L, s.cfg.C, s.cfg.Nh, s.cfg.F, s.cfg.astro ? "on" : "off", o.cfg.V, o.cfg.L,
                o.cfg.C, o.cfg.Nh, o.cfg.F, o.cfg.astro ? "on" : "off");
        return 2;
    }
    o.cfg = s.cfg;
#define SAME_LONG(flag, field)                                                                          \
    if (GIVEN(flag) && (long long)o.field != (long long)s.field) {                                      \
        fprintf(stderr, "glia train: %s %lld differs from %lld in the checkpoint %s; a resumed run keeps its options\n", \
                flag, (long long)o.field, (long long)s.field, ckdir);                                   \
        return 2;                                                                                       \
    }                                                                                                   \
    o.field = s.field;
#define SAME_DOUBLE(flag, field)                                                                        \
    if (GIVEN(flag) && o.field != s.field) {                                                            \
        fprintf(stderr, "glia train: %s %.17g differs from %.17g in the checkpoint %s; a resumed run keeps its options\n", \
                flag, o.field, s.field, ckdir);                                                         \
        return 2;                                                                                       \
    }                                                                                                   \
    o.field = s.field;
    SAME_LONG("--steps", steps)
    SAME_LONG("--batch", batch)
    SAME_LONG("--seq", seq)
    SAME_LONG("--accum", accum)
    SAME_LONG("--warmup", warmup)
    SAME_LONG("--seed", seed)
    SAME_DOUBLE("--lr", lr)
    SAME_DOUBLE("--min-lr", min_lr_frac)
    SAME_DOUBLE("--weight-decay", weight_decay)
    SAME_DOUBLE("--clip", clip)
    SAME_LONG("--zero", zero)
    // --data: the stored path, unless the checkpoint predates storing it
    if (s.data) {
        const char *want = s.data[0] ? s.data : NULL;  // "": the default corpus
        if (GIVEN("--data") && (!want || strcmp(o.data, want))) {
            fprintf(stderr, "glia train: --data %s differs from %s in the checkpoint %s; a resumed run keeps its data\n",
                    o.data, want ? want : "the default corpus", ckdir);
            return 2;
        }
        o.data = want;
    }
    // options that do not change the arithmetic: stored ones unless given again
    if (!GIVEN("--ckpt-every") && s.ckpt_every >= 0) o.ckpt_every = s.ckpt_every;
    if (!GIVEN("--eval-every") && s.eval_every >= 0) o.eval_every = s.eval_every;
    if (!GIVEN("--eval-batches") && s.eval_batches >= 1) o.eval_batches = s.eval_batches;
    if (!GIVEN("--keep") && s.keep >= 1) o.keep = s.keep;
#undef SAME_LONG
#undef SAME_DOUBLE
#undef GIVEN
    o.resume = ckdir;
    *po = o;
    return -1;
}

int cmd_train(int argc, char **argv) {
    // Every rank parses; all but rank 0 do it with stdout and stderr pointed
    // at /dev/null (the verdict is the same on every rank).
    int quiet = !dist_is_root(), saved_out = -1, saved_err = -1;
    if (quiet) {
        fflush(stdout);
        fflush(stderr);
        int fd = open("/dev/null", O_WRONLY);
        saved_out = dup(1);
        saved_err = dup(2);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    }
    // `--resume auto` (and --resume=auto) become --resume-auto, so a bare
    // --resume stays a switch.
    char **args = xmalloc(((size_t)argc + 1) * sizeof *args);
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "--resume") && i + 1 < argc && !strcmp(argv[i + 1], "auto"))
            args[n++] = "--resume-auto", i++;
        else if (i > 0 && !strcmp(argv[i], "--resume=auto"))
            args[n++] = "--resume-auto";
        else
            args[n++] = argv[i];
    }
    args[n] = NULL;
    TrainOptions o;
    int rc = train_parse(n, args, &o);
    free(args);
    if (quiet) {
        fflush(stdout);
        fflush(stderr);
        if (saved_out >= 0) dup2(saved_out, 1), close(saved_out);
        if (saved_err >= 0) dup2(saved_err, 2), close(saved_err);
    }
    return rc >= 0 ? rc : train_run(&o);
}

// ---- eval ------------------------------------------------------------------------------

static Model *load_or_fail(const char *cmd, const char *path) {
    if (!path) {
        fprintf(stderr, "glia %s: --ckpt is required (see glia %s --help)\n", cmd, cmd);
        return NULL;
    }
    char err[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(path, NULL, err);
    if (!m) fprintf(stderr, "glia %s: %s\n", cmd, err);
    return m;
}

// glia eval --stats: model_stats averaged over the evaluated batches
// (weighted by their windows), then a table per layer and the per-token
// operations and energy estimate.
static void eval_stats(Model *m, const Dataset *val, int B, int T, long batches) {
    const int L = m->cfg.L;
    LayerStats *acc = xcalloc(L, sizeof(LayerStats));
    double sops = 0.0, w = 0.0, spike_macs = 0.0, other = 0.0, e_s = 0.0, e_d = 0.0;
    int *in = xmalloc((size_t)B * T * sizeof(int)), *tg = xmalloc((size_t)B * T * sizeof(int));
    for (long i = 0; i < batches; i++) {
        int got = dataset_window(val, (size_t)i * B, B, T, in, tg);
        if (got <= 0) break;
        model_forward(m, in, NULL, got, T, NULL);
        ModelStats st;
        model_stats(m, &st);
        for (int l = 0; l < L; l++) {
            double *a = &acc[l].amsu_rate;
            const double *v = &st.layer[l].amsu_rate;
            for (int k = 0; k < 7; k++) a[k] += v[k] * got;
        }
        sops += st.sops * got, spike_macs = st.spike_macs, other = st.other_macs;
        e_s += st.energy_spiking_pj * got, e_d = st.energy_dense_pj;
        w += got;
        model_stats_free(&st);
    }
    free(in);
    free(tg);
    if (w <= 0) {
        free(acc);
        return;
    }
    printf("\nspike statistics over %.0f windows (rates: spikes per neuron and position; never / always: neurons\n"
           "that never fired / fired at every position of a batch; astro: mean |o| / mean |u|)\n\n"
           "| layer | AM-SU rate | never | always | FFN rate | never | always | astro share |\n"
           "|---:|---:|---:|---:|---:|---:|---:|---:|\n", w);
    for (int l = 0; l < L; l++) {
        const LayerStats *a = &acc[l];
        printf("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |\n", l, a->amsu_rate / w, a->amsu_never / w,
               a->amsu_always / w, a->ffn_rate / w, a->ffn_never / w, a->ffn_always / w, a->astro_share / w);
    }
    printf("\nper token: %.0f synaptic operations (W_O, W_2) against %.0f multiply-accumulates with dense inputs "
           "(%.3f); other MACs %.0f\nenergy, ESTIMATED (45 nm, Horowitz ISSCC 2014: %.1f pJ per add, %.1f pJ per "
           "multiply-add; not a measurement): %.1f nJ per token spiking against %.1f nJ dense\n",
           sops / w, spike_macs, sops / w / spike_macs, other, MODEL_PJ_PER_AC, MODEL_PJ_PER_MAC, e_s / w * 1e-3,
           e_d * 1e-3);
    free(acc);
}

int cmd_eval(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "model file (model.safetensors of a run)", NULL},
        {"--data", "PATH", "shard directory or text file (default: KJV Bible)", NULL},
        {"--out", "DIR", "where a text file given as --data is prepared", "runs/eval"},
        {"--batch", "N", "sequences per batch", "16"},
        {"--seq", "N", "tokens per sequence", "128"},
        {"--batches", "N", "validation batches (the whole split if larger)", "20"},
        {"--threads", "N", "CPU threads", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32 or bf16 (tensor cores, fp32 accumulation) or fp32 (exact)", "tf32"},
        {"--amsu", "scan|chunk", "the astrocyte recurrence: per timestep, or in chunks of matrix products (default: the faster on the device)", NULL},
        {"--seed", "S", "task: the seed of the scored sequences (train uses --seed, its validation seed + 1000003)",
         "999"},
        {"--stats", NULL, "also the spike statistics per layer, SOPs and an energy estimate (model.h)", NULL},
        TASK_FLAGS,
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("eval", "Validation loss, bits per byte (bytes or GPT-2 BPE) and perplexity of a model;\n"
                       "with --task, its accuracy and loss on the answers of a synthetic task (tasks.h).",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    const Backend *be;
    if (device_pick("eval", GET("--device"), GET("--matmul"), &be) || device_set_amsu("eval", be, GET("--amsu")) ||
        set_threads("eval", GET("--threads")))
        return 2;
    long B, T, nb;
    if (cli_int("eval", "--batch", GET("--batch"), 1, 1 << 20, &B) ||
        cli_int("eval", "--seq", GET("--seq"), 1, 1 << 20, &T) ||
        cli_int("eval", "--batches", GET("--batches"), 1, 1L << 30, &nb))
        return 2;
    TaskSpec task;
    long seed;
    if (task_flags("eval", flags, nf, &task) || cli_int("eval", "--seed", GET("--seed"), 0, 1L << 62, &seed)) return 2;
    Model *m = load_or_fail("eval", GET("--ckpt"));
    if (!m) return 2;
    if (device_move_model("eval", m, be)) {
        model_free(m);
        return 2;
    }
    if (task.kind >= 0) {
        if (m->cfg.V < 256) {
            fprintf(stderr, "glia eval: the model's vocabulary (%d) is not the byte vocabulary the tasks use\n", m->cfg.V);
            model_free(m);
            return 2;
        }
        model_alloc_acts(m, (int)B, task.T);
        double acc, loss;
        long n;
        task_eval(m, &task, (uint64_t)seed, (int)B, B * nb, &acc, &loss, &n);
        printf("task %s T %d | accuracy %.4f | loss %.4f nats | %ld answers in %ld sequences | chance %.4f\n",
               task_name(task.kind), task.T, acc, loss, n, B * nb, task_chance(&task));
        model_free(m);
        return 0;
    }
    char err[DATA_ERR_LEN], dir[4096];
    Dataset val = {0};
    struct stat dst;
    if (m->cfg.V == BPE_VOCAB && !(GET("--data") && stat(GET("--data"), &dst) == 0 && S_ISDIR(dst.st_mode))) {
        snprintf(err, sizeof err, "a GPT-2 BPE model (vocab %d) is evaluated on GPT-2 shards, not on %s tokenized byte "
                 "by byte: glia prepare --tokenizer gpt2 --out DIR, then --data DIR", BPE_VOCAB,
                 GET("--data") ? GET("--data") : "the default corpus");
        rc = 2;
    } else {
        rc = train_data_dir(GET("--data"), GET("--out"), dir, sizeof dir, err);
    }
    if (!rc && dataset_open(&val, dir, "val", err)) rc = 2;
    if (!rc && val.max_token >= m->cfg.V) {
        snprintf(err, sizeof err, "%.400s: token id %d is outside the model's vocabulary of %d", dir,
                 val.max_token, m->cfg.V);
        rc = 2;
    }
    if (rc) {
        fprintf(stderr, "glia eval: %s\n", err);
        model_free(m);
        dataset_close(&val);
        return rc;
    }
    model_alloc_acts(m, (int)B, (int)T);
    long windows;
    double loss = train_eval(m, &val, (int)B, (int)T, nb, &windows);
    if (windows == 0) {
        fprintf(stderr, "glia eval: %s: the val split has no window of %ld tokens\n", dir, T + 1);
        rc = 2;
    } else {
        printf("val loss %.4f nats/token | %.4f bits/%s | perplexity %.3f | %ld windows of %ld tokens\n",
               loss, loss / 0.69314718055994530942, m->cfg.V <= 256 ? "byte" : "token", exp(loss),
               windows, T);
        Tokenizer tk;
        char terr[800];
        if (m->cfg.V == BPE_VOCAB && tokenizer_open(&m->cfg, &tk, terr, sizeof terr) == 0) {
            // bits per byte of text: the same loss over the bytes the scored tokens decode to
            int *in = xmalloc((size_t)T * sizeof(int)), *tg = xmalloc((size_t)T * sizeof(int));
            double bytes = 0;
            for (long w = 0; w < windows; w++) {
                dataset_window(&val, (size_t)w, 1, (int)T, in, tg);
                for (long t = 0; t < T; t++) {
                    int len;
                    if (tokenizer_bytes(&tk, tg[t], &len)) bytes += len;
                }
            }
            printf("GPT-2 BPE: %.3f bytes/token | %.4f bits/byte\n", bytes / ((double)windows * T),
                   loss * (double)windows * T / (bytes * 0.69314718055994530942));
            free(in), free(tg);
            tokenizer_free(&tk);
        }
    }
    if (!rc && GET("--stats")) eval_stats(m, &val, (int)B, (int)T, nb);
    model_free(m);
    dataset_close(&val);
    return rc;
}

// ---- generate ------------------------------------------------------------------------

int cmd_generate(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "model file", NULL},
        {"--prompt", "TEXT", "text to start from (UTF-8 for a GPT-2 BPE model)", "\n"},
        {"--tokens", "N", "tokens to generate", "400"},
        {"--temperature", "X", "sampling temperature (0: greedy)", "0.8"},
        {"--top-k", "N", "sample among the k most likely (0: all)", "0"},
        {"--top-p", "X", "sample within probability mass p", "0.95"},
        {"--seed", "N", "sampling seed", "1"},
        {"--threads", "N", "CPU threads", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32 or bf16 (tensor cores, fp32 accumulation) or fp32 (exact)", "tf32"},
        {"--prompts", "FILE", "JSONL requests for offline batch generation (then --out)", NULL},
        {"--out", "FILE", "JSONL completions, in input order (with --prompts)", NULL},
        {"--batch", "N", "sequence slots decoded together (with --prompts)", "16"},
        {"--max-prompt", "N", "longest prompt in tokens (with --prompts)", "4096"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("generate",
                       "Writes text from a model, streaming it as it is made. The prompt runs once\n"
                       "through the model; then each token is one step of the recurrent state (no\n"
                       "cache grows: the cost per token is the same at any length).",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    const Backend *be;
    if (device_pick("generate", GET("--device"), GET("--matmul"), &be) ||
        set_threads("generate", GET("--threads")))
        return 2;
    long ntok, topk, seed;
    double temp, topp;
    if (cli_int("generate", "--tokens", GET("--tokens"), 1, 1L << 30, &ntok) ||
        cli_float("generate", "--temperature", GET("--temperature"), 0, 100, &temp) ||
        cli_int("generate", "--top-k", GET("--top-k"), 0, 1 << 30, &topk) ||
        cli_float("generate", "--top-p", GET("--top-p"), 1e-6, 1, &topp) ||
        cli_int("generate", "--seed", GET("--seed"), 0, 1L << 62, &seed))
        return 2;
    if (GET("--prompts")) {  // offline batch mode: the engine of engine.h
        long batch, maxp;
        if (!GET("--out")) {
            fprintf(stderr, "glia generate: --prompts needs --out FILE\n");
            return 2;
        }
        if (cli_int("generate", "--batch", GET("--batch"), 1, 4096, &batch) ||
            cli_int("generate", "--max-prompt", GET("--max-prompt"), 1, 1 << 24, &maxp))
            return 2;
        Model *bm = load_or_fail("generate", GET("--ckpt"));
        if (!bm) return 2;
        if (device_move_model("generate", bm, be)) {
            model_free(bm);
            return 2;
        }
        OfflineOptions oo = {.batch = (int)batch, .max_prompt = (int)maxp, .max_tokens = (int)ntok,
                             .temperature = (float)temp, .top_k = (int)topk, .top_p = (float)topp,
                             .seed = (uint64_t)seed, .quiet = 0};
        int grc = generate_offline(bm, GET("--prompts"), GET("--out"), &oo);
        model_free(bm);
        return grc;
    }
    const char *prompt = GET("--prompt");
    int n = (int)strlen(prompt);
    if (n == 0) {
        fprintf(stderr, "glia generate: --prompt is empty\n");
        return 2;
    }
    Model *m = load_or_fail("generate", GET("--ckpt"));
    if (!m) return 2;
    if (device_move_model("generate", m, be)) {
        model_free(m);
        return 2;
    }
    Tokenizer tk;
    char terr[800];
    if (tokenizer_open(&m->cfg, &tk, terr, sizeof terr)) {
        fprintf(stderr, "glia generate: %s: %s\n", GET("--ckpt"), terr);
        model_free(m);
        return 2;
    }
    int nb = n;
    int *toks = tokenizer_encode(&tk, prompt, nb, &n, terr, sizeof terr);
    if (!toks || n == 0) {
        fprintf(stderr, "glia generate: --prompt: %s\n", toks ? "encodes to no tokens" : terr);
        free(toks);
        tokenizer_free(&tk);
        model_free(m);
        return 2;
    }
    model_alloc_acts(m, 1, n);
    ModelState *st = model_state_new(m, 1);
    Rng rng;
    rng_init(&rng, (uint64_t)seed);
    SampleParams sp = {(float)temp, (int)topk, (float)topp};
    fputs(prompt, stdout);
    generate_tokens(m, st, toks, n, (int)ntok, &sp, &rng, stdout, NULL, &tk);
    fputc('\n', stdout);
    free(toks);
    tokenizer_free(&tk);
    model_state_free(st);
    model_free(m);
    return 0;
}
