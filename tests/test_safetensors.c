// test_safetensors.c: round trips and every way a safetensors file can be
// malformed that the reader promises to catch. Malformed files are written
// byte by byte into a fresh temporary directory per test.
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700  // nftw

#include "glia/safetensors.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[4096];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/glia_st_XXXXXX", base);
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp under %s failed", base);
}

static int make_writable(const char *p, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (type == FTW_D) chmod(p, 0700);
    return 0;
}

static int remove_entry(const char *p, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb, (void)type, (void)ftw;
    remove(p);
    return 0;
}

static void teardown(void) {
    if (!tmpdir[0]) return;
    nftw(tmpdir, make_writable, 16, FTW_PHYS);
    nftw(tmpdir, remove_entry, 16, FTW_PHYS | FTW_DEPTH);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

// ---- helpers --------------------------------------------------------------------

static char *tmp_path(const char *name) {
    static char buf[8][4200];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp, "cannot create %s", path);
    if (n) cr_assert_eq(fwrite(bytes, 1, n, fp), n);
    cr_assert_eq(fclose(fp), 0);
}

// 8-byte little-endian length `declared`, the header text, then `data_len`
// bytes of data (a repeating pattern).
static void write_st(const char *path, uint64_t declared, const char *header, size_t data_len) {
    size_t hlen = strlen(header);
    size_t n = 8 + hlen + data_len;
    unsigned char *buf = malloc(n);
    cr_assert_not_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(declared >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) buf[8 + hlen + i] = (unsigned char)i;
    write_bytes(path, buf, n);
    free(buf);
}

static void write_header(const char *path, const char *header, size_t data_len) {
    write_st(path, strlen(header), header, data_len);
}

static char *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static int count_entries_containing(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int count = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, needle)) count++;
    closedir(d);
    return count;
}

// Loads `path`, expects failure, and checks the message: it starts with the
// path, is one line, and contains every key word given.
#define expect_load_error(path, ...)                                                  \
    do {                                                                              \
        char err_[ST_ERR_LEN] = "";                                                   \
        StFile *f_ = st_load((path), err_);                                           \
        cr_assert_null(f_, "loading %s should fail", (path));                         \
        cr_assert(strncmp(err_, (path), strlen(path)) == 0,                           \
                  "message should start with the path: %s", err_);                    \
        cr_assert_null(strchr(err_, '\n'), "message has a newline: %s", err_);        \
        const char *words_[] = {__VA_ARGS__};                                         \
        for (size_t i_ = 0; i_ < sizeof words_ / sizeof words_[0]; i_++)              \
            cr_assert(strstr(err_, words_[i_]), "message lacks '%s': %s", words_[i_], \
                      err_);                                                          \
    } while (0)

// ---- round trip ----------------------------------------------------------------

Test(safetensors, round_trip) {
    float w[2 * 3], scalar = 3.25f, v[5], unused = 0.0f;
    for (int i = 0; i < 6; i++) w[i] = (float)i * 0.5f - 1.0f;
    for (int i = 0; i < 5; i++) v[i] = 100.0f + (float)i;
    int64_t w_shape[] = {2, 3}, v_shape[] = {5}, empty_shape[] = {4, 0, 7};

    StWriter *wr = st_writer_new();
    st_writer_add(wr, "layer.0.W", 2, w_shape, w);
    st_writer_add(wr, "scalar", 0, NULL, &scalar);
    st_writer_add(wr, "empty", 3, empty_shape, &unused);
    st_writer_add(wr, "empty.null", 1, (int64_t[]){0}, NULL);
    st_writer_add(wr, "v", 1, v_shape, v);
    char err[ST_ERR_LEN] = "";
    const char *path = tmp_path("round.safetensors");
    cr_assert_eq(st_writer_save(wr, path, err), 0, "save failed: %s", err);
    st_writer_free(wr);
    cr_assert_eq(count_entries_containing(tmpdir, ".tmp."), 0, "temporary file left behind");

    // The data section starts on an 8-byte boundary and the header is JSON
    // padded with spaces.
    size_t len = 0;
    char *raw = read_all(path, &len);
    cr_assert_not_null(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
    cr_assert_eq((8 + hlen) % 8, 0, "data section at %llu", (unsigned long long)(8 + hlen));
    cr_assert_eq(raw[8], '{');
    cr_assert_eq(len, 8 + hlen + (6 + 1 + 5) * sizeof(float));
    free(raw);

    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "load failed: %s", err);
    cr_assert_eq(f->n, 5);
    // Tensors come back in the order they were added.
    cr_assert_str_eq(f->tensors[0].name, "layer.0.W");
    cr_assert_str_eq(f->tensors[1].name, "scalar");
    cr_assert_str_eq(f->tensors[2].name, "empty");
    cr_assert_str_eq(f->tensors[3].name, "empty.null");
    cr_assert_str_eq(f->tensors[4].name, "v");

    const StTensor *t = st_expect(f, "layer.0.W", 2, w_shape, err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq(t->numel, 6);
    cr_assert_str_eq(t->dtype, "F32");
    cr_assert(t->is_f32);
    cr_assert_eq((uintptr_t)t->data % 4, 0);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(t->data[i], w[i], 0.0f);

    t = st_expect(f, "scalar", 0, NULL, err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq(t->ndim, 0);
    cr_assert_eq(t->numel, 1);
    cr_assert_float_eq(t->data[0], 3.25f, 0.0f);

    t = st_expect(f, "empty", 3, empty_shape, err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq(t->numel, 0);
    cr_assert_eq(t->shape[0], 4);
    cr_assert_eq(t->shape[1], 0);
    cr_assert_eq(t->shape[2], 7);
    t = st_find(f, "empty.null");
    cr_assert_not_null(t);
    cr_assert_eq(t->numel, 0);

    t = st_expect(f, "v", 1, v_shape, err);
    cr_assert_not_null(t, "%s", err);
    for (int i = 0; i < 5; i++) cr_assert_float_eq(t->data[i], v[i], 0.0f);

    cr_assert_null(st_find(f, "nope"));
    st_free(f);
}

Test(safetensors, save_replaces_existing_file) {
    const char *path = tmp_path("replace.safetensors");
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    char err[ST_ERR_LEN] = "";
    StWriter *w = st_writer_new();
    st_writer_add(w, "a", 1, (int64_t[]){4}, a);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    w = st_writer_new();
    st_writer_add(w, "b", 1, (int64_t[]){2}, b);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_eq(f->n, 1);
    cr_assert_null(st_find(f, "a"));
    cr_assert_not_null(st_find(f, "b"));
    st_free(f);
}

// A header written by another tool that puts an F32 tensor at an offset that
// is not a multiple of 4, ignores __metadata__, and lists a non-F32 tensor.
Test(safetensors, foreign_layout_and_dtypes) {
    const char *path = tmp_path("foreign.safetensors");
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"mask\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[3,11]},"
        "\"h\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[11,19]}}  ";
    size_t hlen = strlen(header);
    unsigned char buf[512];
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    unsigned char *data = buf + 8 + hlen;
    data[0] = 1, data[1] = 0, data[2] = 1;
    float x[2] = {1.5f, -2.0f};
    memcpy(data + 3, x, sizeof x);
    memset(data + 11, 0, 8);
    write_bytes(path, buf, 8 + hlen + 19);

    char err[ST_ERR_LEN] = "";
    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_eq(f->n, 3);
    cr_assert_null(st_find(f, "__metadata__"));
    const StTensor *t = st_expect(f, "x", 1, (int64_t[]){2}, err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq((uintptr_t)t->data % 4, 0);
    cr_assert_float_eq(t->data[0], 1.5f, 0.0f);
    cr_assert_float_eq(t->data[1], -2.0f, 0.0f);
    t = st_find(f, "h");
    cr_assert_not_null(t);
    cr_assert_str_eq(t->dtype, "BF16");
    cr_assert(!t->is_f32);
    cr_assert_null(t->data);
    cr_assert_eq(st_find(f, "mask")->numel, 3);
    st_free(f);
}

// ---- st_expect -----------------------------------------------------------------

static StFile *load_32x16(const char *name) {
    static float data[32 * 16];
    const char *path = tmp_path(name);
    StWriter *w = st_writer_new();
    st_writer_add(w, "W_I", 2, (int64_t[]){32, 16}, data);
    char err[ST_ERR_LEN] = "";
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "%s", err);
    return f;
}

Test(safetensors, expect_shape_wildcard) {
    StFile *f = load_32x16("expect.safetensors");
    char err[ST_ERR_LEN] = "";
    cr_assert_not_null(st_expect(f, "W_I", 2, (int64_t[]){-1, 16}, err), "%s", err);
    cr_assert_not_null(st_expect(f, "W_I", 2, (int64_t[]){32, -1}, err), "%s", err);
    cr_assert_not_null(st_expect(f, "W_I", 2, (int64_t[]){-1, -1}, err), "%s", err);

    cr_assert_null(st_expect(f, "W_I", 2, (int64_t[]){32, 32}, err));
    cr_assert_str_eq(err, "tensor 'W_I': expected shape [32, 32], got [32, 16]");
    cr_assert_null(st_expect(f, "W_I", 2, (int64_t[]){-1, 8}, err));
    cr_assert_str_eq(err, "tensor 'W_I': expected shape [*, 8], got [32, 16]");
    cr_assert_null(st_expect(f, "W_I", 1, (int64_t[]){-1}, err));
    cr_assert(strstr(err, "expected shape [*], got [32, 16]"), "%s", err);

    cr_assert_null(st_expect(f, "W_O", 2, (int64_t[]){32, 16}, err));
    cr_assert_str_eq(err, "tensor 'W_O': missing");
    st_free(f);
}

Test(safetensors, expect_rejects_f16) {
    const char *path = tmp_path("f16.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F16\",\"shape\":[32,32],\"data_offsets\":[0,2048]}}",
                 2048);
    char err[ST_ERR_LEN] = "";
    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "an F16 tensor is listed, not refused: %s", err);
    cr_assert_null(st_find(f, "W_I")->data);
    cr_assert_null(st_expect(f, "W_I", 2, (int64_t[]){32, 32}, err));
    cr_assert(strstr(err, "tensor 'W_I'") && strstr(err, "dtype F16, expected F32"), "%s", err);
    st_free(f);
}

// ---- malformed files -------------------------------------------------------------

Test(safetensors, nonexistent_file) {
    expect_load_error(tmp_path("nothing-here.safetensors"), "cannot open",
                      "No such file or directory");
}

Test(safetensors, directory) {
    expect_load_error(tmpdir, "directory");
}

Test(safetensors, empty_file) {
    const char *path = tmp_path("empty.safetensors");
    write_bytes(path, "", 0);
    expect_load_error(path, "0 bytes", "too short");
}

Test(safetensors, seven_byte_file) {
    const char *path = tmp_path("seven.safetensors");
    write_bytes(path, "\x02\0\0\0\0\0\0", 7);
    expect_load_error(path, "7 bytes", "too short");
}

Test(safetensors, header_length_larger_than_file) {
    const char *path = tmp_path("long.safetensors");
    write_st(path, 1000, "{}", 0);
    expect_load_error(path, "header length 1000", "larger than");
}

Test(safetensors, header_length_absurd) {
    const char *path = tmp_path("absurd.safetensors");
    write_st(path, UINT64_MAX, "{}", 0);
    expect_load_error(path, "header length", "limit");
}

Test(safetensors, header_not_json) {
    const char *path = tmp_path("notjson.safetensors");
    write_header(path, "{\"a\": {\"dtype\": \"F32\", oops", 0);
    expect_load_error(path, "not valid JSON");
}

Test(safetensors, header_trailing_garbage) {
    const char *path = tmp_path("trailing.safetensors");
    write_header(path, "{}   x", 0);
    expect_load_error(path, "after the JSON");
}

Test(safetensors, header_is_array) {
    const char *path = tmp_path("array.safetensors");
    write_header(path, "[1, 2, 3]", 0);
    expect_load_error(path, "not a JSON object");
}

Test(safetensors, missing_data_offsets) {
    const char *path = tmp_path("nooffsets.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
    expect_load_error(path, "tensor 'W_I'", "missing data_offsets");
}

Test(safetensors, bad_shape) {
    const char *path = tmp_path("badshape.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,8]}}", 8);
    expect_load_error(path, "tensor 'W_I'", "shape[1]", "non-negative integer");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                       "\"data_offsets\":[0,4]}}",
                 4);
    expect_load_error(path, "tensor 'W_I'", "9 dims");
}

Test(safetensors, numel_overflow) {
    const char *path = tmp_path("overflow.safetensors");
    write_header(path,
                 "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
                 "\"data_offsets\":[0,0]}}",
                 0);
    expect_load_error(path, "tensor 'W_I'", "too many elements");
}

Test(safetensors, offsets_past_end) {
    const char *path = tmp_path("pastend.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 16);
    expect_load_error(path, "tensor 'W_I'", "[8, 24]", "past the end", "16 bytes");
}

Test(safetensors, offsets_reversed) {
    const char *path = tmp_path("reversed.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16);
    expect_load_error(path, "tensor 'W_I'", "[8, 4]");
}

Test(safetensors, size_mismatch) {
    const char *path = tmp_path("case.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"F32\",\"shape\":[32,32],\"data_offsets\":[0,100]}}",
                 100);
    char err[ST_ERR_LEN] = "";
    cr_assert_null(st_load(path, err));
    char want[ST_ERR_LEN];
    snprintf(want, sizeof want,
             "%s: tensor 'W_I': data_offsets [0, 100] do not match shape [32, 32] of F32 "
             "(4096 bytes)",
             path);
    cr_assert_str_eq(err, want);
}

Test(safetensors, overlapping_tensors) {
    const char *path = tmp_path("overlap.safetensors");
    write_header(path,
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[12,28]}}",
                 28);
    expect_load_error(path, "tensor 'b'", "overlap", "tensor 'a'");
}

Test(safetensors, duplicate_names) {
    const char *path = tmp_path("dup.safetensors");
    write_header(path,
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8);
    expect_load_error(path, "tensor 'a'", "more than once");
}

Test(safetensors, unknown_dtype) {
    const char *path = tmp_path("dtype.safetensors");
    write_header(path, "{\"W_I\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_load_error(path, "tensor 'W_I'", "unknown dtype", "Q4_K");
    write_header(path, "{\"W_I\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_load_error(path, "tensor 'W_I'", "dtype is not a string");
}

Test(safetensors, truncated_data_section) {
    const char *path = tmp_path("truncated.safetensors");
    const char *header =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"W_I\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[8,72]}}";
    write_header(path, header, 40);  // 72 bytes promised, 40 present
    expect_load_error(path, "tensor 'W_I'", "past the end", "truncated");
}

Test(safetensors, control_characters_in_name_stay_on_one_line) {
    const char *path = tmp_path("newline.safetensors");
    write_header(path, "{\"bad\\nname\":{\"dtype\":\"XX\",\"shape\":[],\"data_offsets\":[0,0]}}",
                 0);
    expect_load_error(path, "tensor 'bad?name'", "unknown dtype");
}

// ---- failed saves -----------------------------------------------------------------

static StWriter *small_writer(const float *data) {
    StWriter *w = st_writer_new();
    st_writer_add(w, "x", 1, (int64_t[]){3}, data);
    return w;
}

Test(safetensors, save_into_missing_directory) {
    float data[3] = {1, 2, 3};
    StWriter *w = small_writer(data);
    char err[ST_ERR_LEN] = "";
    const char *path = tmp_path("no/such/dir/out.safetensors");
    cr_assert_neq(st_writer_save(w, path, err), 0);
    cr_assert(strncmp(err, path, strlen(path)) == 0, "%s", err);
    cr_assert(strstr(err, "No such file or directory"), "%s", err);
    cr_assert_null(strchr(err, '\n'));
    cr_assert_eq(count_entries_containing(tmpdir, ".tmp."), 0);
    st_writer_free(w);
}

// The temporary file cannot be created (a directory is in its way, which
// stops root too): the error is reported, the existing destination is left
// byte for byte, and nothing is removed that the writer did not create.
Test(safetensors, failed_save_leaves_destination_untouched) {
    float old[3] = {1, 2, 3}, new_[3] = {7, 8, 9};
    const char *path = tmp_path("keep.safetensors");
    char err[ST_ERR_LEN] = "";
    StWriter *w = small_writer(old);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    size_t before_len = 0;
    char *before = read_all(path, &before_len);

    char blocker[4300];
    snprintf(blocker, sizeof blocker, "%s.tmp.%ld", path, (long)getpid());
    cr_assert_eq(mkdir(blocker, 0700), 0);
    w = small_writer(new_);
    cr_assert_neq(st_writer_save(w, path, err), 0);
    cr_assert(strncmp(err, path, strlen(path)) == 0, "%s", err);
    cr_assert(strstr(err, "cannot create") && strstr(err, "Is a directory"), "%s", err);
    st_writer_free(w);
    struct stat sb;
    cr_assert_eq(stat(blocker, &sb), 0, "the writer removed something it did not create");
    rmdir(blocker);

    size_t after_len = 0;
    char *after = read_all(path, &after_len);
    cr_assert_eq(after_len, before_len);
    cr_assert_eq(memcmp(before, after, before_len), 0, "destination changed");
    free(before);
    free(after);
    cr_assert_eq(count_entries_containing(tmpdir, ".tmp."), 0);
}

// Where permissions are enforced (not root), a read-only directory also
// fails the save without touching the file already in it.
Test(safetensors, save_into_read_only_directory) {
    if (geteuid() == 0) {
        teardown();  // .fini does not run for a skipped test
        cr_skip_test("running as root: permissions are not enforced");
    }
    float old[3] = {1, 2, 3}, new_[3] = {7, 8, 9};
    const char *dir = tmp_path("ro");
    cr_assert_eq(mkdir(dir, 0700), 0);
    const char *path = tmp_path("ro/keep.safetensors");
    char err[ST_ERR_LEN] = "";
    StWriter *w = small_writer(old);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    cr_assert_eq(chmod(dir, 0500), 0);
    w = small_writer(new_);
    int rc = st_writer_save(w, path, err);
    chmod(dir, 0700);
    st_writer_free(w);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "Permission denied"), "%s", err);
    cr_assert_eq(count_entries_containing(dir, ".tmp."), 0);
    StFile *f = st_load(path, err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_float_eq(st_find(f, "x")->data[0], 1.0f, 0.0f);
    st_free(f);
}

Test(safetensors, writer_rejects_bad_tensors) {
    float data[4] = {0};
    char err[ST_ERR_LEN] = "";
    const char *path = tmp_path("bad.safetensors");
    StWriter *w = st_writer_new();
    st_writer_add(w, "a", 1, (int64_t[]){4}, data);
    st_writer_add(w, "a", 1, (int64_t[]){4}, data);
    cr_assert_neq(st_writer_save(w, path, err), 0);
    cr_assert(strstr(err, "tensor 'a'") && strstr(err, "added twice"), "%s", err);
    st_writer_free(w);

    w = st_writer_new();
    st_writer_add(w, "b", 1, (int64_t[]){-4}, data);
    cr_assert_neq(st_writer_save(w, path, err), 0);
    cr_assert(strstr(err, "tensor 'b'"), "%s", err);
    st_writer_free(w);

    struct stat sb;
    cr_assert_neq(stat(path, &sb), 0, "nothing should have been written");
}

Test(safetensors, metadata_round_trip) {
    char *path = tmp_path("meta.safetensors");
    char err[ST_ERR_LEN];
    float x[2] = {1.0f, 2.0f};
    int64_t shape[1] = {2};
    StWriter *w = st_writer_new();
    st_writer_meta(w, "model_version", "1");
    st_writer_meta(w, "config", "{\"L\": 2}");
    st_writer_add(w, "x", 1, shape, x);
    cr_assert_eq(st_writer_save(w, path, err), 0, "%s", err);
    st_writer_free(w);
    StFile *f = st_load(path, err);
    cr_assert(f, "%s", err);
    cr_assert_eq(f->n, 1);
    cr_assert_eq(f->nmeta, 2);
    cr_assert_str_eq(st_meta(f, "model_version"), "1");
    cr_assert_str_eq(st_meta(f, "config"), "{\"L\": 2}");
    cr_assert_null(st_meta(f, "absent"));
    st_free(f);

    // a duplicate key is refused at save time, and nothing is written
    w = st_writer_new();
    st_writer_meta(w, "k", "a");
    st_writer_meta(w, "k", "b");
    cr_assert_neq(st_writer_save(w, tmp_path("dup.safetensors"), err), 0);
    cr_assert(strstr(err, "twice"), "%s", err);
    st_writer_free(w);

    // metadata values must be strings
    write_header(tmp_path("badmeta.safetensors"), "{\"__metadata__\":{\"a\":1}}", 0);
    cr_assert_null(st_load(tmp_path("badmeta.safetensors"), err));
    cr_assert(strstr(err, "not a string"), "%s", err);
}
