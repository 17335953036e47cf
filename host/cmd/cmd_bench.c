// cmd_bench.c: `glia bench generate`, the serving engine's numbers.
//
// Three tables, each measured the way serving runs: (1) tokens/s against the
// engine's batch (slot count), every slot busy; (2) time per decoded token
// against the context already in the state, which for a recurrent state
// should be flat (the context is prefilled in ENGINE_PREFILL_CHUNK pieces,
// so even 100 000 tokens fit in memory); (3) the state one sequence carries
// beside the KV cache a transformer of the same width and depth would hold
// at that context (2·L·C·context fp32 values). Timings are medians. Then
// the decode steps' spike statistics (model_stats, outside the timed
// region): firing rates, synaptic operations per token against the dense
// MACs, and the energy ESTIMATE of model.h.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/checkpoint.h"
#include "cmd/bench.h"
#include "cmd/cli.h"
#include "cmd/commands.h"
#include "cpu/cpu.h"
#include "generate/engine.h"
#include "glia/util.h"
#include "model/rng.h"

static int parse_list(const char *flag, const char *s, long *out, int max) {
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || (*end && *end != ',')) {
            fprintf(stderr, "glia bench: %s: '%s' is not a list of positive integers\n", flag, s);
            return -1;
        }
        out[n++] = v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static double throughput(Model *m, int S, int ntok) {
    Engine *e = engine_new(m, S, 64);
    char err[200];
    for (int i = 0; i < S; i++) {
        EngineRequest r = {.prompt = "In the beginning ", .prompt_len = 17, .max_tokens = ntok,
                           .sp = {0.8f, 0, 0.95f}, .seed = (uint64_t)i + 1};
        if (engine_submit(e, &r, err, sizeof err) < 0) fatal("bench: %s", err);
    }
    engine_step(e);  // admission: prefill and first tokens
    double t0 = engine_now();
    int steps = 0;
    while (engine_step(e) > 0) steps++;
    double dt = engine_now() - t0;
    engine_free(e);
    return (double)(steps + 1) * S / dt;  // the last step finished every slot
}

// model_stats summed over decode steps.
typedef struct {
    double n, amsu_rate, ffn_rate, sops, spike_macs, other_macs, e_spiking, e_dense;
} OpsSum;

static void ops_add(OpsSum *o, Model *m) {
    ModelStats st;
    model_stats(m, &st);
    for (int l = 0; l < st.L; l++) o->amsu_rate += st.layer[l].amsu_rate / st.L, o->ffn_rate += st.layer[l].ffn_rate / st.L;
    o->sops += st.sops, o->spike_macs += st.spike_macs, o->other_macs += st.other_macs;
    o->e_spiking += st.energy_spiking_pj, o->e_dense += st.energy_dense_pj;
    o->n++;
    model_stats_free(&st);
}

static double time_per_token(Model *m, Model *pre, Model *dec, long context, int steps, OpsSum *ops) {
    ModelState *st = model_state_new(m, 1);
    int *toks = xmalloc(ENGINE_PREFILL_CHUNK * sizeof(int));
    Rng rng;
    rng_init(&rng, 7);
    for (long done = 0; done < context;) {
        int T = context - done < ENGINE_PREFILL_CHUNK ? (int)(context - done) : ENGINE_PREFILL_CHUNK;
        for (int i = 0; i < T; i++) toks[i] = 32 + (int)(rng_u64(&rng) % 95);
        model_forward(pre, toks, NULL, 1, T, st);
        done += T;
    }
    double *t = xmalloc((size_t)steps * sizeof(double));
    SampleParams sp = {0.8f, 0, 0.95f};
    int tok = sample_token(model_logits(pre, 0, pre->last_T - 1), m->cfg.V, &sp, &rng);
    for (int i = 0; i < steps; i++) {
        double t0 = engine_now();
        model_forward(dec, &tok, NULL, 1, 1, st);
        tok = sample_token(model_logits(dec, 0, 0), m->cfg.V, &sp, &rng);
        t[i] = engine_now() - t0;
        ops_add(ops, dec);
    }
    qsort(t, steps, sizeof(double), bench_cmp);
    double med = t[steps / 2];
    free(t);
    free(toks);
    model_state_free(st);
    return med;
}

static int bench_generate(int argc, char **argv) {
    CliFlag flags[] = {
        {"--ckpt", "FILE", "model file (byte vocabulary)", NULL},
        {"--batches", "LIST", "slot counts for tokens/s", "1,4,16,64,256"},
        {"--tokens", "N", "tokens per sequence for tokens/s", "64"},
        {"--contexts", "LIST", "context lengths for time per token", "100,1000,10000,100000"},
        {"--steps", "N", "decode steps timed per context (median)", "32"},
        {"--threads", "N", "CPU threads", NULL},
        {"--device", "DEV", "cpu, cuda, or auto (cuda when a GPU is found)", "auto"},
        {"--matmul", "MODE", "GPU matmuls: tf32, bf16 or fp32", "tf32"},
    };
    int nf = sizeof flags / sizeof flags[0];
    int rc = cli_parse("bench generate",
                       "Measures the serving engine: tokens/s against batch size, time per token\n"
                       "against context length, state memory per sequence against a same-width\n"
                       "transformer's KV cache, and the decode steps' firing rates, synaptic\n"
                       "operations against dense MACs, and an energy estimate. Prints markdown tables.",
                       argc, argv, flags, nf);
    if (rc) return rc == 1 ? 0 : 2;
    long batches[32], contexts[32], ntok, steps, threads;
    int nb = parse_list("--batches", cli_get(flags, nf, "--batches"), batches, 32);
    int nc = parse_list("--contexts", cli_get(flags, nf, "--contexts"), contexts, 32);
    if (nb < 0 || nc < 0 || cli_int("bench", "--tokens", cli_get(flags, nf, "--tokens"), 1, 1 << 20, &ntok) ||
        cli_int("bench", "--steps", cli_get(flags, nf, "--steps"), 1, 1 << 20, &steps))
        return 2;
    if (cli_get(flags, nf, "--threads")) {
        if (cli_int("bench", "--threads", cli_get(flags, nf, "--threads"), 1, 4096, &threads)) return 2;
        cpu_set_threads((int)threads);
    }
    const Backend *be;
    if (device_pick("bench generate", cli_get(flags, nf, "--device"), cli_get(flags, nf, "--matmul"), &be))
        return 2;
    if (cli_require("bench generate", flags, nf, "--ckpt", NULL)) return 2;
    const char *ckpt = cli_get(flags, nf, "--ckpt");
    char err[CKPT_ERR_LEN];
    Model *m = ckpt_load_model(ckpt, NULL, err);
    if (!m) {
        fprintf(stderr, "glia bench: %s\n", err);
        return 2;
    }
    if (m->cfg.V != 256) {
        fprintf(stderr, "glia bench: the model's vocabulary (%d) is not the byte vocabulary\n", m->cfg.V);
        model_free(m);
        return 2;
    }
    if (device_move_model("bench generate", m, be)) {
        model_free(m);
        return 2;
    }
    const ModelConfig *c = &m->cfg;
    printf("model: L %d, C %d, heads %d, F %d, V %d; device %s\n\n", c->L, c->C, c->Nh, c->F, c->V,
           be->name);
    printf("| batch (slots) | tokens/s | ms per step |\n|---:|---:|---:|\n");
    double best_tps = 0.0, last_t = 0.0;
    long best_b = 0;
    for (int i = 0; i < nb; i++) {
        double tps = throughput(m, (int)batches[i], (int)ntok);
        if (tps > best_tps) best_tps = tps, best_b = batches[i];
        printf("| %ld | %.0f | %.2f |\n", batches[i], tps, 1e3 * batches[i] / tps);
        fflush(stdout);
    }
    Model *pre = model_share(m), *dec = model_share(m);
    model_alloc_acts(pre, 1, ENGINE_PREFILL_CHUNK);
    model_alloc_acts(dec, 1, 1);
    double state_b = 4.0 * (double)model_state_floats(c);
    printf("\n| context (tokens) | ms per token (median of %ld) | state per sequence | KV cache, same-width transformer (fp32) |\n"
           "|---:|---:|---:|---:|\n", steps);
    OpsSum ops = {0};
    for (int i = 0; i < nc; i++) {
        double t = time_per_token(m, pre, dec, contexts[i], (int)steps, &ops);
        last_t = t;
        double kv = 2.0 * c->L * c->C * (double)contexts[i] * 4.0;
        printf("| %ld | %.3f | %.1f KiB | %.1f KiB |\n", contexts[i], t * 1e3, state_b / 1024, kv / 1024);
        fflush(stdout);
    }
    if (ops.n > 0) {
        const double n = ops.n;
        printf("\nspikes and operations per generated token, mean of the %.0f decode steps above (model.h, model_stats)\n\n"
               "| | per token |\n|---|---:|\n"
               "| firing rate, AM-SU neurons (mean over layers) | %.4f |\n"
               "| firing rate, FFN neurons (mean over layers) | %.4f |\n"
               "| synaptic operations (SOPs: W_O, W_2 inputs are spikes; spike × fan-out) | %.0f |\n"
               "| MACs of the same products with dense inputs | %.0f |\n"
               "| other MACs (projections, W_1, head) | %.0f |\n"
               "| energy, ESTIMATE: SOPs × %.1f pJ + other MACs × %.1f pJ | %.1f nJ |\n"
               "| energy, ESTIMATE, dense inputs: all MACs × %.1f pJ | %.1f nJ |\n\n"
               "The energy is an estimate from 45 nm figures (Horowitz, ISSCC 2014: %.1f pJ per fp32 add, %.1f pJ\n"
               "per fp32 multiply-add), not a measurement; it leaves out memory traffic.\n",
               n, ops.amsu_rate / n, ops.ffn_rate / n, ops.sops / n, ops.spike_macs / n, ops.other_macs / n,
               MODEL_PJ_PER_AC, MODEL_PJ_PER_MAC, ops.e_spiking / n * 1e-3, MODEL_PJ_PER_MAC, ops.e_dense / n * 1e-3,
               MODEL_PJ_PER_AC, MODEL_PJ_PER_MAC);
    }
    printf("\nheadline: %s, %.0f tokens/s at %ld slots; %.3f ms per token at context %ld\n",
           be->name, best_tps, best_b, last_t * 1e3, nc ? contexts[nc - 1] : 0L);
    model_free(pre);
    model_free(dec);
    model_free(m);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: glia bench generate|kernels|amsu|tokenizer [flags]  (glia bench generate --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "generate")) return bench_generate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "kernels")) return bench_kernels(argc - 1, argv + 1);
    if (!strcmp(argv[1], "amsu")) return bench_amsu(argc - 1, argv + 1);
    if (!strcmp(argv[1], "tokenizer")) return bench_tokenizer(argc - 1, argv + 1);
    fprintf(stderr, "glia bench: unknown benchmark '%s' (known: generate, kernels, amsu, tokenizer)\n", argv[1]);
    return 2;
}
