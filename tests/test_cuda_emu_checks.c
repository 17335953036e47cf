// test_cuda_emu_checks.c: the CUDA emulator's own checks (tests/cuda_emu),
// each catching a kernel that breaks the GPU's rule on purpose
// (tests/cuda_emu/broken_kernels.cu) and letting its correct twin pass:
// - a shuffle whose mask leaves out the calling lane, or names a lane that
//   has exited, ends the process (as compute-sanitizer's synccheck reports);
//   so does a vote (__ballot_sync) naming an exited lane;
// - more than 48 KiB of dynamic shared memory without the kernel's opt-in
//   fails the launch with cudaErrorInvalidValue, as on the GPU;
// - a block larger than the kernel's __launch_bounds__ fails the launch
//   with cudaErrorLaunchOutOfResources and runs nothing;
// - two threads of a block touching one shared word with no barrier between
//   them, at least one writing, end the process (racecheck's hazards):
//   through static or dynamic shared memory, read after write, write after
//   write, write after read; __syncwarp orders only the lanes of one warp;
//   atomics are no race;
// - WMMA (mma.h): a warp's 16 × 16 × 8 TF32 product is exact on values TF32
//   holds; mma_sync reads an fp32 operand as the tensor cores do (its low 13
//   bits dropped), __float_to_tf32 rounds to nearest (ties away from zero);
//   a call only some lanes of the warp make deadlocks and ends the process.
// The real kernels pass these checks in every other emulator test.
// Only a GLIA_CUDA_EMU build has the emulator: elsewhere every test skips.
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

#ifdef GLIA_CUDA_EMU
#include "cuda/cuda.h"

int emu_shfl_mask(float *out, unsigned mask);
int emu_shfl_after_exit(float *out, unsigned mask, int live, int vote);
int emu_shfl_half_warps(float *out);
int emu_big_smem(float *out, int smem_bytes, int opt_in);
int emu_bounded(float *out, int threads);
int emu_neighbour(float *out, int threads, int shift, int sync);
int emu_dynamic_neighbour(float *out, int at, int sync);
int emu_all_write(float *out, int only_first);
int emu_shift(float *out, int sync);
int emu_read_then_overwrite(float *out, int sync);
int emu_atomic_count(float *out);
int emu_wmma(float *out, const float *a, const float *b, int round, int diverge);

enum { kInvalidValue = 1, kLaunchOutOfResources = 701 };

static float *out;
static void setup(void) {
    out = cuda_alloc(256 * sizeof(float));
    cr_assert_not_null(out);
}
static void teardown(void) { cuda_free(out); }
#define EMU_ONLY .init = setup, .fini = teardown
#define ABORTS EMU_ONLY, .signal = SIGABRT
#else
#define EMU_ONLY .init = skip_all
#define ABORTS EMU_ONLY  // a skipped test raises no signal
static void skip_all(void) { cr_skip_test("the emulator's own checks: a GLIA_CUDA_EMU build only"); }
#endif

// ---- masks -------------------------------------------------------------------------------

Test(cuda_emu_checks, shuffle_full_mask_passes, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    cr_assert_eq(emu_shfl_mask(out, 0xffffffffu), 0);
    float h[32];
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 32; i++) cr_expect_eq(h[i], 0.0f, "lane %d got %g", i, h[i]);
#endif
}

Test(cuda_emu_checks, shuffle_half_warp_masks_pass, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    cr_assert_eq(emu_shfl_half_warps(out), 0);
    float h[32];
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 32; i++) cr_expect_eq(h[i], (float)(i & 16), "lane %d got %g", i, h[i]);
#endif
}

// lanes 16..31 call with a mask of lanes 0..15 only
Test(cuda_emu_checks, shuffle_mask_without_the_caller_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_shfl_mask(out, 0x0000ffffu);
#endif
}

// lanes 16..31 exited; the others name them in a full mask
Test(cuda_emu_checks, shuffle_mask_naming_exited_lanes_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_shfl_after_exit(out, 0xffffffffu, 16, 0);
#endif
}

Test(cuda_emu_checks, vote_mask_naming_exited_lanes_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_shfl_after_exit(out, 0xffffffffu, 16, 1);
#endif
}

// the same early exit with a mask of the live lanes only is correct
Test(cuda_emu_checks, shuffle_and_vote_of_live_lanes_pass, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    cr_assert_eq(emu_shfl_after_exit(out, 0x0000ffffu, 16, 0), 0);
    float h[16];
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 16; i++) cr_expect_eq(h[i], (float)(i ^ 1), "lane %d got %g", i, h[i]);
    cr_assert_eq(emu_shfl_after_exit(out, 0x0000ffffu, 16, 1), 0);
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 16; i++) cr_expect_eq(h[i], (float)0xaaaau, "lane %d got %g", i, h[i]);
#endif
}

// ---- dynamic shared memory -----------------------------------------------------------------

Test(cuda_emu_checks, big_dynamic_smem_needs_the_opt_in, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    float h = 0.0f;
    cr_expect_eq(emu_big_smem(out, 48 * 1024, 0), 0, "48 KiB needs no opt-in");
    cr_expect_eq(emu_big_smem(out, 64 * 1024, 0), kInvalidValue, "64 KiB without the opt-in must fail");
    cr_expect_eq(emu_big_smem(out, 64 * 1024, 1), 0, "64 KiB with the opt-in runs");
    cuda_download(&h, out, sizeof h);
    cr_expect_eq(h, (float)(64 * 1024 / 4 - 1));
    cr_expect_eq(emu_big_smem(out, 228 * 1024, 1), kInvalidValue, "above 227 KiB no opt-in helps");
#endif
}

// ---- launch bounds ----------------------------------------------------------------------------

Test(cuda_emu_checks, block_above_launch_bounds_fails, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    float h[128];
    cuda_memset(out, 0, 128 * sizeof(float), NULL);
    cr_expect_eq(emu_bounded(out, 128), kLaunchOutOfResources, "128 threads over __launch_bounds__(64)");
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 128; i++) cr_expect_eq(h[i], 0.0f, "the failed launch ran thread %d", i);
    cr_expect_eq(emu_bounded(out, 64), 0);
    cuda_download(h, out, sizeof h);
    for (int i = 0; i < 64; i++) cr_expect_eq(h[i], 1.0f, "thread %d did not run", i);
#endif
}

// ---- shared-memory races -----------------------------------------------------------------------

enum { kNone = 0, kSyncwarp = 1, kSyncthreads = 2 };

#ifdef GLIA_CUDA_EMU
// out[t] must be what thread (t + shift) % threads published
static void expect_neighbours(int threads, int shift) {
    float h[64];
    cuda_download(h, out, threads * sizeof(float));
    for (int t = 0; t < threads; t++)
        cr_expect_eq(h[t], (float)((t + shift) % threads), "thread %d read %g", t, h[t]);
}
#endif

Test(cuda_emu_checks, shared_exchange_behind_barriers_passes, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    cr_assert_eq(emu_neighbour(out, 64, 1, kSyncthreads), 0);
    expect_neighbours(64, 1);
    cr_assert_eq(emu_neighbour(out, 64, 32, kSyncthreads), 0);
    expect_neighbours(64, 32);
    // a warp barrier orders the lanes of its warp: an exchange inside one warp
    cr_assert_eq(emu_neighbour(out, 32, 1, kSyncwarp), 0);
    expect_neighbours(32, 1);
    cr_assert_eq(emu_neighbour(out, 64, 0, kNone), 0, "a thread reading its own write is no race");
    expect_neighbours(64, 0);
    cr_assert_eq(emu_dynamic_neighbour(out, 4096, 1), 0);
    expect_neighbours(64, 1);
    cr_assert_eq(emu_all_write(out, 1), 0);
    cr_assert_eq(emu_read_then_overwrite(out, 1), 0);
    cr_assert_eq(emu_shift(out, 1), 0);
    float h[64];
    cuda_download(h, out, sizeof h);
    for (int t = 0; t < 64; t++) cr_expect_eq(h[t], (float)(t + 1), "shift: thread %d got %g", t, h[t]);
#endif
}

// thread t reads s[t + 1], written by thread t + 1, with no barrier (read after write)
Test(cuda_emu_checks, shared_read_without_barrier_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_neighbour(out, 64, 1, kNone);
#endif
}

// inside one warp, with no __syncwarp
Test(cuda_emu_checks, shared_exchange_in_a_warp_without_syncwarp_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_neighbour(out, 32, 1, kNone);
#endif
}

// __syncwarp between a write and a read of the other warp's word orders nothing
Test(cuda_emu_checks, shared_exchange_across_warps_behind_syncwarp_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_neighbour(out, 64, 32, kSyncwarp);
#endif
}

Test(cuda_emu_checks, dynamic_shared_read_without_barrier_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_dynamic_neighbour(out, 4096, 0);
#endif
}

// every thread writes one word (write after write)
Test(cuda_emu_checks, shared_write_by_every_thread_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_all_write(out, 0);
#endif
}

// s[t] = s[t + 1] in place with no barrier between the read and the write (write after read)
Test(cuda_emu_checks, shared_shift_in_place_without_barrier_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_shift(out, 0);
#endif
}

// thread 0 reads a word that thread 1 then overwrites (only a write after read)
Test(cuda_emu_checks, shared_overwrite_of_a_word_read_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    emu_read_then_overwrite(out, 0);
#endif
}

Test(cuda_emu_checks, shared_atomics_are_no_race, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    cr_assert_eq(emu_atomic_count(out), 0);
    float h[64];
    cuda_download(h, out, sizeof h);
    for (int t = 0; t < 64; t++) cr_expect_eq(h[t], 64.0f, "thread %d counted %g", t, h[t]);
#endif
}

// ---- warp matrix operations -----------------------------------------------------------------

#ifdef GLIA_CUDA_EMU
// out = a (16 × 8) · b (8 × 16) on the emulator's WMMA; returns the launch's error.
static int wmma_product(float *h_out, const float *ha, const float *hb, int round, int diverge) {
    float *a = cuda_alloc(128 * sizeof(float)), *b = cuda_alloc(128 * sizeof(float));
    cr_assert(a && b);
    cuda_upload(a, ha, 128 * sizeof(float));
    cuda_upload(b, hb, 128 * sizeof(float));
    int rc = emu_wmma(out, a, b, round, diverge);
    cuda_download(h_out, out, 256 * sizeof(float));
    cuda_free(a), cuda_free(b);
    return rc;
}
#endif

// Small integers: every product and sum exact, so the result is exactly a·b.
Test(cuda_emu_checks, wmma_product_is_exact_on_tf32_values, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    float a[128], b[128], c[256];
    for (int i = 0; i < 128; i++) a[i] = (float)(i % 7 - 3), b[i] = (float)(i % 5 - 2);
    cr_assert_eq(wmma_product(c, a, b, 0, 0), 0);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float want = 0.0f;
            for (int k = 0; k < 8; k++) want += a[i * 8 + k] * b[k * 16 + j];
            cr_expect_eq(c[i * 16 + j], want, "(%d, %d): %g, want %g", i, j, c[i * 16 + j], want);
        }
#endif
}

// a = 1 + 3·2⁻¹² (between TF32's 1 and 1 + 2⁻¹⁰, nearer the latter), b = 1 on
// the diagonal of its first 8 columns: unconverted, the tensor cores read 1;
// rounded, 1 + 2⁻¹⁰; and 1 + 2⁻¹¹ (a tie) rounds away from zero to 1 + 2⁻¹⁰.
Test(cuda_emu_checks, wmma_reads_tf32_and_rounds_to_nearest, EMU_ONLY) {
#ifdef GLIA_CUDA_EMU
    float a[128], b[128] = {0}, c[256];
    for (int i = 0; i < 128; i++) a[i] = 1.0f + 3.0f * 0x1p-12f;
    a[8] = 1.0f + 0x1p-11f;  // row 1, k = 0
    for (int k = 0; k < 8; k++) b[k * 16 + k] = 1.0f;
    cr_assert_eq(wmma_product(c, a, b, 0, 0), 0);
    cr_expect_eq(c[0], 1.0f, "unconverted: %.10g", c[0]);
    cr_expect_eq(c[16], 1.0f, "unconverted tie: %.10g", c[16]);
    cr_assert_eq(wmma_product(c, a, b, 1, 0), 0);
    cr_expect_eq(c[0], 1.0f + 0x1p-10f, "rounded: %.10g", c[0]);
    cr_expect_eq(c[16], 1.0f + 0x1p-10f, "rounded tie: %.10g", c[16]);
#endif
}

// Only lanes 0..15 call the warp-collective operations
Test(cuda_emu_checks, wmma_divergent_call_fails, ABORTS) {
#ifdef GLIA_CUDA_EMU
    float a[128] = {0}, b[128] = {0}, c[256];
    wmma_product(c, a, b, 0, 1);
#endif
}
