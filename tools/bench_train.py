#!/usr/bin/env python3
"""Side-by-side CPU training throughput: glia train vs the PyTorch reference.

For each named size this runs

  (a) glia train --size SIZE --data FILE --steps N --batch B --seq T
                 --threads K --out TMPDIR --eval-every 0 --sample-tokens 0
      which writes TMPDIR/metrics.jsonl, one JSON object per step with
      "step" and "tok_s";
  (b) tools/reference.py train with the same size, data, steps, batch, seq
      and threads (eager PyTorch, float32, --eval-every 0);

and reports the median tok/s over the steps after the first 3 of each run
(warm-up: allocation, page faults, thread pools), their ratio, and the
machine. With no --data a 2 MB file of random English-like words is written
into the temporary directory (deterministic, so the bench needs nothing
external). If glia train fails, its stderr is printed and the table holds
the reference numbers only.

usage: tools/bench_train.py --glia build/glia [--sizes tiny,small]
           [--steps 30] [--batch 16] [--seq 128] [--threads 2] [--data PATH]
           [--astro on|off] [--timeout SECONDS]
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference.py")
WARMUP_STEPS = 3


# ------------------------------------------------------------- synthetic data

def synthetic_text(path, nbytes=2 * 1024 * 1024, seed=20240520):
    """Write `nbytes` of deterministic English-like text: words built from
    syllables, Zipf-distributed, in capitalised sentences and paragraphs."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t",
              "w", "th", "sh", "ch", "st", "tr", "br", "gr", "pl", "wh"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "ee", "oo"]
    codas = ["", "", "n", "r", "s", "t", "d", "l", "ng", "st", "nd", "ck", "th"]
    common = ["the", "and", "of", "to", "a", "in", "that", "is", "it", "was",
              "he", "she", "with", "for", "as", "his", "her", "on", "be", "at",
              "by", "not", "this", "but", "from", "they", "you", "all", "we", "my"]
    words, seen = list(common), set(common)
    while len(words) < 3000:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                    for _ in range(rng.choice((1, 1, 2, 2, 2, 3))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    weights = [1.0 / (r + 1) for r in range(len(words))]    # Zipf
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    out, size = [], 0
    while size < nbytes:
        para = []
        for _ in range(rng.randint(2, 6)):
            n = rng.randint(4, 16)
            sent = rng.choices(words, cum_weights=cum, k=n)
            sent[0] = sent[0].capitalize()
            for i in range(1, n - 1):
                if rng.random() < 0.08:
                    sent[i] += ","
            para.append(" ".join(sent) + rng.choice(".....?!;"))
        text = " ".join(para) + "\n\n"
        out.append(text)
        size += len(text)
    data = "".join(out).encode("ascii")[:nbytes]
    with open(path, "wb") as f:
        f.write(data)
    return path


# -------------------------------------------------------------------- running

def median_tok_s(metrics_path):
    """Median tok/s over the per-step records after the first WARMUP_STEPS,
    and the number of steps it is taken over (None if no step records)."""
    recs = []
    with open(metrics_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "step" in r and "tok_s" in r:
                recs.append((int(r["step"]), float(r["tok_s"])))
    if not recs:
        return None, 0
    recs.sort()
    kept = recs[WARMUP_STEPS:] if len(recs) > WARMUP_STEPS else recs
    return statistics.median(t for _, t in kept), len(kept)


def run(cmd, timeout, label):
    """Run cmd; return True on success, else print why (with its stderr)."""
    print(f"[{label}] {' '.join(cmd)}", flush=True)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
    except FileNotFoundError as e:
        print(f"[{label}] cannot run: {e}", flush=True)
        return False
    except subprocess.TimeoutExpired:
        print(f"[{label}] timed out after {timeout} s", flush=True)
        return False
    if p.returncode != 0:
        print(f"[{label}] failed with exit status {p.returncode}; stderr:", flush=True)
        sys.stdout.write(p.stderr if p.stderr.strip() else "  (empty)\n")
        return False
    return True


def bench_glia(args, size, data, tmp):
    out = os.path.join(tmp, f"glia_{size}")
    os.makedirs(out, exist_ok=True)
    cmd = [args.glia, "train", "--size", size, "--data", data,
           "--steps", str(args.steps), "--batch", str(args.batch),
           "--seq", str(args.seq), "--threads", str(args.threads),
           "--out", out, "--eval-every", "0", "--sample-tokens", "0"]
    if args.astro:
        cmd += ["--astro", args.astro]
    if not run(cmd, args.timeout, f"glia {size}"):
        return None
    metrics = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(metrics):
        print(f"[glia {size}] no {metrics} written", flush=True)
        return None
    tok_s, n = median_tok_s(metrics)
    if tok_s is None:
        print(f"[glia {size}] {metrics} has no records with step and tok_s", flush=True)
    return tok_s


def bench_reference(args, size, data, tmp):
    metrics = os.path.join(tmp, f"reference_{size}.jsonl")
    cmd = [sys.executable, REFERENCE, "train", "--size", size, "--data", data,
           "--steps", str(args.steps), "--batch", str(args.batch),
           "--seq", str(args.seq), "--threads", str(args.threads),
           "--eval-every", "0", "--out", metrics]
    if args.astro:
        cmd += ["--astro", args.astro]
    if not run(cmd, args.timeout, f"pytorch {size}"):
        return None
    tok_s, _ = median_tok_s(metrics)
    return tok_s


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def busy_cpus(seconds=1.0):
    """CPUs' worth of work other processes are doing now (from /proc/stat
    over `seconds`), or None where /proc/stat is not available."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)             # idle + iowait
        return sum(v[:8]), idle
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    return nproc() * (1.0 - (i1 - i0) / total) if total > 0 else None


def nproc():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glia", default="build/glia", help="glia binary")
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", help="text file (default: 2 MB synthetic text)")
    ap.add_argument("--astro", choices=("on", "off"),
                    help="passed to both trainers (default: theirs, on)")
    ap.add_argument("--timeout", type=int, default=3600,
                    help="seconds allowed per training run")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    if args.steps <= WARMUP_STEPS:
        print(f"bench_train: --steps {args.steps} leaves no step after the first "
              f"{WARMUP_STEPS}; the median is over all steps", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        data = args.data or synthetic_text(os.path.join(tmp, "synthetic.txt"))
        busy0 = busy_cpus()
        rows = []
        for size in sizes:
            g = bench_glia(args, size, data, tmp)
            r = bench_reference(args, size, data, tmp)
            rows.append((size, g, r))
        busy1 = busy_cpus()

    def fmt(x):
        return f"{x:.0f}" if x is not None else "-"

    print()
    print(f"machine: {nproc()} CPUs ({cpu_model()}), Python {platform.python_version()}")
    try:
        import torch
        print(f"torch {torch.__version__}")
    except ImportError:
        pass
    print(f"data: {args.data or 'synthetic 2 MB'}; astro {args.astro or 'on'}; "
          f"batch {args.batch}, seq {args.seq}, "
          f"threads {args.threads}, {args.steps} steps (median over steps after "
          f"the first {WARMUP_STEPS})")
    if busy0 is not None and busy1 is not None:
        print(f"other work on the machine: {busy0:.2f} CPUs busy before the runs, "
              f"{busy1:.2f} after"
              + ("  (the numbers are noisy)" if max(busy0, busy1) > 0.2 else ""))
    print()
    print(f"{'size':<8} {'glia tok/s':>12} {'PyTorch tok/s':>14} {'ratio':>8}")
    for size, g, r in rows:
        ratio = f"{g / r:.2f}x" if g is not None and r else "-"
        print(f"{size:<8} {fmt(g):>12} {fmt(r):>14} {ratio:>8}")
    return 0 if all(r is not None for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
