// nccl.h (emulator): the NCCL collectives glia uses (kernels/cuda/nccl.cu),
// on the CPU emulator. "Device" buffers are host memory here, so a
// communicator of several ranks runs each collective as the matching MPI
// call on MPI_COMM_WORLD (whose ranks dist.c made the NCCL ranks): `mpirun
// -np N glia train --device cuda` runs NCCL's code path end to end without
// a GPU. One rank needs no MPI.
#ifndef GLIA_EMU_NCCL_H
#define GLIA_EMU_NCCL_H

#include "cuda_runtime.h"

typedef enum { ncclSuccess = 0, ncclInvalidArgument = 4, ncclInvalidUsage = 5 } ncclResult_t;
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
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
// recv (recvcount) = block `rank` of the sum of every rank's send (nranks · recvcount).
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
// recv (nranks · sendcount) = every rank's send, in rank order.
ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);

#endif
