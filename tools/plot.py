#!/usr/bin/env python3
"""plot.py: figures for docs/RESULTS.md from glia's JSON-lines files.

The memory-task results (docs/RESULTS.md) are read off two kinds of file,
and this draws them so the numbers and the pictures cannot drift apart:

  python3 tools/plot.py curves RUN_DIR... --out loss.png
      training loss and validation accuracy against step, one line per run,
      from each RUN_DIR/metrics.jsonl (what `glia train --task` writes);
  python3 tools/plot.py accuracy results.jsonl --out acc.png
      accuracy against sequence length, one line per model and one panel per
      task, from lines {"task", "model", "length", "acc"} (optional "chance").

Needs matplotlib (PyPI: pip install matplotlib); nothing else in glia does.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
