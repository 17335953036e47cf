// tasks.c: the generators and scoring of tasks.h.
//
// Each sequence gets its own splitmix64 stream seeded by mixing (seed,
// index), so a sequence never depends on the ones before it: batches split
// across ranks, or regenerated after a resume, are the same tokens.
#include "train/tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"  // xent_row
#include "glia/util.h"
#include "model/rng.h"

static const char *const NAMES[TASK_COUNT] = {"recall", "copy", "selective"};

int task_find(const char *name) {
    for (int i = 0; i < TASK_COUNT; i++)
        if (name && !strcmp(name, NAMES[i])) return i;
    return -1;
}

const char *task_name(int kind) { return kind >= 0 && kind < TASK_COUNT ? NAMES[kind] : "?"; }

int task_min_len(const TaskSpec *s) {
    switch (s->kind) {
    case TASK_RECALL: return 2 * s->pairs + 2 * s->queries;
    case TASK_COPY: return 2 * s->copy_len + s->delay + 1;
    default: return 3 * s->copy_len + 1;  // a region at least as long as the symbols
    }
}

int task_check(const TaskSpec *s, char *err, int err_len) {
    if (s->kind < 0 || s->kind >= TASK_COUNT)
        return snprintf(err, err_len, "--task: not one of recall, copy, selective"), -1;
    if (s->kind == TASK_RECALL) {
        if (s->pairs < 1 || s->pairs > TASK_NKEYS)
            return snprintf(err, err_len, "--pairs %d: must be in [1, %d]", s->pairs, TASK_NKEYS), -1;
        if (s->queries < 1 || s->queries > s->pairs)
            return snprintf(err, err_len, "--queries %d: must be in [1, --pairs %d]", s->queries, s->pairs), -1;
    } else {
        if (s->copy_len < 1) return snprintf(err, err_len, "--copy-len %d: must be at least 1", s->copy_len), -1;
        if (s->delay < 0) return snprintf(err, err_len, "--delay %d: must be at least 0", s->delay), -1;
    }
    if (s->T < task_min_len(s))
        return snprintf(err, err_len, "--task-len %d: task %s needs at least %d tokens", s->T, task_name(s->kind),
                        task_min_len(s)), -1;
    return 0;
}

int task_scored(const TaskSpec *s) { return s->kind == TASK_RECALL ? s->queries : s->copy_len; }

double task_chance(const TaskSpec *s) { (void)s; return 1.0 / TASK_NVALS; }  // every task answers with a symbol

static int draw(Rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

// The first k entries of a random permutation of 0..n-1 (partial Fisher-Yates).
static void pick_distinct(Rng *r, int *out, int n, int k) {
    int *p = xmalloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = 0; i < k; i++) {
        int j = i + draw(r, n - i), t = p[i];
        p[i] = p[j], p[j] = t;
        out[i] = p[i];
    }
    free(p);
}

static void one_recall(const TaskSpec *s, Rng *r, int *in, int *tg) {
    int P = s->pairs, Q = s->queries, T = s->T;
    int keys[TASK_NKEYS], vals[TASK_NKEYS], which[TASK_NKEYS];
    pick_distinct(r, keys, TASK_NKEYS, P);
    for (int i = 0; i < P; i++) {
        vals[i] = draw(r, TASK_NVALS);
        in[2 * i] = TASK_KEY0 + keys[i];
        in[2 * i + 1] = TASK_VAL0 + vals[i];
    }
    pick_distinct(r, which, P, Q);  // the queried pairs, distinct
    // query slots: Q of the (T − 2P) / 2 two-token slots after the pairs, in order
    int nslots = (T - 2 * P) / 2;
    int *slot = xmalloc((size_t)nslots * sizeof(int)), *used = xcalloc((size_t)nslots, sizeof(int));
    pick_distinct(r, slot, nslots, Q);
    for (int q = 0; q < Q; q++) used[slot[q]] = 1;
    int q = 0;
    for (int k = 0; k < nslots; k++) {
        int t = 2 * P + 2 * k;
        if (used[k]) {
            in[t] = TASK_KEY0 + keys[which[q]];
            in[t + 1] = TASK_VAL0 + vals[which[q]];
            tg[t] = in[t + 1];
            q++;
        } else {
            in[t] = in[t + 1] = TASK_FILLER;
        }
    }
    free(slot);
    free(used);
}

static void one_copy(const TaskSpec *s, Rng *r, int *in, int *tg) {
    int S = s->copy_len, N = s->delay;
    for (int i = 0; i < S; i++) in[i] = TASK_VAL0 + draw(r, TASK_NVALS);
    int go = S + N;
    in[go] = TASK_GO;
    for (int i = 0; i < S; i++) {
        in[go + 1 + i] = in[i];
        tg[go + i] = in[i];
    }
}

static void one_selective(const TaskSpec *s, Rng *r, int *in, int *tg) {
    int S = s->copy_len, R = s->T - S - 1;  // the region holding the scattered symbols
    int *pos = xmalloc((size_t)R * sizeof(int)), *mark = xcalloc((size_t)R, sizeof(int));
    pick_distinct(r, pos, R, S);
    for (int i = 0; i < S; i++) mark[pos[i]] = 1;
    int k = 0;
    for (int t = 0; t < R; t++)
        if (mark[t]) in[t] = TASK_VAL0 + draw(r, TASK_NVALS), in[R + 1 + k++] = in[t];
    in[R] = TASK_GO;
    for (int i = 0; i < S; i++) tg[R + i] = in[R + 1 + i];
    free(pos);
    free(mark);
}

void task_batch(const TaskSpec *s, uint64_t seed, uint64_t index, int B, int T, int *inputs, int *targets) {
    for (int b = 0; b < B; b++) {
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        for (int t = 0; t < T; t++) in[t] = TASK_FILLER, tg[t] = -1;
        Rng r;
        rng_init(&r, rng_mix(seed ^ 0x5441534B53ull) + rng_mix(index + (uint64_t)b) * 31 + (uint64_t)s->kind);
        TaskSpec local = *s;
        local.T = T;
        if (s->kind == TASK_RECALL) one_recall(&local, &r, in, tg);
        else if (s->kind == TASK_COPY) one_copy(&local, &r, in, tg);
        else one_selective(&local, &r, in, tg);
    }
}

void task_eval(Model *m, const TaskSpec *s, uint64_t seed, int B, long nseq, double *acc, double *loss, long *n) {
    const int T = s->T, V = m->cfg.V;
    int *in = xmalloc((size_t)B * T * sizeof(int)), *tg = xmalloc((size_t)B * T * sizeof(int));
    long right = 0, scored = 0;
    double xent = 0.0;
    for (long i = 0; i < nseq; i += B) {
        int nb = nseq - i < B ? (int)(nseq - i) : B;
        task_batch(s, seed, (uint64_t)i, nb, T, in, tg);
        model_forward(m, in, tg, nb, T, NULL);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < T; t++) {
                int y = tg[(size_t)b * T + t];
                if (y < 0) continue;
                const float *l = model_logits(m, b, t);
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (l[v] > l[best]) best = v;
                right += best == y;
                xent += xent_row(l, V, y);
                scored++;
            }
    }
    free(in);
    free(tg);
    *acc = scored ? (double)right / scored : 0.0;
    *loss = scored ? xent / scored : 0.0;
    if (n) *n = scored;
}
