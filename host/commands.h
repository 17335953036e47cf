// commands.h: the entry point of each `glia` command (host/cmd_*.c).
// Each returns the process exit status: 0 done, 2 bad usage or bad input,
// 1 a failure of the environment (a file that cannot be written, ...).
#ifndef GLIA_COMMANDS_H
#define GLIA_COMMANDS_H

#include "model.h"

int cmd_amsu(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int bench_kernels(int argc, char **argv);  // cmd_bench_kernels.c, CUDA builds only

// Shared by the model commands (cmd_device.c); each returns 0, or 2 after a
// one-line error naming `cmd`.
// --device cpu|auto|cuda: sets *cuda (auto: CUDA when built with it and a
// device is found, never the CPU emulator of a GLIA_CUDA_EMU test build).
int device_pick(const char *cmd, const char *value, int *cuda);
// --matmul fp32|tf32|bf16: the GPU's matmul mode (ignored on the CPU).
int device_set_matmul(const char *cmd, const char *value);
// Moves a loaded model to the GPU when `cuda` (for inference: no gradients).
int device_move_model(const char *cmd, Model *m, int cuda);

#endif
