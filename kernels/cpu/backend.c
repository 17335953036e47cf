// backend.c: the CPU backend's table (common/backend.h): host memory, the
// ops of cpu.h, and MPI for the collectives (common/dist.h). Most entries
// are cpu.h's functions themselves; the wrappers below only adapt a
// signature (scratch the CPU does not need) or loop over rows.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/backend.h"
#include "common/dist.h"
#include "cpu/cpu.h"

static void *cpu_alloc(size_t bytes) { return malloc(bytes ? bytes : 1); }
static const char *cpu_last_error(void) { return "out of host memory"; }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memmove(dst, src, bytes); }
// In 1 MiB pieces over the threads: one core does not reach the memory's
// write bandwidth (a 124m model's gradients, 473 MiB: 38 ms by one memset,
// 20 ms by two threads, measured on a busy 2-core machine).
static void cpu_zero(void *p, size_t bytes) {
    const size_t piece = (size_t)1 << 20, n = (bytes + piece - 1) / piece;
#pragma omp parallel for schedule(static) if (n > 1)
    for (size_t i = 0; i < n; i++) {
        const size_t left = bytes - i * piece;
        memset((char *)p + i * piece, 0, left < piece ? left : piece);
    }
}
static void cpu_describe(char *buf, size_t len) { snprintf(buf, len, "CPU, %d threads", omp_get_max_threads()); }
static void cpu_set_matmul(int mode) { (void)mode; }  // fp32 only: every product is exact fp32

static int cpu_amsu(int mode) {
    cpu_set_amsu(mode);
    return 0;
}

static size_t no_scratch(int a, int b) { return (void)a, (void)b, 0; }
static void rmsnorm_bwd(float *dx, float *dg, float *scratch, const float *dout, const float *x, const float *g,
                        const float *rstd, int N, int C) {
    (void)scratch;
    rmsnorm_backward(dx, dg, dout, x, g, rstd, N, C);
}

static void embedding_fwd(float *x, const int *tokens, const float *E, int M, int C) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) memcpy(x + (size_t)i * C, E + (size_t)tokens[i] * C, C * sizeof(float));
}
static size_t embedding_scr(int M) { return (void)M, 0; }
// In position order, one thread: each token's rows are summed in that order.
static void embedding_bwd(float *dE, const float *dx, const int *tokens, int *scratch, int M, int C) {
    (void)scratch;
    for (int i = 0; i < M; i++) {
        float *ge = dE + (size_t)tokens[i] * C;
        const float *d = dx + (size_t)i * C;
        for (int j = 0; j < C; j++) ge[j] += d[j];
    }
}

static void neuron_bwd(float *dcurrent, float *dm, float *da_beta, float *scratch, const float *ds, const float *u,
                       const float *o, const float *s, const float *a_beta, int B, int T, int N, int ld,
                       const NeuronTestMode *test) {
    (void)scratch;
    neuron_backward(dcurrent, dm, da_beta, ds, u, o, s, a_beta, B, T, N, ld, test);
}

// Columns in the outer loop, rows ascending inside: the GPU's order.
static void column_sums(double *sums, const float *x, int M, int N, int absval) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        double acc = 0.0;
        for (int m = 0; m < M; m++) {
            const float v = x[(size_t)m * N + n];
            acc += absval ? fabs((double)v) : (double)v;
        }
        sums[n] = acc;
    }
}

static int any_head(int D) { return D >= 1; }

static void comm_init(int rank, int world, int local_rank) { (void)rank, (void)world, (void)local_rank; }
static void allreduce_begin(float *buf, size_t n) { dist_allreduce_sum(buf, n); }  // returns when done
static void allreduce_wait(void) {}

static const Backend cpu = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .last_error = cpu_last_error,
    .free = free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .describe = cpu_describe,
    .set_matmul = cpu_set_matmul,
    .set_amsu = cpu_amsu,
    .matmul_forward = matmul_forward,
    .matmul_backward = matmul_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_scratch = no_scratch,
    .rmsnorm_backward = rmsnorm_bwd,
    .embedding_forward = embedding_fwd,
    .embedding_scratch = embedding_scr,
    .embedding_backward = embedding_bwd,
    .neuron_forward = neuron_forward,
    .neuron_scratch = no_scratch,
    .neuron_backward = neuron_bwd,
    .amsu_head_ok = any_head,
    .amsu_scratch = amsu_scratch_size,
    .amsu_forward = amsu_forward,
    .amsu_backward = amsu_backward,
    .xent_forward = xent_forward,
    .xent_backward = xent_backward,
    .adamw = adamw_update,
    .grad_norm_sq = grad_norm_sq,
    .column_sums = column_sums,
    .comm_init = comm_init,
    .allreduce_begin = allreduce_begin,
    .allreduce_wait = allreduce_wait,
    .reduce_scatter = dist_reduce_scatter,
    .allgather = dist_allgather,
};

const Backend *backend_cpu(void) { return &cpu; }
