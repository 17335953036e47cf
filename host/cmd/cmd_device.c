// cmd_device.c: the one place where glia chooses a backend. The --device and
// --matmul flags every model command shares (train, eval, generate, serve,
// bench generate, amsu) become a `const Backend *` here, and nothing after
// this file asks which device it is: the model and the commands call the
// backend table (common/backend.h). Builds without CUDA have the CPU only.
#include <stdio.h>

#include "cmd/cli.h"
#include "cmd/commands.h"

// The CUDA backend when this glia has one and a device is found, else NULL;
// *built says whether this glia was built with CUDA at all. The emulator of a
// test build (GLIA_CUDA_EMU) is a device only when asked for by name.
static const Backend *cuda_backend(int by_name, int *built) {
#ifdef GLIA_HAVE_CUDA
    *built = 1;
#ifdef GLIA_CUDA_EMU
    if (!by_name) return NULL;
#endif
    (void)by_name;
    return backend_cuda();
#else
    (void)by_name;
    *built = 0;
    return NULL;
#endif
}

int device_pick(const char *cmd, const char *device, const char *matmul, const Backend **be) {
    static const char *const devices[] = {"cpu", "auto", "cuda"}, *const modes[] = {"fp32", "tf32", "bf16"};
    int d, mode = 0, built;
    *be = backend_cpu();
    if (cli_choice(cmd, "--device", device, devices, 3, &d)) return 2;
    if (matmul && cli_choice(cmd, "--matmul", matmul, modes, 3, &mode)) return 2;
    if (d == 0) return 0;
    const Backend *gpu = cuda_backend(d == 2, &built);
    if (d == 2 && !gpu) {
        if (built) fprintf(stderr, "glia %s: --device cuda: no CUDA device found; use --device cpu or auto\n", cmd);
        else
            fprintf(stderr, "glia %s: --device cuda: this glia was built without CUDA (no nvcc at build time); use "
                            "--device cpu or auto\n", cmd);
        return 2;
    }
    if (gpu) *be = gpu;
    (*be)->set_matmul(mode);
    return 0;
}

int device_move_model(const char *cmd, Model *m, const Backend *be) {
    char err[512];
    if (model_to_backend(m, be, err, sizeof err)) {
        fprintf(stderr, "glia %s: %s\n", cmd, err);
        return 2;
    }
    return 0;
}

int device_set_amsu(const char *cmd, const Backend *be, const char *value) {
    static const char *const modes[] = {"scan", "chunk"};
    int mode;
    if (!value) return 0;  // the backend's own default: its faster path
    if (cli_choice(cmd, "--amsu", value, modes, 2, &mode)) return 2;
    if (be->set_amsu(mode)) {
        fprintf(stderr, "glia %s: --amsu %s: the %s backend does not have it yet; use --amsu scan\n", cmd, value,
                be->name);
        return 2;
    }
    return 0;
}
