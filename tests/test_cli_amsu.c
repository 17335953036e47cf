// test_cli_amsu.c: the `glia amsu` command as a user runs it: a round trip
// on the committed PyTorch fixtures, and a one-line error with exit status 2
// for every kind of bad input (exit 1 when the result cannot be written,
// with an existing result file left untouched).
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "glia/safetensors.h"
#include "testutil.h"

static char tmpdir[256];
static char output[8192];  // stdout + stderr of the last run

static void make_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/glia_cli_XXXXXX", base && *base ? base : "/tmp");
    cr_assert(mkdtemp(tmpdir), "mkdtemp failed");
}

static void remove_tmpdir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(cli_amsu, .init = make_tmpdir, .fini = remove_tmpdir);

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

// (tmp() rotates through a few buffers: copy a path that must outlive calls.)

// `glia ARGS`: exit status; stdout and stderr land in `output`.
#define run_glia(...) glia_run(output, sizeof output, __VA_ARGS__)

// One-line error, naming `what`, exit status 2.
static void expect_error(int status, const char *what) {
    cr_expect(strstr(output, "glia"), "error names the program: %s", output);
    cr_expect_eq(status, 2, "exit status %d, output: %s", status, output);
    cr_expect(strstr(output, what), "error should mention '%s', got: %s", what, output);
    const char *nl = strchr(output, '\n');
    cr_expect(nl && nl[1] == 0, "error should be one line, got: %s", output);
}

static void compare_with_reference(const char *result, const char *reference) {
    char err[ST_ERR_LEN];
    StFile *got = st_load(result, err), *want = st_load(reference, err);
    cr_assert(got && want, "%s", err);
    cr_assert_eq(got->n, want->n, "result has %d tensors, reference %d", got->n, want->n);
    for (int i = 0; i < want->n; i++) {
        const StTensor *w = &want->tensors[i], *g = st_find(got, w->name);
        cr_assert(g, "result lacks '%s'", w->name);
        cr_assert_eq(g->numel, w->numel, "%s: size", w->name);
        cr_assert_eq(g->ndim, w->ndim, "%s: rank", w->name);
        if (!strcmp(w->name, "s"))
            cr_expect_eq(spike_mismatches(g->data, w->data, w->numel), 0, "spikes differ");
        else
            cr_expect(rel_err(g->data, w->data, w->numel) <= 1e-5, "%s: error %.3e", w->name,
                      rel_err(g->data, w->data, w->numel));
    }
    st_free(got);
    st_free(want);
}

Test(cli_amsu, round_trip_astro_on) {
    int st = run_glia("amsu --in '%s' --out '%s'", fixture_path("amsu_odd.in.safetensors"),
                      tmp("r.safetensors"));
    cr_assert_eq(st, 0, "glia amsu failed: %s", output);
    compare_with_reference(tmp("r.safetensors"), fixture_path("amsu_odd.out.safetensors"));
}

Test(cli_amsu, round_trip_astro_off) {
    int st = run_glia("amsu --in '%s' --out '%s' --device cpu --astro off",
                      fixture_path("amsu_off.in.safetensors"), tmp("r.safetensors"));
    cr_assert_eq(st, 0, "glia amsu failed: %s", output);
    compare_with_reference(tmp("r.safetensors"), fixture_path("amsu_off.out.safetensors"));
}

// The same cases on the CUDA backend, against the same PyTorch references.
Test(cli_amsu, round_trip_cuda) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    static const char *cases[][2] = {{"amsu_odd", "on"}, {"amsu_long", "on"}, {"amsu_off", "off"}};
    for (int i = 0; i < 3; i++) {
        char in[200], ref[200];
        snprintf(in, sizeof in, "%s.in.safetensors", cases[i][0]);
        snprintf(ref, sizeof ref, "%s.out.safetensors", cases[i][0]);
        char inp[4200];
        snprintf(inp, sizeof inp, "%s", fixture_path(in));
        int st = run_glia("amsu --in '%s' --out '%s' --device cuda --astro %s", inp,
                          tmp("r.safetensors"), cases[i][1]);
        cr_assert_eq(st, 0, "%s: glia amsu --device cuda failed: %s", cases[i][0], output);
        compare_with_reference(tmp("r.safetensors"), fixture_path(ref));
    }
#endif
}

Test(cli_amsu, usage_errors) {
    cr_expect_eq(run_glia("amsu --help"), 0);
    cr_expect(strstr(output, "--astro"), "help lists the flags");
    expect_error(run_glia("amsu --out x.safetensors"), "--in is required");
    expect_error(run_glia("amsu --in a --out b --bogus 1"), "unknown flag '--bogus'");
    expect_error(run_glia("amsu --in a --out b --astro maybe"), "--astro: 'maybe'");
    expect_error(run_glia("amsu --in a --out b --device tpu"), "--device: 'tpu'");
    expect_error(run_glia("amsu --in"), "--in needs a value");
    expect_error(run_glia("nonsense"), "unknown command 'nonsense'");
}

// Writes a case built from the amsu_small fixture with one tensor replaced
// (data NULL: dropped) and returns its path.
static const char *write_variant(const char *drop, const char *replace, int ndim,
                                 const int64_t *shape, const float *data) {
    char err[ST_ERR_LEN];
    StFile *src = st_load(fixture_path("amsu_small.in.safetensors"), err);
    cr_assert(src, "%s", err);
    StWriter *w = st_writer_new();
    for (int i = 0; i < src->n; i++) {
        const StTensor *t = &src->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        if (replace && !strcmp(t->name, replace)) continue;
        st_writer_add(w, t->name, t->ndim, t->shape, t->data);
    }
    if (replace) st_writer_add(w, replace, ndim, shape, data);
    const char *path = tmp("variant.safetensors");
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    st_free(src);
    return path;
}

Test(cli_amsu, bad_inputs) {
    char out[512];
    snprintf(out, sizeof out, "%s", tmp("r.safetensors"));
    expect_error(run_glia("amsu --in '%s' --out '%s'", tmp("nope.safetensors"), out),
                 "nope.safetensors");
    expect_error(run_glia("amsu --in '%s' --out '%s'", tmpdir, out), tmpdir);

    // missing tensor
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant("W_Q", NULL, 0, NULL, NULL), out),
                 "'W_Q'");
    // astro on without a_lambda suggests the ablation
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant("a_lambda", NULL, 0, NULL, NULL), out),
                 "--astro off");
    // inconsistent shapes
    static float buf[32 * 33 + 64];
    int64_t wrong[2] = {32, 33};
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant(NULL, "W_I", 2, wrong, buf), out),
                 "'W_I'");
    int64_t dyshape[3] = {2, 6, 32};
    static float dybuf[2 * 6 * 32];
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant(NULL, "dy", 3, dyshape, dybuf), out),
                 "'dy'");
    int64_t lam[2] = {3, 10};
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant(NULL, "a_lambda", 2, lam, buf), out),
                 "'a_lambda'");
    int64_t zrank[2] = {14, 32};
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant(NULL, "z", 2, zrank, buf), out),
                 "'z'");
    // a non-finite value
    static float nanbuf[32];
    for (int i = 0; i < 32; i++) nanbuf[i] = i == 5 ? 0.0f / 0.0f : 0.0f;
    int64_t c1[1] = {32};
    expect_error(run_glia("amsu --in '%s' --out '%s'", write_variant(NULL, "a_beta", 1, c1, nanbuf), out),
                 "'a_beta': element 5");
}

Test(cli_amsu, bad_dtype_and_truncation) {
    char out[512];
    snprintf(out, sizeof out, "%s", tmp("r.safetensors"));
    // a tensor stored as F16
    const char *hdr = "{\"z\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    uint64_t len = strlen(hdr);
    FILE *f = fopen(tmp("f16.safetensors"), "wb");
    fwrite(&len, 8, 1, f);
    fwrite(hdr, 1, len, f);
    fwrite("\0\0\0\0", 1, 4, f);
    fclose(f);
    expect_error(run_glia("amsu --in '%s' --out '%s'", tmp("f16.safetensors"), out), "F16");

    // a fixture cut short
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "head -c 5000 '%s' > '%s'", fixture_path("amsu_small.in.safetensors"),
             tmp("cut.safetensors"));
    cr_assert_eq(system(cmd), 0);
    expect_error(run_glia("amsu --in '%s' --out '%s'", tmp("cut.safetensors"), out),
                 "cut.safetensors");
}

Test(cli_amsu, unwritable_output_keeps_existing_file) {
    // a result that cannot be written is exit 1 and loses nothing
    char existing[512];
    snprintf(existing, sizeof existing, "%s", tmp("keep.safetensors"));
    cr_assert_eq(run_glia("amsu --in '%s' --out '%s'", fixture_path("amsu_small.in.safetensors"),
                          existing), 0);
    struct stat before, after;
    cr_assert_eq(stat(existing, &before), 0);
    int st = run_glia("amsu --in '%s' --out '%s/no/such/dir/r.safetensors'",
                      fixture_path("amsu_small.in.safetensors"), tmpdir);
    cr_expect_eq(st, 1, "exit status %d: %s", st, output);
    cr_assert_eq(stat(existing, &after), 0);
    cr_expect_eq(before.st_size, after.st_size);
    cr_expect_eq(before.st_mtime, after.st_mtime);
}

// The existing file's directory made read-only, then overwritten: only where
// permissions are enforced.
Test(cli_amsu, read_only_directory_keeps_existing_file) {
    if (geteuid() == 0) cr_skip_test("running as root: root ignores directory permissions");
    char existing[512];
    snprintf(existing, sizeof existing, "%s", tmp("keep.safetensors"));
    cr_assert_eq(run_glia("amsu --in '%s' --out '%s'", fixture_path("amsu_small.in.safetensors"),
                          existing), 0);
    struct stat before, after;
    cr_assert_eq(stat(existing, &before), 0);
    chmod(tmpdir, 0500);
    int st = run_glia("amsu --in '%s' --out '%s'", fixture_path("amsu_small.in.safetensors"), existing);
    chmod(tmpdir, 0700);
    cr_expect_eq(st, 1, "exit status %d: %s", st, output);
    cr_expect(strstr(output, "Permission denied"), "%s", output);
    cr_assert_eq(stat(existing, &after), 0);
    cr_expect_eq(before.st_size, after.st_size);
    cr_expect_eq(before.st_mtime, after.st_mtime);
}
