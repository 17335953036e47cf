// replay_main.c: runs a fuzz target's entry point on every file of its
// committed corpus, without libFuzzer.
//
// CMake links each tests/fuzz/fuzz_*.c with this main into replay_<target>
// (a normal gcc build, ASan + UBSan with GLIA_SANITIZE) and registers it with
// ctest, so CI replays the seeds and every crasher ever found on each build,
// with no clang. A target signals a wrong result by abort(); a crash or a
// sanitizer report fails the test the same way.
//   replay_<target> DIR|FILE...
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return perror(path), -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad) return fprintf(stderr, "%s: cannot read\n", path), free(buf), -1;
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    if (argc < 2) return fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]), 2;
    long done = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) return perror(argv[i]), 1;
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i])) return 1;
            done++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) return perror(argv[i]), 1;
        char **names = NULL;
        size_t n = 0;
        for (struct dirent *e; (e = readdir(d));) {
            if (e->d_name[0] == '.') continue;
            names = realloc(names, (n + 1) * sizeof *names);
            names[n++] = strdup(e->d_name);
        }
        closedir(d);
        qsort(names, n, sizeof *names, by_name);  // a fixed order: reproducible
        for (size_t k = 0; k < n; k++) {
            char path[4200];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]);
            fprintf(stderr, "replay: %s\n", path);
            if (replay_file(path)) return 1;
            done++;
            free(names[k]);
        }
        free(names);
    }
    if (done == 0) return fprintf(stderr, "replay: no inputs\n"), 1;
    printf("replay: %ld inputs, no finding\n", done);
    return 0;
}
