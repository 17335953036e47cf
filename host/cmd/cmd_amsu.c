// cmd_amsu.c: `glia amsu`, one AM-SU layer forward and backward on a user's
// case file.
//
// This is how a user compares glia's AM-SU with their own code: they write
// the layer's inputs to a safetensors file, glia writes every output and
// gradient to another, and the two can be diffed tensor by tensor
// (tools/reference.py compare). Input checking is strict and names the
// offending tensor, because a case file is usually hand-made and the first
// run against it is where a shape convention gets mixed up. The result is
// written atomically: an existing file is replaced whole or not at all.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cli.h"
#include "cmd/commands.h"
#include "glia/safetensors.h"
#include "glia/util.h"

static const char *AMSU_SUMMARY =
    "Runs one AM-SU token mixer (SPEC.md) forward and backward on the tensors of a\n"
    "safetensors file and writes the outputs and all gradients to another.\n"
    "\n"
    "input (F32): z [B,T,C] (normalised layer input), W_I W_K W_V W_Q W_O [C,C],\n"
    "  a_lambda [Nh,D] (Nh is read from it), a_beta [C], dy [B,T,C] (dL/dy).\n"
    "  With --astro off, W_K W_V W_Q a_lambda are not needed (ignored if present).\n"
    "output (F32): y s u o [B,T,C], dz [B,T,C], dW_I dW_K dW_V dW_Q dW_O [C,C],\n"
    "  da_lambda [Nh,D], da_beta [C] (astro off: no dW_K dW_V dW_Q da_lambda).\n"
    "exit status: 0 done, 2 bad flags or bad input, 1 the result could not be written.";

// An F32 tensor of the expected shape with only finite values, or an error.
static const float *amsu_tensor(const StFile *f, const char *name, int ndim,
                                const int64_t *shape, const char *path) {
    char err[ST_ERR_LEN];
    const StTensor *t = st_expect(f, name, ndim, shape, err);
    if (!t) {
        fprintf(stderr, "glia amsu: %s: %s\n", path, err);
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(t->data[i])) {
            fprintf(stderr, "glia amsu: %s: tensor '%s': element %lld is not finite (%g)\n",
                    path, name, (long long)i, t->data[i]);
            return NULL;
        }
    return t->data;
}

// The layer on backend `be`: inputs up, forward and backward, results down
// into the host buffers acts (s, u, o), y, dz and g (one block of 5·C² + 2·C
// floats, in AmsuGrads order). hw: W_I, W_K, W_V, W_Q, W_O, a_lambda, a_beta
// (the astrocyte's NULL with astro off). 0, or -1 with a message when the
// backend's memory does not suffice.
static int amsu_run(const Backend *be, float *y, AmsuActs *acts, float *dz, AmsuGrads *g, const float *z,
                    const float *dy, const float *const hw[7], AmsuShape sh) {
    const size_t n = (size_t)sh.B * sh.T * sh.C, ncc = (size_t)sh.C * sh.C, C = sh.C;
    const size_t nacts = amsu_acts_size(sh), nscr = be->amsu_scratch(sh);
    const size_t total = 4 * n + 10 * ncc + 4 * C + nacts + nscr;
    float *d = be->alloc(total * sizeof(float));
    if (!d) {
        fprintf(stderr, "glia amsu: %s out of memory: %s\n", be->name, be->last_error());
        return -1;
    }
    float *p = d;
#define TAKE(k) (p += (k), p - (k))
    float *z_d = TAKE(n), *dy_d = TAKE(n), *y_d = TAKE(n), *dz_d = TAKE(n);
    float *wp = TAKE(5 * ncc + 2 * C);  // W_I, W_K, W_V, W_Q (W_in), W_O, a_lambda, a_beta
    float *gp = TAKE(5 * ncc + 2 * C);
    AmsuActs a;
    amsu_acts_bind(&a, sh, TAKE(nacts));
    float *scratch = TAKE(nscr);
#undef TAKE
    for (int i = 0; i < 7; i++)
        if (hw[i]) be->upload(wp + (i < 5 ? i * ncc : 5 * ncc + (i - 5) * C), hw[i], (i < 5 ? ncc : C) * sizeof(float));
    AmsuWeights w = {wp, wp + 4 * ncc, sh.astro ? wp + 5 * ncc : NULL, wp + 5 * ncc + C, NULL};
    be->upload(z_d, z, n * sizeof(float));
    be->upload(dy_d, dy, n * sizeof(float));
    be->zero(gp, (5 * ncc + 2 * C) * sizeof(float));
    AmsuGrads gd = {gp, gp + 4 * ncc, gp + 5 * ncc, gp + 5 * ncc + C};
    be->amsu_forward(y_d, &a, z_d, &w, sh, NULL, NULL, NULL);
    be->amsu_backward(dz_d, &gd, scratch, dy_d, z_d, &a, &w, sh, NULL);
    be->download(y, y_d, n * sizeof(float));
    be->download(acts->s, a.s, n * sizeof(float));
    be->download(acts->u, a.u, n * sizeof(float));
    be->download(acts->o, a.o, n * sizeof(float));
    be->download(dz, dz_d, n * sizeof(float));
    be->download(g->dW_in, gp, (5 * ncc + 2 * C) * sizeof(float));  // g's layout is gd's
    be->free(d);
    return 0;
}

int cmd_amsu(int argc, char **argv) {
    CliFlag flags[] = {
        {"--in", "FILE", "input case (safetensors)", NULL},
        {"--out", "FILE", "where to write the result (safetensors)", NULL},
        {"--device", "DEV", "backend: cpu, cuda or auto", "cpu"},
        {"--amsu", "scan|chunk", "the astrocyte recurrence: per timestep, or in chunks (default: the faster)", NULL},
        {"--astro", "on|off", "astrocyte modulation, off = SPEC's ablation", "on"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("amsu", AMSU_SUMMARY, argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    if (cli_require("amsu", flags, nf, "--in", "--out", NULL)) return 2;
    const char *in = cli_get(flags, nf, "--in"), *out = cli_get(flags, nf, "--out");
    static const char *const onoff[] = {"off", "on"};
    int astro;
    const Backend *be;
    if (device_pick("amsu", cli_get(flags, nf, "--device"), NULL, &be) ||
        device_set_amsu("amsu", be, cli_get(flags, nf, "--amsu")) ||
        cli_choice("amsu", "--astro", cli_get(flags, nf, "--astro"), onoff, 2, &astro))
        return 2;

    char err[ST_ERR_LEN];
    StFile *f = st_load(in, err);
    if (!f) {
        fprintf(stderr, "glia amsu: %s\n", err);
        return 2;
    }
    rc = 2;
    float *mem = NULL;
    StWriter *w = NULL;

    // Shapes: B, T, C from z; Nh from a_lambda.
    const int64_t any3[3] = {-1, -1, -1};
    const StTensor *zt = st_expect(f, "z", 3, any3, err);
    if (!zt) {
        fprintf(stderr, "glia amsu: %s: %s\n", in, err);
        goto done;
    }
    int64_t B = zt->shape[0], T = zt->shape[1], C = zt->shape[2], Nh = 1;
    if (B < 1 || T < 1 || C < 1 || B * T * C > ((int64_t)1 << 31)) {
        fprintf(stderr, "glia amsu: %s: tensor 'z': shape [%lld, %lld, %lld] is empty or too large\n",
                in, (long long)B, (long long)T, (long long)C);
        goto done;
    }
    if (astro) {
        const int64_t any2[2] = {-1, -1};
        const StTensor *lt = st_expect(f, "a_lambda", 2, any2, err);
        if (!lt) {
            fprintf(stderr, "glia amsu: %s: %s%s\n", in, err,
                    st_find(f, "a_lambda") ? "" : " (for the ablation use --astro off)");
            goto done;
        }
        Nh = lt->shape[0];
        if (Nh < 1 || lt->shape[1] < 1 || Nh * lt->shape[1] != C) {
            fprintf(stderr,
                    "glia amsu: %s: tensor 'a_lambda': shape [%lld, %lld] does not split C = %lld "
                    "into heads (need Nh x D = C)\n",
                    in, (long long)lt->shape[0], (long long)lt->shape[1], (long long)C);
            goto done;
        }
    }
    const int64_t btc[3] = {B, T, C}, cc[2] = {C, C}, c1[1] = {C}, hd[2] = {Nh, C / Nh};
    const float *z = amsu_tensor(f, "z", 3, btc, in), *dy = amsu_tensor(f, "dy", 3, btc, in);
    const float *hw[7] = {NULL};  // W_I, W_K, W_V, W_Q, W_O, a_lambda, a_beta
    hw[0] = amsu_tensor(f, "W_I", 2, cc, in);
    hw[4] = amsu_tensor(f, "W_O", 2, cc, in);
    hw[6] = amsu_tensor(f, "a_beta", 1, c1, in);
    if (!z || !dy || !hw[0] || !hw[4] || !hw[6]) goto done;
    if (astro) {
        hw[1] = amsu_tensor(f, "W_K", 2, cc, in);
        hw[2] = amsu_tensor(f, "W_V", 2, cc, in);
        hw[3] = amsu_tensor(f, "W_Q", 2, cc, in);
        hw[5] = amsu_tensor(f, "a_lambda", 2, hd, in);
        if (!hw[1] || !hw[2] || !hw[3] || !hw[5]) goto done;
    }

    AmsuShape sh = {(int)B, (int)T, (int)C, (int)Nh, astro};
    size_t n = (size_t)B * T * C, ncc = (size_t)C * C;
    size_t nacts = amsu_acts_size(sh);
    mem = xcalloc(nacts + 2 * n + 5 * ncc + 2 * (size_t)C, sizeof(float));
    AmsuActs acts;
    amsu_acts_bind(&acts, sh, mem);
    float *y = mem + nacts, *dz = y + n, *gp = dz + n;
    AmsuGrads g = {gp, gp + 4 * ncc, gp + 5 * ncc, gp + 5 * ncc + C};  // dW_in: dW_I, dW_K, dW_V, dW_Q
    if (astro && !be->amsu_head_ok((int)(C / Nh))) {
        fprintf(stderr, "glia amsu: --device %s does not run head size %lld\n", be->name, (long long)(C / Nh));
        goto done;
    }
    if (amsu_run(be, y, &acts, dz, &g, z, dy, hw, sh)) goto done;

    w = st_writer_new();
    st_writer_add(w, "y", 3, btc, y);
    st_writer_add(w, "s", 3, btc, acts.s);
    st_writer_add(w, "u", 3, btc, acts.u);
    st_writer_add(w, "o", 3, btc, acts.o);
    st_writer_add(w, "dz", 3, btc, dz);
    st_writer_add(w, "dW_I", 2, cc, g.dW_in);
    if (astro) {
        st_writer_add(w, "dW_K", 2, cc, g.dW_in + ncc);
        st_writer_add(w, "dW_V", 2, cc, g.dW_in + 2 * ncc);
        st_writer_add(w, "dW_Q", 2, cc, g.dW_in + 3 * ncc);
    }
    st_writer_add(w, "dW_O", 2, cc, g.dW_O);
    if (astro) st_writer_add(w, "da_lambda", 2, hd, g.da_lambda);
    st_writer_add(w, "da_beta", 1, c1, g.da_beta);
    if (st_writer_save(w, out, err)) {
        fprintf(stderr, "glia amsu: %s\n", err);
        rc = 1;
        goto done;
    }
    size_t fired = 0;
    for (size_t i = 0; i < n; i++) fired += acts.s[i] != 0.0f;
    char heads[32] = "astro off";
    if (astro) snprintf(heads, sizeof heads, "Nh=%lld", (long long)Nh);
    printf("glia amsu: B=%lld T=%lld C=%lld %s: %.1f%% of neurons fired; wrote %s\n",
           (long long)B, (long long)T, (long long)C, heads, 100.0 * fired / n, out);
    rc = 0;
done:
    if (w) st_writer_free(w);
    free(mem);
    if (f) st_free(f);
    return rc;
}
