// cli.c: see cli.h.
#include "cmd/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glia/util.h"

static void cli_usage(const char *cmd, const char *summary, const CliFlag *flags, int nflags) {
    printf("usage: glia %s [flags]\n\n%s\n\nflags:\n", cmd, summary);
    for (int i = 0; i < nflags; i++) {
        if (!flags[i].help) continue;  // a hidden flag (documented elsewhere, e.g. for tests)
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", flags[i].name, flags[i].metavar ? " " : "",
                 flags[i].metavar ? flags[i].metavar : "");
        printf("  %-22s %s", left, flags[i].help);
        if (flags[i].metavar && flags[i].value) printf(" (default %s)", flags[i].value);
        printf("\n");
    }
    printf("  %-22s %s\n", "--help", "print this help");
}

int cli_parse(const char *cmd, const char *summary, int argc, char **argv, CliFlag *flags,
              int nflags) {
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            cli_usage(cmd, summary, flags, nflags);
            return 1;
        }
        // accept both "--flag value" and "--flag=value"
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        CliFlag *f = NULL;
        for (int i = 0; i < nflags; i++)
            if (strlen(flags[i].name) == len && !strncmp(flags[i].name, arg, len)) f = &flags[i];
        if (!f) {
            fprintf(stderr, "glia %s: unknown %s '%s' (see glia %s --help)\n", cmd,
                    arg[0] == '-' ? "flag" : "argument", arg, cmd);
            return 2;
        }
        if (!f->metavar) {
            if (eq) {
                fprintf(stderr, "glia %s: %s takes no value\n", cmd, f->name);
                return 2;
            }
            f->value = "1";
        } else if (eq) {
            f->value = eq + 1;
        } else if (a + 1 < argc) {
            f->value = argv[++a];
        } else {
            fprintf(stderr, "glia %s: %s needs a value (%s)\n", cmd, f->name, f->metavar);
            return 2;
        }
    }
    return 0;
}

int cli_index(const CliFlag *flags, int nflags, const char *name) {
    for (int i = 0; i < nflags; i++)
        if (!strcmp(flags[i].name, name)) return i;
    fatal("no flag %s in the table", name);
}

const char *cli_get(const CliFlag *flags, int nflags, const char *name) {
    for (int i = 0; i < nflags; i++)
        if (!strcmp(flags[i].name, name)) return flags[i].value;
    return NULL;
}

int cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "glia %s: %s: '%s' is not a whole number\n", cmd, flag, s);
        return 2;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "glia %s: %s: %ld is out of range [%ld, %ld]\n", cmd, flag, v, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
              double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "glia %s: %s: '%s' is not a number\n", cmd, flag, s);
        return 2;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "glia %s: %s: %g is out of range [%g, %g]\n", cmd, flag, v, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

int cli_choice(const char *cmd, const char *flag, const char *s, const char *const *choices,
               int n, int *out) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s, choices[i])) {
            *out = i;
            return 0;
        }
    fprintf(stderr, "glia %s: %s: '%s' is not one of", cmd, flag, s);
    for (int i = 0; i < n; i++) fprintf(stderr, "%s %s", i ? "," : "", choices[i]);
    fprintf(stderr, "\n");
    return 2;
}

int cli_require(const char *cmd, const CliFlag *flags, int nflags, ...) {
    va_list ap;
    va_start(ap, nflags);
    const char *name;
    int rc = 0;
    while (!rc && (name = va_arg(ap, const char *)))
        if (!cli_get(flags, nflags, name)) {
            fprintf(stderr, "glia %s: %s is required (see glia %s --help)\n", cmd, name, cmd);
            rc = 2;
        }
    va_end(ap);
    return rc;
}
