// nccl.cu: gradient all-reduce between GPUs with NCCL, for data-parallel
// training (host/dist.h, docs/DISTRIBUTED.md).
//
// MPI starts the processes and tells each its rank; NCCL moves the data
// between GPUs (NVLink, PCIe, InfiniBand) without staging it through host
// memory. The two meet once: rank 0 creates the ncclUniqueId and broadcasts
// it over MPI, then every rank joins the communicator with it. Without MPI
// (a plain single process) the communicator has one rank, so the same code
// path runs, and is tested, on a machine with one GPU. One communicator per
// process, kept in a static: glia trains one model per process.
//
// Errors: nccl_check prints file:line and NCCL's message and ends the job
// (through dist_abort, so under MPI every rank ends, never just this one).
#include <nccl.h>

#include "cuda/cuda.h"
#include "cuda/cuda_common.h"
#include "dist.h"

static void nccl_check_impl(ncclResult_t r, const char *file, int line) {
    if (r != ncclSuccess) {
        fprintf(stderr, "[NCCL ERROR] at %s:%d: %s (%d)\n", file, line, ncclGetErrorString(r), (int)r);
        dist_abort(1);
    }
}
#define nccl_check(call) nccl_check_impl((call), __FILE__, __LINE__)

static ncclComm_t comm;
static int comm_ready;

void dist_nccl_init(const Dist *d) {
    if (comm_ready) return;
    int ndev = 0;
    cuda_check(cudaGetDeviceCount(&ndev));
    cuda_check(cudaSetDevice(d->local_rank % ndev));  // one process per GPU
    ncclUniqueId id;
    if (d->rank == 0) nccl_check(ncclGetUniqueId(&id));
    dist_bcast_bytes(&id, sizeof id);  // the identity without MPI
    nccl_check(ncclCommInitRank(&comm, d->world, id, d->rank));
    comm_ready = 1;
}

static void require_comm(const char *what) {
    if (!comm_ready) {
        fprintf(stderr, "[NCCL ERROR] %s before dist_nccl_init\n", what);
        dist_abort(1);
    }
}

void dist_nccl_allreduce_sum(float *device_buf, size_t n, void *stream) {
    require_comm("dist_nccl_allreduce_sum");
    nccl_check(ncclAllReduce(device_buf, device_buf, n, ncclFloat, ncclSum, comm, (cudaStream_t)stream));
}

void dist_nccl_reduce_scatter(float *buf, size_t n, void *stream) {
    require_comm("dist_nccl_reduce_scatter");
    float *mine = buf + (size_t)dist_self()->rank * n;  // in place: the result lands in this rank's block
    nccl_check(ncclReduceScatter(buf, mine, n, ncclFloat, ncclSum, comm, (cudaStream_t)stream));
}

void dist_nccl_allgather(float *buf, size_t n, void *stream) {
    require_comm("dist_nccl_allgather");
    const float *mine = buf + (size_t)dist_self()->rank * n;  // in place: this rank's block is the source
    nccl_check(ncclAllGather(mine, buf, n, ncclFloat, comm, (cudaStream_t)stream));
}

void dist_nccl_free(void) {
    if (!comm_ready) return;
    nccl_check(ncclCommDestroy(comm));
    comm_ready = 0;
}
