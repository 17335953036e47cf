// test_crash.c: what a crash (power loss, kernel panic) at any moment of
// `glia train`'s checkpoint saves would leave on disk.
//
// glia train runs under the LD_PRELOAD library tests/iotrace_shim.c, which
// records, in order, every create, write, fsync (with a snapshot of the
// file's bytes at that moment), rename, unlink, mkdir and directory fsync
// under the run directory. The test then replays the record and, at every
// point where something became durable, rebuilds the disk a crash right
// there would leave, under the usual pessimistic model of a POSIX file
// system:
//   - a file's bytes survive only as far as its last fsync (its snapshot);
//     a file never fsynced is left empty;
//   - a directory entry (a create, rename, unlink, mkdir, rmdir) survives
//     only once its directory has been fsynced after it; until then the
//     entry is as it was at that directory's previous fsync;
//   - a path exists only if every directory above it does, up to the run
//     directory (created by the test beforehand, so durable).
// On each such image it calls what `glia train --resume` calls
// (train_ckpt_find, then train_ckpt_load) and checks:
//   1. whatever checkpoint is found loads (its COMPLETE, sizes, CRCs and
//      moments agree): the newest complete checkpoint is consistent;
//   2. once a crash would leave a loadable checkpoint, a crash at any later
//      point leaves one too, of the same step or newer: a save never puts
//      the previous checkpoint at risk, and pruning never deletes the last;
//   3. when the run has ended, its last step's checkpoint is durable;
//   4. no file is renamed into place with writes not yet fsynced.
// One image is also resumed through the glia binary and must finish with
// the parameters of the run that never crashed.
//
// Deleting the fsync of st_writer_save, or the directory fsync of
// glia_sync_parent_dir, makes checks 1-3 fail (docs/TRAINING.md, testing).
#define _DEFAULT_SOURCE  // realpath
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/checkpoint.h"
#include "testutil.h"
#include "train/train_ckpt.h"

static char dir[256];
static char out[16384];

static void mk(void) {
    snprintf(dir, sizeof dir, "%s/glia_crash_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    cr_assert(mkdtemp(dir));
    char real[PATH_MAX];
    cr_assert(realpath(dir, real) && strlen(real) < sizeof dir);  // the shim records canonical paths
    memcpy(dir, real, strlen(real) + 1);
}

static void rm(void) { cr_assert_eq(test_sh("rm -rf '%s'", dir), 0); }

TestSuite(crash, .init = mk, .fini = rm, .timeout = 120);

// ---- the replay ----------------------------------------------------------------

enum { MAX_NAMES = 512, MAX_INODES = 4096 };

typedef struct {
    int is_dir;
    char snap[64];   // the snapshot of its last fsync; "" none
    int written;     // written after its last fsync
} Inode;

typedef struct {
    char path[PATH_MAX];
    int inode;
} Entry;

typedef struct {
    Entry e[MAX_NAMES];
    int n;
} Names;

static Inode inodes[MAX_INODES];
static int ninodes;
static Names cur, dur;  // the namespace as the process sees it, and as a crash would leave it

static int new_inode(int is_dir) {
    cr_assert(ninodes < MAX_INODES);
    inodes[ninodes] = (Inode){.is_dir = is_dir};
    return ninodes++;
}

static int find(const Names *t, const char *p) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->e[i].path, p)) return i;
    return -1;
}

static void bind(Names *t, const char *p, int inode) {
    int i = find(t, p);
    if (i < 0) {
        cr_assert(t->n < MAX_NAMES);
        i = t->n++;
        snprintf(t->e[i].path, sizeof t->e[i].path, "%s", p);
    }
    t->e[i].inode = inode;
}

static void unbind(Names *t, const char *p) {
    int i = find(t, p);
    if (i >= 0) t->e[i] = t->e[--t->n];
}

static int inode_of(const char *p) {
    int i = find(&cur, p);
    return i < 0 ? -1 : cur.e[i].inode;
}

// 1 when p's directory is d.
static int in_dir(const char *p, const char *d) {
    size_t n = strlen(d);
    return !strncmp(p, d, n) && p[n] == '/' && !strchr(p + n + 1, '/');
}

static char violations[4096];

// Applies one event of the record.
static void apply(const char *ev, const char *a, const char *b) {
    if (!strcmp(ev, "MKDIR")) {
        bind(&cur, a, new_inode(1));
    } else if (!strcmp(ev, "CREATE")) {
        bind(&cur, a, new_inode(0));
    } else if (!strcmp(ev, "WRITE")) {
        int i = inode_of(a);
        if (i >= 0) inodes[i].written = 1;
    } else if (!strcmp(ev, "FSYNC")) {
        int i = inode_of(a);
        if (i >= 0) {
            snprintf(inodes[i].snap, sizeof inodes[i].snap, "%s", b);
            inodes[i].written = 0;
        }
    } else if (!strcmp(ev, "DIRSYNC")) {
        for (int i = dur.n - 1; i >= 0; i--)
            if (in_dir(dur.e[i].path, a) && find(&cur, dur.e[i].path) < 0) unbind(&dur, dur.e[i].path);
        for (int i = 0; i < cur.n; i++)
            if (in_dir(cur.e[i].path, a)) bind(&dur, cur.e[i].path, cur.e[i].inode);
    } else if (!strcmp(ev, "RENAME")) {
        int i = inode_of(a);
        if (i < 0) return;
        if (inodes[i].written || !inodes[i].snap[0])
            snprintf(violations + strlen(violations), sizeof violations - strlen(violations),
                     "%s renamed to %s with writes not fsynced; ", a, b);
        bind(&cur, b, i);
        unbind(&cur, a);
    } else if (!strcmp(ev, "UNLINK") || !strcmp(ev, "RMDIR")) {
        unbind(&cur, a);
    }
}

// 1 when p (under root) survives a crash now: it and every directory above
// it up to root are durable entries.
static int survives(const char *p, const char *root) {
    if (!strcmp(p, root)) return 1;
    if (find(&dur, p) < 0) return 0;
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", p);
    *strrchr(parent, '/') = '\0';
    return survives(parent, root);
}

static void copy_file(const char *from, const char *to) {
    FILE *in = from ? fopen(from, "rb") : NULL, *o = fopen(to, "wb");
    cr_assert(o, "%s: %s", to, strerror(errno));
    char buf[1 << 16];
    size_t got;
    while (in && (got = fread(buf, 1, sizeof buf, in)) > 0) cr_assert_eq(fwrite(buf, 1, got, o), got);
    if (in) fclose(in);
    cr_assert_eq(fclose(o), 0);
}

// Writes the disk a crash now would leave: root's durable tree, under image.
static void build_image(const char *root, const char *image, const char *snaps) {
    cr_assert_eq(test_sh("rm -rf '%s' && mkdir -p '%s'", image, image), 0);
    size_t rl = strlen(root);
    for (int pass = 0; pass < 2; pass++)  // directories first, shortest first
        for (size_t depth = 1; depth < 16; depth++)
            for (int i = 0; i < dur.n; i++) {
                const Entry *e = &dur.e[i];
                const Inode *in = &inodes[e->inode];
                if (in->is_dir != !pass || !survives(e->path, root)) continue;
                size_t slashes = 0;
                for (const char *c = e->path + rl; *c; c++) slashes += *c == '/';
                if (slashes != depth) continue;
                char p[PATH_MAX + 300], s[PATH_MAX];
                snprintf(p, sizeof p, "%s%s", image, e->path + rl);
                if (in->is_dir) {
                    cr_assert_eq(mkdir(p, 0777), 0, "%s: %s", p, strerror(errno));
                } else {
                    snprintf(s, sizeof s, "%s/%s", snaps, in->snap);
                    copy_file(in->snap[0] ? s : NULL, p);  // never fsynced: empty
                }
            }
}

// What a resume finds in image: the step of a checkpoint that loads, 0 when
// there is none, -1 when one is found but does not load (*why says why).
static long resume_point(const char *image, char *why, size_t why_len) {
    char d[PATH_MAX], err[CKPT_ERR_LEN];
    long step = 0, lstep = 0;
    TrainOptions o;
    if (train_ckpt_find(image, d, sizeof d, &step, &o, err) != 0) {
        snprintf(why, why_len, "%s", err);
        return 0;
    }
    float *m1 = NULL, *m2 = NULL;
    Model *m = train_ckpt_load(d, NULL, &m1, &m2, &lstep, err);
    if (!m) {
        snprintf(why, why_len, "%s", err);
        return -1;
    }
    model_free(m);
    free(m1);
    free(m2);
    return lstep;
}

#define RUN_FLAGS                                                                                         \
    "train --size tiny --batch 4 --seq 16 --threads 1 --quiet --eval-every 0 --sample-tokens 0 --warmup 2 " \
    "--ckpt-every 1 --keep 2"

// Runs glia ARGS under the shim, recording into log (snapshots into snaps)
// the calls under root. Returns the exit status.
static int traced_run(const char *log, const char *root, const char *snaps, const char *fmt, ...) {
    char args[3000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    const char *asan = getenv("ASAN_OPTIONS");
    char asan_opts[1024];
    // the shim is loaded before the sanitizer build's ASan runtime
    snprintf(asan_opts, sizeof asan_opts, "%s%sverify_asan_link_order=0", asan ? asan : "", asan ? ":" : "");
    setenv("GLIA_IOTRACE_LOG", log, 1);
    setenv("GLIA_IOTRACE_PREFIX", root, 1);
    setenv("GLIA_IOTRACE_SNAP", snaps, 1);
    setenv("ASAN_OPTIONS", asan_opts, 1);
    setenv("LD_PRELOAD", GLIA_IOTRACE, 1);
    int st = glia_run(out, sizeof out, "%s", args);
    unsetenv("LD_PRELOAD");
    unsetenv("GLIA_IOTRACE_LOG");
    unsetenv("GLIA_IOTRACE_PREFIX");
    unsetenv("GLIA_IOTRACE_SNAP");
    if (asan) setenv("ASAN_OPTIONS", asan, 1);
    else unsetenv("ASAN_OPTIONS");
    return st;
}

Test(crash, every_crash_point_leaves_a_loadable_checkpoint) {
    char corpus[400], root[400], snaps[400], log[400], image[400], why[CKPT_ERR_LEN];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(corpus, 3000), 0);
    snprintf(root, sizeof root, "%s/run", dir);
    snprintf(snaps, sizeof snaps, "%s/snap", dir);
    snprintf(log, sizeof log, "%s/trace.log", dir);
    snprintf(image, sizeof image, "%s/image", dir);
    cr_assert_eq(glia_run(out, sizeof out, "prepare --in '%s' --out '%s/shards'", corpus, dir), 0, "%s", out);
    cr_assert_eq(test_sh("mkdir -p '%s' '%s'", root, snaps), 0);  // the run directory exists (and is durable)
    const long steps = 4;
    int st = traced_run(log, root, snaps, RUN_FLAGS " --steps %ld --data '%s/shards' --out '%s'", steps, dir, root);
    cr_assert_eq(st, 0, "%s", out);

    FILE *f = fopen(log, "r");
    cr_assert(f, "the shim wrote no record (%s): was it loaded?", log);
    char line[3 * PATH_MAX], ev[32], a[PATH_MAX], b[PATH_MAX];
    long best = 0, images = 0, events = 0, first_ok = -1;
    int fsyncs = 0, dirsyncs = 0;
    for (int end = 0; !end;) {
        end = !fgets(line, sizeof line, f);
        int durable_change = 0;
        if (!end) {
            long pid;
            b[0] = '\0';
            int n = sscanf(line, "%ld %31s %4095s %4095s", &pid, ev, a, b);
            cr_assert(n >= 3, "bad record line: %s", line);
            apply(ev, a, b);
            events++;
            durable_change = !strcmp(ev, "FSYNC") || !strcmp(ev, "DIRSYNC");
            fsyncs += !strcmp(ev, "FSYNC");
            dirsyncs += !strcmp(ev, "DIRSYNC");
        }
        if (!durable_change && !end) continue;
        // a crash right after this event (or, at the end, after the run)
        build_image(root, image, snaps);
        images++;
        long got = resume_point(image, why, sizeof why);
        cr_assert_neq(got, -1, "crash after event %ld (%s): the checkpoint found does not load: %s", events, line,
                      why);
        if (best > 0)
            cr_assert(got >= best, "crash after event %ld (%s): resume finds step %ld, an earlier crash point had "
                      "step %ld: %s", events, line, got, best, got ? "" : why);
        if (got > best) best = got;
        if (got > 0 && first_ok < 0) first_ok = events;
    }
    fclose(f);
    cr_expect_eq(best, steps, "after the run, the checkpoint of its last step (%ld) is durable; resume finds %ld: %s",
                 steps, best, why);
    cr_expect(!violations[0], "%s", violations);
    cr_expect(fsyncs >= 3 * steps && dirsyncs >= 3 * steps, "the record holds the saves: %d fsyncs, %d directory "
              "fsyncs", fsyncs, dirsyncs);
    cr_log_info("%ld events, %ld crash images; a checkpoint survives from event %ld on", events, images, first_ok);
}

// A crash in the middle of the last save (after its model file is durable,
// before its COMPLETE): the image resumes through the glia binary from the
// previous checkpoint and ends bit for bit where the uninterrupted run did.
Test(crash, resume_after_a_crash_mid_save) {
    char corpus[400], root[400], snaps[400], log[400], image[400], whole[400];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(corpus, 3000), 0);
    snprintf(root, sizeof root, "%s/run", dir);
    snprintf(snaps, sizeof snaps, "%s/snap", dir);
    snprintf(log, sizeof log, "%s/trace.log", dir);
    snprintf(image, sizeof image, "%s/image", dir);
    snprintf(whole, sizeof whole, "%s/whole", dir);
    cr_assert_eq(glia_run(out, sizeof out, "prepare --in '%s' --out '%s/shards'", corpus, dir), 0, "%s", out);
    cr_assert_eq(test_sh("mkdir -p '%s' '%s'", root, snaps), 0);
    cr_assert_eq(traced_run(log, root, snaps, RUN_FLAGS " --steps 3 --data '%s/shards' --out '%s'", dir, root), 0,
                 "%s", out);
    FILE *f = fopen(log, "r");
    cr_assert(f);
    char line[3 * PATH_MAX], ev[32], a[PATH_MAX], b[PATH_MAX], want[PATH_MAX];
    snprintf(want, sizeof want, "%s/ckpt/step_00000003/state.rank0.safetensors", root);
    int hit = 0;
    while (!hit && fgets(line, sizeof line, f)) {
        long pid;
        b[0] = '\0';
        cr_assert(sscanf(line, "%ld %31s %4095s %4095s", &pid, ev, a, b) >= 3);
        apply(ev, a, b);
        hit = !strcmp(ev, "RENAME") && !strcmp(b, want);  // step 3's state renamed, COMPLETE not yet written
    }
    fclose(f);
    cr_assert(hit, "no rename of %s in the record", want);
    build_image(root, image, snaps);
    char why[CKPT_ERR_LEN];
    cr_assert_eq(resume_point(image, why, sizeof why), 2, "the crash image resumes from step 2: %s", why);
    cr_assert_eq(glia_run(out, sizeof out, "train --resume --out '%s' --data '%s/shards' --threads 1 --quiet "
                          "--eval-every 0 --sample-tokens 0 --ckpt-every 1", image, dir), 0, "%s", out);
    cr_assert_eq(glia_run(out, sizeof out, RUN_FLAGS " --steps 3 --data '%s/shards' --out '%s'", dir, whole), 0,
                 "%s", out);
    char pa[600], pb[600], err[CKPT_ERR_LEN];
    snprintf(pa, sizeof pa, "%s/model.safetensors", image);
    snprintf(pb, sizeof pb, "%s/model.safetensors", whole);
    Model *ma = ckpt_load_model(pa, NULL, err), *mb = ckpt_load_model(pb, NULL, err);
    cr_assert(ma && mb, "%s", err);
    cr_expect_eq(memcmp(ma->params, mb->params, ma->nparams * sizeof(float)), 0,
                 "resumed after the crash, the run ends where the uninterrupted one did");
    model_free(ma);
    model_free(mb);
}

// The first checkpoint is durable as soon as its save has committed (its
// COMPLETE renamed into place and its directory fsynced), not only at some
// later, unrelated fsync of the run directory. Needs the directory entry
// OUT/ckpt, created by the first save, to be fsynced into OUT as well.
Test(crash, first_checkpoint_durable_at_its_commit) {
    char corpus[400], root[400], snaps[400], log[400], image[400];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(corpus, 3000), 0);
    snprintf(root, sizeof root, "%s/run", dir);
    snprintf(snaps, sizeof snaps, "%s/snap", dir);
    snprintf(log, sizeof log, "%s/trace.log", dir);
    snprintf(image, sizeof image, "%s/image", dir);
    cr_assert_eq(glia_run(out, sizeof out, "prepare --in '%s' --out '%s/shards'", corpus, dir), 0, "%s", out);
    cr_assert_eq(test_sh("mkdir -p '%s' '%s'", root, snaps), 0);
    cr_assert_eq(traced_run(log, root, snaps, RUN_FLAGS " --steps 2 --data '%s/shards' --out '%s'", dir, root), 0,
                 "%s", out);
    FILE *f = fopen(log, "r");
    cr_assert(f);
    char line[3 * PATH_MAX], ev[32], a[PATH_MAX], b[PATH_MAX], complete[PATH_MAX], step_dir[PATH_MAX];
    snprintf(complete, sizeof complete, "%s/ckpt/step_00000001/COMPLETE", root);
    snprintf(step_dir, sizeof step_dir, "%s/ckpt/step_00000001", root);
    int renamed = 0, committed = 0;
    while (!committed && fgets(line, sizeof line, f)) {
        long pid;
        b[0] = '\0';
        cr_assert(sscanf(line, "%ld %31s %4095s %4095s", &pid, ev, a, b) >= 3);
        apply(ev, a, b);
        renamed |= !strcmp(ev, "RENAME") && !strcmp(b, complete);
        committed = renamed && !strcmp(ev, "DIRSYNC") && !strcmp(a, step_dir);
    }
    fclose(f);
    cr_assert(committed, "no commit of step 1 in the record");
    build_image(root, image, snaps);
    char why[CKPT_ERR_LEN];
    long got = resume_point(image, why, sizeof why);
    cr_expect_eq(got, 1, "a crash right after the first save committed resumes from step 1: %s", why);
}
