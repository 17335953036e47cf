// train.c: the training loop.
//
// One step: zero the gradients; for each micro-batch draw the batch that
// the step number determines (data.h), forward, backward (gradients summed,
// scaled by 1/accum); clip the global gradient norm; AdamW with the
// scheduled learning rate. Nothing in a step depends on wall time or on
// state other than the parameters, the moments and the step number, so the
// same seed and thread count give bit-identical runs.
//
// The run directory gets metrics.jsonl (one JSON object per step, and one
// per evaluation), model.safetensors (saved every ckpt_every steps and at
// the end, atomically), a training checkpoint in ckpt/ at the same moments
// (train_ckpt.h) and sample.txt. SIGTERM or SIGINT (Ctrl-C) stops after the
// current step and saves first, then train_run returns
// TRAIN_EXIT_INTERRUPTED. Rank 0 holds the run lock (OUT/train.lock, train.h)
// for the whole run, so no two trainers ever write one run directory. Because a step depends only on the parameters, the moments
// and the step number, a run resumed from a checkpoint continues bit for bit
// as if it had never stopped; metrics.jsonl is cut back to the checkpoint's
// step and appended to, so it reads as one run.
//
// A task run (tasks.h) draws its batches from task_batch instead of a
// dataset: sequence j of micro-batch mb is the sequence mb·batch + j of the
// seed's stream, so it too is a pure function of (seed, step, j), and its
// evaluation scores accuracy on the answer positions of another seed's
// sequences.
//
// Data parallelism (dist.h, docs/DISTRIBUTED.md): under mpirun each of N
// ranks runs this same loop on its share of the step's global batch,
// sequences [r·B/N, (r+1)·B/N) (data.h makes sequence j of a step a pure
// function of (seed, step, j), so the tokens of a step do not depend on N).
// Each rank scales its backward by 1/N, so the SUM all-reduce of the
// gradients is the gradient of the mean loss over the global batch; the
// clip uses that global norm and every rank then takes the same AdamW step,
// keeping the parameters identical everywhere without ever sending them.
// With ZeRO-1 (--zero 1) the gradient is reduce-scattered instead: each rank
// updates only its slice of the (padded) parameters with only its slice of
// the moments, then the slices are all-gathered. Anything that can end the
// loop (SIGTERM, SIGINT, --max-seconds, a failed save) is agreed on by all ranks in a
// collective first, so no rank is ever left waiting in a collective for a
// rank that has stopped. Rank 0 alone prints, writes metrics.jsonl, the
// model file, evaluations and the sample. With one process none of this
// runs (each collective is the identity) and a run is bit for bit what it
// was before.
//
// The loop does not know where the model runs: the device was chosen once
// (TrainOptions.backend, host/cmd_device.c) and the model computes there
// (model.h over common/backend.h), including the optimizer step
// (model_step: the gradient all-reduce, or ZeRO-1's reduce-scatter and
// all-gather, the clip and AdamW). With several ranks and no ZeRO the last
// micro-batch's backward all-reduces each layer's gradients as soon as they
// are final (model_set_reduce), overlapped with the rest of the backward
// where the backend can (NCCL on its own stream). Parameters and moments
// come to the host only to be saved (save_all).
#include "train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "common/dist.h"
#include "glia/util.h"
#include "generate/sample.h"
#include "io/bpe.h"
#include "train/train_ckpt.h"

// The first SIGTERM or SIGINT received while training (0: none). A second
// signal changes nothing: the step and the save in progress finish (SIGKILL
// still ends the process at once, which every save survives).
static volatile sig_atomic_t stop_signal;
static void on_stop_signal(int sig) {
    if (!stop_signal) stop_signal = sig;
}

// ---- the run lock ------------------------------------------------------------------------

static int lock_fd = -1;
static char lock_path[4200];

void train_unlock(void) {
    if (lock_fd < 0) return;
    close(lock_fd);  // releases the flock; the file stays (deleting it would race a new holder)
    lock_fd = -1;
    lock_path[0] = 0;
}

int train_lock(const char *out, char *err, size_t err_len) {
    char path[sizeof lock_path];
    snprintf(path, sizeof path, "%s/%s", out, TRAIN_LOCK_NAME);
    if (lock_fd >= 0 && !strcmp(path, lock_path)) return 0;
    train_unlock();
    if (glia_mkdirs(out, err, err_len)) return 1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return snprintf(err, err_len, "%.400s: cannot create the run lock: %.120s", path, strerror(errno)), 1;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;
        char holder[128] = "";
        ssize_t n = saved == EWOULDBLOCK ? pread(fd, holder, sizeof holder - 1, 0) : -1;
        close(fd);
        if (saved != EWOULDBLOCK)
            return snprintf(err, err_len, "%.400s: cannot lock: %.120s", path, strerror(saved)), 1;
        holder[n > 0 ? n : 0] = 0;
        long pid = 0;
        char host[100] = "";
        if (sscanf(holder, "%ld %99s", &pid, host) < 1 || pid <= 0)
            return snprintf(err, err_len, "%.400s is in use: another glia train holds %s (it has not written its PID "
                            "yet); wait for it to end or give another --out", out, TRAIN_LOCK_NAME), 2;
        return snprintf(err, err_len, "%.400s is in use: glia train (PID %ld%s%.99s) holds %s; wait for it to end "
                        "or give another --out", out, pid, host[0] ? " on " : "", host, TRAIN_LOCK_NAME), 2;
    }
    char me[200], host[100] = "?";
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    int len = snprintf(me, sizeof me, "%ld %s\n", (long)getpid(), host);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, me, (size_t)len, 0) != len) {
        int saved = errno;
        close(fd);
        return snprintf(err, err_len, "%.400s: cannot write: %.120s", path, strerror(saved)), 1;
    }
    lock_fd = fd;
    snprintf(lock_path, sizeof lock_path, "%s", path);
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double train_lr(double lr, double min_frac, long warmup, long steps, long s) {
    if (s <= warmup) return lr * (double)s / (double)(warmup > 0 ? warmup : 1);
    double progress = steps > warmup ? (double)(s - warmup) / (double)(steps - warmup) : 1.0;
    double min_lr = min_frac * lr;
    return min_lr + 0.5 * (1.0 + cos(3.14159265358979323846 * progress)) * (lr - min_lr);
}

double train_eval(Model *m, const Dataset *val, int B, int T, long batches, long *windows) {
    const Dist *ds = dist_self();
    int *in = xmalloc((size_t)B * T * sizeof(int)), *tg = xmalloc((size_t)B * T * sizeof(int));
    const size_t nw = dataset_windows(val, T), G = (size_t)B * ds->world;
    double sum[2] = {0.0, 0.0};  // this rank's summed loss and window count
    for (long i = 0; i < batches && (size_t)i * G < nw; i++) {
        size_t first = (size_t)i * G + (size_t)ds->rank * B;
        int got = first < nw ? dataset_window(val, first, B, T, in, tg) : 0;
        if (got > 0) sum[0] += model_forward(m, in, tg, got, T, NULL) * got, sum[1] += got;
    }
    free(in);
    free(tg);
    dist_allreduce_sum_double(sum, 2);
    if (windows) *windows = (long)sum[1];
    return sum[1] > 0 ? sum[0] / sum[1] : NAN;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int train_data_dir(const char *data, const char *out, char *dir, size_t dir_len, char *err) {
    if (!data) return corpus_default(dir, dir_len, err) ? 2 : 0;
    if (is_dir(data)) {
        snprintf(dir, dir_len, "%s", data);
        return 0;
    }
    FILE *f = fopen(data, "rb");
    if (!f) return snprintf(err, DATA_ERR_LEN, "%s: cannot open: %s", data, strerror(errno)), 2;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *text = xmalloc(n > 0 ? (size_t)n : 1);
    size_t got = n > 0 ? fread(text, 1, (size_t)n, f) : 0;
    fclose(f);
    if (n < 0 || got != (size_t)n) {
        free(text);
        return snprintf(err, DATA_ERR_LEN, "%s: cannot read the whole file", data), 2;
    }
    snprintf(dir, dir_len, "%s/data", out);
    const char *base = strrchr(data, '/');
    char name[256];
    snprintf(name, sizeof name, "%s", base ? base + 1 : data);
    char *dot = strrchr(name, '.');
    if (dot && dot != name) *dot = 0;
    int rc = prepare_bytes(text, got, 0.1, dir, name, err);
    free(text);
    return rc ? 2 : 0;
}

const char *train_json_num(char buf[40], const char *fmt, double v) {
    if (!isfinite(v)) return "null";
    snprintf(buf, 40, fmt, v);
    return buf;
}
#define jnum train_json_num

static void fmt_eta(char *buf, size_t n, double s) {
    if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

// Keeps the lines of metrics.jsonl up to step `last` (and drops a torn last
// line), replacing the file atomically, so a resumed run appends to a file
// that reads as one run. A missing file is fine.
static int metrics_trim(const char *path, long last, char *err, size_t err_len) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    char tmp[4300], line[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) {
        snprintf(err, err_len, "%.400s: cannot write: %s", tmp, strerror(errno));
        fclose(in);
        return -1;
    }
    while (fgets(line, sizeof line, in)) {
        long s;
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n' && sscanf(line, "{\"step\": %ld", &s) == 1 && s <= last)
            fputs(line, out);
    }
    fclose(in);
    errno = EIO;
    int bad = fflush(out) != 0 || fsync(fileno(out)) != 0;
    int saved = errno;
    if (fclose(out) != 0 && !bad) bad = 1, saved = errno;
    if (!bad && rename(tmp, path) != 0) bad = 1, saved = errno;
    if (bad) {
        unlink(tmp);
        snprintf(err, err_len, "%.400s: cannot rewrite: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

// One metrics.jsonl line of spike statistics (model_stats) after the last
// forward: `what` is "train" (the step's last micro-batch) or "val" (the last
// validation batch); rank 0's sequences.
static void write_stats(FILE *f, Model *m, long step, const char *what) {
    ModelStats st;
    model_stats(m, &st);
    fprintf(f, "{\"step\": %ld, \"stats\": \"%s\"", step, what);
    const char *names[7] = {"amsu_rate", "amsu_never", "amsu_always", "ffn_rate", "ffn_never", "ffn_always",
                            "astro_share"};
    for (int k = 0; k < 7; k++) {
        fprintf(f, ", \"%s\": [", names[k]);
        for (int l = 0; l < st.L; l++) {
            const LayerStats *ls = &st.layer[l];
            const double v[7] = {ls->amsu_rate, ls->amsu_never, ls->amsu_always, ls->ffn_rate, ls->ffn_never,
                                 ls->ffn_always, ls->astro_share};
            char b[40];
            fprintf(f, "%s%s", l ? ", " : "", train_json_num(b, "%.6f", v[k]));
        }
        fputc(']', f);
    }
    char b[4][40];
    fprintf(f, ", \"sops_per_token\": %s, \"spike_macs_per_token\": %s, \"energy_pj_per_token\": %s, "
               "\"dense_energy_pj_per_token\": %s}\n",
            train_json_num(b[0], "%.1f", st.sops), train_json_num(b[1], "%.1f", st.spike_macs),
            train_json_num(b[2], "%.1f", st.energy_spiking_pj), train_json_num(b[3], "%.1f", st.energy_dense_pj));
    model_stats_free(&st);
}

// Agrees on a status across the ranks: returns the largest rc of any rank.
// A rank whose rc is non-zero prints its message (fmt) when it is rank 0 or
// rank 0 had none, so a failure every rank sees (bad data) is printed once
// and a failure of one rank (its disk) is printed by that rank.
static int agree(int rc, const char *fmt, ...) {
    const Dist *d = dist_self();
    int root_rc = rc;
    dist_bcast_bytes(&root_rc, sizeof root_rc);
    int any = dist_allreduce_max_int(rc);
    if (rc && (d->rank == 0 || !root_rc)) {
        char msg[1400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (d->rank == 0) fprintf(stderr, "glia train: %s\n", msg);
        else fprintf(stderr, "glia train: rank %d: %s\n", d->rank, msg);
    }
    return any;
}

// Saves the checkpoint of `step` from every rank (train_ckpt.h), then rank 0
// saves the run's model file. 0, or the agreed non-zero status.
static int save_all(const TrainOptions *o, Model *m, const TrainShard *sh, long step, const char *model_path) {
    char err[CKPT_ERR_LEN] = "", d[4200] = "";
    const float *mom1, *mom2;
    model_sync_host(m);  // the backend holds the live copies
    model_moments_host(m, &mom1, &mom2);
    int root = dist_is_root(), rc = 0;
    // Temporary files of saves that were killed midway: rank 0 holds the run
    // lock and every rank has finished its previous save (agreed below), so
    // nothing is writing them; they can only be stale.
    if (root) train_ckpt_clean_tmp(o->out);
    if (root) rc = train_ckpt_begin(o->out, step, d, sizeof d, err) ? 1 : 0;
    if (agree(rc, "cannot save the checkpoint of step %ld: %s", step, err)) return 1;
    dist_bcast_bytes(d, sizeof d);
    rc = (root && train_ckpt_save_model(d, m, step, err)) ||
         train_ckpt_save_state(d, m, mom1, mom2, sh, o, step, err);
    if (agree(rc, "cannot save the checkpoint of step %ld: %s", step, err)) return 1;
    rc = root && (train_ckpt_commit(o->out, d, step, sh->world, o->keep, err) ||
                  ckpt_save_model(m, model_path, step, err));
    return agree(rc, "cannot save the checkpoint of step %ld: %s", step, err);
}

// Parameters from the model file `path` (a fresh run's starting point: a
// curriculum, fine-tuning); its configuration must be m's. 0, or -1 with a
// one-line error.
static int train_init_from(Model *m, const char *path, char *err, size_t err_len) {
    char cerr[CKPT_ERR_LEN];
    Model *src = ckpt_load_model(path, NULL, cerr);
    if (!src) return snprintf(err, err_len, "--init: %.600s", cerr), -1;
    const ModelConfig *a = &src->cfg, *b = &m->cfg;
    int same = a->V == b->V && a->Vp == b->Vp && a->L == b->L && a->C == b->C && a->Nh == b->Nh &&
               a->F == b->F && a->astro == b->astro;
    if (same) memcpy(m->params, src->params, m->nparams * sizeof(float));
    else
        snprintf(err, err_len,
                 "--init: %.300s is a model of L %d C %d heads %d FFN %d vocab %d astro %s, not the "
                 "one asked for (L %d C %d heads %d FFN %d vocab %d astro %s): give the same size flags",
                 path, a->L, a->C, a->Nh, a->F, a->V, a->astro ? "on" : "off", b->L, b->C, b->Nh, b->F,
                 b->V, b->astro ? "on" : "off");
    model_free(src);
    return same ? 0 : -1;
}

int train_run(const TrainOptions *o) {
    char err[DATA_ERR_LEN > CKPT_ERR_LEN ? DATA_ERR_LEN : CKPT_ERR_LEN] = "", dir[4096] = "", path[4200];
    const Dist *ds = dist_self();
    const int root = ds->rank == 0, world = ds->world;
    if (o->batch % world) {
        if (root)
            fprintf(stderr, "glia train: --batch %d (the global batch) must be a multiple of the number of ranks, %d\n",
                    o->batch, world);
        return 2;
    }
    // The run lock before anything is written (cmd_train may hold it already).
    int rc = root ? train_lock(o->out, err, sizeof err) : 0;
    if ((rc = agree(rc, "%s", err))) {
        if (root) train_unlock();
        return rc;
    }
    // From here a signal stops the run cleanly (one more step and a save, or
    // before the first step nothing); SA_RESTART, so no write or fsync of a
    // save fails with EINTR.
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    stop_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    Model *m = NULL;
    float *mom1 = NULL, *mom2 = NULL;  // a checkpoint's moments, until the model has them
    int *in = NULL, *tg = NULL;
    FILE *metrics = NULL;
    long start = 0;  // the step the checkpoint we resume from ended
    TrainShard sh = {ds->rank, world, o->zero != 0, 0, 0, 0};
    int interrupted = 0;  // the signal that stopped the run, agreed by the ranks
    // Rank 0 prepares a text file or the default corpus once; the others
    // then open what it wrote (the run directory is shared, DISTRIBUTED.md).
    // A task run (tasks.h) has no data: every batch is generated.
    Dataset train = {0}, val = {0};
    if (!o->task) {
        if (root && o->cfg.V == BPE_VOCAB && !(o->data && is_dir(o->data))) {  // text would become byte tokens
            snprintf(err, sizeof err, "a GPT-2 BPE model (vocab %d) trains on GPT-2 shards, not on %s tokenized byte by "
                     "byte: glia prepare --tokenizer gpt2 %s%s%s--out DIR, then --data DIR", BPE_VOCAB,
                     o->data ? o->data : "the default corpus", o->data ? "--in '" : "", o->data ? o->data : "",
                     o->data ? "' " : "");
            rc = 2;
        } else if (root) {
            rc = train_data_dir(o->data, o->out, dir, sizeof dir, err);
        }
        if ((rc = agree(rc, "%s", err))) goto done;
        dist_bcast_bytes(dir, sizeof dir);
        rc = dataset_open(&train, dir, "train", err) || dataset_open(&val, dir, "val", err) ||
                     dataset_check_seq(&train, o->seq, err) ? 2 : 0;
        if (!rc) {
            int maxtok = train.max_token > val.max_token ? train.max_token : val.max_token;
            if (maxtok >= o->cfg.V) {
                snprintf(err, sizeof err, "%.400s: token id %d is outside the model's vocabulary of %d", dir, maxtok, o->cfg.V);
                rc = 2;
            }
        }
        if (!rc && o->eval_every > 0 && dataset_windows(&val, o->seq) == 0) {  // else every val loss is NaN
            snprintf(err, sizeof err, "%.400s: the val split holds %zu tokens, too few for one window of --seq %d "
                     "(it needs %d); give a shorter --seq or --eval-every 0", dir, val.total, o->seq, o->seq + 1);
            rc = 2;
        }
    } else if (o->cfg.V < 256 || o->seq != o->task->T || task_check(o->task, err, (int)sizeof err)) {
        if (!err[0]) snprintf(err, sizeof err, "a task needs the byte vocabulary (V >= 256) and --seq = the task's length");
        rc = 2;
    }
    if ((rc = agree(rc, "%s", err))) goto done;
    if (o->resume) {
        m = train_ckpt_load_shard(o->resume, &o->cfg, &sh, &mom1, &mom2, &start, err);
        rc = m ? 0 : 2;
    } else {
        // never overwrite a saved run
        if (train_ckpt_exists(o->out)) {
            snprintf(err, sizeof err, "%s/ckpt holds the checkpoints of an earlier run: continue it "
                     "with --resume, or give another --out (or delete that directory)", o->out);
            rc = 2;
        } else {
            m = model_new(&o->cfg);
            model_init(m, o->seed);
            if (o->init && train_init_from(m, o->init, err, sizeof err)) rc = 2;
            train_shard_init(&sh, m->nparams, ds->rank, world, o->zero != 0);
        }
    }
    if ((rc = agree(rc, "%s", err))) goto done;
    // the model moves to its device and gets gradients and (its slice of) the moments there
    rc = model_to_backend(m, o->backend ? o->backend : backend_cpu(), err, sizeof err) ||
                 model_alloc_train(m, ds->rank, world, sh.zero, sh.offset, sh.len, sh.padded, err, sizeof err)
             ? 2 : 0;
    if ((rc = agree(rc, "%s", err))) goto done;
    if (mom1) model_set_moments(m, mom1, mom2);  // the checkpoint's (else zero)
    free(mom1);
    free(mom2);
    mom1 = mom2 = NULL;
    const int B = o->batch / world, T = o->seq;  // this rank's sequences
    const int first = ds->rank * B;
    model_alloc_acts(m, B, T);
    in = xmalloc((size_t)B * T * sizeof(int));
    tg = xmalloc((size_t)B * T * sizeof(int));

    if (root) {
        snprintf(path, sizeof path, "%s/metrics.jsonl", o->out);
        if (o->resume && metrics_trim(path, start, err, sizeof err)) rc = 1;
        else if (!(metrics = fopen(path, o->resume ? "a" : "w")))
            snprintf(err, sizeof err, "%.400s: cannot write: %.120s", path, strerror(errno)), rc = 1;
    }
    if ((rc = agree(rc, "%s", err))) goto done;
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    if (root) {
        printf("glia train: %s model, %.2f M parameters (L %d, C %d, heads %d, FFN %d, vocab %d, astro %s)\n",
               o->cfg.astro ? "AM-SU" : "LIF (astro off)", m->nparams / 1e6, o->cfg.L, o->cfg.C,
               o->cfg.Nh, o->cfg.F, o->cfg.V, o->cfg.astro ? "on" : "off");
        if (o->task)
            printf("glia train: task %s (T %d, pairs %d, queries %d, delay %d, copy-len %d; %d answers per sequence, "
                   "chance %.4f), batch %d x %d x %d, %ld steps, %d threads\n",
                   task_name(o->task->kind), o->task->T, o->task->pairs, o->task->queries, o->task->delay,
                   o->task->copy_len, task_scored(o->task), task_chance(o->task), o->batch, T, o->accum, o->steps,
                   omp_get_max_threads());
        else
            printf("glia train: data %s (%zu train, %zu val tokens), batch %d x %d x %d, %ld steps, %d threads\n",
                   dir, train.total, val.total, o->batch, T, o->accum, o->steps, omp_get_max_threads());
        if (!m->be->host_memory) {
            char dn[300];
            m->be->describe(dn, sizeof dn);
            printf("glia train: on %s: %s\n", m->be->name, dn);
        }
        if (world > 1)
            printf("glia train: %d ranks (MPI), %d sequences each, %s\n", world, B,
                   sh.zero ? "ZeRO-1: AdamW state sharded" : "gradients all-reduced");
        if (o->resume)
            printf("glia train: resuming from %s (step %ld of %ld)\n", o->resume, start, o->steps);
        fflush(stdout);
    }
    if (start >= o->steps) {  // the run had ended; make sure its model file is the final one
        rc = root && ckpt_save_model(m, path, start, err) ? 1 : 0;
        if (!(rc = agree(rc, "%s", err)) && root)
            printf("glia train: the checkpoint is the end of the run (--steps %ld); nothing to do\n", o->steps);
        goto done;
    }

    if ((interrupted = dist_allreduce_max_int(stop_signal))) {  // a signal during the start: nothing new to save
        if (root) printf("glia train: stopped by signal %d before the first step; nothing to save\n", interrupted);
        rc = TRAIN_EXIT_INTERRUPTED;
        goto done;
    }
    double t_start = now_s(), ms_sum = 0.0;
    long step = 0, timed = 0;
    int stopped_early = 0;
    const float gscale = 1.0f / (float)(o->accum * world);
    for (step = start + 1; step <= o->steps; step++) {
        double t0 = now_s();
        model_zero_grad(m);
        double red[2] = {0.0, 0.0};  // this rank's loss, and whether it wants to stop
        for (int micro = 0; micro < o->accum; micro++) {
            const uint64_t mb = (uint64_t)(step - 1) * o->accum + micro;  // the micro-batch's number
            if (o->task)  // sequences [first, first + B) of the global batch mb, as data.h splits them
                task_batch(o->task, o->seed, mb * (uint64_t)o->batch + (uint64_t)first, B, T, in, tg);
            else
                dataset_sample(&train, o->seed, mb, first, B, T, in, tg);
            red[0] += model_forward(m, in, tg, B, T, NULL) / o->accum;
            model_set_reduce(m, micro == o->accum - 1);  // the last backward all-reduces as it goes
            model_backward(m, in, gscale);
        }
        red[1] = stop_signal || (o->max_seconds > 0 && now_s() - t_start >= o->max_seconds);
        dist_allreduce_sum_double(red, 2);
        double loss = red[0] / world;
        double lr = train_lr(o->lr, o->min_lr_frac, o->warmup, o->steps, step);
        double norm = model_step(m, (float)lr, (float)o->weight_decay, (float)o->clip, (int)step);
        double ms = (now_s() - t0) * 1e3, tok_s = (double)o->batch * T * o->accum / (ms * 1e-3);
        if (!isfinite(loss)) {  // the same on every rank: the loss was all-reduced
            if (root)
                fprintf(stderr, "glia train: step %ld: the loss is not finite (%g); stopping without saving\n", step, loss);
            rc = 1;
            goto done;
        }
        if (step > 1) ms_sum += ms, timed++;
        double avg = timed ? ms_sum / timed : ms;
        char eta[32];
        fmt_eta(eta, sizeof eta, avg * 1e-3 * (o->steps - step));
        if (root && !o->quiet)
            printf("step %5ld/%ld | loss %.4f | lr %.2e | norm %.3f | %8.0f tok/s | %7.1f ms | eta %s\n",
                   step, o->steps, loss, lr, norm, tok_s, ms, eta);
        char jb[6][40];
        if (root)
            fprintf(metrics, "{\"step\": %ld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, \"tok_s\": %s, \"ms\": %s}\n",
                    step, jnum(jb[0], "%.6f", loss), jnum(jb[1], "%.6e", lr), jnum(jb[2], "%.6f", norm),
                    jnum(jb[3], "%.1f", tok_s), jnum(jb[4], "%.3f", ms));
        if (root && o->stats_every > 0 && step % o->stats_every == 0) write_stats(metrics, m, step, "train");
        // A stop by a signal (agreed: the ranks may have seen different ones)
        // skips the evaluation and the sample of a finished run, to save and
        // exit soon; a stop by --max-seconds ends the run as before.
        if (red[1] > 0 && step < o->steps) interrupted = dist_allreduce_max_int(stop_signal);
        int last = step == o->steps || red[1] > 0;
        int eval_now = o->eval_every > 0 && (step % o->eval_every == 0 || (last && !interrupted));
        if (root && eval_now && o->task) {
            double acc, vl;
            long n;
            task_eval(m, o->task, o->seed + TASK_VAL_SEED_OFFSET, B, o->eval_batches * o->batch, &acc, &vl, &n);
            printf("step %5ld/%ld | val loss %.4f | val acc %.4f (%ld answers; chance %.4f)\n", step, o->steps, vl,
                   acc, n, task_chance(o->task));
            fprintf(metrics, "{\"step\": %ld, \"val_loss\": %s, \"val_acc\": %s}\n", step,
                    jnum(jb[0], "%.6f", vl), jnum(jb[1], "%.6f", acc));
        } else if (!o->task && eval_now) {
            long nw;  // every rank scores its share of the windows (train_eval)
            double vl = train_eval(m, &val, B, T, o->eval_batches, &nw);
            if (root) printf("step %5ld/%ld | val loss %.4f | %.4f bits/token (%ld windows)\n", step, o->steps,
                   vl, vl / 0.69314718055994530942, nw);
            if (root) fprintf(metrics, "{\"step\": %ld, \"val_loss\": %s, \"val_bits_per_token\": %s}\n",
                    step, jnum(jb[0], "%.6f", vl), jnum(jb[1], "%.6f", vl / 0.69314718055994530942));
            if (root && o->stats_every > 0 && nw > 0) write_stats(metrics, m, step, "val");
        }
        if (root) {
            fflush(stdout);
            fflush(metrics);
        }
        stopped_early = !last && step == o->stop_after;
        if ((o->ckpt_every > 0 && step % o->ckpt_every == 0) || last || stopped_early) {
            if ((rc = save_all(o, m, &sh, step, path))) goto done;
        }
        if (last || stopped_early) break;
    }
    if (stopped_early) {
        if (root) printf("glia train: stopped after step %ld (--stop-after); continue with --resume\n", step);
        rc = 0;
        goto done;
    }
    if (interrupted) {
        if (root)
            printf("glia train: stopped by %s after step %ld of %ld, checkpoint saved; exit status %d: continue "
                   "with --resume\n", interrupted == SIGTERM ? "SIGTERM" : interrupted == SIGINT ? "SIGINT" : "a signal",
                   step, o->steps, TRAIN_EXIT_INTERRUPTED);
        rc = TRAIN_EXIT_INTERRUPTED;
        goto done;
    }
    if (step > o->steps) step = o->steps;
    if (root) printf("glia train: %ld steps in %.1f s; model saved to %s\n", step, now_s() - t_start, path);

    if (root && o->sample_tokens > 0 && !o->task) {
        Tokenizer tk;
        char terr[800];
        int have_tk = tokenizer_open(&o->cfg, &tk, terr, sizeof terr) == 0;
        if (!have_tk) fprintf(stderr, "glia train: sample.txt holds token ids: %s\n", terr);
        model_alloc_acts(m, 1, 1);
        ModelState *st = model_state_new(m, 1);
        Rng rng;
        rng_init(&rng, o->seed);
        SampleParams sp = {.temperature = 0.8f, .top_k = 0, .top_p = 0.95f};
        int prompt = o->cfg.V == BPE_VOCAB ? BPE_EOT : '\n';
        char spath[4200];
        snprintf(spath, sizeof spath, "%s/sample.txt", o->out);
        int *toks = xmalloc((size_t)o->sample_tokens * sizeof(int));
        printf("---- sample (temperature 0.8, top-p 0.95) ----\n");
        generate_tokens(m, st, &prompt, 1, o->sample_tokens, &sp, &rng, stdout, toks, have_tk ? &tk : NULL);
        printf("\n----\n");
        FILE *sf = fopen(spath, "w");
        if (sf) {  // the text (or ids without a tokenizer)
            for (int i = 0; i < o->sample_tokens; i++) {
                int len;
                const unsigned char *b = have_tk ? tokenizer_bytes(&tk, toks[i], &len) : NULL;
                if (b) fwrite(b, 1, (size_t)len, sf);
                else fprintf(sf, "%d ", toks[i]);
            }
            fclose(sf);
        }
        free(toks);
        if (have_tk) tokenizer_free(&tk);
        model_state_free(st);
    }
    rc = 0;
done:
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (root) train_unlock();
    if (metrics) fclose(metrics);
    free(in);
    free(tg);
    free(mom1);
    free(mom2);
    model_free(m);
    dataset_close(&train);
    dataset_close(&val);
    return rc;
}
