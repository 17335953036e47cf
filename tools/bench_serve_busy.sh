#!/usr/bin/env bash
# bench_serve_busy.sh: glia serve's latency beside busy neighbours. Starts two
# processes that spin on the CPU, then for each setting starts `glia serve`
# on loopback and times REQUESTS sequential greedy completions of TOKENS
# tokens with curl (p50, p90, max and requests per second). Settings: the
# server's default (OpenMP waits passively) and OMP_WAIT_POLICY=active (the
# old spinning behaviour), at --threads 1 and 2, and the default without
# neighbours as the baseline. A benchmark, not a test: figures go to
# docs/PERF.md by hand.
#   usage: tools/bench_serve_busy.sh GLIA_BIN CKPT [REQUESTS] [TOKENS]
set -euo pipefail
glia=${1:?usage: bench_serve_busy.sh GLIA_BIN CKPT [REQUESTS] [TOKENS]}
ckpt=${2:?usage: bench_serve_busy.sh GLIA_BIN CKPT [REQUESTS] [TOKENS]}
n=${3:-30}
tok=${4:-64}
tmp=$(mktemp -d)
spinners=()
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  for p in "${spinners[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

run() {  # label threads [VAR=value ...]
  local label=$1 threads=$2
  shift 2
  env -u OMP_WAIT_POLICY -u OMP_NUM_THREADS "$@" "$glia" serve --ckpt "$ckpt" --port 0 --threads "$threads" \
    --slots 4 --max-tokens "$tok" > "$tmp/log" 2>&1 &
  server=$!
  local port=""
  for _ in $(seq 100); do
    port=$(grep -o '127.0.0.1:[0-9]*' "$tmp/log" | head -1 | cut -d: -f2) || true
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "server did not start:"; cat "$tmp/log"; exit 1; }
  local t0 t1
  t0=$(date +%s.%N)
  for _ in $(seq "$n"); do
    curl -q -s --noproxy '*' --max-time 30 -o /dev/null -w '%{time_total}\n' \
      -d "{\"prompt\": \"In the beginning\", \"max_tokens\": $tok, \"temperature\": 0}" \
      "http://127.0.0.1:$port/v1/completions" || echo 30
  done | sort -n > "$tmp/times"
  t1=$(date +%s.%N)
  kill "$server"; wait "$server" 2>/dev/null || true; server=""
  awk -v label="$label" -v n="$n" -v wall="$(echo "$t1 - $t0" | bc)" '
    { t[NR] = $1 }
    END { printf "| %-44s | %8.1f | %8.1f | %8.1f | %6.1f |\n", label, t[int(NR*0.5+0.5)]*1e3,
          t[int(NR*0.9+0.5)]*1e3, t[NR]*1e3, n / wall }' "$tmp/times"
}

echo "$(nproc) CPUs; $n requests of $tok tokens each, one at a time; $(basename "$ckpt")"
echo
echo "| setting                                      | p50 (ms) | p90 (ms) | max (ms) | req/s  |"
echo "|----------------------------------------------|----------|----------|----------|--------|"
run "no neighbours, --threads 2 (passive)" 2
for _ in 1 2; do (while :; do :; done) & spinners+=($!); done
run "2 spinning neighbours, --threads 1 (passive)" 1
run "2 spinning neighbours, --threads 2 (passive)" 2
run "2 spinning neighbours, --threads 1, active" 1 OMP_WAIT_POLICY=active
run "2 spinning neighbours, --threads 2, active" 2 OMP_WAIT_POLICY=active
