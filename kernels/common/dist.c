// dist.c: see dist.h.
//
// Launcher detection reads the environment rather than asking MPI, because
// MPI_Init in a process that no launcher started is slow (OpenMPI then
// starts a singleton runtime) and can fail outright in containers; a plain
// `glia train` must not depend on any of that. The variables: OpenMPI's
// mpirun sets OMPI_COMM_WORLD_SIZE, MPICH/Hydra PMI_SIZE, PMIx launchers
// (srun --mpi=pmix, prterun) PMIX_RANK; under Slurm, SLURM_PROCID with
// SLURM_NTASKS > 1 means srun started several tasks of one job.
//
// Errors: MPI's default handler on MPI_COMM_WORLD aborts without saying
// where; it is replaced by MPI_ERRORS_RETURN so that mpi_check can print the
// call site and MPI's message, then MPI_Abort the job (exit status 1).
// Counts above INT_MAX are sent in chunks, since MPI counts are int.
#include "common/dist.h"

#include "common/check.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static Dist self = {0, 1, 0, 0};

// MPI's message for an error code (a static buffer: the caller ends the job).
static const char *mpi_message(int rc) {
    static char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
    return msg;
}
#define mpi_check(call) GLIA_CHECK("MPI", int, MPI_SUCCESS, mpi_message, call)

void glia_check_fail(const char *lib, const char *call, const char *message, const char *file, int line) {
    fprintf(stderr, "[%s ERROR] rank %d at %s:%d: %s: %s\n", lib, self.rank, file, line, call, message);
    dist_abort(1);
}

static int env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : dflt;
}

static int launched_by_mpi(void) {
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK")) return 1;
    return getenv("SLURM_PROCID") && env_int("SLURM_NTASKS", 1) > 1;
}

void dist_init(int *argc, char ***argv) {
    if (self.active || !launched_by_mpi()) return;
    mpi_check(MPI_Init(argc, argv));
    mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &self.rank));
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &self.world));
    // the processes sharing this node's memory: their rank among them picks the GPU
    MPI_Comm node;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, self.rank, MPI_INFO_NULL, &node));
    mpi_check(MPI_Comm_rank(node, &self.local_rank));
    mpi_check(MPI_Comm_free(&node));
    self.active = 1;
}

void dist_finalize(void) {
    if (!self.active) return;
    mpi_check(MPI_Finalize());
    self.active = 0;
}

const Dist *dist_self(void) { return &self; }

// Runs `op` over n elements in chunks of at most INT_MAX.
#define CHUNKED(n, body)                                                  \
    for (size_t off_ = 0; off_ < (n);) {                                  \
        int cnt_ = (n) - off_ > (size_t)INT_MAX ? INT_MAX : (int)((n) - off_); \
        body;                                                             \
        off_ += (size_t)cnt_;                                             \
    }

void dist_allreduce_sum(float *x, size_t n) {
    if (!self.active) return;
    CHUNKED(n, mpi_check(MPI_Allreduce(MPI_IN_PLACE, x + off_, cnt_, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD)))
}

void dist_allreduce_sum_double(double *x, size_t n) {
    if (!self.active) return;
    CHUNKED(n, mpi_check(MPI_Allreduce(MPI_IN_PLACE, x + off_, cnt_, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD)))
}

int dist_allreduce_max_int(int v) {
    if (!self.active) return v;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return v;
}

void dist_reduce_scatter(float *buf, size_t n) {
    if (!self.active) return;
    if (n > (size_t)INT_MAX) {  // one block per rank must fit an int count
        fprintf(stderr, "glia: dist_reduce_scatter: %zu floats per rank is more than MPI's int counts hold\n", n);
        dist_abort(1);
    }
    // MPI's in-place form leaves the sum of block `rank` at the front; NCCL's, in block `rank`
    mpi_check(MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    memmove(buf + (size_t)self.rank * n, buf, n * sizeof(float));
}
void dist_allgather(float *buf, size_t n) {
    if (!self.active) return;
    if (n > (size_t)INT_MAX) {
        fprintf(stderr, "glia: dist_allgather: %zu floats per rank is more than MPI's int counts hold\n", n);
        dist_abort(1);
    }
    mpi_check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)n, MPI_FLOAT, MPI_COMM_WORLD));
}

void dist_bcast_bytes(void *buf, size_t n) {
    if (!self.active) return;
    CHUNKED(n, mpi_check(MPI_Bcast((char *)buf + off_, cnt_, MPI_BYTE, 0, MPI_COMM_WORLD)))
}

void dist_barrier(void) {
    if (self.active) mpi_check(MPI_Barrier(MPI_COMM_WORLD));
}

_Noreturn void dist_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    if (self.active) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}
