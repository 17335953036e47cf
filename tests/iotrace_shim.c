// iotrace_shim.c: an LD_PRELOAD library for the crash tests that records the
// file-system calls a process makes under one directory, in order, so a test
// can replay them and ask what a crash at any point would have left on disk
// (tests/test_crash.c).
//
// Environment:
//   GLIA_IOTRACE_LOG     file the events are appended to (required; nothing
//                        is recorded without it)
//   GLIA_IOTRACE_PREFIX  only paths that start with it are recorded
//   GLIA_IOTRACE_SNAP    directory for snapshots: at every fsync of a regular
//                        file, its bytes as they are then (what a crash
//                        right after it would keep) are copied to SNAP/<n>
//   GLIA_IOTRACE_KILL    a substring of an event line: the process that is
//                        about to make the GLIA_IOTRACE_KILL_NTH'th (default
//                        1st) matching call kills itself with SIGKILL
//                        instead (the call is not made)
//   GLIA_IOTRACE_KILL_RANK  ... only in the MPI rank of that number
//                        (OMPI_COMM_WORLD_RANK)
//
// One event per line, "<pid> <EVENT> <path> [<path2 | snapshot>]":
//   CREATE p       p created or truncated for writing (open, fopen)
//   WRITE p        data handed to write() or fwrite() for p
//   FLUSH p        fflush or fclose: stdio's buffer goes to the kernel
//   FSYNC p n      fsync/fdatasync of the regular file p; its bytes are SNAP/n
//   DIRSYNC d      fsync of the directory d
//   RENAME a b     rename(a, b)
//   UNLINK p, MKDIR d, RMDIR d
// Paths of descriptors are read back from /proc/self/fd, so they are
// absolute and name the file as it is called at that moment.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static int active(void) { return getenv("GLIA_IOTRACE_LOG") != NULL; }

static int watched(const char *path) {
    const char *prefix = getenv("GLIA_IOTRACE_PREFIX");
    return path && (!prefix || !strncmp(path, prefix, strlen(prefix)));
}

static int fd_path(int fd, char *buf, size_t n) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, buf, n - 1);
    if (len < 0) return -1;
    buf[len] = '\0';
    return 0;
}

// A relative path made absolute against the working directory.
static void absolute(const char *path, char *buf, size_t n) {
    if (path[0] == '/') {
        snprintf(buf, n, "%s", path);
        return;
    }
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
    snprintf(buf, n, "%s/%s", cwd, path);
}

// Formats one event line; 0 when it does not fit.
static int format(char *line, size_t n, const char *event, const char *a, const char *b) {
    int len = snprintf(line, n, "%ld %s %s%s%s\n", (long)getpid(), event, a, b ? " " : "", b ? b : "");
    return len > 0 && (size_t)len < n ? len : 0;
}

// Before a call: SIGKILL when this is the call GLIA_IOTRACE_KILL names.
static void pre(const char *event, const char *a, const char *b) {
    const char *what = getenv("GLIA_IOTRACE_KILL");
    char line[3 * PATH_MAX];
    if (!what || !format(line, sizeof line, event, a, b) || !strstr(line, what)) return;
    const char *rank = getenv("GLIA_IOTRACE_KILL_RANK"), *mine = getenv("OMPI_COMM_WORLD_RANK");
    if (rank && (!mine || strcmp(rank, mine))) return;
    static int seen;
    const char *nth = getenv("GLIA_IOTRACE_KILL_NTH");
    if (++seen < (nth ? atoi(nth) : 1)) return;
    raise(SIGKILL);
}

// After a successful call: appends its event (one write() with O_APPEND, so
// the lines of concurrent processes never interleave).
static void post(const char *event, const char *a, const char *b) {
    char line[3 * PATH_MAX];
    int n = format(line, sizeof line, event, a, b);
    if (!n) return;
    REAL(open);
    REAL(write);
    REAL(close);
    int fd = real_open(getenv("GLIA_IOTRACE_LOG"), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return;
    ssize_t w = real_write(fd, line, (size_t)n);
    (void)w;
    real_close(fd);
}

// The absolute form of path into buf when it is recorded; 0 when not.
static int traced_path(const char *path, char *buf, size_t n) {
    if (!active() || !path) return 0;
    absolute(path, buf, n);
    return watched(buf);
}

static int traced_fd(int fd, char *buf, size_t n) {
    return active() && fd_path(fd, buf, n) == 0 && watched(buf);
}

// Copies the file at path to SNAP/<n> (n counts up per process and pid) and
// returns its name, or "-" without GLIA_IOTRACE_SNAP.
static const char *snapshot(const char *path) {
    static char name[64];
    static int count;
    const char *dir = getenv("GLIA_IOTRACE_SNAP");
    if (!dir) return "-";
    snprintf(name, sizeof name, "%ld.%d", (long)getpid(), count++);
    char dst[PATH_MAX];
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    REAL(open);
    REAL(read);
    REAL(write);
    REAL(close);
    int in = real_open(path, O_RDONLY | O_CLOEXEC), out = real_open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    char buf[1 << 16];
    ssize_t got;
    while (in >= 0 && out >= 0 && (got = real_read(in, buf, sizeof buf)) > 0)
        if (real_write(out, buf, (size_t)got) != got) break;
    if (in >= 0) real_close(in);
    if (out >= 0) real_close(out);
    return name;
}

static void on_sync(int fd) {
    if (!active()) return;
    char path[PATH_MAX];
    struct stat st;
    if (fd_path(fd, path, sizeof path) != 0 || !watched(path) || fstat(fd, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) post("DIRSYNC", path, NULL);
    else post("FSYNC", path, snapshot(path));
}

static int creates(int flags) { return (flags & (O_CREAT | O_TRUNC)) && (flags & (O_WRONLY | O_RDWR)); }

// A call on one path: the kill check, the call, then its event if it succeeded.
#define ON_PATH(event, path, cond, call)                  \
    char abs_[PATH_MAX];                                  \
    int traced_ = (cond) && traced_path(path, abs_, sizeof abs_); \
    if (traced_) pre(event, abs_, NULL);                  \
    __typeof__(call) rc_ = call;                          \
    if (traced_ && rc_ >= 0) post(event, abs_, NULL);     \
    return rc_

int open(const char *path, int flags, ...) {
    REAL(open);
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    ON_PATH("CREATE", path, creates(flags), real_open(path, flags, mode));
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    ON_PATH("CREATE", path, creates(flags), real_open64(path, flags, mode));
}

FILE *fopen(const char *path, const char *mode) {
    REAL(fopen);
    char abs[PATH_MAX];
    int traced = strpbrk(mode, "wa") && traced_path(path, abs, sizeof abs);
    if (traced) pre("CREATE", abs, NULL);
    FILE *fp = real_fopen(path, mode);
    if (traced && fp) post("CREATE", abs, NULL);
    return fp;
}

FILE *fopen64(const char *path, const char *mode) {
    REAL(fopen64);
    char abs[PATH_MAX];
    int traced = strpbrk(mode, "wa") && traced_path(path, abs, sizeof abs);
    if (traced) pre("CREATE", abs, NULL);
    FILE *fp = real_fopen64(path, mode);
    if (traced && fp) post("CREATE", abs, NULL);
    return fp;
}

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    char path[PATH_MAX];
    int traced = traced_fd(fd, path, sizeof path);
    if (traced) pre("WRITE", path, NULL);
    ssize_t rc = real_write(fd, buf, n);
    if (traced && rc > 0) post("WRITE", path, NULL);
    return rc;
}

size_t fwrite(const void *buf, size_t size, size_t n, FILE *fp) {
    REAL(fwrite);
    char path[PATH_MAX];
    int traced = traced_fd(fileno(fp), path, sizeof path);
    if (traced) pre("WRITE", path, NULL);
    size_t rc = real_fwrite(buf, size, n, fp);
    if (traced && rc > 0) post("WRITE", path, NULL);
    return rc;
}

int fflush(FILE *fp) {
    REAL(fflush);
    char path[PATH_MAX];
    int traced = fp && traced_fd(fileno(fp), path, sizeof path);
    int rc = real_fflush(fp);
    if (traced && rc == 0) post("FLUSH", path, NULL);
    return rc;
}

int fclose(FILE *fp) {
    REAL(fclose);
    char path[PATH_MAX];
    int traced = traced_fd(fileno(fp), path, sizeof path);
    int rc = real_fclose(fp);
    if (traced && rc == 0) post("FLUSH", path, NULL);
    return rc;
}

// A sync: the kill check, the call, then DIRSYNC or FSYNC (with the snapshot
// of what the sync made durable).
static void pre_sync(int fd) {
    char path[PATH_MAX];
    struct stat st;
    if (traced_fd(fd, path, sizeof path) && fstat(fd, &st) == 0) pre(S_ISDIR(st.st_mode) ? "DIRSYNC" : "FSYNC", path, NULL);
}

int fsync(int fd) {
    REAL(fsync);
    pre_sync(fd);
    int rc = real_fsync(fd);
    if (rc == 0) on_sync(fd);
    return rc;
}

int fdatasync(int fd) {
    REAL(fdatasync);
    pre_sync(fd);
    int rc = real_fdatasync(fd);
    if (rc == 0) on_sync(fd);
    return rc;
}

int rename(const char *from, const char *to) {
    REAL(rename);
    char a[PATH_MAX], b[PATH_MAX];
    int traced = active();
    if (traced) {
        absolute(from, a, sizeof a);
        absolute(to, b, sizeof b);
        traced = watched(a) || watched(b);
    }
    if (traced) pre("RENAME", a, b);
    int rc = real_rename(from, to);
    if (traced && rc == 0) post("RENAME", a, b);
    return rc;
}

int unlink(const char *path) {
    REAL(unlink);
    ON_PATH("UNLINK", path, 1, real_unlink(path));
}

int mkdir(const char *path, mode_t mode) {
    REAL(mkdir);
    ON_PATH("MKDIR", path, 1, real_mkdir(path, mode));  // EEXIST creates nothing: no event
}

int rmdir(const char *path) {
    REAL(rmdir);
    ON_PATH("RMDIR", path, 1, real_rmdir(path));
}
