// util.c: see include/glia/util.h.
#include "glia/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void *glia_malloc_checked(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) glia_fatal(file, line, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *glia_calloc_checked(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) glia_fatal(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void glia_fatal(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "glia: fatal: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (%s:%d)\n", file, line);
    va_end(ap);
    exit(1);
}
