// commands.h: the entry point of each `glia` command (host/cmd_*.c).
// Each returns the process exit status: 0 done, 2 bad usage or bad input,
// 1 a failure of the environment (a file that cannot be written, ...).
#ifndef GLIA_COMMANDS_H
#define GLIA_COMMANDS_H

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

#endif
