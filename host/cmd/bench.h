// bench.h: the clock and the ordering the benchmark commands share
// (cmd_bench.c, cmd_bench_kernels.c, cmd_bench_amsu.c): medians of wall time.
#ifndef GLIA_BENCH_H
#define GLIA_BENCH_H

#include <time.h>

// Monotonic wall time in seconds.
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// qsort comparator of doubles, ascending.
static inline int bench_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
