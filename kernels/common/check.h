// check.h: one checked-call family for every library glia calls (CUDA,
// cuBLAS, NCCL, MPI). A failed call cannot be recovered from in the middle
// of a step, so it prints one line, "[LIB ERROR] rank R at file:line: call:
// message", and ends the whole job (MPI_Abort under MPI, so no rank is left
// waiting in a collective for this one). Each library adds one macro:
//   #define cuda_check(call) GLIA_CHECK("CUDA", cudaError_t, cudaSuccess, cudaGetErrorString, call)
#ifndef GLIA_CHECK_H
#define GLIA_CHECK_H

#ifdef __cplusplus
extern "C" {
#endif

// Prints the line above and ends the job; never returns (kernels/common/dist.c).
#ifdef __cplusplus
[[noreturn]]
#else
_Noreturn
#endif
void glia_check_fail(const char *lib, const char *call, const char *message, const char *file, int line);

#ifdef __cplusplus
}
#endif

// ok: the library's success value; message(result): its error string.
#define GLIA_CHECK(lib, type, ok, message, call)                                  \
    do {                                                                          \
        type glia_rc_ = (call);                                                   \
        if (glia_rc_ != (ok)) glia_check_fail(lib, #call, message(glia_rc_), __FILE__, __LINE__); \
    } while (0)

#endif
