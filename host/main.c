// main.c: the `glia` command: dispatch to one subcommand per host/cmd_*.c.
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} Command;

static const Command COMMANDS[] = {
    {"amsu", cmd_amsu, "one AM-SU layer forward + backward on a safetensors case"},
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

int main(int argc, char **argv) {
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
