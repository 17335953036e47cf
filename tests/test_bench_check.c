// test_bench_check.c: the kernel lab's AM-SU check (host/cmd/bench_check.c),
// the spike-flip rule that `glia bench kernels` applies on a device: a
// spike that differs from the CPU's within the margin of θ is a flip
// (counted, allowed) and that neuron's later steps are not compared; one
// that differs away from θ, or is not 0/1, is a mismatch; u is compared
// normwise up to each neuron's flip. Synthetic (B, T, C) tensors, no device.
#include <criterion/criterion.h>
#include <string.h>

#include "cmd/bench_check.h"

enum { B = 2, T = 5, C = 3, N = B * T * C };
static float u_ref[N], o_ref[N], s_ref[N], u[N], s[N];

static size_t at(int b, int t, int c) { return ((size_t)b * T + t) * C + c; }

// A reference whose potentials m = u + o − 1 sit at ±0.5 (far from θ), except
// (b 1, t 2, c 1), which is 3e-5 above θ.
static void setup(void) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                size_t i = at(b, t, c);
                o_ref[i] = 0.25f;
                u_ref[i] = (t + c) % 2 ? 1.25f : 0.25f;  // m = +0.5 (spike) or −0.5
                s_ref[i] = (t + c) % 2 ? 1.0f : 0.0f;
            }
    u_ref[at(1, 2, 1)] = 0.75f + 3e-5f;  // m = 3e-5: spikes on the CPU, near θ
    s_ref[at(1, 2, 1)] = 1.0f;
    memcpy(u, u_ref, sizeof u);
    memcpy(s, s_ref, sizeof s);
}

Test(bench_check, identical_passes, .init = setup) {
    AmsuFlipCheck r = bench_amsu_flip_check(u, s, u_ref, o_ref, s_ref, B, T, C, BENCH_SPIKE_MARGIN);
    cr_expect_eq(r.flips, 0);
    cr_expect_eq(r.mismatches, 0);
    cr_expect_eq(r.compared, N);
    cr_expect_eq(r.err_u, 0.0);
}

// The device did not fire at the near-threshold step, so its reset differs
// and the neuron's later u and s part from the CPU's: one flip, no mismatch,
// and the diverged u is not held against it.
Test(bench_check, flip_near_threshold_allowed, .init = setup) {
    s[at(1, 2, 1)] = 0.0f;
    for (int t = 3; t < T; t++) {
        u[at(1, t, 1)] += 7.0f;
        s[at(1, t, 1)] = 1.0f - s[at(1, t, 1)];
    }
    AmsuFlipCheck r = bench_amsu_flip_check(u, s, u_ref, o_ref, s_ref, B, T, C, BENCH_SPIKE_MARGIN);
    cr_expect_eq(r.flips, 1);
    cr_expect_eq(r.mismatches, 0);
    cr_expect_lt(r.err_u, 1e-6, "u after the flip must not be compared: %g", r.err_u);
    cr_expect_eq(r.compared, N - 2);
}

// The same difference at a step whose potential is 0.5 from θ is a kernel bug.
Test(bench_check, flip_away_from_threshold_fails, .init = setup) {
    s[at(0, 1, 0)] = 0.0f;  // m = +0.5 on the CPU
    AmsuFlipCheck r = bench_amsu_flip_check(u, s, u_ref, o_ref, s_ref, B, T, C, BENCH_SPIKE_MARGIN);
    cr_expect_eq(r.flips, 0);
    cr_expect_eq(r.mismatches, 1);
}

// A spike value other than 0 or 1 is a mismatch even near θ.
Test(bench_check, non_binary_spike_fails, .init = setup) {
    s[at(1, 2, 1)] = 0.5f;
    AmsuFlipCheck r = bench_amsu_flip_check(u, s, u_ref, o_ref, s_ref, B, T, C, BENCH_SPIKE_MARGIN);
    cr_expect_eq(r.mismatches, 1);
    cr_expect_eq(r.flips, 0);
}

// u is still compared up to and at the flip step, and elsewhere.
Test(bench_check, u_error_measured, .init = setup) {
    u[at(0, 4, 2)] += 0.0125f;  // relative to max |u_ref| = 1.25: 1e-2
    AmsuFlipCheck r = bench_amsu_flip_check(u, s, u_ref, o_ref, s_ref, B, T, C, BENCH_SPIKE_MARGIN);
    cr_expect(r.err_u > 0.009 && r.err_u < 0.011, "err_u %g", r.err_u);
    cr_expect_eq(r.mismatches, 0);
}
