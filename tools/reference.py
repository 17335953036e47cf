#!/usr/bin/env python3
"""Independent PyTorch reference for glia's spiking layers and whole model, and the fixtures made with it.

glia's C and CUDA code computes the AM-SU token mixer, the LIF neurons of the
spiking FFN and RMSNorm with a hand-written backward pass (SPEC.md, the model specification,
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

Whole-model fixtures (tests/fixtures/model_<case>.in/.out.safetensors) hold
every parameter under glia's checkpoint names plus tokens and targets
(float32 holding integers), and the loss, the logits (B, T, V) and
grad.<name> of every parameter for loss = mean cross-entropy; their metadata
records the seed and the config (V, Vp, L, C, Nh, F, astro "1"/"0", B, T).
The redraw rule covers every neuron of every layer, both mixers.

The same model code, in float32, is the `train` command: the independent
eager implementation behind SPEC "Reference learning curve".

Commands:
  reference.py fixtures [--dir tests/fixtures]   regenerate all fixtures
  reference.py amsu --in CASE --out RESULT [--astro on|off]
                                                 reference result for a case,
                                                 same I/O as `glia amsu`
  reference.py compare A B [--rtol 1e-5]         normwise relative error per tensor
  reference.py selftest                          surrogate-vs-finite-difference
                                                 (layers and whole model) and
                                                 reproducibility checks
  reference.py logits --model DIR --tokens 1,2,3 [--out FILE.safetensors]
                                                 logits (1, T, V) of a model
                                                 exported by `glia export`
                                                 (config.json + model.safetensors)
  reference.py train --data FILE.txt [--size small] [--astro on|off]
      [--steps 800] [--batch 16] [--seq 128] [--lr 3e-3] [--warmup 20]
      [--seed 1] [--threads N] [--eval-every 100] [--eval-batches 20]
      [--out metrics.jsonl]                      byte-level training run

The model functions (`spike`, `lif_forward`, `astro_forward`, `amsu_forward`,
`rmsnorm`, `ffn_forward`, `model_forward`, `init_params`, `model_config`,
`load_exported`) live at module level.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import time

import torch

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
    # unbind, not current[:, t]: the backward of T selects would write T
    # full-size zero tensors; unbind's backward is one stack.
    cur = current.unbind(1)                                    # T x (B, N)
    ot = o.unbind(1) if o is not None else None                # T x (B, N)
    for t in range(T):
        keep = (1.0 - s).detach() if fixed_reset is None else fixed_reset[:, t]
        u = beta * u * keep + cur[t]                           # (B, N)
        m = u - THETA if o is None else u + ot[t] - THETA      # (B, N)
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
    one_minus_lam = 1.0 - lam                                  # (Nh, D, 1)
    os_ = []
    ks, vs, qs = k.unbind(1), v.unbind(1), q.unbind(1)         # T x (B, Nh, D)
    for t in range(T):
        kv = ks[t][:, :, :, None] * vs[t][:, :, None, :]       # (B, Nh, D, D)
        H = lam * H + one_minus_lam * kv                       # (B, Nh, D, D)
        os_.append(torch.einsum("bhij,bhi->bhj", H, qs[t]))    # (B, Nh, D)
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


# --------------------------------------------------------------- whole model

# name -> (L, C, Nh, F, V): SPEC "Named sizes". tiny and small use the byte
# vocabulary (256) unless another V is given.
NAMED_SIZES = {
    "tiny": (2, 32, 2, 128, 256),
    "small": (4, 128, 4, 512, 256),
    "124m": (12, 768, 12, 3072, 50257),
    "1.5b": (24, 2048, 16, 8192, 50257),
}


def padded_vocab(V):
    """V rounded up to a multiple of 64 (rows of E)."""
    return (V + 63) // 64 * 64


def model_config(size=None, V=None, L=None, C=None, Nh=None, F=None, astro=True):
    """Config dict V, Vp, L, C, Nh, F, astro: a named size, then any overrides."""
    cfg = {}
    if size is not None:
        cfg = dict(zip(("L", "C", "Nh", "F", "V"), NAMED_SIZES[size]))
    for k, x in (("V", V), ("L", L), ("C", C), ("Nh", Nh), ("F", F)):
        if x is not None:
            cfg[k] = x
    if "F" not in cfg:
        cfg["F"] = 4 * cfg["C"]
    if cfg["C"] % cfg["Nh"]:
        raise ValueError(f"C = {cfg['C']} is not a multiple of Nh = {cfg['Nh']}")
    cfg["Vp"] = padded_vocab(cfg["V"])
    cfg["astro"] = bool(astro)
    return cfg


def param_shapes(cfg):
    """[(name, shape)] of every parameter, in a fixed order (glia's checkpoint names)."""
    C, F, Nh = cfg["C"], cfg["F"], cfg["Nh"]
    D = C // Nh
    out = [("E", (cfg["Vp"], C))]
    for l in range(cfg["L"]):
        b = f"blocks.{l}."
        out.append((b + "norm1", (C,)))
        out.append((b + "W_I", (C, C)))
        if cfg["astro"]:
            out += [(b + "W_K", (C, C)), (b + "W_V", (C, C)), (b + "W_Q", (C, C))]
        out.append((b + "W_O", (C, C)))
        if cfg["astro"]:
            out.append((b + "a_lambda", (Nh, D)))
        out += [(b + "a_beta", (C,)), (b + "norm2", (C,)), (b + "W_1", (F, C)),
                (b + "W_2", (C, F)), (b + "a_beta_ffn", (F,))]
    out.append(("norm_f", (C,)))
    return out


def is_matrix(name):
    """E and every W_* (the tensors that get weight decay)."""
    return name == "E" or name.rsplit(".", 1)[-1].startswith("W_")


def init_params(cfg, gen, dtype=torch.float64):
    """SPEC "Initialisation", drawn in float64 from torch.Generator `gen` in
    param_shapes order, then cast to dtype (same values in float32 and 64)."""
    C, L, V = cfg["C"], cfg["L"], cfg["V"]
    out_std = 0.02 / math.sqrt(2 * L)
    p = {}
    for name, shape in param_shapes(cfg):
        leaf = name.rsplit(".", 1)[-1]
        if name == "E":
            x = 0.02 * torch.randn(*shape, generator=gen, dtype=torch.float64)
            x[V:] = 0.0                                        # padded rows
        elif leaf in ("W_I", "W_K", "W_V", "W_Q", "W_1"):
            x = torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(C)
        elif leaf in ("W_O", "W_2"):
            x = out_std * torch.randn(*shape, generator=gen, dtype=torch.float64)
        elif leaf == "a_lambda":
            x = lambda_init_logits(*shape)
        elif leaf in ("a_beta", "a_beta_ffn"):
            x = torch.zeros(*shape, dtype=torch.float64)
        else:                                                  # norm1, norm2, norm_f
            x = torch.ones(*shape, dtype=torch.float64)
        p[name] = x.to(dtype)
    return p


def ffn_forward(z, W_1, W_2, a_beta_ffn, **lif_kw):
    """Spiking FFN on a normalised input z: (B, T, C) -> dict y (B, T, C),
    r, w, m (B, T, F). LIF neurons with o = 0."""
    c = z @ W_1.T                                              # (B, T, F)
    r, w, m = lif_forward(c, a_beta_ffn, None, **lif_kw)
    return {"y": r @ W_2.T, "r": r, "w": w, "m": m}


def model_forward(p, tokens, cfg, targets=None, mixer_kw=None):
    """Whole model (SPEC "Whole model").

    p: parameter dict (param_shapes names); tokens, targets: (B, T) int64.
    mixer_kw(name) -> extra lif_forward kwargs for the mixer `name`
    ("blocks.{l}.amsu" or "blocks.{l}.ffn"), or None (selftest only).
    Returns dict logits (B, T, V), loss (scalar, when targets are given),
    spikes {mixer: (B, T, N)} and margins {mixer: (B, T, N)}.
    """
    V = cfg["V"]
    x = p["E"][tokens]                                         # (B, T, C)
    spikes, margins = {}, {}
    for l in range(cfg["L"]):
        b = f"blocks.{l}."
        name = b + "amsu"
        kw = mixer_kw(name) if mixer_kw else {}
        z = rmsnorm(x, p[b + "norm1"])
        if cfg["astro"]:
            out = amsu_forward(z, p[b + "W_I"], p[b + "W_O"], p[b + "a_beta"],
                               p[b + "W_K"], p[b + "W_V"], p[b + "W_Q"],
                               p[b + "a_lambda"], **kw)
        else:
            out = amsu_forward(z, p[b + "W_I"], p[b + "W_O"], p[b + "a_beta"], **kw)
        x = x + out["y"]
        spikes[name], margins[name] = out["s"], out["m"]
        name = b + "ffn"
        kw = mixer_kw(name) if mixer_kw else {}
        out = ffn_forward(rmsnorm(x, p[b + "norm2"]), p[b + "W_1"], p[b + "W_2"],
                          p[b + "a_beta_ffn"], **kw)
        x = x + out["y"]
        spikes[name], margins[name] = out["r"], out["m"]
    logits = rmsnorm(x, p["norm_f"]) @ p["E"][:V].T            # (B, T, V): real rows only
    res = {"logits": logits, "spikes": spikes, "margins": margins}
    if targets is not None:
        res["loss"] = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1))
    return res


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


def model_case(inp, cfg):
    """Whole model in float64: loss, logits and every parameter gradient.

    Returns (outputs dict, {mixer: (margin, fire rate)}); outputs are loss (1),
    logits (B, T, V) and grad.<name> for every parameter.
    """
    names = [n for n, _ in param_shapes(cfg)]
    p = _leaves(inp, names)
    out = model_forward(p, inp["tokens"].long(), cfg, inp["targets"].long())
    out["loss"].backward()
    res = {"loss": out["loss"].detach().reshape(1), "logits": out["logits"].detach()}
    for n in names:
        res["grad." + n] = p[n].grad
    stats = {k: (out["margins"][k].abs().min().item(), out["spikes"][k].mean().item())
             for k in out["margins"]}
    return res, stats


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


def draw_model(seed, cfg, B, T):
    """Inputs of a whole-model case, rounded to float32.

    SPEC initialisation, then perturbed so that every gradient is non-trivial:
    a_lambda, a_beta, a_beta_ffn + N(0, 0.3^2); gains 1 + N(0, 0.1^2);
    W_O ~ N(0, 1/C) and W_2 ~ N(0, 1/F) (so the residual stream changes);
    E ~ N(0, 0.5^2) with the padded rows kept zero. Tokens and targets are
    uniform in [0, V) and stored as float32.
    """
    gen = torch.Generator().manual_seed(seed)
    p = init_params(cfg, gen)

    def rn(shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    for name, shape in param_shapes(cfg):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("a_lambda", "a_beta", "a_beta_ffn"):
            p[name] = p[name] + 0.3 * rn(shape)
        elif leaf.startswith("norm"):
            p[name] = 1.0 + 0.1 * rn(shape)
        elif leaf == "W_O":
            p[name] = rn(shape) / math.sqrt(cfg["C"])
        elif leaf == "W_2":
            p[name] = rn(shape) / math.sqrt(cfg["F"])
        elif name == "E":
            p[name] = 0.5 * rn(shape)
            p[name][cfg["V"]:] = 0.0
    p["tokens"] = torch.randint(0, cfg["V"], (B, T), generator=gen).double()
    p["targets"] = torch.randint(0, cfg["V"], (B, T), generator=gen).double()
    return {n: x.float() for n, x in p.items()}


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
    """Read a safetensors file of F32 tensors into {name: float32 tensor}.

    A few lines of struct and JSON rather than the safetensors package, which
    Debian does not ship (tools/setup.sh installs python3-torch only): an
    8-byte little-endian header length, the JSON header, then the data.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > len(raw) - 8:
        raise ValueError(f"{path}: header length {hlen} runs past the end")
    header = json.loads(raw[8:8 + hlen])
    data = raw[8 + hlen:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor '{name}' is {info['dtype']}, only F32 is read")
        a, b = info["data_offsets"]
        shape = [int(d) for d in info["shape"]]
        if not 0 <= a <= b <= len(data) or b - a != 4 * math.prod(shape):
            raise ValueError(f"{path}: tensor '{name}': bad data offsets")
        x = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32) if b > a else torch.zeros(0)
        out[name] = x.reshape(shape).clone()
    return out


EXPORT_KEYS = {"vocab_size": "V", "n_layer": "L", "n_embd": "C", "n_head": "Nh",
               "ffn_dim": "F"}


def load_exported(directory, dtype=torch.float64):
    """A directory written by `glia export`: (params, cfg).

    config.json gives the config (checked: model_type "astrosnn", model_version
    1, vocab_padded equal to what model_config derives); model.safetensors the
    parameters, each checked against param_shapes(cfg) and cast to dtype.
    """
    with open(os.path.join(directory, "config.json")) as f:
        conf = json.load(f)
    if conf.get("model_type") != "astrosnn" or conf.get("model_version") != 1:
        raise ValueError(f"{directory}/config.json: not an astrosnn model_version 1 config")
    cfg = model_config(astro=bool(conf["astro"]),
                       **{short: int(conf[key]) for key, short in EXPORT_KEYS.items()})
    if cfg["Vp"] != int(conf["vocab_padded"]):
        raise ValueError(f"{directory}/config.json: vocab_padded {conf['vocab_padded']}, "
                         f"expected {cfg['Vp']}")
    tensors = load(os.path.join(directory, "model.safetensors"))
    p = {}
    for name, shape in param_shapes(cfg):
        if name not in tensors:
            raise ValueError(f"{directory}/model.safetensors: tensor '{name}' is missing")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{directory}/model.safetensors: tensor '{name}': shape "
                             f"{list(tensors[name].shape)}, expected {list(shape)}")
        p[name] = tensors[name].to(dtype)
    return p, cfg


def cmd_logits(args):
    p, cfg = load_exported(args.model)
    tokens = torch.tensor([[int(t) for t in args.tokens.split(",")]], dtype=torch.int64)
    if tokens.numel() == 0 or tokens.min() < 0 or tokens.max() >= cfg["V"]:
        raise SystemExit(f"reference.py logits: tokens must be in [0, {cfg['V']})")
    with torch.no_grad():
        logits = model_forward(p, tokens, cfg)["logits"]        # (1, T, V) float64
    if args.out:
        save({"logits": logits}, args.out,
             {"generator": GENERATOR, "model": os.path.abspath(args.model),
              "tokens": args.tokens})
    else:
        json.dump(logits.to(torch.float32).tolist(), sys.stdout)
        print()
    return 0


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
# case name -> (base seed, config, B, T)
MODEL_CASES = [
    ("model_tiny", 4100, dict(V=256, L=2, C=32, Nh=2, F=128, astro=True), 2, 9),
    ("model_tiny_off", 4200, dict(V=256, L=2, C=32, Nh=2, F=128, astro=False), 2, 9),
    ("model_padded", 4300, dict(V=70, L=1, C=16, Nh=2, F=64, astro=True), 3, 6),
]


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

    model_report = write_model_fixtures(directory)

    if verbose:
        print(f"{'case':<12} {'base':>5} {'seed':>5} {'margin':>10} {'fired':>7}")
        for case, base, seed, margin, rate in report:
            if margin is None:
                print(f"{case:<12} {base:>5} {seed:>5} {'-':>10} {'-':>7}")
            else:
                print(f"{case:<12} {base:>5} {seed:>5} {margin:>10.3e} {rate:>7.3f}")
        print()
        print(f"{'model case':<16} {'base':>5} {'seed':>5}  {'mixer':<15} "
              f"{'margin':>10} {'fired':>7}")
        for case, base, seed, stats in model_report:
            for i, (mixer, (margin, rate)) in enumerate(stats.items()):
                head = f"{case:<16} {base:>5} {seed:>5}" if i == 0 else " " * 28
                print(f"{head}  {mixer:<15} {margin:>10.3e} {rate:>7.3f}")
    return report + [(c, b, s, min(m for m, _ in st.values()), None)
                     for c, b, s, st in model_report]


def model_fixture_case(case):
    """(seed, config, inputs, outputs, stats) of a model case: the first seed
    from its base whose every neuron (all layers, both mixers) has |m| >= 1e-4."""
    _, base, kw, B, T = next(c for c in MODEL_CASES if c[0] == case)
    cfg = model_config(**kw)
    seed = base
    while True:
        inp = draw_model(seed, cfg, B, T)
        res, stats = model_case(inp, cfg)
        if min(m for m, _ in stats.values()) >= MIN_MARGIN:
            return seed, cfg, inp, res, stats
        seed += 1


def write_model_fixtures(directory):
    """model_<case>.in/.out.safetensors; returns [(case, base, seed, stats)]."""
    report = []
    for case, base, _, B, T in MODEL_CASES:
        seed, cfg, inp, res, stats = model_fixture_case(case)
        meta = {"generator": GENERATOR, "case": case, "seed": seed, "B": B, "T": T,
                "astro": "1" if cfg["astro"] else "0"}
        meta.update({k: cfg[k] for k in ("V", "Vp", "L", "C", "Nh", "F")})
        save(inp, os.path.join(directory, case + ".in.safetensors"), meta)
        save(res, os.path.join(directory, case + ".out.safetensors"), meta)
        report.append((case, base, seed, stats))
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


# ------------------------------------------------------------------ training

def lr_at(step, steps, lr, warmup):
    """Learning rate of step 1..steps: linear warmup to lr over `warmup` steps,
    then cosine down to 0.1 lr at the last step."""
    if step <= warmup:
        return lr * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def byte_splits(path):
    """Bytes of a file as int64 tokens: (first 90% train, last 10% val)."""
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    n = int(0.9 * data.numel())
    return data[:n], data[n:]


def train_batch(data, B, T, gen):
    """B random windows of T + 1 tokens: (tokens, targets), each (B, T)."""
    starts = torch.randint(0, data.numel() - T, (B,), generator=gen)
    w = data[starts[:, None] + torch.arange(T + 1)]            # (B, T + 1)
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def val_loss(p, cfg, data, B, T, batches):
    """Mean CE over `batches` batches of B consecutive, non-overlapping
    windows of T + 1 tokens (inputs and their shifted targets) from the start
    of `data`; fewer if the split is shorter."""
    n = min(batches * B, data.numel() // (T + 1))
    total, count = 0.0, 0
    for first in range(0, n, B):
        k = torch.arange(first, min(first + B, n))
        w = data[k[:, None] * (T + 1) + torch.arange(T + 1)]   # (b, T + 1)
        loss = model_forward(p, w[:, :-1], cfg, w[:, 1:])["loss"]
        total += loss.item() * w.shape[0]
        count += w.shape[0]
    return total / count if count else float("nan")


def cmd_train(args):
    torch.set_num_threads(args.threads)
    train, val = byte_splits(args.data)
    B, T = args.batch, args.seq
    if train.numel() <= T + 1:
        print(f"train: {args.data}: train split has {train.numel()} bytes, "
              f"need more than seq + 1 = {T + 1}", file=sys.stderr)
        return 2
    cfg = model_config(args.size, V=256, astro=args.astro == "on")
    p = {n: x.requires_grad_(True) for n, x in
         init_params(cfg, torch.Generator().manual_seed(args.seed), torch.float32).items()}
    decay = [x for n, x in p.items() if is_matrix(n)]
    no_decay = [x for n, x in p.items() if not is_matrix(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    data_gen = torch.Generator().manual_seed(args.seed)
    nparam = sum(x.numel() for x in p.values())
    print(f"train: size {args.size}, astro {args.astro}, {nparam} params, "
          f"train {train.numel()} / val {val.numel()} bytes, B {B} T {T}, "
          f"{args.steps} steps, lr {args.lr:g} (warmup {args.warmup}), "
          f"seed {args.seed}, {args.threads} threads", flush=True)
    out = open(args.out, "w") if args.out else None

    def log(rec):
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        tokens, targets = train_batch(train, B, T, data_gen)
        loss = model_forward(p, tokens, cfg, targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        rec = {"step": step, "loss": loss.item(), "lr": lr,
               "tok_s": B * T / dt, "ms": 1000.0 * dt}
        print(f"step {step} | loss {rec['loss']:.4f} | lr {lr:.3e} | "
              f"{rec['tok_s']:.0f} tok/s | {rec['ms']:.1f} ms", flush=True)
        log(rec)
        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.steps):
            vl = val_loss(p, cfg, val, B, T, args.eval_batches)
            print(f"step {step} | val_loss {vl:.4f}", flush=True)
            log({"step": step, "val_loss": vl})
    if out:
        out.close()
    return 0


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
            print(f"  {n:<{max(9, len(n))}} autograd vs FD rel err {err:.2e}")
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


def _check_model(inp, cfg):
    """FD check of every whole-model gradient; returns the worst error.

    In a stack of layers a spike feeds the next mixers, so replacing it by the
    smooth step would change the forward values themselves. Each spike is
    therefore replaced by s0 + (smooth(m) - smooth(m0)), where s0 and m0 are
    that neuron's spike and margin in the spiking run, and the resets are
    frozen at (1 - s0_{t-1}). At the spiking point this function has exactly
    the spiking model's values, and its true derivative is the SPEC's
    surrogate with detached resets, i.e. what autograd computed for the
    spiking model; central finite differences of it check all of the rest
    (RMSNorms, embedding, tied head on the V real rows, padded rows, W_O,
    W_2, cross-entropy).
    """
    names = [n for n, _ in param_shapes(cfg)]
    p = _leaves(inp, names)
    tok, tgt = inp["tokens"].long(), inp["targets"].long()
    out = model_forward(p, tok, cfg, tgt)
    out["loss"].backward()
    s0 = {k: v.detach() for k, v in out["spikes"].items()}
    m0 = {k: v.detach() for k, v in out["margins"].items()}
    keep = {k: _frozen_reset(v) for k, v in s0.items()}
    print(f"  loss {out['loss'].item():.6f}, "
          + ", ".join(f"{k} fired {v.mean().item():.3f}" for k, v in s0.items()))

    def mixer_kw(name):
        step = [0]

        def linearised_spike(m):
            t = step[0]
            step[0] += 1
            return s0[name][:, t] + (smooth_spike(m) - smooth_spike(m0[name][:, t]))
        return {"spike_fn": linearised_spike, "fixed_reset": keep[name]}

    def loss_fn():
        return model_forward(p, tok, cfg, tgt, mixer_kw)["loss"]

    with torch.no_grad():
        same = loss_fn().item() == out["loss"].item()
    print(f"  linearised model reproduces the spiking loss exactly: {same}")
    worst = _fd_check(loss_fn, p, names)
    return worst if same else math.inf


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
    print("selftest 1e: whole model, fixture case model_padded (V 70 padded to 128): "
          "autograd vs finite differences")
    seed, cfg, inp, _, _ = model_fixture_case("model_padded")
    ok &= _check_model(inp, cfg) < tol
    print("selftest 1f: whole model, astro off, 2 layers: autograd vs finite differences")
    cfg = model_config(V=40, L=2, C=8, Nh=1, F=16, astro=False)
    ok &= _check_model(draw_model(11, cfg, B=2, T=5), cfg) < tol

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
    g = sub.add_parser("logits", help="logits of a `glia export` directory for some tokens")
    g.add_argument("--model", required=True, help="directory: config.json, model.safetensors")
    g.add_argument("--tokens", required=True, help="comma-separated token ids")
    g.add_argument("--out", help="safetensors file for 'logits' (1, T, V), float32; "
                                 "default: JSON on stdout")
    t = sub.add_parser("train", help="train a named size on a text file (bytes)")
    t.add_argument("--data", required=True, help="text file; bytes are the tokens")
    t.add_argument("--size", choices=sorted(NAMED_SIZES), default="small")
    t.add_argument("--astro", choices=("on", "off"), default="on")
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seq", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--eval-batches", type=int, default=20)
    t.add_argument("--out", help="metrics, one JSON object per line")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # deterministic reductions
    if args.cmd == "fixtures":
        return cmd_fixtures(args)
    if args.cmd == "amsu":
        return cmd_amsu(args)
    if args.cmd == "compare":
        return cmd_compare(args)
    if args.cmd == "train":
        return cmd_train(args)
    if args.cmd == "logits":
        return cmd_logits(args)
    return selftest()


if __name__ == "__main__":
    sys.exit(main())
