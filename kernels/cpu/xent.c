// xent.c: cross-entropy over a vocabulary on the CPU, per row (loss and its
// gradient), and over M rows of stride Vp (the backend table's entries): the
// V real columns come first; the pad columns [V, Vp) are never read and get
// gradient 0. Each row's softmax is taken against its max: exp of each
// difference d ≤ 0 in float (d rounded once, glibc's expf within an ulp, so
// each term off by ≤ (1 + |d|)·2^-24 relative), summed in double. A row's
// loss is then within (1 + the softmax's mean |d|)·2^-24 nats, about 1e-6
// for differences up to 16, whatever V; the backward keeps the exps in the
// row instead of computing them twice.
#include <math.h>
#include <string.h>

#include "cpu/cpu.h"

double xent_row(const float *logits, int V, int target) {
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += expf(logits[i] - mx);
    return log(sum) + mx - logits[target];
}

void xent_row_backward(float *dlogits, const float *logits, int V, int target, float k) {
    if (target < 0) {
        memset(dlogits, 0, V * sizeof(float));
        return;
    }
    float mx = logits[0];
    for (int v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = 0.0;
    for (int v = 0; v < V; v++) {  // logits[v] is read before dlogits[v] (they may be one buffer)
        float e = expf(logits[v] - mx);
        dlogits[v] = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (int v = 0; v < V; v++) dlogits[v] = dlogits[v] * inv * k;
    dlogits[target] -= k;
}

void xent_forward(float *losses, const float *logits, const int *targets, int M, int V, int Vp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        losses[i] = targets[i] < 0 ? 0.0f : (float)xent_row(logits + (size_t)i * Vp, V, targets[i]);
}

void xent_backward(float *logits, const int *targets, float k, int M, int V, int Vp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float *row = logits + (size_t)i * Vp;
        xent_row_backward(row, row, V, targets[i], k);
        memset(row + V, 0, (size_t)(Vp - V) * sizeof(float));  // the pad columns: no gradient
    }
}
