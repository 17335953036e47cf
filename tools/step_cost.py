#!/usr/bin/env python3
"""step_cost.py: the cost model of one `124m` training step on an H100 SXM
(docs/CUDA.md, "Cost model of a training step"). An estimate, not a
measurement: each GEMM takes max(FLOPs / (fraction x dense peak), bytes /
(fraction x HBM bandwidth)), each memory-bound kernel its bytes over the
achieved bandwidth, the chunked AM-SU the time docs/CUDA.md expects of it.

    python3 tools/step_cost.py            # before the GEMM-layout work (2c64993)
    python3 tools/step_cost.py --after    # as built, and one cross-entropy pass (not built yet)

--after: one projection GEMM, no residual copies, the spikes s and r stored
as bf16 with a bf16 mirror of W_O and W_2 (BF16 mode, as built: every other
GEMM operand stays fp32, rounded to bf16 inside cuBLASLt), and the
cross-entropy's forward and backward in one pass (not built).
"""
import sys

B, T, C, F, V, L, Nh = 8, 1024, 768, 3072, 50257, 12, 12
D, M = C // Nh, B * T
P = 130_720_512  # parameters (glia train --size 124m --dry-run: 522882048 bytes / 4)
HBM, HBM_FRAC = 3.35e12, 0.8  # bytes/s, HBM3, and the fraction kernels reach
PEAK = {"bf16": 989e12, "tf32": 494.7e12}  # dense tensor-core FLOP/s (datasheet)
AMSU_FWD, AMSU_BWD = 82.5e-6, 170e-6  # s per layer: docs/CUDA.md's chunk estimates (midpoints)
AMSU_BYTES = 227e6 + 328e6 + 50e6  # its floor's bytes and dm's round trip


def rows(after):
    """(name, calls, M, K, N or None, bytes per call): N None for memory-bound kernels."""
    a = 4  # bytes of a GEMM's input operand: fp32 (bf16 only inside cuBLASLt)
    sp = 2 if after else 4  # bytes of a spike (s, r) and of W_O, W_2's mirror beside it: bf16 in BF16 mode
    btc, btf, btv = M * C * 4, M * F * 4, M * V * 4
    x = lambda n: M * n * a  # an operand of M rows of n
    w = lambda o, i: o * i * a
    r = []
    if after:  # one (B,T,4C) product for I k v q, no residual copies, bf16 spikes, xent fwd+bwd in one pass
        r += [("projections W_I..W_Q fwd (one GEMM)", L, M, C, 4 * C, x(C) + w(4 * C, C) + 4 * btc),
              ("projections bwd (dz, dW)", 2 * L, M, C, 4 * C, x(4 * C) + x(C) + w(4 * C, C) + 4 * C * C * 4)]
    else:
        r += [("projections W_I W_K W_V W_Q fwd", 4 * L, M, C, C, x(C) + w(C, C) + btc),
              ("projections bwd (dz, dW)", 8 * L, M, C, C, 2 * x(C) + w(C, C) + C * C * 4)]
    r += [("W_O fwd (+= into x_mid)", L, M, C, C, M * C * sp + C * C * sp + 2 * btc),
          ("W_1 fwd", L, M, C, F, x(C) + w(F, C) + btf),
          ("W_2 fwd (+= into x_next)", L, M, F, C, M * F * sp + C * F * sp + 2 * btc)]
    r += [("logits fwd", 1, M, C, V, x(C) + w(V, C) + btv)]
    if after:  # per call the mean of ds = dy W_O (fp32) and dW_O += dy16ᵀ s16; likewise W_2
        r += [("W_O bwd (ds, dW_O)", 2 * L, M, C, C, (2 * btc + w(C, C) + M * C * (2 + sp) + 2 * C * C * 4) // 2)]
    else:
        r += [("W_O bwd (ds, dW_O)", 2 * L, M, C, C, 2 * x(C) + C * C * 4)]
    r += [("W_1 bwd (dz, dW_1)", 2 * L, M, C, F, x(F) + x(C) + F * C * 4)]
    if after:
        r += [("W_2 bwd (dr, dW_2)", 2 * L, M, F, C,
               (btc + btf + w(C, F) + M * C * 2 + M * F * sp + 2 * C * F * 4) // 2),
              ("dy, dx to bf16 (for dW_O, dW_2)", 2 * L, M, C, None, M * C * 6),
              ("bf16 mirror of W_O, W_2 (after AdamW)", 1, 0, 0, None, L * (C * C + C * F) * 6)]
    else:
        r += [("W_2 bwd (dr, dW_2)", 2 * L, M, F, C, x(F) + x(C) + F * C * 4)]
    r += [("logits bwd (dz, dE)", 2, M, C, V, M * V * a + x(C) + V * C * 4),
          ("rmsnorm fwd", 2 * L + 1, M, C, None, 2 * btc),
          ("rmsnorm bwd", 2 * L + 1, M, C, None, 4 * btc)]
    if not after:
        r += [("residual copies (x_mid, x_next)", 2 * L, M, C, None, 2 * btc)]
    spk = M * F * sp  # r
    r += [("FFN LIF fwd (c -> w, r)", L, M, F, None, 2 * btf + spk),
          ("FFN LIF bwd (dr, w, r -> dc)", L, M, F, None, 3 * btf + spk)]
    r += [("xent fwd + bwd (in place)", 1, M, V, None, 2 * btv if after else 3 * btv),
          ("embedding fwd + bwd", 1, M, C, None, 4 * btc),
          ("zero grads", 1, 0, 0, None, P * 4),
          ("grad norm", 1, 0, 0, None, P * 4),
          ("AdamW (read p g m v, write p m v)", 1, 0, 0, None, 7 * P * 4)]
    return r


def model(after, mode, frac):
    out = []
    for name, n, m, k, nn, byts in rows(after):
        tm = byts / (HBM_FRAC * HBM)
        if nn is None:
            out.append((name, n, 0.0, byts * n, tm * n, "bytes"))
            continue
        fl = 2.0 * m * k * nn
        tc = fl / (frac * PEAK[mode])
        out.append((name, n, fl * n, byts * n, max(tc, tm) * n, "FLOPs" if tc >= tm else "bytes"))
    s_saved = 2 * M * C * 2 if after else 0  # s written by the forward, read by the neuron's backward, at 2 bytes
    out.append(("AM-SU chunk fwd + bwd (recurrence)", L, 0.0, (AMSU_BYTES - s_saved) * L,
                (AMSU_FWD + AMSU_BWD) * L - s_saved * L / (HBM_FRAC * HBM), "bytes"))
    return out


def main():
    after = "--after" in sys.argv
    flops = 6.0 * P * M + 15.0 * Nh * D * D * L * M  # the MFU's count, as glia bench kernels makes it
    frac = 0.6
    modes = ("bf16",) if after else ("bf16", "tf32")  # bf16 spikes are BF16 mode's
    res = {mode: model(after, mode, frac) for mode in modes}
    tot = {mode: sum(r[4] for r in res[mode]) for mode in res}
    print(f"124m, B {B} T {T}, H100 SXM: GEMMs at {frac:.0%} of the dense peak, memory at {HBM_FRAC:.0%} of 3.35 TB/s"
          + (" (as built, one xent pass)" if after else " (before the GEMM-layout work)"))
    print("| component | calls | GFLOP | GB | bf16 ms | share | tf32 ms | bf16 bound by |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for i, rb in enumerate(res["bf16"]):
        tf = f"{res['tf32'][i][4] * 1e3:.2f}" if "tf32" in res else "-"
        print(f"| {rb[0]} | {rb[1]} | {rb[2] / 1e9:.0f} | {rb[3] / 1e9:.2f} | {rb[4] * 1e3:.2f} | "
              f"{100 * rb[4] / tot['bf16']:.0f} % | {tf} | {rb[5]} |")
    for mode in modes:
        g = sum(r[4] for r in res[mode] if r[2] > 0)
        print(f"{mode}: step {tot[mode] * 1e3:.1f} ms (GEMMs {g * 1e3:.1f}, the rest {(tot[mode] - g) * 1e3:.1f}), "
              f"{M / tot[mode]:.0f} tokens/s, MFU {100 * flops / tot[mode] / PEAK['bf16']:.1f} % of 989 TFLOP/s")
    print(f"45 % MFU: a step of at most {flops / (0.45 * PEAK['bf16']) * 1e3:.1f} ms ({flops / 1e9:.0f} GFLOP)")


main()
