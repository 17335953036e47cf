// layout.c: how one AM-SU layer's saved activations are carved from one
// buffer (types.h); the same offsets on every backend.
#include "common/types.h"

size_t amsu_acts_size(AmsuShape sh) {
    size_t btc = (size_t)sh.B * sh.T * sh.C;
    if (!sh.astro) return 4 * btc;  // I, o, u, s
    size_t D = sh.C / sh.Nh;
    return 7 * btc + (size_t)sh.B * sh.Nh * glia_nchunks(sh.T) * D * D;
}

void amsu_acts_bind(AmsuActs *a, AmsuShape sh, float *mem) {
    size_t btc = (size_t)sh.B * sh.T * sh.C;
    a->I = mem;
    a->o = mem + btc;
    a->u = mem + 2 * btc;
    a->s = mem + 3 * btc;
    if (sh.astro) {
        a->k = mem + 4 * btc;
        a->v = mem + 5 * btc;
        a->q = mem + 6 * btc;
        a->Hckpt = mem + 7 * btc;
    } else {
        a->k = a->v = a->q = a->Hckpt = NULL;
    }
}
