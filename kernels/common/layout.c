// layout.c: how one AM-SU layer's saved activations are carved from one
// buffer (types.h, acts.h): one list, the same offsets on every backend.
#include "common/acts.h"

size_t acts_numel(const ActsTensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t acts_bytes(const ActsTensor *t) {
    const size_t b = acts_numel(t) * (size_t)t->bytes;
    return t->bytes == 2 ? (b + 255) / 256 * 256 : b;
}

float *acts_carve(const ActsTensor *t, int n, float *mem) {
    char *p = (char *)mem;
    for (int i = 0; i < n; i++) {
        if (t[i].dst) *t[i].dst = (float *)p;
        p += acts_bytes(&t[i]);
    }
    return (float *)p;
}

int amsu_acts_list(AmsuShape sh, int spike_bytes, AmsuActs *a, ActsTensor *e) {
    const size_t B = sh.B, T = sh.T, C = sh.C;
    int n = 0;
    e[n++] = sh.astro ? (ActsTensor){"P=[I|k|v|q]", "B,T,4C", 3, {B, T, 4 * C}, &a->P, 4}
                      : (ActsTensor){"P=I", "B,T,C", 3, {B, T, C}, &a->P, 4};
    e[n++] = (ActsTensor){"o", "B,T,C", 3, {B, T, C}, &a->o, 4};
    e[n++] = (ActsTensor){"u", "B,T,C", 3, {B, T, C}, &a->u, 4};
    e[n++] = (ActsTensor){"s", "B,T,C", 3, {B, T, C}, &a->s, spike_bytes};
    if (!sh.astro) return n;
    const size_t D = C / sh.Nh;
    e[n++] = (ActsTensor){"Hckpt", "B,Nh,T/32,D,D", 5, {B, sh.Nh, glia_nchunks(sh.T), D, D}, &a->Hckpt, 4};
    return n;
}

void amsu_acts_views(AmsuActs *a, AmsuShape sh) {
    a->I = a->P;
    if (sh.astro) {
        a->k = a->P + sh.C, a->v = a->P + 2 * sh.C, a->q = a->P + 3 * sh.C;
    } else {
        a->k = a->v = a->q = a->Hckpt = NULL;
    }
}

size_t amsu_acts_size(AmsuShape sh) {
    AmsuActs a;
    ActsTensor e[ACTS_AMSU_MAX];
    int n = amsu_acts_list(sh, 4, &a, e);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += acts_numel(&e[i]);
    return total;
}

void amsu_acts_bind(AmsuActs *a, AmsuShape sh, float *mem) {
    ActsTensor e[ACTS_AMSU_MAX];
    acts_carve(e, amsu_acts_list(sh, 4, a, e), mem);
    amsu_acts_views(a, sh);
}
