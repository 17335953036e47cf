// fuzz_common.h: the one helper the fuzz targets share.
//
// glia's readers take paths, not buffers (they mmap or read whole files, as
// the real commands do), so each target writes the fuzzer's bytes to a file
// of its own under $TMPDIR, created once per process and rewritten for every
// input, and hands the reader that path. Going through a real file keeps the
// code under test exactly the code the commands run; the cost (one small
// write per input) is far below the parsing itself.
#ifndef GLIA_FUZZ_COMMON_H
#define GLIA_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A private directory (made on first use, never removed: libFuzzer ends the
// process with exit(), and the directory holds one small file).
static const char *fuzz_dir(void) {
    static char dir[4096];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
        snprintf(dir, sizeof dir, "%s/glia_fuzz_XXXXXX", base);
        if (!mkdtemp(dir)) {
            perror("glia fuzz: mkdtemp");
            abort();
        }
    }
    return dir;
}

// Writes data to <fuzz_dir>/<name> (replacing it) and returns the path.
static const char *fuzz_write(const char *name, const uint8_t *data, size_t size) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp) != 0) {
        perror("glia fuzz: cannot write the input file");
        abort();
    }
    return path;
}

#endif
