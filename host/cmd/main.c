// main.c: the `glia` command: dispatch to one subcommand per host/cmd_*.c.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cpu/cpu.h"
#include "common/dist.h"

// OpenBLAS picks its kernels when it loads, from the CPU it recognises or
// OPENBLAS_CORETYPE. Where it fell back to older kernels than the CPU runs
// (SSE3 on an AVX2 CPU, AVX2 on an AVX-512 one), start again with the better
// ones. A user's own OPENBLAS_CORETYPE is always respected.
static void blas_pick_kernels(char **argv) {
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : cpu_blas_better_core();
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on as we are
}

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} Command;

static const Command COMMANDS[] = {
    {"train", cmd_train, "train a model (default: small, on the King James Bible)"},
    {"generate", cmd_generate, "write text from a trained model"},
    {"eval", cmd_eval, "validation loss, bits per byte and perplexity"},
    {"serve", cmd_serve, "an OpenAI-style completions endpoint over HTTP (continuous batching)"},
    {"bench", cmd_bench, "benchmarks: `glia bench generate` (serving), `glia bench kernels` (the CUDA kernel lab)"},
    {"export", cmd_export, "write a model as config.json + model.safetensors for PyTorch"},
    {"import", cmd_import, "read an exported directory back into a glia model file"},
    {"amsu", cmd_amsu, "one AM-SU layer forward + backward on a safetensors case"},
    {"prepare", cmd_prepare, "turn a text file into train/val token shards (bytes or GPT-2 BPE)"},
};
static const int NCOMMANDS = sizeof COMMANDS / sizeof COMMANDS[0];

static void usage(FILE *to) {
    fprintf(to,
            "glia: astrocyte-modulated spiking language models (AM-SU as defined by this\n"
            "project, after the AstroSNN paper's Fig. 1)\n\nusage: glia COMMAND [flags]\n\n"
            "commands:\n");
    for (int i = 0; i < NCOMMANDS; i++) fprintf(to, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(to, "\n`glia COMMAND --help` describes a command's flags.\n");
}

static int run_command(int argc, char **argv);

int main(int argc, char **argv) {
    // Past a file-size limit (ulimit -f) the kernel sends SIGXFSZ, whose
    // default action ends the process without a word. Ignored, the write
    // fails with EFBIG instead and the save reports it like a full disk.
    signal(SIGXFSZ, SIG_IGN);
    blas_pick_kernels(argv);  // before MPI_Init: it may exec this program again
    // Under an MPI launcher (mpirun, srun) every process joins the job here
    // and leaves it after its command; without one this does nothing.
    dist_init(&argc, &argv);
    int rc = run_command(argc, argv);
    // Output that did not reach its file (stdout closed, a full disk, /dev/full)
    // is a failure whatever the command thought of its work.
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "glia: cannot write standard output%s%s\n", errno ? ": " : "", errno ? strerror(errno) : "");
        if (rc == 0) rc = 1;
    }
    dist_finalize();
    return rc;
}

static int run_command(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "glia: unknown command '%s' (see glia --help)\n", argv[1]);
    return 2;
}
