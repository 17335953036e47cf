// libs.cpp: the emulator's cuBLAS (through CBLAS) and NCCL (through MPI).
#include <cblas.h>
#define OMPI_SKIP_MPICXX 1  // the C API only: no C++ bindings to link
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vector>

#include "cublas_v2.h"
#include "nccl.h"

struct glia_emu_cublas {
    int unused;
};

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new glia_emu_cublas();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_T ? CblasTrans : CblasNoTrans,
                tb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, m, n, k, *alpha, A, lda, B, ldb,
                *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

// fp32 x rounded to nearest even at `keep` mantissa bits (of 23); finite x.
static float round_mantissa(float x, int keep) {
    uint32_t u;
    memcpy(&u, &x, 4);
    const int drop = 23 - keep;
    u = (u + ((1u << (drop - 1)) - 1u) + ((u >> drop) & 1u)) & ~((1u << drop) - 1u);
    memcpy(&x, &u, 4);
    return x;
}

// The elements an operand of `rows` x `cols` (column-major, leading
// dimension ld) spans, expanded to fp32 and rounded to `keep` bits (23: none).
static std::vector<float> operand(const void *p, cudaDataType t, int rows, int cols, int ld,
                                  int keep) {
    size_t n = cols ? (size_t)(cols - 1) * ld + rows : 0;
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) {
        float x;
        if (t == CUDA_R_16BF) {
            uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
            memcpy(&x, &u, 4);
        } else {
            x = ((const float *)p)[i];
        }
        v[i] = keep < 23 ? round_mantissa(x, keep) : x;
    }
    return v;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                            int lda, const void *B, cudaDataType Btype, int ldb, const void *beta,
                            void *C, cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (Ctype != CUDA_R_32F || Atype != Btype) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (Atype == CUDA_R_16BF && compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const int keep = compute == CUBLAS_COMPUTE_32F_FAST_16BF   ? 7
                     : compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? 10
                                                               : 23;
    std::vector<float> a = ta == CUBLAS_OP_T ? operand(A, Atype, k, m, lda, keep)
                                             : operand(A, Atype, m, k, lda, keep);
    std::vector<float> b = tb == CUBLAS_OP_T ? operand(B, Btype, n, k, ldb, keep)
                                             : operand(B, Btype, k, n, ldb, keep);
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_T ? CblasTrans : CblasNoTrans,
                tb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, m, n, k, *(const float *)alpha,
                a.data(), lda, b.data(), ldb, *(const float *)beta, (float *)C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

struct glia_emu_nccl {
    int nranks, rank;
};

// Collectives of several ranks in flight: the MPI request, and for a
// reduce-scatter the block to copy into place when it completes.
struct PendingCollective {
    MPI_Request req;
    std::vector<float> tmp;
    float *dst;
};
static std::vector<PendingCollective *> pending;
static long ncollectives;

static void finish(PendingCollective *p) {
    if (p->dst) memcpy(p->dst, p->tmp.data(), p->tmp.size() * sizeof(float));
    delete p;
}

namespace glia_emu {
bool nccl_busy(void) {
    for (size_t i = 0; i < pending.size();) {
        int done = 0;
        MPI_Test(&pending[i]->req, &done, MPI_STATUS_IGNORE);
        if (!done) return true;  // in order: a later one is not looked at before
        finish(pending[i]);
        pending.erase(pending.begin() + (long)i);
    }
    return false;
}
void nccl_drain(void) {
    for (PendingCollective *p : pending) {
        MPI_Wait(&p->req, MPI_STATUS_IGNORE);
        finish(p);
    }
    pending.clear();
}
}  // namespace glia_emu

// GLIA_EMU_NCCL_STALL=RANK:N[x]: see nccl.h.
static void maybe_stall(const glia_emu_nccl *comm) {
    ncollectives++;
    const char *e = getenv("GLIA_EMU_NCCL_STALL");
    int rank = -1;
    long at = 0;
    char mode = 0;
    if (!e || sscanf(e, "%d:%ld%c", &rank, &at, &mode) < 2 || rank != comm->rank || at != ncollectives) return;
    fprintf(stderr, "glia CUDA emulator: rank %d %s at its collective %ld (GLIA_EMU_NCCL_STALL)\n", rank,
            mode == 'x' ? "exits" : "hangs", at);
    if (mode == 'x') _exit(3);
    for (;;) pause();
}

static ncclResult_t begin(int rc, PendingCollective *p) {
    if (rc != MPI_SUCCESS) {
        delete p;
        return ncclInvalidUsage;
    }
    pending.push_back(p);
    return ncclSuccess;
}
const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage (the emulator's NCCL needs MPI for several ranks)";
    case ncclSystemError: return "unhandled system error";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown error";
}
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    return ncclSuccess;
}
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId, int rank) {
    int inited = 0, size = 1;
    if (nranks > 1) {
        MPI_Initialized(&inited);
        if (!inited) return ncclInvalidUsage;
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    }
    if (nranks < 1 || rank < 0 || rank >= nranks || size != nranks) return ncclInvalidUsage;
    *comm = new glia_emu_nccl{nranks, rank};
    return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    glia_emu::nccl_drain();
    delete comm;
    return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error) {
    if (!comm) return ncclInvalidArgument;
    glia_emu::nccl_busy();
    *async_error = ncclSuccess;
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    pending.clear();  // their requests are left to MPI, which the process is about to leave
    delete comm;
    return ncclSuccess;
}
static bool usable(ncclComm_t comm, ncclDataType_t type, ncclRedOp_t op) {
    return comm && type == ncclFloat && op == ncclSum;
}
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
    if (!usable(comm, type, op)) return ncclInvalidArgument;
    if (comm->nranks == 1) {
        if (send != recv) memmove(recv, send, count * sizeof(float));
        return ncclSuccess;
    }
    maybe_stall(comm);
    PendingCollective *p = new PendingCollective{MPI_REQUEST_NULL, {}, nullptr};
    return begin(MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, MPI_FLOAT, MPI_SUM,
                                MPI_COMM_WORLD, &p->req), p);
}
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
    if (!usable(comm, type, op)) return ncclInvalidArgument;
    if (comm->nranks == 1) {
        memmove(recv, send, recvcount * sizeof(float));
        return ncclSuccess;
    }
    // through a copy, so that in place (recv = send + rank · recvcount) only
    // this rank's block is written, as with NCCL
    maybe_stall(comm);
    PendingCollective *p = new PendingCollective{MPI_REQUEST_NULL, std::vector<float>(recvcount), (float *)recv};
    return begin(MPI_Ireduce_scatter_block(send, p->tmp.data(), (int)recvcount, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                           &p->req), p);
}
ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t) {
    if (!usable(comm, type, ncclSum)) return ncclInvalidArgument;
    if (comm->nranks == 1) {
        memmove(recv, send, sendcount * sizeof(float));
        return ncclSuccess;
    }
    // NCCL allows send to be recv's own block (in place); MPI spells that MPI_IN_PLACE
    const bool in_place = (const float *)send == (const float *)recv + (size_t)comm->rank * sendcount;
    maybe_stall(comm);
    PendingCollective *p = new PendingCollective{MPI_REQUEST_NULL, {}, nullptr};
    return begin(MPI_Iallgather(in_place ? MPI_IN_PLACE : send, (int)sendcount, MPI_FLOAT, recv, (int)sendcount,
                                MPI_FLOAT, MPI_COMM_WORLD, &p->req), p);
}
