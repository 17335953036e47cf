// cli.h: command-line flags for glia's commands.
//
// Every command declares its flags once, in a table that also produces its
// --help; parsing is strict (an unknown flag, a missing value or a value of
// the wrong form is a one-line error and exit status 2), so a typo never
// silently runs with a default.
#ifndef GLIA_CLI_H
#define GLIA_CLI_H

typedef struct {
    const char *name;     // "--in"
    const char *metavar;  // "FILE"; NULL for a switch that takes no value
    const char *help;     // NULL: accepted but not listed by --help (a testing aid)
    const char *value;    // in: default (or NULL); out: the given value ("1" for a switch)
} CliFlag;

// Parses argv[1..argc-1] into the table. Returns 0 to run, 1 when --help was
// printed (exit 0), 2 after printing an error (exit 2).
int cli_parse(const char *cmd, const char *summary, int argc, char **argv, CliFlag *flags,
              int nflags);

// The index of the flag called `name` in the table (it must be there).
int cli_index(const CliFlag *flags, int nflags, const char *name);
// The flag's value, NULL when unset.
const char *cli_get(const CliFlag *flags, int nflags, const char *name);

// 0 when every flag named (a NULL-terminated list) was given; else prints
// "glia CMD: --flag is required (see glia CMD --help)" for the first missing
// one and returns 2.
int cli_require(const char *cmd, const CliFlag *flags, int nflags, ...);

// Value conversions: 0 on success; on failure print
// "glia CMD: --flag: ..." and return 2.
int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
              double *out);
int cli_choice(const char *cmd, const char *flag, const char *s, const char *const *choices,
               int n, int *out);

#endif
