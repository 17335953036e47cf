// rng.h: the seeded random numbers of the host runtime (initialisation,
// sampling). splitmix64: tiny, fast, and its output depends only on the seed
// and the number of draws, so runs are reproducible on any platform.
#ifndef GLIA_RNG_H
#define GLIA_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
} Rng;

static inline uint64_t rng_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void rng_init(Rng *r, uint64_t seed) { r->state = rng_mix(seed + 0x9E3779B97F4A7C15ull); }

static inline uint64_t rng_u64(Rng *r) { return rng_mix(r->state += 0x9E3779B97F4A7C15ull); }

// Uniform in [0, 1) with 53 random bits.
static inline double rng_unif(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

// Standard normal (Box–Muller; one value per call, for simplicity).
static inline double rng_gauss(Rng *r) {
    double u1 = 1.0 - rng_unif(r);  // (0, 1]
    double u2 = rng_unif(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
