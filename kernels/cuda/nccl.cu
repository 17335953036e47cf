// nccl.cu: gradient all-reduce between GPUs with NCCL, for data-parallel
// training (kernels/common/dist.h, docs/DISTRIBUTED.md). The CUDA backend's
// collectives (backend.h) are these.
//
// MPI starts the processes and tells each its rank; NCCL moves the data
// between GPUs (NVLink, PCIe, InfiniBand) without staging it through host
// memory. The two meet once: rank 0 creates the ncclUniqueId and broadcasts
// it over MPI, then every rank joins the communicator with it. Without MPI
// (a plain single process) the communicator has one rank, so the same code
// path runs, and is tested, on a machine with one GPU. One communicator per
// process, kept in a static: glia trains one model per process.
//
// Errors: nccl_check (common/check.h) prints file:line and NCCL's message and
// ends the job, so under MPI every rank ends, never just this one.
//
// A dead or stuck peer: NCCL's kernels would wait for it forever, and so
// would this rank. So the host never blocks on a collective: it waits by
// polling an event recorded after it, asking NCCL for asynchronous errors
// (ncclCommGetAsyncError) between polls, for at most the timeout
// (GLIA_NCCL_TIMEOUT_S, set by `glia train --nccl-timeout`; default 300 s).
// On an error or the timeout it aborts the communicator (ncclCommAbort),
// prints one line naming this rank and what did not finish, and exits 1;
// mpirun then ends the other ranks, as it does when a CPU rank dies.
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common/dist.h"
#include "cuda/cuda.h"
#include "cuda/cuda_common.h"

#define nccl_check(call) GLIA_CHECK("NCCL", ncclResult_t, ncclSuccess, ncclGetErrorString, call)

static ncclComm_t comm;
static int comm_ready, comm_rank, comm_world;
static double timeout_s = 300.0;
static void *poll_event;
// The overlapped all-reduce: NCCL runs on its own stream; each reduction
// waits for an event recorded on the default stream when it was begun.
static void *comm_stream;
static void *events[64];  // one per reduction begun since the last wait (cycled)
static int nbegun;
static void *done_event;

// GLIA_NCCL_DELAY_US=N (tools/device_check.sh): each all-reduce begun is
// preceded on the NCCL stream by a kernel that spins about N microseconds,
// so the backward kernels queued meanwhile on the default stream truly run
// while the reduction is pending, as on a slow network: a missing or
// misplaced event wait then shows as wrong sums (or a hang) instead of
// hiding behind a fast all-reduce. 0 or unset: no delay.
static long long delay_cycles = -1;  // -1: not read yet

__global__ void nccl_delay_kernel(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

static void delay_comm_stream(void) {
    if (delay_cycles < 0) {
        const char *e = getenv("GLIA_NCCL_DELAY_US");
        long long us = e ? atoll(e) : 0;
        delay_cycles = us > 0 ? us * 2000 : 0;  // at about 2 GHz (H100, H200: 1.98 GHz boost)
    }
    if (!delay_cycles) return;
    nccl_delay_kernel<<<1, 1, 0, (cudaStream_t)comm_stream>>>(delay_cycles);
    cuda_check(cudaGetLastError());
}

void cuda_comm_init(int rank, int world, int local_rank) {
    if (comm_ready) return;
    int ndev = 0;
    cuda_check(cudaGetDeviceCount(&ndev));
    cuda_check(cudaSetDevice(local_rank % ndev));  // one process per GPU
    ncclUniqueId id;
    if (rank == 0) nccl_check(ncclGetUniqueId(&id));
    dist_bcast_bytes(&id, sizeof id);  // the identity without MPI
    nccl_check(ncclCommInitRank(&comm, world, id, rank));
    comm_rank = rank, comm_world = world;
    comm_ready = 1;
    const char *e = getenv("GLIA_NCCL_TIMEOUT_S");
    if (e && atof(e) > 0) timeout_s = atof(e);
    poll_event = cuda_event_new();
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Ends this rank after a collective failed or never finished (see the top).
static void comm_fail(const char *what, const char *why) {
    ncclCommAbort(comm);
    comm_ready = 0;
    fprintf(stderr, "glia: rank %d of %d: NCCL %s %s; communicator aborted (a peer died or hangs?)\n", comm_rank,
            comm_world, what, why);
    fflush(stderr);
    exit(1);
}

// Waits until what `stream` holds so far has run, polling (see the top).
static void wait_polling(void *stream, const char *what) {
    cuda_event_record(poll_event, stream);
    const double t0 = seconds();
    for (long polls = 0;; polls++) {
        cudaError_t q = cudaEventQuery((cudaEvent_t)poll_event);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) cuda_check(q);
        ncclResult_t async = ncclSuccess;
        nccl_check(ncclCommGetAsyncError(comm, &async));
        if (async != ncclSuccess && async != ncclInProgress) comm_fail(what, ncclGetErrorString(async));
        if (seconds() - t0 > timeout_s) {
            char why[96];
            snprintf(why, sizeof why, "did not finish within %.0f s (--nccl-timeout)", timeout_s);
            comm_fail(what, why);
        }
        if (polls > 100) usleep(200);  // spin first: most collectives finish in microseconds
    }
}

static void require_comm(const char *what) {
    if (!comm_ready) glia_check_fail("NCCL", what, "called before cuda_comm_init", __FILE__, __LINE__);
}

void cuda_allreduce_begin(float *buf, size_t n) {
    require_comm("cuda_allreduce_begin");
    if (!comm_stream) {
        comm_stream = cuda_stream_new();
        done_event = cuda_event_new();
        for (int i = 0; i < 64; i++) events[i] = cuda_event_new();
    }
    void *ev = events[nbegun++ % 64];  // reuse is safe: a wait binds to the record before it
    cuda_event_record(ev, NULL);
    cuda_stream_wait(comm_stream, ev);
    delay_comm_stream();
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, comm, (cudaStream_t)comm_stream));
}

void cuda_allreduce_wait(void) {
    if (!nbegun) return;
    wait_polling(comm_stream, "all-reduce");  // the host waits here, never inside NCCL
    cuda_event_record(done_event, comm_stream);
    cuda_stream_wait(NULL, done_event);  // nothing on the default stream reads the sums before NCCL is done
    nbegun = 0;
}

void cuda_reduce_scatter(float *buf, size_t n) {
    require_comm("cuda_reduce_scatter");
    float *mine = buf + (size_t)comm_rank * n;  // in place: the result lands in this rank's block
    nccl_check(ncclReduceScatter(buf, mine, n, ncclFloat, ncclSum, comm, (cudaStream_t)0));
    wait_polling(NULL, "reduce-scatter");
}

void cuda_allgather(float *buf, size_t n) {
    require_comm("cuda_allgather");
    const float *mine = buf + (size_t)comm_rank * n;  // in place: this rank's block is the source
    nccl_check(ncclAllGather(mine, buf, n, ncclFloat, comm, (cudaStream_t)0));
    wait_polling(NULL, "all-gather");
}

void cuda_comm_free(void) {
    if (!comm_ready) return;
    nccl_check(ncclCommDestroy(comm));
    comm_ready = 0;
}
