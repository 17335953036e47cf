#!/usr/bin/env bash
# check_registers.sh: the CUDA kernels' resource budgets, checked in CI.
# Compiles every kernels/cuda/*.cu with the real nvcc for sm_90 (as the
# CUDA build does) with `-Xptxas -v`, reads ptxas's resource usage of each
# kernel, and fails when
#   - any function has a stack frame or spills (spill stores or loads), or
#   - a kernel uses more registers than its line in tools/kernel_budgets.txt,
#   - a kernel has no line there, or a line names no kernel any more.
# The table is updated by hand when a kernel changes, deliberately: the
# D = 128 backward sits at the 255-register ceiling, where one more live
# value spills. Prints each kernel's registers, budget and shared memory.
#
#   tools/check_registers.sh [--print]   (--print: the measured table, in
#                                         kernel_budgets.txt's format, only)
# NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc); without nvcc
# it says so and exits 0 (a machine without the CUDA toolkit builds no
# CUDA code either).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE=tools/kernel_budgets.txt
ARCH=${CHECK_REGISTERS_ARCH:-sm_90}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
    echo "check_registers: no nvcc (set NVCC): not checked"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ptxas -v of every file, in parallel; a compile error fails the check
printf '%s\0' kernels/cuda/*.cu | xargs -0 -P "$(nproc)" -I{} sh -c \
    '"$0" -arch="$1" -Xptxas -v -I include -I kernels -c "$2" -o "$3/$(basename "$2").o" 2>"$3/$(basename "$2").log" ||
     { cat "$3/$(basename "$2").log" >&2; exit 255; }' "$NVCC" "$ARCH" {} "$work"

# one line per function: mangled name, registers (-1: not an entry), stack, spill stores, spill loads, smem
cat "$work"/*.log | awk '
    /Compiling entry function/ { match($0, /function .[^'"'"']+/); name = substr($0, RSTART + 10, RLENGTH - 10); entry[name] = 1 }
    /Function properties for/ { cur = $NF }
    /bytes stack frame/ { stack[cur] = $1; st[cur] = $5; ld[cur] = $9; seen[cur] = 1 }
    /Used [0-9]+ registers/ {
        for (i = 1; i <= NF; i++) if ($i == "Used") regs[name] = $(i + 1)
        sm = 0
        for (i = 1; i <= NF; i++) if ($i ~ /smem/) sm = $(i - 2)
        smem[name] = sm
    }
    END {
        for (f in seen) printf "%s %d %d %d %d %d\n", f, (f in regs ? regs[f] : -1), stack[f], st[f], ld[f], smem[f]
        for (f in regs) if (!(f in seen)) printf "%s %d 0 0 0 %d\n", f, regs[f], smem[f]
    }' >"$work/usage.raw"

# demangled kernel names without their parameter lists: name<template args>, one
# word (no space after the commas between template arguments)
while read -r mangled regs stack st ld sm; do
    pretty=$(printf '%s\n' "$mangled" | c++filt | sed -e 's/^void //' -e 's/(.*$//' -e 's/, /,/g')
    printf '%s %s %s %s %s %s\n' "$pretty" "$regs" "$stack" "$st" "$ld" "$sm"
done <"$work/usage.raw" | sort >"$work/usage"

if [ "${1:-}" = --print ]; then
    awk '$2 >= 0 { printf "%-44s %3d\n", $1, $2 }' "$work/usage"
    exit 0
fi

fail=0
printf '%-40s %5s %6s %6s %6s %6s %6s\n' kernel regs budget smem stack spill-st spill-ld
while read -r name regs stack st ld sm; do
    budget=$(awk -v k="$name" '$1 == k { print $2 }' "$TABLE")
    note=""
    if ((stack > 0 || st > 0 || ld > 0)); then
        note="FAIL: stack frame $stack B, spill stores $st B, spill loads $ld B"
        fail=1
    fi
    if ((regs >= 0)); then
        if [ -z "$budget" ]; then
            note="${note:+$note; }FAIL: no budget in $TABLE (add a line: $name $regs)"
            fail=1
        elif ((regs > budget)); then
            note="${note:+$note; }FAIL: $regs registers > budget $budget"
            fail=1
        fi
    fi
    printf '%-40s %5s %6s %6s %6s %6s %6s %s\n' "$name" "$regs" "${budget:--}" "$sm" "$stack" "$st" "$ld" "$note" |
        sed 's/  *$//'
done <"$work/usage"
# a budget for a kernel that is gone is stale
while read -r name _; do
    case $name in '' | '#'*) continue ;; esac
    if ! awk -v k="$name" '$1 == k { found = 1 } END { exit !found }' "$work/usage"; then
        echo "FAIL: $TABLE names '$name', which no kernel is any more"
        fail=1
    fi
done <"$TABLE"
if ((fail)); then
    echo "check_registers: FAILED (ptxas -v for $ARCH; update $TABLE deliberately if a kernel changed)"
    exit 1
fi
echo "check_registers: ok: $(awk '$2 >= 0' "$work/usage" | wc -l) kernels within budget, no stack frames or spills ($ARCH)"
