#!/usr/bin/env bash
# device_check.sh: build glia with CUDA and run every GPU check and benchmark
# on a machine with an NVIDIA GPU (written for an H100: sm_90, 16 cores, no
# network), in one call that cannot overrun its time.
#
# Device time is scarce and a run may be the only one we get, so the script
# does everything in one pass, finds every problem it can, still brings back
# the numbers, and always ends with a summary of at most 25 lines (card,
# each check group pass/fail, the benchmark headlines), which is what the
# caller sees first. Each step runs under `timeout`, clipped to what is left
# of an overall budget (DEVICE_CHECK_BUDGET_S, default 470 s, under 8
# minutes), so a hang costs that step, not the lease. Full logs go to
# LOG_DIR (default $OUT when set, else <build dir>/logs): configure.log,
# build.log, ctest.log, ctest.xml (every test's whole output),
# sanitize.log, bench.log, summary.txt.
#
#   tools/device_check.sh            run it
#   tools/device_check.sh --dry-run  print every step it would run (with its
#                                    time cap), run nothing, exit 0
#
# Two ways to get a build:
# - prebuilt (the usual one: the GPU machine has no network and lacks glia's
#   Debian libraries): tools/device_pack.sh, run beforehand on a machine
#   with network and nvcc, leaves build-device/ (programs built for sm_90 and
#   the .deb files of the libraries they load). Carry that directory along;
#   this script unpacks the .debs into a private prefix (PREFIX, default
#   /tmp/glia-deps), points LD_LIBRARY_PATH at it, links the path the build
#   was made at to this checkout, and runs the prebuilt programs.
# - from source, when build-device/ is absent: check the tools and
#   libraries (cmake, a C compiler, nvcc, pkg-config with criterion,
#   openblas, libcjson; if some are missing and tools/setup.sh exists and
#   apt-get is there, try it once); configure a FRESH build dir (BUILD_DIR,
#   default /tmp/glia_device_build) with -DGLIA_CUDA=ON
#   -DCMAKE_CUDA_ARCHITECTURES=90; build with all cores.
#
# The groups, in order of what a first run must not miss:
# 1. tests: ctest over the GPU tests (cuda|cli_amsu|backend_ops|bench_check;
#    the CPU tests run in CI). One of them, cuda_model/overlap_and_zero1_*,
#    is reported as its own group: the overlapped NCCL all-reduce forced
#    through at world size 1 (GLIA_FORCE_OVERLAP=1, with GLIA_NCCL_DELAY_US
#    holding each reduction back so the streams truly overlap) and --zero 1,
#    each compared bit for bit with the plain run.
# 2. the kernel lab (`glia bench kernels`): the AM-SU checked against the CPU
#    by the tests' spike-flip rule (flips reported apart from mismatches),
#    then timed whatever the check says (rows marked UNCHECKED on a
#    failure); headlines give fractions of the floors measured in the run.
# 3. compute-sanitizer: memcheck, racecheck, synccheck and initcheck, each on
#    small GPU tests (all of test_cuda_ops, test_cuda_amsu and
#    test_cuda_amsu_chunk at head size 16,
#    one model forward/backward), each run capped (SANITIZER_CAP_S, 40 s).
# 4. a `small` model trained 30 steps on the GPU, then `glia bench generate`.
#
# Exit status: 0 all good; 1 missing dependencies, configure/build failure,
# a failing test or sanitizer report, or GPU tests skipped although a GPU is
# present; 2 only a benchmark failed.
set -u
set -o pipefail

DRY_RUN=0
for arg in "$@"; do
    case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$arg' (--dry-run, --help)" >&2; exit 2 ;;
    esac
done

START=$(date +%s)
BUDGET=${DEVICE_CHECK_BUDGET_S:-470}
DEADLINE=$((START + BUDGET))
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD_DIR:-/tmp/glia_device_build}
LOG_DIR=${LOG_DIR:-${OUT:-$BUILD/logs}}
JOBS=$(nproc 2>/dev/null || echo 4)

CARD="unknown (no nvidia-smi)"
DEPS_OK=1
DEPS_MISSING=""
CONFIGURE="not run"
BUILD_STATUS="not run"
TESTS_LINE="not run"
CASES_LINE=""
SKIP_REASONS=""
OVERLAP_LINE="not run"
SAN_LINE="not run"
SAN_FAILED=0
GPU_SKIPPED=0
TESTS_FAILED=0
BENCH_SUMMARY=""
BENCH_FAILED=0

say() { printf '\n== %s [%ds]\n' "$*" "$(($(date +%s) - START))"; }

# Seconds left for a step: min(cap, time to the deadline).
left() {
    local cap=$1 rem=$((DEADLINE - $(date +%s)))
    if ((rem < cap)); then echo "$rem"; else echo "$cap"; fi
}

# run_step CAP LOG CMD...: runs CMD under timeout, output to the console and
# LOG; returns CMD's status (124 on timeout, 125 when no time is left).
run_step() {
    local cap=$1 log=$2
    shift 2
    local t
    if ((DRY_RUN)); then
        printf 'would run (cap %3ss): %s\n' "$cap" "$(printf '%q ' "$@")"
        return 0
    fi
    t=$(left "$cap")
    if ((t < 10)); then
        echo "out of time budget: skipped: $*" | tee -a "$log"
        return 125
    fi
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    if ((rc == 124 || rc == 137)); then echo "TIMEOUT after ${t}s: $*" | tee -a "$log"; fi
    return "$rc"
}

# act CMD...: a side effect outside run_step (cleaning, unpacking): printed
# instead of done under --dry-run.
act() {
    if ((DRY_RUN)); then
        printf 'would run:            %s\n' "$(printf '%q ' "$@")"
        return 0
    fi
    "$@"
}

# The summary: at most 25 lines (the rest, if any, in summary.txt only).
summary() {
    local status=$1 lines
    if ((DRY_RUN)); then
        echo "dry run: nothing was run; a real run clips each cap to what is left of $BUDGET s" \
            "(DEVICE_CHECK_BUDGET_S) and ends with a summary of at most 25 lines"
        exit 0
    fi
    lines=$(
        echo "================ device_check summary ================"
        echo "card:       $CARD"
        if [ "$DEPS_OK" != 1 ]; then echo "deps:       MISSING:$DEPS_MISSING"; fi
        echo "build:      configure $CONFIGURE; build $BUILD_STATUS"
        echo "tests:      $TESTS_LINE"
        [ -n "$CASES_LINE" ] && echo "cases:      $CASES_LINE"
        [ -n "$SKIP_REASONS" ] && echo "skipped:    $(printf '%s\n' "$SKIP_REASONS" | head -2 | sed 's/^ *//' | paste -sd ';' -)"
        ((GPU_SKIPPED)) && echo "ERROR: GPU tests were skipped although nvidia-smi sees a GPU"
        echo "overlap+zero1 at world 1 vs plain, bit for bit: $OVERLAP_LINE"
        echo "sanitizers: $SAN_LINE"
        if [ -n "$BENCH_SUMMARY" ]; then printf '%s\n' "$BENCH_SUMMARY"; else echo "benchmarks: none ran"; fi
        echo "logs:       $LOG_DIR"
        echo "time:       $(($(date +%s) - START)) s of $BUDGET s budget"
        echo "status:     $([ "$status" = 0 ] && echo OK || echo "FAILED (exit $status)")"
    )
    echo
    printf '%s\n' "$lines" >"$LOG_DIR/summary.txt" 2>/dev/null
    if (($(printf '%s\n' "$lines" | wc -l) > 25)); then
        printf '%s\n' "$lines" | head -22
        echo "... (summary cut to 25 lines: the whole of it is in $LOG_DIR/summary.txt)"
        printf '%s\n' "$lines" | tail -2
    else
        printf '%s\n' "$lines"
    fi
    exit "$status"
}

PREBUILT=0
if [ -f "$REPO/build-device/CMakeCache.txt" ]; then
    PREBUILT=1
    # the build's own paths (ctest files, fixture paths) must resolve here
    SRC=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$REPO/build-device/CMakeCache.txt")
    if [ -n "$SRC" ] && [ "$SRC" != "$REPO" ] && [ ! -e "$SRC" ]; then
        act mkdir -p "$(dirname "$SRC")" && act ln -s "$REPO" "$SRC"
    fi
    BUILD=${SRC:-$REPO}/build-device
else
    act rm -rf "$BUILD"
fi
((DRY_RUN)) || mkdir -p "$BUILD" "$LOG_DIR"
if ((!DRY_RUN)); then
    : >"$LOG_DIR/configure.log"
    : >"$LOG_DIR/build.log"
fi

# ---- dependencies -------------------------------------------------------------
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi

check_deps() {
    DEPS_MISSING=""
    local tool
    for tool in cmake pkg-config cc nvcc; do
        command -v "$tool" >/dev/null 2>&1 || DEPS_MISSING="$DEPS_MISSING $tool"
    done
    if command -v pkg-config >/dev/null 2>&1; then
        local pkg
        for pkg in criterion openblas libcjson; do
            pkg-config --exists "$pkg" || DEPS_MISSING="$DEPS_MISSING $pkg(pkg-config)"
        done
    fi
    [ -z "$DEPS_MISSING" ]
}

say "dependencies"
if ((PREBUILT)); then
    PREFIX=${PREFIX:-/tmp/glia-deps}
    act mkdir -p "$PREFIX"
    n=0
    for deb in "$REPO"/build-device/debs/*.deb; do
        [ -f "$deb" ] && act dpkg -x "$deb" "$PREFIX" && n=$((n + 1))
    done
    libdirs=$(find "$PREFIX" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
    export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "prebuilt build-device: $n packages unpacked into $PREFIX"
    missing=$(ldd "$BUILD/glia" "$BUILD"/test_cuda_* 2>&1 | grep 'not found' | sort -u)
    if [ -n "$missing" ]; then
        DEPS_MISSING=" $(printf '%s' "$missing" | awk '{print $1}' | sort -u | paste -sd' ' -)"
    fi
    CONFIGURE="prebuilt (tools/device_pack.sh)"
    BUILD_STATUS="prebuilt"
elif ! check_deps; then
    echo "missing:$DEPS_MISSING"
    if [ -f "$REPO/tools/setup.sh" ] && command -v apt-get >/dev/null 2>&1; then
        echo "trying tools/setup.sh (may fail without network)"
        run_step 150 "$LOG_DIR/configure.log" bash "$REPO/tools/setup.sh"
        check_deps || true
    else
        echo "no tools/setup.sh or no apt-get: not installing anything"
    fi
fi
if [ -n "$DEPS_MISSING" ]; then
    DEPS_OK=0
    echo "MISSING DEPENDENCIES:$DEPS_MISSING"
else
    echo "cmake: $(cmake --version | head -1)"
    echo "nvcc:  $(nvcc --version | tail -1)"
fi

# ---- card ---------------------------------------------------------------------------
say "GPU"
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
    CARD=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader 2>&1 | head -4 | paste -sd ';' -)
    [ -n "$CARD" ] || CARD="nvidia-smi printed nothing"
    timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU' && HAVE_GPU=1
fi
echo "card: $CARD"

((DEPS_OK || DRY_RUN)) || summary 1

# ---- configure and build -----------------------------------------------------------
if ((!PREBUILT)); then
say "configure ($BUILD)"
if run_step 120 "$LOG_DIR/configure.log" cmake -S "$REPO" -B "$BUILD" -DGLIA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release; then
    CONFIGURE=ok
else
    CONFIGURE="FAILED (see configure.log)"
    summary 1
fi

say "build (-j $JOBS)"
if run_step 300 "$LOG_DIR/build.log" cmake --build "$BUILD" -j "$JOBS"; then
    BUILD_STATUS=ok
else
    BUILD_STATUS="FAILED (see build.log)"
    summary 1
fi
fi

# ---- 1. tests ----------------------------------------------------------------------------
# The GPU tests only (the CPU ones run in CI; a prebuilt machine has no
# mpirun for them), each case's [PASS]/[SKIP]/[FAIL] line kept in ctest.xml.
say "ctest (GPU tests)"
((DRY_RUN)) || : >"$LOG_DIR/ctest.log"
export CRITERION_VERBOSITY_LEVEL=1  # Criterion prints [SKIP] / [PASS] lines per case
(
    cd "$BUILD" 2>/dev/null || ((DRY_RUN)) || exit 1
    run_step 200 "$LOG_DIR/ctest.log" ctest -R 'cuda|cli_amsu|backend_ops|bench_check' --output-on-failure \
        --timeout 150 --test-output-size-passed 4000000 --test-output-size-failed 4000000 \
        --output-junit "$LOG_DIR/ctest.xml"
)
CTEST_RC=$?
if ((!DRY_RUN)); then
    TESTS_LINE=$(grep -E 'tests passed, [0-9]+ tests? failed out of' "$LOG_DIR/ctest.log" | tail -1)
    [ -n "$TESTS_LINE" ] || TESTS_LINE="no ctest result line (ctest exit $CTEST_RC)"
    if ((CTEST_RC != 0)); then
        TESTS_FAILED=1
        failed=$(sed -n '/The following tests FAILED/,$p' "$LOG_DIR/ctest.log" | grep -E '^\s+[0-9]+ - ' |
            sed 's/^\s*//' | paste -sd ',' -)
        [ -n "$failed" ] && TESTS_LINE="$TESTS_LINE; FAILED: $failed"
    fi
fi
if [ -f "$LOG_DIR/ctest.xml" ] && ((!DRY_RUN)); then
    npass=$(grep -c '^\[PASS\]' "$LOG_DIR/ctest.xml")
    nfail=$(grep -c '^\[FAIL\]' "$LOG_DIR/ctest.xml")
    nskip=$(grep '^\[SKIP\]' "$LOG_DIR/ctest.xml" | grep -vc ': Test is disabled$')
    CASES_LINE="Criterion test cases: $npass passed, $nfail failed, $nskip skipped"
    SKIP_REASONS=$(grep '^\[SKIP\]' "$LOG_DIR/ctest.xml" | grep -v ': Test is disabled$' |
        sed 's/^\[SKIP\] [^:]*::[^:]*: *//' | sort | uniq -c | sort -rn | head -10)
    if ((HAVE_GPU)) && grep -qE '^\[SKIP\].*(no CUDA device|without CUDA)' "$LOG_DIR/ctest.xml"; then
        GPU_SKIPPED=1
    fi
    # the multi-GPU paths on one GPU (tests/test_cuda_model.c), a group of its own
    ov=$(grep -E '^\[(PASS|FAIL|SKIP)\] cuda_model::overlap_and_zero1' "$LOG_DIR/ctest.xml" | head -1)
    case $ov in
    "[PASS]"*) OVERLAP_LINE="PASS" ;;
    "[FAIL]"*) OVERLAP_LINE="FAIL (ctest.xml)" ;;
    "[SKIP]"*) OVERLAP_LINE="SKIPPED: ${ov#*: }" ;;
    *) OVERLAP_LINE="did not run (timeout or crash: ctest.xml)" ;;
    esac
fi

# ---- 2. the kernel lab, and the benchmarks -----------------------------------------------
# glia bench kernels: the ceilings, the AM-SU checked against the CPU by the
# spike-flip rule and timed whatever the check says, then a 124m training
# step. Headline lines start with "headline:", "ceilings:", "check vs CPU".
say "kernel lab"
((DRY_RUN)) || : >"$LOG_DIR/bench.log"
run_bench() {  # NAME CAP CMD...
    local name=$1 cap=$2 tmp rc head_lines
    shift 2
    if ((DRY_RUN)); then
        run_step "$cap" /dev/null "$@"
        return
    fi
    echo "---- $name" | tee -a "$LOG_DIR/bench.log"
    tmp=$(mktemp)
    (cd "$REPO" && run_step "$cap" "$tmp" "$@")
    rc=$?
    cat "$tmp" >>"$LOG_DIR/bench.log"
    head_lines=$(grep -E '^(headline:|ceilings:|check vs CPU|FAILED)' "$tmp" | cut -c1-200 | head -5)
    [ -n "$head_lines" ] || head_lines=$(grep -v '^\s*$' "$tmp" | tail -2 | cut -c1-200)
    rm -f "$tmp"
    if ((rc == 0)); then
        BENCH_SUMMARY+="$name: ok"$'\n'
    else
        BENCH_SUMMARY+="$name: FAILED (exit $rc)"$'\n'
        BENCH_FAILED=1
    fi
    BENCH_SUMMARY+=$(printf '%s\n' "$head_lines" | sed 's/^/  /')$'\n'
}
run_bench "glia bench kernels" 150 "$BUILD/glia" bench kernels

# ---- 3. compute-sanitizer ----------------------------------------------------------------
# Each tool on small GPU tests: every kernel of test_cuda_ops, the AM-SU at
# head size 16 (forward, streaming, backward; the chunked kernels' WMMA and
# shared memory too), one model forward/backward.
# --target-processes all follows Criterion's forked test processes. A tool
# fails on a non-zero exit or any error or hazard its summary counts.
say "compute-sanitizer"
SAN_CAP=${SANITIZER_CAP_S:-40}
SAN_RUNS=(
    "test_cuda_ops|"
    "test_cuda_amsu|cuda_amsu/*head_size_16"
    "test_cuda_amsu_chunk|cuda_amsu_chunk/*head_size_16"
    "test_cuda_model|cuda_model/forward_backward_astro_on"
)
if ! command -v compute-sanitizer >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
if ! command -v compute-sanitizer >/dev/null 2>&1 && ((!DRY_RUN)); then
    SAN_LINE="FAIL: compute-sanitizer not found"
    SAN_FAILED=1
else
    ((DRY_RUN)) || : >"$LOG_DIR/sanitize.log"
    SAN_LINE=""
    for tool in memcheck racecheck synccheck initcheck; do
        verdict=PASS
        for spec in "${SAN_RUNS[@]}"; do
            bin=${spec%%|*} filt=${spec#*|}
            args=("$BUILD/$bin" --jobs 1)
            [ -n "$filt" ] && args+=(--filter "$filt")
            tmp=$(mktemp)
            san=(compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 99 --print-limit 20)
            if ((DRY_RUN)); then
                run_step "$SAN_CAP" "$tmp" "${san[@]}" "${args[@]}"
            else
                run_step "$SAN_CAP" "$tmp" "${san[@]}" "${args[@]}" >/dev/null
            fi
            rc=$?
            if ((!DRY_RUN)); then
                { echo "---- $tool $bin ${filt:-all} (exit $rc)"; cat "$tmp"; } >>"$LOG_DIR/sanitize.log"
                if ((rc == 124 || rc == 137 || rc == 125)); then
                    [ "$verdict" = PASS ] && verdict="TIMEOUT($bin)"
                elif ((rc != 0)) || grep -qE '(ERROR|RACECHECK) SUMMARY: [1-9]' "$tmp"; then
                    verdict="FAIL($bin)"
                    SAN_FAILED=1
                fi
            fi
            rm -f "$tmp"
        done
        SAN_LINE+="$tool $verdict, "
    done
    SAN_LINE=${SAN_LINE%, }
fi

# ---- 4. training and serving on the GPU --------------------------------------------------
# A `small` model trained for a few steps on a generated byte corpus (no
# data files on the device), then the serving engine's decode throughput by
# pool size and time per token by context.
say "train and generate"
GEN_DIR=$( ((DRY_RUN)) && echo /tmp/glia_gen_XXXXXX || mktemp -d)
((DRY_RUN)) && echo "would run:            awk (a 40000-word corpus of 8 words) > $GEN_DIR/corpus.txt"
((DRY_RUN)) || awk 'BEGIN { srand(1); split("the astrocyte calcium rises and the neuron fires", w, " ");
             for (i = 0; i < 40000; i++) printf "%s%s", w[int(rand() * 8) + 1], (i % 12 == 11 ? "\n" : " ") }' \
    >"$GEN_DIR/corpus.txt"
run_bench "glia train small (GPU, 30 steps)" 60 "$BUILD/glia" train --size small --steps 30 --batch 16 \
    --seq 256 --data "$GEN_DIR/corpus.txt" --out "$GEN_DIR/run" --device cuda --eval-every 0 \
    --ckpt-every 0 --sample-tokens 0 --quiet
run_bench "glia bench generate (GPU)" 90 "$BUILD/glia" bench generate --ckpt "$GEN_DIR/run/model.safetensors" \
    --device cuda --batches 1,16,256 --tokens 32 --contexts 100,10000 --steps 16
((DRY_RUN)) || rm -rf "$GEN_DIR"
BENCH_SUMMARY=${BENCH_SUMMARY%$'\n'}

if ((TESTS_FAILED || GPU_SKIPPED || SAN_FAILED)); then summary 1; fi
if ((BENCH_FAILED)); then summary 2; fi
summary 0
