// bench_profile.h: a Backend that forwards every entry to another one and
// times the ones that do work (ops, copies, collectives), for the step
// breakdown of `glia bench kernels --step`. One profile at a time.
#ifndef GLIA_BENCH_PROFILE_H
#define GLIA_BENCH_PROFILE_H

#include "common/backend.h"

// Wraps `inner`; `sync` (NULL on synchronous backends) waits for the device
// and is called before and after each timed entry. Counters start at zero.
const Backend *profile_backend(const Backend *inner, void (*sync)(void));
void profile_reset(void);
// Around each profiled step: the host time between timed calls is measured
// from profile_begin to profile_end.
void profile_begin(void);
void profile_end(void);
// Prints one row per timed entry that was called (calls, ms, share of
// `wall_s`, GEMM TFLOP/s where the entry runs matrix products), then the host
// time between them: the shares add up to 100 % of a wall_s measured around
// the profiled steps when nothing escapes the count.
void profile_print(double wall_s);

#endif
