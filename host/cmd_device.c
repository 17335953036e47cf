// cmd_device.c: the --device and --matmul flags every model command shares
// (train, eval, generate, serve), and moving a loaded model to the chosen
// backend. One place, so each command says the same thing about a missing
// GPU or a glia built without CUDA.
#include <stdio.h>

#include "cli.h"
#include "commands.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#include "model_cuda.h"
#endif

// --device: cpu, cuda, or auto (CUDA when glia was built with it and a
// device is found; never the CPU emulator of a GLIA_CUDA_EMU test build).
// Sets *cuda; returns 0, or 2 after a one-line error.
int device_pick(const char *cmd, const char *value, int *cuda) {
    static const char *const devices[] = {"cpu", "auto", "cuda"};
    int d;
    *cuda = 0;
    if (cli_choice(cmd, "--device", value, devices, 3, &d)) return 2;
#ifdef GLIA_HAVE_CUDA
    int found = cuda_device_count() > 0;
#ifdef GLIA_CUDA_EMU
    if (d == 1) found = 0;
#endif
    if (d == 2 && !found) {
        fprintf(stderr, "glia %s: --device cuda: no CUDA device found; use --device cpu or auto\n", cmd);
        return 2;
    }
    *cuda = d != 0 && found;
#else
    if (d == 2) {
        fprintf(stderr, "glia %s: --device cuda: this glia was built without CUDA (no nvcc at build "
                "time); use --device cpu or auto\n", cmd);
        return 2;
    }
#endif
    return 0;
}

// --matmul fp32|tf32|bf16: the GPU's matmul mode (ignored on the CPU
// backend); the indices are kernels/cuda/cuda.h's MATMUL_* values.
int device_set_matmul(const char *cmd, const char *value) {
    static const char *const modes[] = {"fp32", "tf32", "bf16"};
    int mode;
    if (cli_choice(cmd, "--matmul", value, modes, 3, &mode)) return 2;
#ifdef GLIA_HAVE_CUDA
    matmul_set_mode(mode);
#endif
    return 0;
}

// Moves a loaded model to the GPU when `cuda`; 0, or 2 after a one-line error.
int device_move_model(const char *cmd, Model *m, int cuda) {
#ifdef GLIA_HAVE_CUDA
    char err[512];
    if (cuda && model_to_cuda(m, 0, err, sizeof err)) {
        fprintf(stderr, "glia %s: %s\n", cmd, err);
        return 2;
    }
#else
    (void)cmd, (void)m, (void)cuda;
#endif
    return 0;
}
