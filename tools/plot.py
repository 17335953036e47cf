#!/usr/bin/env python3
"""plot.py: figures for docs/RESULTS.md from glia's JSON-lines files.

The memory-task results (docs/RESULTS.md) are read off two kinds of file,
and this draws them so the numbers and the pictures cannot drift apart:

  python3 tools/plot.py curves RUN_DIR... --out loss.png
      training loss and validation accuracy against step, one line per run,
      from each RUN_DIR/metrics.jsonl (what `glia train --task` writes);
  python3 tools/plot.py accuracy results.jsonl --out acc.png
      accuracy against sequence length, one line per model and one panel per
      task, from lines {"task", "model", "length", "acc"} (optional "chance");
  python3 tools/plot.py stats RUN_DIR... [--out stats.png] [--kind train|val]
      the spike statistics `glia train --stats-every` writes: firing rates of
      the AM-SU and FFN neurons and the astrocyte's share per layer against
      step; prints the last line's figures as a table first.

The figures need matplotlib (pip install matplotlib; Debian:
python3-matplotlib), which nothing else in glia does: without it `stats`
prints its table and skips the figure, the others stop with a message.
"""
import argparse
import json
import os
import sys


def pyplot(required):
    """matplotlib.pyplot with the file backend, or None (with a message) when absent."""
    try:
        import matplotlib
    except ImportError:
        msg = "plot.py: matplotlib is not installed (pip install matplotlib); no figure written"
        if required:
            sys.exit(msg)
        print(msg, file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"plot.py: {path}:{n}: not JSON: {e}")
    return rows


def curves(args):
    plt = pyplot(True)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in args.runs:
        rows = read_jsonl(os.path.join(run, "metrics.jsonl"))
        name = os.path.basename(os.path.normpath(run))
        steps = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "val_acc" in r]
        if steps:
            # a running mean over 25 steps: the per-step loss is noisy
            k, xs, ys, acc = 25, [], [], []
            for r in steps:
                acc.append(r["loss"])
                if len(acc) > k:
                    acc.pop(0)
                xs.append(r["step"])
                ys.append(sum(acc) / len(acc))
            ax_loss.plot(xs, ys, label=name)
        if evals:
            ax_acc.plot([r["step"] for r in evals], [r["val_acc"] for r in evals], marker=".", label=name)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss on the answers (nats, mean of 25)")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_ylim(0, 1)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"plot.py: wrote {args.out}")


def accuracy(args):
    plt = pyplot(True)
    rows = read_jsonl(args.results)
    tasks = sorted({r["task"] for r in rows})
    if not tasks:
        sys.exit(f"plot.py: {args.results}: no results")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        for model in sorted({r["model"] for r in mine}):
            pts = sorted((r["length"], r["acc"]) for r in mine if r["model"] == model)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        chance = [r["chance"] for r in mine if "chance" in r]
        if chance:
            ax.axhline(chance[0], color="gray", linestyle=":", label="chance")
        ax.set_title(task)
        ax.set_xlabel("sequence length T" if task != "copy" else "delay")
        ax.set_ylabel("accuracy on the answers")
        ax.set_ylim(0, 1)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"plot.py: wrote {args.out}")


STATS = ("amsu_rate", "ffn_rate", "astro_share")


def stats(args):
    runs = []
    for run in args.runs:
        rows = [r for r in read_jsonl(os.path.join(run, "metrics.jsonl")) if r.get("stats") == args.kind]
        if not rows:
            sys.exit(f"plot.py: {run}/metrics.jsonl: no \"{args.kind}\" spike statistics (glia train --stats-every)")
        runs.append((os.path.basename(os.path.normpath(run)), rows))
    for name, rows in runs:
        last = rows[-1]
        print(f"{name}, step {last['step']} ({args.kind}):")
        print("| layer | AM-SU rate | never | FFN rate | never | astro share |")
        print("|---:|---:|---:|---:|---:|---:|")
        for l in range(len(last["amsu_rate"])):
            print(f"| {l} | {last['amsu_rate'][l]:.4f} | {last['amsu_never'][l]:.4f} | {last['ffn_rate'][l]:.4f} "
                  f"| {last['ffn_never'][l]:.4f} | {last['astro_share'][l]:.4f} |")
        print(f"SOPs per token {last['sops_per_token']:.0f} against {last['spike_macs_per_token']:.0f} dense MACs; "
              f"energy ESTIMATE {last['energy_pj_per_token'] / 1e3:.1f} nJ against {last['dense_energy_pj_per_token'] / 1e3:.1f} nJ")
    if not args.out:
        return
    plt = pyplot(False)
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = ["-", "--", ":", "-."]
    for i, (name, rows) in enumerate(runs):
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, STATS):
            for l in range(len(rows[0][key])):
                ax.plot(steps, [r[key][l] for r in rows], styles[i % len(styles)], color=f"C{l}",
                        label=f"{name} layer {l}")
    titles = ("AM-SU firing rate", "FFN firing rate", "astrocyte share, mean |o| / mean |u|")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("spikes per neuron and position")
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"plot.py: wrote {args.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves", help="loss and val_acc against step")
    c.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    c.add_argument("--out", required=True)
    c.add_argument("--dpi", type=int, default=80)
    c.set_defaults(fn=curves)
    a = sub.add_parser("accuracy", help="accuracy against length")
    a.add_argument("results", help="JSON lines {task, model, length, acc}")
    a.add_argument("--out", required=True)
    a.add_argument("--dpi", type=int, default=80)
    a.set_defaults(fn=accuracy)
    s = sub.add_parser("stats", help="firing rates and astrocyte share against step")
    s.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    s.add_argument("--out", help="the figure (PNG); without it, only the table")
    s.add_argument("--kind", choices=("train", "val"), default="train",
                   help="statistics of the training batches (every --stats-every) or of validation")
    s.add_argument("--dpi", type=int, default=80)
    s.set_defaults(fn=stats)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
