// dist.h: data parallelism across processes: who am I (rank), how many of us
// (world), and the few collectives training needs, over MPI. It sits in
// kernels/common because the CPU backend's collectives (backend.h) are these
// and the CUDA backend broadcasts NCCL's id with them; the host uses it too.
//
// glia runs as one process unless an MPI launcher started it (mpirun, srun
// --mpi=pmix, ...): dist_init looks for the launcher's environment variables
// and calls MPI_Init only then, so a plain `glia train` never touches MPI.
// With MPI inactive every collective is the identity on one process (the
// buffers are left as they are), so callers need no special case and a
// single-process run stays bit for bit what it was before MPI existed.
//
// Failures: every MPI call is checked (mpi_check, common/check.h: file:line
// and MPI's own message) and a failure ends the whole job with MPI_Abort, as does
// dist_abort. A rank that dies is noticed by the launcher, which then ends
// the others (docs/DISTRIBUTED.md gives the measured time), so a collective
// whose peer is gone never waits forever.
#ifndef GLIA_DIST_H
#define GLIA_DIST_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Dist {
    int rank;        // 0..world-1
    int world;       // number of processes (1 without MPI)
    int local_rank;  // rank among the processes of this node (picks the GPU)
    int active;      // 1 when MPI was initialised
} Dist;

// Initialises MPI when launched by an MPI launcher; otherwise rank 0 of 1.
// Call once, first thing in main (it may rewrite argc/argv).
void dist_init(int *argc, char ***argv);
// MPI_Finalize when MPI is active.
void dist_finalize(void);
// This process's place in the job ({0, 1, 0, 0} before dist_init or without MPI).
const Dist *dist_self(void);
static inline int dist_is_root(void) { return dist_self()->rank == 0; }

// In-place sums over all ranks.
void dist_allreduce_sum(float *x, size_t n);
void dist_allreduce_sum_double(double *x, size_t n);
// The largest of each rank's v (agreement on an error code or a stop flag).
int dist_allreduce_max_int(int v);
// In place: buf holds world·n floats; block `rank` gets that block's sum over the ranks.
void dist_reduce_scatter(float *buf, size_t n);
// buf holds world·n floats; block `rank` is this rank's; on return every block is filled.
void dist_allgather(float *buf, size_t n);
// Broadcasts n bytes from rank 0.
void dist_bcast_bytes(void *buf, size_t n);
void dist_barrier(void);
// Ends every process of the job with exit status `code` (plain exit without MPI).
#ifdef __cplusplus
[[noreturn]] void dist_abort(int code);
#else
_Noreturn void dist_abort(int code);
#endif

#ifdef __cplusplus
}
#endif

#endif
