// libs.cpp: the emulator's cuBLASLt (through CBLAS) and NCCL (through MPI).
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

#include "cublasLt.h"
#include "cublas_v2.h"
#include "nccl.h"

const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// ---- cuBLASLt --------------------------------------------------------------------

struct glia_emu_lt {
    int unused;
};
struct glia_emu_lt_desc {
    cublasComputeType_t compute;
    int32_t ta, tb;
};
struct glia_emu_lt_layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct glia_emu_lt_pref {
    uint64_t max_workspace;
    uint32_t align[4];  // A, B, C, D
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = new glia_emu_lt();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType scale) {
    if (scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *d = new glia_emu_lt_desc{compute, CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t bytes) {
    if (!d || !buf || bytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t v;
    memcpy(&v, buf, sizeof v);
    if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_DESC_TRANSA) d->ta = v;
    else if (attr == CUBLASLT_MATMUL_DESC_TRANSB) d->tb = v;
    else return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (ld < (int64_t)(rows > 1 ? rows : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *l = new glia_emu_lt_layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = new glia_emu_lt_pref{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t bytes) {
    if (!p || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (bytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->max_workspace, buf, bytes);
        return CUBLAS_STATUS_SUCCESS;
    }
    const int i = (int)attr - (int)CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
    if (i < 0 || i > 3 || bytes != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    uint32_t a;
    memcpy(&a, buf, bytes);
    if (!a || (a & (a - 1))) return CUBLAS_STATUS_INVALID_VALUE;  // a power of two
    p->align[i] = a;
    return CUBLAS_STATUS_SUCCESS;
}

// The problem (m, n, k) the descriptors describe, or CUBLAS_STATUS_INVALID_VALUE /
// NOT_SUPPORTED when they do not make one the library computes.
static cublasStatus_t problem(const glia_emu_lt_desc *d, const glia_emu_lt_layout *A, const glia_emu_lt_layout *B,
                              const glia_emu_lt_layout *C, const glia_emu_lt_layout *D, uint64_t *m, uint64_t *n,
                              uint64_t *k) {
    if (!d || !A || !B || !C || !D) return CUBLAS_STATUS_INVALID_VALUE;
    if (C->type != CUDA_R_32F || D->type != CUDA_R_32F || A->type != B->type) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (A->type == CUDA_R_16BF ? d->compute != CUBLAS_COMPUTE_32F : A->type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    *m = D->rows, *n = D->cols;
    *k = d->ta == CUBLAS_OP_N ? A->cols : A->rows;
    const uint64_t am = d->ta == CUBLAS_OP_N ? A->rows : A->cols;
    const uint64_t bk = d->tb == CUBLAS_OP_N ? B->rows : B->cols, bn = d->tb == CUBLAS_OP_N ? B->cols : B->rows;
    if (am != *m || bk != *k || bn != *n || C->rows != *m || C->cols != *n) return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

// What an algorithm is valid for: FNV-1a over the descriptors' contents.
static uint64_t fingerprint(const glia_emu_lt_desc *d, const glia_emu_lt_layout *const l[4]) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
        for (int i = 0; i < 8; i++) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 1099511628211ull;
    };
    mix((uint64_t)d->compute), mix((uint64_t)d->ta), mix((uint64_t)d->tb);
    for (int i = 0; i < 4; i++) mix((uint64_t)l[i]->type), mix(l[i]->rows), mix(l[i]->cols), mix((uint64_t)l[i]->ld);
    return h;
}
static const uint64_t ALGO_MAGIC = 0x676c69616c74ull;  // "glialt"

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                                              cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!pref || requested <= 0 || !results || !returned) return CUBLAS_STATUS_INVALID_VALUE;
    uint64_t m, n, k;
    cublasStatus_t st = problem(d, A, B, C, D, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const glia_emu_lt_layout *l[4] = {A, B, C, D};
    memset(&results[0], 0, sizeof results[0]);
    results[0].algo.data[0] = ALGO_MAGIC;
    results[0].algo.data[1] = fingerprint(d, l);
    for (int i = 0; i < 4; i++) results[0].algo.data[2 + i] = pref->align[i];
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
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

// The elements a stored operand spans (column-major, its layout), expanded
// to fp32 and rounded to `keep` bits (23: none).
static std::vector<float> operand(const void *p, const glia_emu_lt_layout *l, int keep) {
    size_t n = l->cols ? (size_t)(l->cols - 1) * (size_t)l->ld + l->rows : 0;
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) {
        float x;
        if (l->type == CUDA_R_16BF) {
            uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
            memcpy(&x, &u, 4);
        } else {
            x = ((const float *)p)[i];
        }
        v[i] = keep < 23 ? round_mantissa(x, keep) : x;
    }
    return v;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *,
                              size_t, cudaStream_t) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    uint64_t m, n, k;
    cublasStatus_t st = problem(d, Adesc, Bdesc, Cdesc, Ddesc, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    const glia_emu_lt_layout *l[4] = {Adesc, Bdesc, Cdesc, Ddesc};
    if (!algo || algo->data[0] != ALGO_MAGIC || algo->data[1] != fingerprint(d, l))
        return CUBLAS_STATUS_INVALID_VALUE;  // not the heuristic's answer for these descriptors
    const float b = *(const float *)beta;
    const void *ptr[4] = {A, B, b != 0.0f ? C : D, D};
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ptr[i] % algo->data[2 + i]) return CUBLAS_STATUS_INVALID_VALUE;
    if (C != D && b != 0.0f && Cdesc->ld != Ddesc->ld) return CUBLAS_STATUS_NOT_SUPPORTED;  // glia's one case
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const int keep = d->compute == CUBLAS_COMPUTE_32F_FAST_16BF   ? 7
                     : d->compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? 10
                                                                  : 23;
    std::vector<float> a = operand(A, Adesc, keep), bm = operand(B, Bdesc, keep);
    float *out = (float *)D;
    const int64_t ld = Ddesc->ld;
    if (b != 0.0f && C != D)  // D = C, then accumulate in place: out of place as in cuBLASLt, C unchanged
        for (uint64_t j = 0; j < n; j++) memmove(out + j * ld, (const float *)C + j * ld, m * sizeof(float));
    cblas_sgemm(CblasColMajor, d->ta == CUBLAS_OP_T ? CblasTrans : CblasNoTrans,
                d->tb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, *(const float *)alpha,
                a.data(), (int)Adesc->ld, bm.data(), (int)Bdesc->ld, b, out, (int)ld);
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
