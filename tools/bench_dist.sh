#!/bin/sh
# bench_dist.sh: weak scaling of data-parallel training, CPU or GPU.
#
# The same per-rank batch on 1 and 2 ranks (N=1 with --batch B, N=2 with
# --batch 2B, one thread per rank), so with perfect scaling the step time is
# the same and N=2 processes twice the tokens; the difference of the median
# step times estimates what the gradient all-reduce (and the waiting for the
# slower rank) costs per step. Step time: the median of metrics.jsonl "ms"
# over the steps after the first 3 (warm-up).
#
#   tools/bench_dist.sh [GLIA_BIN] [STEPS]     (default build/glia, 30 steps)
#   DEVICE=cuda tools/bench_dist.sh ...        on two GPUs (one rank each)
#
# Needs mpirun (OpenMPI) and two free cores: on a 2-core machine the two
# ranks share the machine with everything else, so expect noise. With
# DEVICE=cuda the configurations are SPEC's sizes at GPU batches (CONFIGS
# overrides: "size B T; ..."), and the difference of the step times is the
# part of the NCCL all-reduce the backward does not hide.
set -eu
GLIA=${1:-build/glia}
STEPS=${2:-30}
DEVICE=${DEVICE:-cpu}
if [ "$DEVICE" = cuda ]; then
    CONFIGS=${CONFIGS:-"small 16 1024; 124m 8 1024"}
    BIND="--bind-to none"
    THREADS=""
else
    CONFIGS=${CONFIGS:-"tiny 8 64; small 4 64"}
    BIND="--bind-to core"
    THREADS="--threads 1"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d "${TMPDIR:-/tmp}/glia_bench_dist.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 - "$TMP/corpus.txt" <<'PY'
import random, sys
r = random.Random(7)
w = ["the", "astrocyte", "neuron", "fires", "slowly", "and", "calcium", "rises"]
open(sys.argv[1], "w").write("".join(r.choice(w) + (".\n" if i % 9 == 8 else " ") for i in range(200000)))
PY
"$GLIA" prepare --in "$TMP/corpus.txt" --out "$TMP/shards" > /dev/null

median_ms() {  # median "ms" of the steps after 3
    python3 -c '
import json, statistics, sys
ms = [json.loads(l)["ms"] for l in open(sys.argv[1]) if "\"ms\"" in l][3:]
print("%.1f" % statistics.median(ms))' "$1/metrics.jsonl"
}

run() {  # size np batch seq -> median ms
    out="$TMP/run_$1_$2"
    flags="train --size $1 --data $TMP/shards --batch $3 --seq $4 --steps $STEPS $THREADS --quiet \
--eval-every 0 --sample-tokens 0 --ckpt-every 0 --device $DEVICE --out $out"
    if [ "$2" = 1 ]; then "$GLIA" $flags > /dev/null
    else mpirun --allow-run-as-root --oversubscribe $BIND -np "$2" "$GLIA" $flags > /dev/null; fi
    median_ms "$out"
}

printf '%-6s %-10s %12s %12s %12s %14s\n' size "per-rank B" "N=1 ms" "N=2 ms" "efficiency" "allreduce ms"
echo "$CONFIGS" | tr ';' '\n' | while read -r cfg; do
    [ -n "$cfg" ] || continue
    set -- $cfg
    one=$(run "$1" 1 "$2" "$3")
    two=$(run "$1" 2 $(($2 * 2)) "$3")
    python3 -c 'import sys; a, b = float(sys.argv[3]), float(sys.argv[4]); print("%-6s %-10s %12.1f %12.1f %11.0f%% %14.1f" % (sys.argv[1], sys.argv[2] + " x " + sys.argv[5], a, b, 100 * a / b, b - a))' \
        "$1" "$2" "$one" "$two" "$3"
done
