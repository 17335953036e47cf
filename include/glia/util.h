// util.h: checked allocation and fatal errors for the host runtime.
//
// Out-of-memory on the host is not something glia can recover from in the
// middle of a computation, so allocation failures end the process with a
// message naming the call site and the size asked for. Errors caused by the
// user's input are never reported through these: they return codes up to the
// command, which prints one line and exits with status 2.
#ifndef GLIA_UTIL_H
#define GLIA_UTIL_H

#include <stddef.h>

void *glia_malloc_checked(size_t bytes, const char *file, int line);
void *glia_calloc_checked(size_t n, size_t size, const char *file, int line);
_Noreturn void glia_fatal(const char *file, int line, const char *fmt, ...);

// fsync the directory holding `path`, so that a rename into it is durable
// (file systems that cannot sync a directory count as success). 0 or -1/errno.
int glia_sync_parent_dir(const char *path);
// mkdir -p. 0, or -1 with a one-line reason naming the directory in err.
int glia_mkdirs(const char *dir, char *err, size_t err_len);

#define xmalloc(bytes) glia_malloc_checked((bytes), __FILE__, __LINE__)
#define xcalloc(n, size) glia_calloc_checked((n), (size), __FILE__, __LINE__)
#define fatal(...) glia_fatal(__FILE__, __LINE__, __VA_ARGS__)

#endif
