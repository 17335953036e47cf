// cmd_bench_amsu.c: `glia bench amsu`, the AM-SU recurrence on the CPU,
// scanned (one timestep after another, kernels/cpu/amsu.c) against chunked
// (matrix products per chunk, kernels/cpu/astro_chunk.c), side by side in
// one run, at a small one-head shape and at a `124m`-like layer.
//
// "The recurrence" is what the two paths compute differently: the
// astrocyte (o from k, v, q) and the neurons (u, s from I and o), forward,
// and their backward (dI, dk, dv, dq, dλ, dβ from ds), without the five
// projections, which are the same GEMMs in both. The whole layer
// (amsu_forward + amsu_backward, projections included) is timed too. Each
// figure is the median of --reps runs after one warm-up, scan and chunk
// alternating; the ratio is scan / chunk. FLOP rates count the astrocyte's multiply-adds as the scan
// does them (forward 2·D² per token and head, backward 5·D²), so the two
// columns' rates compare work done per second on the same problem.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/bench.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "common/backend.h"
#include "cpu/cpu.h"
#include "glia/util.h"
#include "model/rng.h"

static void fill(float *x, size_t n, float std, Rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(std * rng_gauss(r));
}

typedef struct {
    int B, T, C, Nh;
} Shape;

// Medians (seconds) of the recurrence forward, backward, and the whole layer
// forward + backward, out[mode][part], scan and chunk alternating rep by rep
// so that a change in the machine's load falls on both.
static void run(Shape s, int reps, double out[2][3]) {
    const int B = s.B, T = s.T, C = s.C, Nh = s.Nh;
    const AmsuShape sh = {B, T, C, Nh, 1};
    const size_t n = (size_t)B * T * C, cc = (size_t)C * C;
    Rng r;
    rng_init(&r, 1);
    float *mem = xmalloc(amsu_acts_size(sh) * sizeof(float)), *scratch = xmalloc(amsu_scratch_size(sh) * sizeof(float));
    AmsuActs a;
    amsu_acts_bind(&a, sh, mem);
    float *z = xmalloc(n * 4), *y = xmalloc(n * 4), *dy = xmalloc(n * 4), *dz = xmalloc(n * 4);
    float *W = xmalloc(5 * cc * 4), *G = xcalloc(5 * cc + 2 * (size_t)C, 4), *al = xmalloc(C * 4), *ab = xcalloc(C, 4);
    const int ld = amsu_ld(sh);  // dP (B, T, ld): [dI | dk | dv | dq], the layout of P
    float *ds = xmalloc(n * 4), *dm = xmalloc(n * 4), *dP = xmalloc(4 * n * 4);
    float *dI = dP, *dk = dP + C, *dv = dP + 2 * C, *dq = dP + 3 * C;
    fill(z, n, 1.0f, &r);
    fill(dy, n, 1.0f, &r);
    fill(ds, n, 1.0f, &r);
    fill(W, 5 * cc, 1.0f / (float)C, &r);
    for (int i = 0; i < C; i++) al[i] = (float)(2.0 + rng_gauss(&r));
    AmsuWeights w = {W, W + 4 * cc, al, ab, NULL};
    AmsuGrads g = {G, G + 4 * cc, G + 5 * cc, G + 5 * cc + C};
    amsu_forward(y, &a, z, &w, sh, NULL, NULL, NULL);  // the activations the recurrence reads
    double *t = xmalloc((size_t)(reps + 1) * 6 * sizeof(double));
    for (int rep = 0; rep <= reps; rep++)  // rep 0 warms up
        for (int mode = 0; mode < 2; mode++) {
            cpu_set_amsu(mode ? AMSU_CHUNK : AMSU_SCAN);
            double t0 = bench_now();
            (mode ? astro_forward_chunk : astro_forward)(a.o, a.Hckpt, a.k, a.v, a.q, al, NULL, B, T, C, Nh, ld);
            neuron_forward(a.u, a.s, a.I, a.o, ab, NULL, NULL, B, T, C, ld, NULL);
            double t1 = bench_now();
            neuron_backward(dI, dm, g.da_beta, ds, a.u, a.o, a.s, ab, B, T, C, ld, NULL);
            (mode ? astro_backward_chunk : astro_backward)(dk, dv, dq, g.da_lambda, dm, a.k, a.v, a.q, al, a.Hckpt, B,
                                                            T, C, Nh, ld);
            double t2 = bench_now();
            amsu_forward(y, &a, z, &w, sh, NULL, NULL, NULL);
            amsu_backward(dz, &g, scratch, dy, z, &a, &w, sh, NULL);
            double t3 = bench_now();
            double *row = t + ((size_t)rep * 2 + mode) * 3;
            row[0] = t1 - t0, row[1] = t2 - t1, row[2] = t3 - t2;
        }
    double *col = xmalloc((size_t)reps * sizeof(double));
    for (int mode = 0; mode < 2; mode++)
        for (int k = 0; k < 3; k++) {
            for (int rep = 1; rep <= reps; rep++) col[rep - 1] = t[((size_t)rep * 2 + mode) * 3 + k];
            qsort(col, (size_t)reps, sizeof(double), bench_cmp);
            out[mode][k] = col[reps / 2];
        }
    cpu_set_amsu(AMSU_CHUNK);  // the default again
    free(col), free(t), free(mem), free(scratch), free(z), free(y), free(dy), free(dz), free(W), free(G), free(al),
        free(ab);
    free(ds), free(dm), free(dP);
}

int bench_amsu(int argc, char **argv) {
    CliFlag flags[] = {
        {"--device", "DEV", "cpu (the GPU's AM-SU is timed by glia bench kernels)", "cpu"},
        {"--reps", "N", "timed runs per figure (median)", "5"},
        {"--threads", "N", "CPU threads", NULL},
        {"--shape", "B,T,C,Nh", "one shape instead of the two defaults", NULL},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("bench amsu",
                       "Times the AM-SU recurrence on the CPU, scanned and chunked, side by side (medians).", argc,
                       argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long reps, threads;
    const char *dev = cli_get(flags, nf, "--device");
    if (strcmp(dev, "cpu")) {
        fprintf(stderr, "glia bench amsu: --device %s: this benchmark runs the CPU backend; the GPU's AM-SU is timed by "
                        "glia bench kernels\n", dev);
        return 2;
    }
    if (cli_int("bench amsu", "--reps", cli_get(flags, nf, "--reps"), 1, 1000, &reps)) return 2;
    if (cli_get(flags, nf, "--threads")) {
        if (cli_int("bench amsu", "--threads", cli_get(flags, nf, "--threads"), 1, 4096, &threads)) return 2;
        cpu_set_threads((int)threads);
    }
    Shape shapes[2] = {{8, 1024, 128, 1}, {4, 1024, 768, 12}};
    int ns = 2;
    const char *one = cli_get(flags, nf, "--shape");
    if (one) {
        Shape s;
        if (sscanf(one, "%d,%d,%d,%d", &s.B, &s.T, &s.C, &s.Nh) != 4 || s.B < 1 || s.T < 1 || s.C < 1 || s.Nh < 1 ||
            s.C % s.Nh) {
            fprintf(stderr, "glia bench amsu: --shape '%s': want B,T,C,Nh, positive, with Nh dividing C\n", one);
            return 2;
        }
        shapes[0] = s, ns = 1;
    }
    printf("glia bench amsu: CPU, %d threads, median of %ld\n\n", omp_get_max_threads(), reps);
    printf("| B, T, C, heads | part | scan ms | chunk ms | scan / chunk | scan GFLOP/s | chunk GFLOP/s |\n"
           "|---|---|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < ns; i++) {
        Shape s = shapes[i];
        double tm[2][3];
        run(s, (int)reps, tm);
        const double *ts = tm[0], *tc = tm[1];
        const double D = (double)s.C / s.Nh, tok = (double)s.B * s.T;
        const double fl[3] = {2.0 * 2 * D * D * s.Nh * tok, 2.0 * 5 * D * D * s.Nh * tok, 0.0};
        const char *part[3] = {"recurrence forward", "recurrence backward", "whole layer, fwd + bwd"};
        for (int k = 0; k < 3; k++) {
            printf("| %d, %d, %d, %d | %s | %.1f | %.1f | %.2f |", s.B, s.T, s.C, s.Nh, part[k], ts[k] * 1e3,
                   tc[k] * 1e3, ts[k] / tc[k]);
            if (fl[k] > 0) printf(" %.1f | %.1f |\n", fl[k] / ts[k] * 1e-9, fl[k] / tc[k] * 1e-9);
            else printf(" | |\n");
        }
        printf("| %d, %d, %d, %d | **recurrence fwd + bwd** | %.1f | %.1f | **%.2f** | | |\n", s.B, s.T, s.C, s.Nh,
               (ts[0] + ts[1]) * 1e3, (tc[0] + tc[1]) * 1e3, (ts[0] + ts[1]) / (tc[0] + tc[1]));
        fflush(stdout);
    }
    return 0;
}
