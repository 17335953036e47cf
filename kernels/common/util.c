// util.c: see include/glia/util.h.
#include "glia/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int glia_sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t n = !slash ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = glia_malloc_checked(n + 1, __FILE__, __LINE__);
    if (!slash) dir[0] = '.';
    else memcpy(dir, path, n);
    dir[n] = '\0';
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0 && (saved == EINVAL || saved == ENOTSUP)) rc = 0;
    errno = saved;
    return rc;
}

int glia_mkdirs(const char *dir, char *err, size_t err_len) {
    size_t n = strlen(dir);
    char *p = glia_malloc_checked(n + 1, __FILE__, __LINE__);
    memcpy(p, dir, n + 1);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        char c = p[i];
        p[i] = '\0';
        struct stat st;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            snprintf(err, err_len, "%s: cannot create directory: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            snprintf(err, err_len, "%s: exists and is not a directory", p);
            free(p);
            return -1;
        }
        p[i] = c;
    }
    free(p);
    return 0;
}
