// test_cuda_model.c: the whole model (host/model/model.c) on the CUDA backend
// against the CPU backend: loss, logits, every parameter's gradient, AdamW
// steps, streaming generation, the commands with --device cuda, and the
// NCCL all-reduce with one rank; the kernel lab's timing backend forwards
// every entry intact.
//
// Two copies of one randomly initialised model (test_model_randomise: spikes
// in every layer), one moved to the GPU, see the same batches. Measures and
// tolerances (normwise relative error, rel_err in testutil.h):
// - loss: |Δ| / loss ≤ 1e-5; logits ≤ 1e-5;
// - gradients, per tensor: ≤ 1e-4. Every op agrees to ~1e-6, but a gradient
//   sums products along whole sequences and through L layers of spiking
//   neurons, whose surrogate slopes amplify ulp-level differences in the
//   membrane potential;
// - parameters after 3 AdamW steps: ≤ 1e-5 (Adam normalises the update,
//   so gradient differences shrink to lr-sized ones).
// A spike that flips between backends (a potential within rounding of θ)
// would exceed these bounds; the seeds here produce none, and the number
// of spikes compared is asserted non-trivial.
// Greedy texts (the engine, the generate command) are compared by the
// spike-flip rule of testutil.h (test_texts_agree): identical, or parting
// only after the CPU model had a potential within 1e-4 of θ or a tie of its
// two best bytes; the emulator, whose GEMM is the CPU's BLAS, gives
// identical texts, a GPU need not.
//
// TF32 and bf16 matmuls round every operand (to 2^-11 and 2^-8 relative),
// which is far more than a potential's distance to θ for some neuron, so
// spikes do flip and logits and gradients are not comparable entry by entry
// (measured on the emulator at random init: logits 2.5e-1 to 5.8e-1 normwise
// in bf16). Their contract is the one a user sees, checked on a training
// run from the same seed: every step's loss within 5% of the fp32 CPU
// run's (measured on the emulator: at most 0.5% in TF32 and 0.7% in bf16
// over these 20 steps; 1.8% and 1.2% over the first 20 of a 40-step run),
// and the run learns (the last loss below half the first).
//
// BF16 mode stores the spikes as bf16 (docs/CUDA.md): on the emulator its
// training steps and generation are bit-identical to BF16 mode with fp32
// spikes, and its dry-run table and allocation agree.
//
// Built without CUDA every test skips; with CUDA but no device the parity
// tests skip. In a GLIA_CUDA_EMU build they run on the CPU emulator.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "model/checkpoint.h"
#include "model/model.h"
#ifdef GLIA_HAVE_CUDA
#include "cuda/cuda.h"
#include "common/dist.h"
#include "generate/engine.h"
#include "cmd/bench_profile.h"
#endif
#include "testutil.h"

#ifdef GLIA_HAVE_CUDA

static ModelConfig config(int astro, int V) {
    ModelConfig c;
    model_config_named("tiny", &c);  // L 2, C 32, Nh 2 (D 16), F 128
    c.astro = astro;
    c.V = V;
    c.Vp = model_pad_vocab(V);
    return c;
}

// A CPU model and its twin on the GPU, same parameters, for B x T batches.
static void make_pair(ModelConfig c, int B, int T, uint64_t seed, Model **cpu, Model **gpu) {
    *cpu = model_new(&c);
    test_model_randomise(*cpu, seed);
    *gpu = model_new(&c);
    memcpy((*gpu)->params, (*cpu)->params, (*cpu)->nparams * sizeof(float));
    test_alloc_train(*cpu);
    model_alloc_acts(*cpu, B, T);
    char err[512];
    cr_assert_eq(model_to_backend(*gpu, backend_cuda(), err, sizeof err), 0, "model_to_backend: %s", err);
    test_alloc_train(*gpu);
    model_alloc_acts(*gpu, B, T);
}

static void batch(int *tok, int *tgt, int n, int V, uint64_t seed) {
    TestRng r;
    rng_seed(&r, seed);
    test_random_tokens(tok, n, V, &r);
    test_random_tokens(tgt, n, V, &r);
    tgt[1] = -1;  // an unscored position
}

static void check_forward_backward(ModelConfig c, int B, int T, uint64_t seed) {
    Model *cpu, *gpu;
    make_pair(c, B, T, seed, &cpu, &gpu);
    int *tok = malloc(B * T * sizeof(int)), *tgt = malloc(B * T * sizeof(int));
    batch(tok, tgt, B * T, c.V, seed + 1);

    double l_cpu = model_forward(cpu, tok, tgt, B, T, NULL);
    double l_gpu = model_forward(gpu, tok, tgt, B, T, NULL);
    cr_log_info("astro %d V %d: loss cpu %.7f gpu %.7f", c.astro, c.V, l_cpu, l_gpu);
    cr_assert(fabs(l_cpu - l_gpu) <= 1e-5 * l_cpu, "loss: cpu %.7f gpu %.7f", l_cpu, l_gpu);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t += T / 3 + 1) {
            float *row = malloc(c.V * sizeof(float));
            memcpy(row, model_logits(gpu, b, t), c.V * sizeof(float));
            double e = rel_err(row, model_logits(cpu, b, t), c.V);
            cr_assert(e <= 1e-5, "logits b %d t %d: rel err %.2e", b, t, e);
            free(row);
        }
    size_t spikes = 0, n = (size_t)B * T * c.C;
    for (size_t i = 0; i < n; i++) spikes += cpu->acts[0].amsu.s[i] != 0.0f;
    cr_assert(spikes > n / 50 && spikes < n, "degenerate spikes: %zu of %zu", spikes, n);

    model_zero_grad(cpu);
    model_zero_grad(gpu);
    model_backward(cpu, tok, 0.5f);
    model_backward(gpu, tok, 0.5f);
    float *g = malloc(cpu->nparams * sizeof(float));
    cuda_download(g, gpu->grads, cpu->nparams * sizeof(float));
    double worst = 0.0;
    for (int i = 0; i < cpu->ntensors; i++) {
        const ParamTensor *t = &cpu->tensors[i];
        double e = rel_err(g + t->offset, cpu->grads + t->offset, t->numel);
        worst = e > worst ? e : worst;
        cr_assert(e <= 1e-4, "gradient of %s: rel err %.2e", t->name, e);
    }
    cr_log_info("astro %d V %d: worst gradient rel err %.2e", c.astro, c.V, worst);
    free(g);
    free(tok);
    free(tgt);
    model_free(cpu);
    model_free(gpu);
}

#endif

Test(cuda_model, forward_backward_astro_on) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_forward_backward(config(1, 256), 2, 37, 11);
#endif
}

Test(cuda_model, forward_backward_astro_off) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_forward_backward(config(0, 256), 3, 20, 12);
#endif
}

Test(cuda_model, forward_backward_padded_vocab) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    check_forward_backward(config(1, 300), 1, 45, 13);  // V 300 padded to 320
#endif
}

// Three optimizer steps with clipping (model_step) on each backend, on a
// padded vocabulary: E's pad rows stay exactly 0 on the device.
Test(cuda_model, adamw_steps_match) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    ModelConfig c = config(1, 300);  // V 300 padded to 320
    const int B = 2, T = 24;
    Model *cpu, *gpu;
    make_pair(c, B, T, 21, &cpu, &gpu);
    size_t n = cpu->nparams;
    int tok[B * T], tgt[B * T];
    for (int step = 1; step <= 3; step++) {
        batch(tok, tgt, B * T, c.V, 100 + step);
        model_zero_grad(cpu);
        model_zero_grad(gpu);
        model_forward(cpu, tok, tgt, B, T, NULL);
        model_backward(cpu, tok, 1.0f);
        model_forward(gpu, tok, tgt, B, T, NULL);
        model_backward(gpu, tok, 1.0f);
        double nc = model_step(cpu, 1e-2f, 0.1f, 0.5f, step), ng = model_step(gpu, 1e-2f, 0.1f, 0.5f, step);
        cr_assert(fabs(nc - ng) <= 1e-4 * nc, "step %d: grad norm cpu %.6f gpu %.6f", step, nc, ng);
    }
    const float *c1, *c2, *g1, *g2;
    model_sync_host(gpu);
    model_moments_host(cpu, &c1, &c2);
    model_moments_host(gpu, &g1, &g2);
    double ep = rel_err(gpu->params, cpu->params, n), em = rel_err(g1, c1, n);
    cr_log_info("after 3 steps: params rel err %.2e, first moment %.2e", ep, em);
    cr_assert(ep <= 1e-5, "parameters after 3 steps: rel err %.2e", ep);
    cr_assert(em <= 1e-4, "first moments after 3 steps: rel err %.2e", em);
    const size_t e0 = model_find(gpu, "E")->offset;
    for (size_t k = e0 + (size_t)c.V * c.C; k < e0 + (size_t)c.Vp * c.C; k++)
        cr_assert(gpu->params[k] == 0.0f && g1[k] == 0.0f, "pad entry %zu of E: %g, moment %g", k - e0,
                  gpu->params[k], g1[k]);
    model_free(cpu);
    model_free(gpu);
#endif
}

// The lab's timing backend (host/cmd/bench_profile.c) forwards every entry
// with its arguments intact: a step through it on the GPU leaves exactly the
// parameters and moments of the same step on the plain backend.
Test(cuda_model, profiled_step_is_the_plain_step) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    ModelConfig c = config(1, 256);
    const int B = 2, T = 24;
    Model *m[2];
    int tok[B * T], tgt[B * T];
    batch(tok, tgt, B * T, c.V, 5);
    float *p[2], *mom[2][2];
    for (int i = 0; i < 2; i++) {
        Model *cpu;
        make_pair(c, B, T, 31, &cpu, &m[i]);
        model_free(cpu);
        if (i) m[i]->be = profile_backend(backend_cuda(), cuda_synchronize);
        model_zero_grad(m[i]);
        model_forward(m[i], tok, tgt, B, T, NULL);
        model_backward(m[i], tok, 1.0f);
        model_step(m[i], 1e-2f, 0.1f, 0.5f, 1);
        m[i]->be = backend_cuda();
        model_sync_host(m[i]);
        const float *m1, *m2;
        model_moments_host(m[i], &m1, &m2);
        p[i] = m[i]->params;
        for (int k = 0; k < 2; k++) {
            mom[i][k] = malloc(m[i]->nparams * sizeof(float));
            memcpy(mom[i][k], k ? m2 : m1, m[i]->nparams * sizeof(float));
        }
    }
    size_t bytes = m[0]->nparams * sizeof(float);
    cr_expect(memcmp(p[0], p[1], bytes) == 0, "the profiled step's parameters differ");
    for (int k = 0; k < 2; k++) cr_expect(memcmp(mom[0][k], mom[1][k], bytes) == 0, "moment %d differs", k + 1);
    for (int i = 0; i < 2; i++) free(mom[i][0]), free(mom[i][1]), model_free(m[i]);
#endif
}

// Generation: a prompt, then single tokens, with the state carried on the
// device, gives the CPU's logits at every step; a reset slot starts clean.
Test(cuda_model, streaming_state) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    ModelConfig c = config(1, 256);
    const int P = 19;
    Model *cpu, *gpu;
    make_pair(c, 1, P, 31, &cpu, &gpu);
    ModelState *sc = model_state_new(cpu, 1), *sg = model_state_new(gpu, 1);
    int prompt[P];
    TestRng r;
    rng_seed(&r, 32);
    test_random_tokens(prompt, P, c.V, &r);
    for (int round = 0; round < 2; round++) {  // the second round after a reset
        model_forward(cpu, prompt, NULL, 1, P, sc);
        model_forward(gpu, prompt, NULL, 1, P, sg);
        for (int i = 0; i < 6; i++) {
            float row[256];
            memcpy(row, model_logits(gpu, 0, i ? 0 : P - 1), sizeof row);
            double e = rel_err(row, model_logits(cpu, 0, i ? 0 : P - 1), c.V);
            cr_assert(e <= 1e-5, "round %d token %d: logits rel err %.2e", round, i, e);
            int tok = (prompt[i] * 7 + 3) % c.V;
            model_forward(cpu, &tok, NULL, 1, 1, sc);
            model_forward(gpu, &tok, NULL, 1, 1, sg);
        }
        model_state_reset(sc);
        model_state_reset(sg);
    }
    model_state_free(sc);
    model_state_free(sg);
    model_free(cpu);
    model_free(gpu);
#endif
}

// A model that does not fit is a one-line error naming what did not fit.
// Only the emulator lets a test choose the device's memory.
Test(cuda_model, out_of_memory_is_an_error) {
    test_require_gpu();
#ifndef GLIA_CUDA_EMU
    cr_skip_test("needs the CUDA emulator's memory cap (GLIA_EMU_MEM_BYTES)");
#else
    ModelConfig c = config(1, 256);
    Model *m = model_new(&c);
    setenv("GLIA_EMU_MEM_BYTES", "100000", 1);  // 100 kB: less than one copy of the parameters
    char err[512] = "";
    int rc = model_to_backend(m, backend_cuda(), err, sizeof err);
    unsetenv("GLIA_EMU_MEM_BYTES");
    cr_assert_neq(rc, 0);
    cr_log_info("%s", err);
    cr_assert(strstr(err, "cuda out of memory") && strstr(err, "GiB"), "message: %s", err);
    model_free(m);
#endif
}

#ifdef GLIA_HAVE_CUDA
// Makes the directory `dir` (a mkdtemp template) holding a word corpus of `words` words.
static void temp_corpus(char *dir, char *corpus, size_t len, int words) {
    cr_assert_not_null(mkdtemp(dir));
    snprintf(corpus, len, "%s/corpus.txt", dir);
    cr_assert_eq(write_word_corpus(corpus, words), 0);
}
#endif

// The commands: a short run on each backend from the same seed, then eval
// and generate on the GPU. The two runs' losses agree step by step; a GPU
// run stopped and resumed ends byte-identical to the uninterrupted one.
Test(cuda_model, commands_with_device_cuda) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    char dir[] = "/tmp/glia_cuda_cmd_XXXXXX", out[16384], corpus[300];
    temp_corpus(dir, corpus, sizeof corpus, 4000);
    // exact fp32 matmuls on the GPU, for the step-by-step comparison
    const char *common = "train --size tiny --steps 6 --batch 4 --seq 32 --eval-every 3 "
                         "--eval-batches 2 --sample-tokens 20 --threads 1 --quiet --matmul fp32";
    int rc = glia_run(out, sizeof out, "%s --data %s --out %s/cpu --device cpu", common, corpus, dir);
    cr_assert_eq(rc, 0, "%s", out);
    rc = glia_run(out, sizeof out, "%s --data %s --out %s/gpu --device cuda", common, corpus, dir);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert(strstr(out, "on cuda"), "%s", out);
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/cpu", dir);
    snprintf(b, sizeof b, "%s/gpu", dir);
    double la[16], lb[16];
    int na = read_losses(a, la, 16), nb = read_losses(b, lb, 16);
    cr_assert(na == 6 && nb == 6, "losses read: %d and %d", na, nb);
    for (int i = 0; i < 6; i++)
        cr_assert(fabs(la[i] - lb[i]) <= 1e-3 * la[i], "step %d: cpu %.6f gpu %.6f", i + 1, la[i], lb[i]);
    // a GPU run stopped after step 3 and resumed ends byte-identical to the
    // uninterrupted one: the moments travel through the checkpoint exactly
    rc = glia_run(out, sizeof out, "%s --data %s --out %s/gpu2 --device cuda --stop-after 3", common,
                  corpus, dir);
    cr_assert_eq(rc, 0, "%s", out);
    rc = glia_run(out, sizeof out, "%s --data %s --out %s/gpu2 --device cuda --resume", common, corpus,
                  dir);
    cr_assert_eq(rc, 0, "%s", out);
    char cmp[900];
    snprintf(cmp, sizeof cmp, "cmp -s %s/model.safetensors %s/gpu2/model.safetensors", b, dir);
    cr_assert_eq(system(cmp), 0, "the resumed GPU run's model differs from the uninterrupted one");
    // eval: the same loss on both backends
    double loss[2];
    for (int d = 0; d < 2; d++) {
        rc = glia_run(out, sizeof out, "eval --ckpt %s/model.safetensors --data %s --out %s/ev --device %s "
                      "--batch 2 --seq 32 --batches 2 --matmul fp32", b, corpus, dir, d ? "cuda" : "cpu");
        cr_assert_eq(rc, 0, "%s", out);
        const char *v = strstr(out, "val loss ");
        cr_assert(v && sscanf(v, "val loss %lf", &loss[d]) == 1, "%s", out);
    }
    cr_assert(fabs(loss[0] - loss[1]) <= 1e-4 * loss[0], "eval: cpu %.6f cuda %.6f", loss[0], loss[1]);
    rc = glia_run(out, sizeof out, "generate --ckpt %s/model.safetensors --prompt ab --tokens 10 --device cuda",
                  b);
    cr_assert_eq(rc, 0, "%s", out);
    // offline batched generation (the engine): greedy completions agree with the CPU's
    char prompts[400];
    snprintf(prompts, sizeof prompts, "%s/prompts.jsonl", dir);
    FILE *f = fopen(prompts, "w");
    cr_assert_not_null(f);
    fputs("{\"prompt\": \"the \", \"max_tokens\": 12}\n{\"prompt\": \"a\", \"max_tokens\": 7}\n"
          "{\"prompt\": \"xyz\", \"max_tokens\": 9}\n", f);
    fclose(f);
    for (int d = 0; d < 2; d++) {
        rc = glia_run(out, sizeof out, "generate --ckpt %s/model.safetensors --prompts %s --out %s/c%d.jsonl "
                      "--batch 2 --temperature 0 --device %s --matmul fp32", b, prompts, dir, d,
                      d ? "cuda" : "cpu");
        cr_assert_eq(rc, 0, "%s", out);
    }
    // the completions agree by the spike-flip rule (testutil.h): identical
    // unless the CPU model had a potential within rounding of θ (or a tie
    // of its two best bytes) before they part
    char ckpt[400], cerr[CKPT_ERR_LEN];
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", b);
    Model *cpu = ckpt_load_model(ckpt, NULL, cerr);
    cr_assert_not_null(cpu, "%s", cerr);
    cJSON *lines[2][3] = {{NULL}};
    for (int d = 0; d < 2; d++) {
        char path[400], line[8192];
        snprintf(path, sizeof path, "%s/c%d.jsonl", dir, d);
        FILE *jf = fopen(path, "r");
        cr_assert_not_null(jf, "%s", path);
        for (int i = 0; i < 3; i++) {
            cr_assert(fgets(line, sizeof line, jf), "%s: line %d missing", path, i + 1);
            lines[d][i] = cJSON_Parse(line);
            cr_assert(cJSON_IsString(cJSON_GetObjectItem(lines[d][i], "completion")), "%s: %s", path, line);
        }
        fclose(jf);
    }
    int identical = 0;
    for (int i = 0; i < 3; i++) {
        const char *prompt = cJSON_GetObjectItem(lines[0][i], "prompt")->valuestring;
        const char *ref = cJSON_GetObjectItem(lines[0][i], "completion")->valuestring;
        const char *got = cJSON_GetObjectItem(lines[1][i], "completion")->valuestring;
        char why[600] = "";
        identical += !strcmp(ref, got);
        cr_expect(test_texts_agree(cpu, prompt, ref, strlen(ref), got, strlen(got), why, sizeof why), "prompt '%s': cpu '%s', cuda '%s': %s",
                  prompt, ref, got, why);
        cJSON_Delete(lines[0][i]);
        cJSON_Delete(lines[1][i]);
    }
    cr_log_info("batched completions: %d of 3 identical on cpu and cuda", identical);
    model_free(cpu);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
#endif
}

#ifdef GLIA_HAVE_CUDA
// Asserts that runs a and b (directories under dir) saved the same parameters, bit for bit.
static void expect_same_model(const char *dir, const char *a, const char *b, const char *what) {
    char pa[400], pb[400], err[CKPT_ERR_LEN];
    snprintf(pa, sizeof pa, "%s/%s/model.safetensors", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/model.safetensors", dir, b);
    Model *ma = ckpt_load_model(pa, NULL, err);
    cr_assert_not_null(ma, "%s", err);
    Model *mb = ckpt_load_model(pb, NULL, err);
    cr_assert_not_null(mb, "%s", err);
    cr_assert_eq(ma->nparams, mb->nparams);
    size_t diff = 0;
    for (size_t i = 0; i < ma->nparams; i++) diff += memcmp(&ma->params[i], &mb->params[i], sizeof(float)) != 0;
    cr_expect_eq(diff, 0, "%s: %zu of %zu parameters differ", what, diff, ma->nparams);
    model_free(ma);
    model_free(mb);
}
#endif

// The multi-GPU paths on one device (tools/device_check.sh runs this on a
// GPU): GLIA_FORCE_OVERLAP=1 sends a single process's gradients through the
// overlapped all-reduce (a one-rank NCCL communicator on its own stream,
// events between the streams) with GLIA_NCCL_DELAY_US holding each
// reduction back, so the backward runs while it is pending; and --zero 1
// runs ZeRO-1's reduce-scatter and all-gather. A sum over one rank is its
// input, so both must end bit-identical to the plain run.
Test(cuda_model, overlap_and_zero1_world1_bit_identical) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    char dir[] = "/tmp/glia_cuda_ov_XXXXXX", out[16384], corpus[300];
    temp_corpus(dir, corpus, sizeof corpus, 2000);
    const char *common = "train --size tiny --steps 3 --batch 2 --seq 16 --eval-every 0 --ckpt-every 0 "
                         "--sample-tokens 0 --threads 1 --quiet --device cuda --matmul fp32";
    int rc = glia_run(out, sizeof out, "%s --data %s --out %s/plain", common, corpus, dir);
    cr_assert_eq(rc, 0, "%s", out);
    setenv("GLIA_FORCE_OVERLAP", "1", 1);
    setenv("GLIA_NCCL_DELAY_US", "200", 1);
    rc = glia_run(out, sizeof out, "%s --data %s --out %s/overlap", common, corpus, dir);
    unsetenv("GLIA_FORCE_OVERLAP");
    unsetenv("GLIA_NCCL_DELAY_US");
    cr_assert_eq(rc, 0, "%s", out);
    rc = glia_run(out, sizeof out, "%s --data %s --out %s/zero1 --zero 1", common, corpus, dir);
    cr_assert_eq(rc, 0, "%s", out);
    expect_same_model(dir, "plain", "overlap", "the overlapped all-reduce at world 1");
    expect_same_model(dir, "plain", "zero1", "ZeRO-1 at world 1");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
#endif
}

// Training in the reduced-precision matmul modes follows fp32: a short form
// of test_train.c's tiny run (B 8, T 16, 20 steps) on the CPU and on the
// GPU in TF32 and bf16; tolerances at the top of this file.
Test(cuda_model, tf32_and_bf16_training) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    char dir[] = "/tmp/glia_cuda_mp_XXXXXX", out[16384], corpus[300];
    temp_corpus(dir, corpus, sizeof corpus, 12000);
    // The matmul modes are what this test is about, so every run takes the
    // per-timestep AM-SU: on the emulator the chunked kernels' WMMA makes a
    // step 2.5x slower (this test took 300 s of CI). The chunked AM-SU trains
    // in commands_with_device_cuda (the default) and is checked kernel by
    // kernel in test_cuda_amsu_chunk.
    const char *common = "train --size tiny --steps 20 --batch 8 --seq 16 --lr 1e-2 --warmup 5 --seed 3 "
                         "--eval-every 0 --ckpt-every 0 --sample-tokens 0 --threads 1 --quiet --amsu scan";
    static const char *const runs[][2] = {{"cpu", "fp32"}, {"cuda", "tf32"}, {"cuda", "bf16"}};
    double loss[3][64];
    const int n = 20;
    for (int r = 0; r < 3; r++) {
        int rc = glia_run(out, sizeof out, "%s --data %s --out %s/%s --device %s --matmul %s", common,
                          corpus, dir, runs[r][1], runs[r][0], runs[r][1]);
        cr_assert_eq(rc, 0, "%s", out);
        char run[400];
        snprintf(run, sizeof run, "%s/%s", dir, runs[r][1]);
        cr_assert_eq(read_losses(run, loss[r], 64), n);
        cr_assert(loss[r][n - 1] < 0.5 * loss[r][0], "%s: loss %.4f after %d steps, %.4f at the first",
                  runs[r][1], loss[r][n - 1], n, loss[r][0]);
    }
    for (int r = 1; r < 3; r++) {
        double worst = 0.0;
        for (int i = 0; i < n; i++) {
            double d = fabs(loss[r][i] - loss[0][i]) / loss[0][i];
            worst = d > worst ? d : worst;
            cr_assert(d <= 0.05, "%s: step %d loss %.5f, cpu %.5f", runs[r][1], i + 1, loss[r][i],
                      loss[0][i]);
        }
        cr_log_info("%s: worst relative loss difference %.4f over %d steps", runs[r][1], worst, n);
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
#endif
}

#ifdef GLIA_HAVE_CUDA
typedef struct {
    char text[256];
    int len, done;
} Completion;

static void on_done(void *user, const EngineResult *r) {
    Completion *c = user;
    cr_assert(r->len < (int)sizeof c->text);
    memcpy(c->text, r->text, (size_t)r->len);
    c->len = r->len, c->done = 1;
}

// Runs `n` greedy requests through an engine of `slots` slots on m.
static void run_engine(Model *m, int slots, const char *const *prompts, int n, Completion *out) {
    Engine *e = engine_new(m, slots, 400);
    cr_assert_not_null(e);
    char err[200];
    for (int i = 0; i < n; i++) {
        EngineRequest r = {.prompt = prompts[i], .prompt_len = (int)strlen(prompts[i]),
                           .max_tokens = 6 + 3 * i, .sp = {0.0f, 0, 1.0f}, .seed = (uint64_t)i + 1,
                           .on_done = on_done, .user = &out[i]};
        cr_assert_geq(engine_submit(e, &r, err, sizeof err), 0, "%s", err);
    }
    while (engine_step(e) > 0) {
    }
    engine_free(e);
}
#endif

// The serving engine (engine.c) on the GPU: the decode model and its
// prefill view (model_share) both run on the device, the pool's state and
// its slot views live there. Greedy completions equal the CPU engine's
// token for token (up to the spike-flip rule of testutil.h), with more requests than slots (slots are reused, so a
// slot reset is exercised) and one prompt longer than a prefill chunk.
Test(cuda_model, engine_matches_cpu) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    ModelConfig c = config(1, 256);
    Model *cpu, *gpu;
    make_pair(c, 1, 1, 21, &cpu, &gpu);
    static char long_prompt[301];
    for (int i = 0; i < 300; i++) long_prompt[i] = (char)('a' + i % 26);
    const char *const prompts[] = {"the astrocyte ", "a", long_prompt, "calcium rises and ", "neuron"};
    enum { N = 5 };
    Completion a[N] = {0}, b[N] = {0};
    run_engine(cpu, 2, prompts, N, a);
    run_engine(gpu, 2, prompts, N, b);
    for (int i = 0; i < N; i++) {
        cr_assert(a[i].done && b[i].done, "request %d did not finish", i);
        char why[600] = "";
        cr_assert(test_texts_agree(cpu, prompts[i], a[i].text, (size_t)a[i].len, b[i].text, (size_t)b[i].len, why,
                                   sizeof why),
                  "request %d: cpu '%.*s', gpu '%.*s': %s", i, a[i].len, a[i].text, b[i].len, b[i].text, why);
    }
    model_free(cpu);
    model_free(gpu);
#endif
}

// The NCCL path of data parallelism (kernels/cuda/nccl.cu) with one rank:
// no MPI in a test process, so the communicator has world size 1; the
// overlapped all-reduce (begin, wait) is the identity there.
Test(cuda_model, nccl_allreduce_world1) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (float)i * 0.25f - 7.0f;
    cuda_comm_init(0, 1, 0);  // no MPI in a test process: world 1
    float *dev = cuda_alloc(sizeof host);
    cr_assert_not_null(dev, "%s", cuda_last_error_message());
    cuda_upload(dev, host, sizeof host);
    cuda_allreduce_begin(dev, 500);
    cuda_allreduce_begin(dev + 500, 500);
    cuda_allreduce_wait();
    cuda_download(back, dev, sizeof back);
    cuda_free(dev);
    cuda_comm_free();
    cr_expect_eq(memcmp(host, back, sizeof host), 0, "the sum over one rank is the input");
#endif
}

// Spike statistics (model_stats, model_spike_sums) on the GPU equal the CPU's: the same spikes
// (no flip at this seed: check_forward_backward's bounds hold for it), and
// the per-neuron sums are taken in the same order and precision (double).
Test(cuda_model, stats_match_cpu) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    ModelConfig c = config(1, 256);
    const int B = 2, T = 37;
    Model *cpu, *gpu;
    make_pair(c, B, T, 11, &cpu, &gpu);
    int tok[B * T], tgt[B * T];
    batch(tok, tgt, B * T, c.V, 12);
    model_forward(cpu, tok, tgt, B, T, NULL);
    model_forward(gpu, tok, tgt, B, T, NULL);
    ModelStats a, b;
    model_stats(cpu, &a);
    model_stats(gpu, &b);
    for (int l = 0; l < c.L; l++) {
        const double *x = &a.layer[l].amsu_rate, *y = &b.layer[l].amsu_rate;
        for (int k = 0; k < 6; k++) cr_expect_eq(x[k], y[k], "layer %d: figure %d: cpu %g gpu %g", l, k, x[k], y[k]);
        cr_expect(fabs(x[6] - y[6]) <= 1e-5 * x[6], "layer %d astro share: cpu %g gpu %g", l, x[6], y[6]);
        cr_expect(x[0] > 0 && x[0] < 1, "layer %d: a degenerate rate %g", l, x[0]);
    }
    cr_expect_eq(a.sops, b.sops);
    // the serving engine's counts (model_spike_sums) over a range of positions that starts mid-batch
    double sa[2], sb[2];
    model_spike_sums(cpu, 30, 20, &sa[0], &sa[1]);
    model_spike_sums(gpu, 30, 20, &sb[0], &sb[1]);
    cr_expect(sa[0] == sb[0] && sa[1] == sb[1] && sa[0] > 0 && sa[1] > 0, "spike sums: cpu %g %g gpu %g %g", sa[0],
              sa[1], sb[0], sb[1]);
    model_stats_free(&a);
    model_stats_free(&b);
    model_free(cpu);
    model_free(gpu);
#endif
}

#ifdef GLIA_HAVE_CUDA
// A GPU model with these parameters, its activations carved for B x T with
// spikes stored fp32 (fp32 1) or as the mode says (bf16 in BF16 mode).
static Model *gpu_model(ModelConfig c, const float *params, int B, int T, int fp32) {
    Model *m = model_new(&c);
    memcpy(m->params, params, m->nparams * sizeof(float));
    char err[512];
    cr_assert_eq(model_to_backend(m, backend_cuda(), err, sizeof err), 0, "model_to_backend: %s", err);
    spikes_fp32_for_test_cuda(fp32);
    test_alloc_train(m);
    model_alloc_acts(m, B, T);
    cr_assert_eq(m->spike_bytes, fp32 ? 4 : 2);
    return m;
}
#endif

// In BF16 mode the spikes (the AM-SU's s, the FFN's r) are stored as bf16 and
// multiplied with the bf16 mirror of W_O and W_2 (spike_matmul_forward,
// spike_matmul_dW). cuBLASLt's FAST_16BF rounds the fp32 operands to bf16
// (RNE) anyway, and a spike is exact in bf16, so on the emulator (whose GEMMs
// sum in one order either way) the step must be the one the fp32 spikes
// give, bit for bit: losses, spike
// statistics, and after 2 AdamW steps (each refreshing the mirror) the
// parameters and both moments; then greedy generation gives the same text.
// The oracle is the same mode with spikes forced fp32 (spikes_fp32_for_test_cuda).
Test(cuda_model, bf16_spikes_step_bit_identical) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
#ifndef GLIA_CUDA_EMU
    cr_skip_test("bit-identity holds on the emulator; a GPU's bf16 and FAST_16BF kernels may sum differently");
#endif
    ModelConfig c = config(1, 300);
    const int B = 2, T = 24;
    Model *ref = model_new(&c);
    test_model_randomise(ref, 31);
    matmul_set_mode(MATMUL_BF16);
    Model *m[2] = {gpu_model(c, ref->params, B, T, 1), gpu_model(c, ref->params, B, T, 0)};  // fp32, bf16 spikes
    const size_t n = ref->nparams;
    int tok[B * T], tgt[B * T];
    for (int step = 1; step <= 2; step++) {  // step 2 reads the mirror refreshed by step 1
        batch(tok, tgt, B * T, c.V, 300 + step);
        double loss[2];
        ModelStats st[2];
        for (int k = 0; k < 2; k++) {
            spikes_fp32_for_test_cuda(k == 0);
            model_zero_grad(m[k]);
            loss[k] = model_forward(m[k], tok, tgt, B, T, NULL);
            model_stats(m[k], &st[k]);
            model_backward(m[k], tok, 1.0f);
            model_step(m[k], 1e-2f, 0.1f, 0.5f, step);
        }
        cr_assert_eq(loss[0], loss[1], "step %d: loss %.9g with fp32 spikes, %.9g with bf16", step, loss[0], loss[1]);
        for (int l = 0; l < c.L; l++) {
            cr_assert_eq(st[0].layer[l].amsu_rate, st[1].layer[l].amsu_rate, "step %d layer %d: AM-SU rate", step, l);
            cr_assert_eq(st[0].layer[l].amsu_never, st[1].layer[l].amsu_never);
            cr_assert_eq(st[0].layer[l].amsu_always, st[1].layer[l].amsu_always);
            cr_assert_eq(st[0].layer[l].ffn_rate, st[1].layer[l].ffn_rate, "step %d layer %d: FFN rate", step, l);
            cr_assert_eq(st[0].layer[l].ffn_never, st[1].layer[l].ffn_never);
            cr_assert_eq(st[0].layer[l].ffn_always, st[1].layer[l].ffn_always);
            cr_assert(st[1].layer[l].ffn_rate > 0.0 && st[1].layer[l].ffn_rate < 1.0, "degenerate FFN rate %g",
                      st[1].layer[l].ffn_rate);
        }
        cr_assert_eq(st[0].sops, st[1].sops);
        double a0, f0, a1, f1;
        model_spike_sums(m[0], 5, 30, &a0, &f0);
        model_spike_sums(m[1], 5, 30, &a1, &f1);
        cr_assert(a0 == a1 && f0 == f1 && a1 > 0 && f1 > 0, "spike sums: %g %g against %g %g", a0, f0, a1, f1);
        model_stats_free(&st[0]), model_stats_free(&st[1]);
    }
    float *p[2], *m1[2], *m2[2];
    for (int k = 0; k < 2; k++) {
        model_sync_host(m[k]);
        const float *a, *b;
        model_moments_host(m[k], &a, &b);
        p[k] = m[k]->params, m1[k] = (float *)a, m2[k] = (float *)b;
    }
    cr_assert(memcmp(p[0], p[1], n * sizeof(float)) == 0, "parameters differ after 2 steps");
    cr_assert(memcmp(m1[0], m1[1], n * sizeof(float)) == 0, "first moments differ after 2 steps");
    cr_assert(memcmp(m2[0], m2[1], n * sizeof(float)) == 0, "second moments differ after 2 steps");
    cr_assert(memcmp(p[1], ref->params, n * sizeof(float)) != 0, "the steps changed nothing");
    for (int k = 0; k < 2; k++) model_free(m[k]);

    // generation (byte vocabulary): decode (streaming state) and prefill view carve bf16 spikes too
    model_free(ref);
    c = config(1, 256);
    ref = model_new(&c);
    test_model_randomise(ref, 32);
    const char *const prompts[] = {"the astrocyte ", "calcium rises and "};
    Completion out[2][2];
    memset(out, 0, sizeof out);
    for (int k = 0; k < 2; k++) {
        m[k] = gpu_model(c, ref->params, 1, 1, k == 0);
        run_engine(m[k], 2, prompts, 2, out[k]);
    }
    for (int i = 0; i < 2; i++)
        cr_assert(out[0][i].len == out[1][i].len && !memcmp(out[0][i].text, out[1][i].text, (size_t)out[0][i].len),
                  "request %d: '%.*s' with fp32 spikes, '%.*s' with bf16", i, out[0][i].len, out[0][i].text,
                  out[1][i].len, out[1][i].text);
    for (int k = 0; k < 2; k++) model_free(m[k]);
    spikes_fp32_for_test_cuda(0);
    matmul_set_mode(MATMUL_FP32);
    model_free(ref);
#endif
}

// glia train --dry-run --device cuda --matmul bf16: the spikes s and r are
// bf16, half the bytes of the fp32 run's rows (B·T·C·2 and B·T·F·2 here,
// multiples of 256); the activations line equals model_memory's in BF16
// mode, and that is what model_alloc_acts carves; parameters grow by the
// bf16 mirror of W_O and W_2, L·(C² + C·F)·2.
Test(cuda_model, dry_run_bf16_spikes) {
    test_require_gpu();
#ifdef GLIA_HAVE_CUDA
    char out[2][16384];
    const char *modes[2] = {"fp32", "bf16"};
    size_t r_each[2] = {0}, s_each[2] = {0}, acts[2] = {0}, params[2] = {0};
    char r_type[2][8] = {"", ""}, s_type[2][8] = {"", ""};
    for (int k = 0; k < 2; k++) {
        int rc = glia_run(out[k], sizeof out[k],
                          "train --size tiny --batch 3 --seq 40 --device cuda --matmul %s --dry-run --out /tmp/x",
                          modes[k]);
        cr_assert_eq(rc, 0, "%s", out[k]);
        const char *p = strstr(out[k], "\n  r ");
        cr_assert(p && sscanf(p, " r %*s %*s %7s %zu", r_type[k], &r_each[k]) == 2, "no r row: %s", out[k]);
        p = strstr(out[k], "\n  s ");
        cr_assert(p && sscanf(p, " s %*s %*s %7s %zu", s_type[k], &s_each[k]) == 2, "no s row: %s", out[k]);
        p = strstr(out[k], "\n  activations ");
        cr_assert(p && sscanf(p, " activations %*f GiB %zu", &acts[k]) == 1, "%s", out[k]);
        p = strstr(out[k], "\n  parameters ");
        cr_assert(p && sscanf(p, " parameters %*f GiB %zu", &params[k]) == 1, "%s", out[k]);
    }
    ModelConfig c = config(1, 256);
    const size_t BTF = 3 * 40 * (size_t)c.F, BTC = 3 * 40 * (size_t)c.C;
    cr_expect(!strcmp(r_type[0], "fp32") && !strcmp(s_type[0], "fp32"), "%s %s", r_type[0], s_type[0]);
    cr_expect(!strcmp(r_type[1], "bf16") && !strcmp(s_type[1], "bf16"), "%s %s", r_type[1], s_type[1]);
    cr_expect_eq(r_each[0], BTF * 4);
    cr_expect_eq(r_each[1], BTF * 2);
    cr_expect_eq(s_each[0], BTC * 4);
    cr_expect_eq(s_each[1], BTC * 2);
    cr_expect_eq(acts[0] - acts[1], (size_t)c.L * (BTF + BTC) * 2, "activations %zu and %zu", acts[0], acts[1]);
    cr_expect_eq(params[1] - params[0], (size_t)c.L * ((size_t)c.C * c.C + (size_t)c.C * c.F) * 2,
                 "parameters %zu and %zu", params[0], params[1]);
    matmul_set_mode(MATMUL_BF16);
    ModelMemory mm;
    model_memory(&c, backend_cuda(), 3, 40, 1, 0, &mm);
    cr_expect_eq(mm.acts, acts[1], "model_memory %zu, the table %zu", mm.acts, acts[1]);
    Model *m = model_new(&c);
    char err[512];
    cr_assert_eq(model_to_backend(m, backend_cuda(), err, sizeof err), 0, "%s", err);
    model_alloc_acts(m, 3, 40);
    cr_expect_eq(m->acts_bytes, mm.acts, "carved %zu, model_memory %zu", m->acts_bytes, mm.acts);
    model_free(m);
    matmul_set_mode(MATMUL_FP32);
#endif
}
