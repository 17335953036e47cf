#!/usr/bin/env python3
"""Independent PyTorch reference for glia's spiking layers, and the fixtures made with it.

glia's C and CUDA code computes the AM-SU token mixer, the LIF neurons of the
spiking FFN and RMSNorm with a hand-written backward pass (docs: /SPEC.md,
sections "AM-SU token mixer", "Spiking FFN channel mixer", "Backward pass").
A hand-written backward can be wrong in ways that the same author's tests
agree with, so this file is a second implementation built on purpose in a
different way:

  * eager PyTorch on the CPU, one Python loop step per token, written from
    the SPEC alone (not derived from the C code);
  * float64 throughout, so its own rounding error is far below float32's;
  * no hand-written gradients: the only custom derivative is the SPEC's
    surrogate for the spike (the `Spike` autograd function) and the detached
    reset; everything else comes from torch autograd. Every gradient is taken
    of the loss L = sum(dy * y) for a given upstream gradient dy.

The fixtures it writes (tests/fixtures/<case>.in/.out.safetensors, float32)
are what the C tests compare against. Spikes are discontinuous, so a membrane
value sitting within float32 rounding of the threshold could legitimately fire
on one side and not the other; every spiking case is therefore redrawn with
the next seed until the smallest distance |m| to the threshold is at least
1e-4, and the seed used is recorded in the file metadata.

Commands:
  reference.py fixtures [--dir tests/fixtures]   regenerate all fixtures
  reference.py amsu --in CASE --out RESULT [--astro on|off]
                                                 reference result for a case,
                                                 same I/O as `glia amsu`
  reference.py compare A B [--rtol 1e-5]         normwise relative error per tensor
  reference.py selftest                          surrogate-vs-finite-difference
                                                 and reproducibility checks

The model functions (`spike`, `lif_forward`, `astro_forward`, `amsu_forward`,
`rmsnorm`) live at module level so that a whole-model reference can reuse them.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import tempfile

import torch
from safetensors.torch import load_file

ALPHA = 2.0        # ATan surrogate sharpness (SPEC "Backward pass")
THETA = 1.0        # firing threshold
RMS_EPS = 1e-5     # RMSNorm epsilon
MIN_MARGIN = 1e-4  # smallest allowed |m| in a fixture
GENERATOR = "tools/reference.py"


# ---------------------------------------------------------------- model math

class Spike(torch.autograd.Function):
    """Heaviside step forward, ATan surrogate derivative backward."""

    @staticmethod
    def forward(ctx, m):
        ctx.save_for_backward(m)
        return (m >= 0).to(m.dtype)

    @staticmethod
    def backward(ctx, grad):
        (m,) = ctx.saved_tensors
        return grad * ALPHA / (2.0 * (1.0 + (math.pi * ALPHA * m / 2.0) ** 2))


def spike(m):
    """Theta(m) = 1 if m >= 0 else 0, with the SPEC's surrogate gradient."""
    return Spike.apply(m)


def smooth_spike(m):
    """The smooth step whose true derivative is the surrogate (selftest only)."""
    return torch.atan(math.pi * ALPHA * m / 2.0) / math.pi + 0.5


def lif_forward(current, a_beta, o=None, spike_fn=spike, fixed_reset=None):
    """LIF neurons with hard, detached reset over T steps.

    current: (B, T, N) input current I_t; a_beta: (N) membrane logits;
    o: (B, T, N) additive modulation of the firing decision, or None (o = 0).
    fixed_reset: (B, T, N) reset factors to use instead of (1 - s_{t-1})
    (selftest only). Returns spikes s, membrane u, margin m, each (B, T, N).
    """
    B, T, N = current.shape
    beta = torch.sigmoid(a_beta)                               # (N)
    u = current.new_zeros(B, N)                                # (B, N)
    s = current.new_zeros(B, N)                                # (B, N)
    ss, us, ms = [], [], []
    for t in range(T):
        keep = (1.0 - s).detach() if fixed_reset is None else fixed_reset[:, t]
        u = beta * u * keep + current[:, t]                   # (B, N)
        m = u - THETA if o is None else u + o[:, t] - THETA   # (B, N)
        s = spike_fn(m)                                        # (B, N)
        ss.append(s)
        us.append(u)
        ms.append(m)
    return torch.stack(ss, 1), torch.stack(us, 1), torch.stack(ms, 1)


def astro_forward(k, v, q, a_lambda):
    """Astrocyte calcium state per head, read out by q.

    k, v, q: (B, T, Nh, D); a_lambda: (Nh, D). Returns o: (B, T, Nh, D).
    H_t[i,j] = lam[i] H_{t-1}[i,j] + (1 - lam[i]) k_t[i] v_t[j];
    o_t[j] = sum_i H_t[i,j] q_t[i].
    """
    B, T, Nh, D = k.shape
    lam = torch.sigmoid(a_lambda)[:, :, None]                  # (Nh, D, 1)
    H = k.new_zeros(B, Nh, D, D)                               # (B, Nh, D, D)
    os_ = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]         # (B, Nh, D, D)
        H = lam * H + (1.0 - lam) * kv                         # (B, Nh, D, D)
        os_.append(torch.einsum("bhij,bhi->bhj", H, q[:, t]))  # (B, Nh, D)
    return torch.stack(os_, 1)                                 # (B, T, Nh, D)


def amsu_forward(z, W_I, W_O, a_beta, W_K=None, W_V=None, W_Q=None,
                 a_lambda=None, **lif_kw):
    """AM-SU token mixer on a normalised input z: (B, T, C).

    Weights are [out, in]. The astrocyte is on when a_lambda (Nh, D) is
    given (then W_K, W_V, W_Q are needed too); off means o = 0.
    Returns dict y, s, u, o, m, each (B, T, C).
    """
    B, T, C = z.shape
    I = z @ W_I.T                                              # (B, T, C)
    if a_lambda is None:
        o = z.new_zeros(B, T, C)                               # (B, T, C)
        s, u, m = lif_forward(I, a_beta, None, **lif_kw)
    else:
        Nh, D = a_lambda.shape
        k = (z @ W_K.T / math.sqrt(D)).view(B, T, Nh, D)       # (B, T, Nh, D)
        v = (z @ W_V.T).view(B, T, Nh, D)                      # (B, T, Nh, D)
        q = (z @ W_Q.T).view(B, T, Nh, D)                      # (B, T, Nh, D)
        o = astro_forward(k, v, q, a_lambda).reshape(B, T, C)  # (B, T, C)
        s, u, m = lif_forward(I, a_beta, o, **lif_kw)
    y = s @ W_O.T                                              # (B, T, C)
    return {"y": y, "s": s, "u": u, "o": o, "m": m}


def rmsnorm(x, g):
    """y = g * x / sqrt(mean(x^2, last dim) + eps); x (..., C), g (C)."""
    return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + RMS_EPS)


# ------------------------------------------------ forward + autograd per case

AMSU_ON_IN = ["z", "W_I", "W_K", "W_V", "W_Q", "W_O", "a_lambda", "a_beta", "dy"]
AMSU_OFF_IN = ["z", "W_I", "W_O", "a_beta", "dy"]
AMSU_PARAMS_ON = ["z", "W_I", "W_K", "W_V", "W_Q", "W_O", "a_lambda", "a_beta"]
AMSU_PARAMS_OFF = ["z", "W_I", "W_O", "a_beta"]


def _leaves(tensors, names):
    """float64 copies of the named tensors that require grad."""
    return {n: tensors[n].detach().to(torch.float64).clone().requires_grad_(True)
            for n in names}


def amsu_case(inp, astro):
    """Forward, loss sum(dy*y), autograd. Returns (outputs dict, margin, fire rate)."""
    names = AMSU_PARAMS_ON if astro else AMSU_PARAMS_OFF
    p = _leaves(inp, names)
    out = amsu_forward(**p)
    dy = inp["dy"].to(torch.float64)
    (dy * out["y"]).sum().backward()
    res = {k: out[k].detach() for k in ("y", "s", "u", "o")}
    res["dz"] = p["z"].grad
    for n in names[1:]:
        res["d" + n] = p[n].grad
    return res, out["m"].abs().min().item(), out["s"].mean().item()


def lif_case(inp):
    """LIF neuron alone: loss sum(ds*r). Returns (outputs, margin, fire rate)."""
    p = _leaves(inp, ["c", "a_beta"])
    r, w, m = lif_forward(p["c"], p["a_beta"])
    (inp["ds"].to(torch.float64) * r).sum().backward()
    res = {"r": r.detach(), "w": w.detach(), "dc": p["c"].grad,
           "da_beta": p["a_beta"].grad}
    return res, m.abs().min().item(), r.mean().item()


def rmsnorm_case(inp):
    """RMSNorm: loss sum(dy*y). Returns outputs."""
    p = _leaves(inp, ["x", "g"])
    y = rmsnorm(p["x"], p["g"])
    (inp["dy"].to(torch.float64) * y).sum().backward()
    return {"y": y.detach(), "dx": p["x"].grad, "dg": p["g"].grad}


# ------------------------------------------------------------ input drawing

def lambda_init_logits(Nh, D):
    """logit(lambda_i), lambda_i = 1 - 2^-(1 + 9 i/(D-1)), same for every head."""
    i = torch.arange(D, dtype=torch.float64)
    lam = 1.0 - 2.0 ** -(1.0 + 9.0 * i / max(D - 1, 1))       # (D)
    return torch.logit(lam).expand(Nh, D).clone()              # (Nh, D)


def _randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def draw_amsu(seed, B, T, C, Nh, astro):
    """Inputs of an AM-SU case, rounded to float32 (what the C code reads)."""
    torch.manual_seed(seed)
    D = C // Nh
    t = {"z": _randn(B, T, C), "W_I": _randn(C, C) / math.sqrt(C)}
    if astro:
        for n in ("W_K", "W_V", "W_Q"):
            t[n] = _randn(C, C) / math.sqrt(C)
    t["W_O"] = _randn(C, C) / math.sqrt(C)
    if astro:
        t["a_lambda"] = lambda_init_logits(Nh, D) + 0.3 * _randn(Nh, D)
    t["a_beta"] = 0.5 * _randn(C)
    t["dy"] = _randn(B, T, C)
    return {n: x.float() for n, x in t.items()}


def draw_lif(seed, B, T, F):
    torch.manual_seed(seed)
    t = {"c": _randn(B, T, F), "a_beta": 0.5 * _randn(F), "ds": _randn(B, T, F)}
    return {n: x.float() for n, x in t.items()}


def draw_rmsnorm(seed, N, C):
    torch.manual_seed(seed)
    t = {"x": 3.0 * _randn(N, C), "g": 1.0 + 0.1 * _randn(C), "dy": _randn(N, C)}
    return {n: x.float() for n, x in t.items()}


# ------------------------------------------------------------------ file I/O

def _f32(tensors):
    return {n: x.detach().to(torch.float32).contiguous() for n, x in tensors.items()}


def save(tensors, path, meta):
    """Write a safetensors file byte-for-byte reproducibly.

    safetensors' own save_file keeps metadata in a hash map whose order
    changes from run to run, so the header is written here instead: metadata
    first, keys and tensors sorted by name, JSON padded with spaces to a
    multiple of 8 bytes, little-endian float32 data.
    """
    t = _f32(tensors)
    header = {"__metadata__": {k: str(meta[k]) for k in sorted(meta)}}
    blobs, offset = [], 0
    for n in sorted(t):
        blob = t[n].numpy().astype("<f4").tobytes()
        header[n] = {"dtype": "F32", "shape": list(t[n].shape),
                     "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def load(path):
    return load_file(path)


# ------------------------------------------------------------------ fixtures

# case name -> (base seed, kind, sizes)
AMSU_CASES = [
    ("amsu_small", 1100, dict(B=2, T=7, C=32, Nh=2, astro=True)),
    ("amsu_odd", 1200, dict(B=3, T=13, C=24, Nh=3, astro=True)),
    ("amsu_long", 1300, dict(B=1, T=70, C=32, Nh=4, astro=True)),
    ("amsu_off", 1400, dict(B=2, T=9, C=16, Nh=1, astro=False)),
]
LIF_CASE = ("lif", 2100, dict(B=2, T=11, F=40))
RMSNORM_CASE = ("rmsnorm", 3100, dict(N=6, C=20))


def _first_safe_seed(seed, run):
    """Smallest seed >= `seed` whose spiking case has margin >= MIN_MARGIN."""
    while True:
        inp, res, margin, rate = run(seed)
        if margin >= MIN_MARGIN:
            return seed, inp, res, margin, rate
        seed += 1


def write_fixtures(directory, verbose=True):
    """Regenerate every fixture into `directory`."""
    os.makedirs(directory, exist_ok=True)
    report = []

    def emit(case, seed, inp, res):
        meta = {"generator": GENERATOR, "case": case, "seed": seed}
        save(inp, os.path.join(directory, case + ".in.safetensors"), meta)
        save(res, os.path.join(directory, case + ".out.safetensors"), meta)

    for case, base, sz in AMSU_CASES:
        def run(seed, sz=sz):
            inp = draw_amsu(seed, **sz)
            res, margin, rate = amsu_case(inp, sz["astro"])
            return inp, res, margin, rate
        seed, inp, res, margin, rate = _first_safe_seed(base, run)
        emit(case, seed, inp, res)
        report.append((case, base, seed, margin, rate))

    case, base, sz = LIF_CASE

    def run_lif(seed):
        inp = draw_lif(seed, **sz)
        res, margin, rate = lif_case(inp)
        return inp, res, margin, rate
    seed, inp, res, margin, rate = _first_safe_seed(base, run_lif)
    emit(case, seed, inp, res)
    report.append((case, base, seed, margin, rate))

    case, base, sz = RMSNORM_CASE
    inp = draw_rmsnorm(base, **sz)
    emit(case, base, inp, rmsnorm_case(inp))
    report.append((case, base, base, None, None))

    if verbose:
        print(f"{'case':<12} {'base':>5} {'seed':>5} {'margin':>10} {'fired':>7}")
        for case, base, seed, margin, rate in report:
            if margin is None:
                print(f"{case:<12} {base:>5} {seed:>5} {'-':>10} {'-':>7}")
            else:
                print(f"{case:<12} {base:>5} {seed:>5} {margin:>10.3e} {rate:>7.3f}")
    return report


# ------------------------------------------------------------------ commands

def cmd_fixtures(args):
    write_fixtures(args.dir)
    return 0


def cmd_amsu(args):
    inp = load(args.inp)
    astro = args.astro == "on"
    need = AMSU_ON_IN if astro else AMSU_OFF_IN
    missing = [n for n in need if n not in inp]
    if missing:
        print(f"amsu: {args.inp}: missing tensor(s) {', '.join(missing)}"
              f" (astro {args.astro}; for a plain LIF case use --astro off)",
              file=sys.stderr)
        return 2
    B, T, C = inp["z"].shape
    if astro:
        Nh, D = inp["a_lambda"].shape
        if Nh * D != C:
            print(f"amsu: {args.inp}: a_lambda is [{Nh}, {D}] but C = {C}",
                  file=sys.stderr)
            return 2
    res, margin, rate = amsu_case(inp, astro)
    meta = {"generator": GENERATOR,
            "case": os.path.basename(args.inp).split(".")[0], "astro": args.astro}
    save(res, args.out, meta)
    print(f"amsu: B={B} T={T} C={C} astro {args.astro}: "
          f"fired {rate:.3f}, margin min|m| = {margin:.3e}"
          + ("  (below 1e-4: float32 code may flip spikes)" if margin < MIN_MARGIN else ""))
    return 0


def compare(a, b, rtol):
    """Print per-tensor normwise relative error; return True when all pass."""
    ok = True
    for n in sorted(set(a) & set(b)):
        x, y = a[n].to(torch.float64), b[n].to(torch.float64)
        if x.shape != y.shape:
            print(f"{n:<10} FAIL shape {list(x.shape)} vs {list(y.shape)}")
            ok = False
            continue
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        scale = y.abs().max().item() if y.numel() else 0.0
        err = diff / scale if scale > 0 else diff
        extra = ""
        if n in ("s", "r"):
            extra = f"  spike mismatches {int((x != y).sum().item())}/{x.numel()}"
        bad = not err <= rtol
        ok &= not bad
        print(f"{n:<10} {'FAIL' if bad else 'ok  '} rel err {err:.3e}{extra}")
    for n in sorted(set(a) ^ set(b)):
        print(f"{n:<10} only in {'A' if n in a else 'B'} (not compared)")
    return ok


def cmd_compare(args):
    return 0 if compare(load(args.a), load(args.b), args.rtol) else 1


# ------------------------------------------------------------------ selftest

def _fd_check(loss_fn, leaves, names, h=1e-6):
    """Max relative error of autograd grads (already in .grad) vs central FD."""
    worst = 0.0
    with torch.no_grad():
        for n in names:
            x = leaves[n]
            fd = torch.zeros_like(x)
            flat, fdf = x.view(-1), fd.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + h
                lp = loss_fn().item()
                flat[i] = old - h
                lm = loss_fn().item()
                flat[i] = old
                fdf[i] = (lp - lm) / (2 * h)
            err = ((x.grad - fd).abs().max() / fd.abs().max().clamp_min(1e-12)).item()
            print(f"  {n:<9} autograd vs FD rel err {err:.2e}")
            worst = max(worst, err)
    return worst


def _frozen_reset(s):
    """Reset factors (1 - s_{t-1}) of a run, with 1 at t = 0: (B, T, N)."""
    return torch.cat([torch.ones_like(s[:, :1]), 1.0 - s[:, :-1]], 1)


def _check_amsu(inp, astro):
    """FD check of every AM-SU gradient on one small case; returns worst error.

    The surrogate gradient must equal the true gradient of the smooth step
    arctan(pi*alpha*m/2)/pi + 1/2 with the resets frozen at their values in
    the spiking run (m is the same in both runs, since m depends on spikes
    only through the resets). W_O enters linearly and the spikes do not depend
    on it, so dW_O is checked against FD of the real spiking loss instead.
    """
    names = AMSU_PARAMS_ON if astro else AMSU_PARAMS_OFF
    p = _leaves(inp, names)
    dy = inp["dy"].to(torch.float64)
    out = amsu_forward(**p)
    (dy * out["y"]).sum().backward()
    keep = _frozen_reset(out["s"].detach())
    print(f"  fired {out['s'].mean().item():.3f}, "
          f"margin {out['m'].abs().min().item():.2e}")

    def smooth_loss():
        sm = amsu_forward(**p, spike_fn=smooth_spike, fixed_reset=keep)["s"]
        return (dy * (sm @ p["W_O"].T)).sum()

    def real_loss():
        return (dy * amsu_forward(**p)["y"]).sum()

    worst = _fd_check(smooth_loss, p, [n for n in names if n != "W_O"])
    return max(worst, _fd_check(real_loss, p, ["W_O"]))


def _check_lif(inp):
    """FD check of the LIF neuron's gradients (smooth step, frozen resets)."""
    p = _leaves(inp, ["c", "a_beta"])
    ds = inp["ds"].to(torch.float64)
    r, _, _ = lif_forward(p["c"], p["a_beta"])
    (ds * r).sum().backward()
    keep = _frozen_reset(r.detach())

    def smooth_loss():
        return (ds * lif_forward(p["c"], p["a_beta"], spike_fn=smooth_spike,
                                 fixed_reset=keep)[0]).sum()
    return _fd_check(smooth_loss, p, ["c", "a_beta"])


def _check_rmsnorm(inp):
    """FD check of RMSNorm's gradients."""
    p = _leaves(inp, ["x", "g"])
    dy = inp["dy"].to(torch.float64)
    (dy * rmsnorm(p["x"], p["g"])).sum().backward()
    return _fd_check(lambda: (dy * rmsnorm(p["x"], p["g"])).sum(), p, ["x", "g"])


def selftest():
    tol = 1e-6
    ok = True

    # (1) Autograd (surrogate + detached reset) against finite differences.
    print("selftest 1a: AM-SU, astro on: autograd vs finite differences")
    ok &= _check_amsu(draw_amsu(7, B=2, T=6, C=8, Nh=2, astro=True), True) < tol
    print("selftest 1b: AM-SU, astro off: autograd vs finite differences")
    ok &= _check_amsu(draw_amsu(8, B=2, T=6, C=8, Nh=1, astro=False), False) < tol
    print("selftest 1c: LIF neuron: autograd vs finite differences")
    ok &= _check_lif(draw_lif(9, B=2, T=6, F=10)) < tol
    print("selftest 1d: RMSNorm: autograd vs finite differences")
    ok &= _check_rmsnorm(draw_rmsnorm(10, N=3, C=7)) < tol

    # (2) Fixtures are reproducible byte for byte.
    print("selftest 2: fixtures regenerate byte-identically")
    digests = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as d:
            write_fixtures(d, verbose=False)
            h = hashlib.sha256()
            for f in sorted(os.listdir(d)):
                h.update(f.encode())
                with open(os.path.join(d, f), "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
            digests.append(h.hexdigest())
    same = digests[0] == digests[1]
    print(f"  run 1 {digests[0][:16]}  run 2 {digests[1][:16]}  "
          f"{'identical' if same else 'DIFFERENT'}")
    ok &= same

    print("selftest:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


# ---------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures", help="regenerate all fixtures")
    f.add_argument("--dir", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures"))
    a = sub.add_parser("amsu", help="reference AM-SU result for one case file")
    a.add_argument("--in", dest="inp", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--astro", choices=("on", "off"), default="on")
    c = sub.add_parser("compare", help="normwise relative error per tensor")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--rtol", type=float, default=1e-5)
    sub.add_parser("selftest", help="finite-difference and reproducibility checks")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # deterministic reductions
    if args.cmd == "fixtures":
        return cmd_fixtures(args)
    if args.cmd == "amsu":
        return cmd_amsu(args)
    if args.cmd == "compare":
        return cmd_compare(args)
    return selftest()


if __name__ == "__main__":
    sys.exit(main())
