#!/usr/bin/env bash
# check_skips.sh: whether a ctest run really ran its Criterion test cases.
# Reads the JUnit file of `ctest --output-junit FILE` run with
# CRITERION_VERBOSITY_LEVEL=1 (one [PASS], [FAIL] or [SKIP] line per case)
# and --test-output-size-passed large enough to keep them; prints the
# counts and fails when a case skipped for a reason other than a --filter
# ("Test is disabled") or running as root, or when no case passed. The emulator step of .ci/run
# uses it: there every GPU test must run, so a skip (no device found, built
# without CUDA, ...) is a hole, not a pass.
#
#   tools/check_skips.sh FILE.xml [MIN_PASSED]
set -euo pipefail
xml=${1:?usage: check_skips.sh FILE.xml [MIN_PASSED]}
min=${2:-1}
[ -f "$xml" ] || { echo "check_skips: $xml not found" >&2; exit 1; }
npass=$(grep -c '^\[PASS\]' "$xml" || true)
nfail=$(grep -c '^\[FAIL\]' "$xml" || true)
# Skipped by a --filter ("Test is disabled"), or a permission check that
# cannot mean anything as root (test_cli_amsu's read-only directory): neither
# is a GPU case that failed to run.
skips=$(grep '^\[SKIP\]' "$xml" | grep -v ': Test is disabled$' | grep -v ': running as root: ' || true)
nskip=0
[ -z "$skips" ] || nskip=$(printf '%s\n' "$skips" | wc -l)
echo "check_skips: $npass test cases passed, $nfail failed, $nskip skipped ($xml)"
if ((nskip > 0)); then
    echo "check_skips: FAILED: these cases skipped (each must run here):"
    printf '%s\n' "$skips" | sed 's/^/  /' | head -40
    exit 1
fi
if ((npass < min)); then
    echo "check_skips: FAILED: $npass cases passed, expected at least $min (was CRITERION_VERBOSITY_LEVEL=1 set?)"
    exit 1
fi
