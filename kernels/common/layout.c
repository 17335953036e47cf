// layout.c: how one AM-SU layer's saved activations are carved from one
// buffer (types.h); the same offsets on every backend.
#include "common/types.h"

size_t amsu_acts_size(AmsuShape sh) {
    size_t bt = (size_t)sh.B * sh.T, btc = bt * sh.C;
    size_t n = bt * amsu_ld(sh) + 3 * btc;  // P, o, u, s
    if (!sh.astro) return n;
    size_t D = sh.C / sh.Nh;
    return n + (size_t)sh.B * sh.Nh * glia_nchunks(sh.T) * D * D;
}

void amsu_acts_bind(AmsuActs *a, AmsuShape sh, float *mem) {
    size_t bt = (size_t)sh.B * sh.T, btc = bt * sh.C, btp = bt * amsu_ld(sh);
    a->P = a->I = mem;
    a->o = mem + btp;
    a->u = mem + btp + btc;
    a->s = mem + btp + 2 * btc;
    if (sh.astro) {
        a->k = mem + sh.C;
        a->v = mem + 2 * sh.C;
        a->q = mem + 3 * sh.C;
        a->Hckpt = mem + btp + 3 * btc;
    } else {
        a->k = a->v = a->q = a->Hckpt = NULL;
    }
}
