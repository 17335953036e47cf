// nccl.h (emulator): the NCCL collectives glia uses (kernels/cuda/nccl.cu),
// on the CPU emulator. "Device" buffers are host memory here, so a
// communicator of several ranks runs each collective as the matching MPI
// call on MPI_COMM_WORLD (whose ranks dist.c made the NCCL ranks): `mpirun
// -np N glia train --device cuda` runs NCCL's code path end to end without
// a GPU. One rank needs no MPI. Several ranks' collectives are MPI's
// non-blocking ones, finished as the GPU's would be: an event query
// (cudaEventQuery) says "not ready" while one is pending, and the blocking
// waits of the runtime (synchronize, copies, stream waits) finish them; so
// a peer that never joins leaves the others' queries "not ready", as on a
// GPU, and glia's timeout (nccl.cu) must end them.
// Test hook: GLIA_EMU_NCCL_STALL=RANK:N makes rank RANK, at its N-th
// collective (from 1), exit (N followed by 'x': `2:5x`) or hang forever.
#ifndef GLIA_EMU_NCCL_H
#define GLIA_EMU_NCCL_H

#include "cuda_runtime.h"

typedef enum {
    ncclSuccess = 0,
    ncclSystemError = 2,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7
} ncclResult_t;
typedef enum { ncclFloat = 7 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;
typedef struct {
    char internal[128];
} ncclUniqueId;
typedef struct glia_emu_nccl *ncclComm_t;

const char *ncclGetErrorString(ncclResult_t r);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
// Errors of collectives already begun (none here: a dead peer shows as a
// collective that never ends); progresses the pending ones.
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error);
// Drops the communicator and its pending collectives (never finished).
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
// recv (recvcount) = block `rank` of the sum of every rank's send (nranks · recvcount).
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
// recv (nranks · sendcount) = every rank's send, in rank order.
ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);

#endif
