// commands.h: the entry point of each `glia` command (host/cmd_*.c).
// Each returns the process exit status: 0 done, 2 bad usage or bad input,
// 1 a failure of the environment (a file that cannot be written, ...).
#ifndef GLIA_COMMANDS_H
#define GLIA_COMMANDS_H

#include "model/model.h"

int cmd_amsu(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int bench_kernels(int argc, char **argv);  // cmd_bench_kernels.c (an error without CUDA)
int bench_amsu(int argc, char **argv);     // cmd_bench_amsu.c: scan against chunk on the CPU
int bench_tokenizer(int argc, char **argv);  // cmd_bench_tokenizer.c: GPT-2 BPE encoding speed

// Shared by the model commands (cmd_device.c); each returns 0, or 2 after a
// one-line error naming `cmd`.
// --device cpu|auto|cuda and --matmul fp32|tf32|bf16 (NULL: fp32) become
// the backend (auto: CUDA when built with it and a device is found) with its
// matmul mode set. 0, or 2 after a one-line error. host/cmd_device.c.
int device_pick(const char *cmd, const char *device, const char *matmul, const Backend **be);
// --amsu scan|chunk (NULL: the backend's default, its faster path): how the
// AM-SU's astrocyte runs on `be`. 0, or 2 after a one-line error.
int device_set_amsu(const char *cmd, const Backend *be, const char *value);
// Moves a loaded model to backend `be` (inference: no gradients); 0, or 2 after a one-line error.
int device_move_model(const char *cmd, Model *m, const Backend *be);

#endif
