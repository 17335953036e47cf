#!/usr/bin/env bash
# device_pack.sh: prepares a GPU run of tools/device_check.sh on a machine
# that has the CUDA toolkit and a GPU but neither network nor glia's Debian
# libraries (Criterion, OpenBLAS, cJSON, libmicrohttpd, Open MPI).
#
# Run it here, on a Debian machine with nvcc and network (no GPU needed). It
#   1. builds glia and its tests for sm_90 into build-device/ (GLIA_NATIVE
#      off: the GPU machine's CPU may lack this one's instructions), and
#      keeps only glia and the GPU tests (test_cuda_*, test_cli_amsu,
#      test_backend_ops, test_bench_check, test_dist, test_serve) of it;
#   2. downloads into build-device/debs/ the .deb of every shared library
#      those programs load, except the C runtime (libc, libstdc++, libgcc)
#      and the CUDA libraries (cudart, cuBLAS, NCCL), which the GPU machine's
#      toolkit provides.
# Then copy the repository with build-device/ to the GPU machine and run
# tools/device_check.sh there: it finds build-device/, unpacks the .debs
# into a private prefix (never over the system), and runs the prebuilt
# tests and the kernel lab instead of configuring and building. The build
# keeps this machine's absolute paths (ctest's files, the tests' fixture
# paths); device_check.sh links this checkout's path to the repository
# there, so they resolve.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build-device

cmake -S . -B "$B" -DGLIA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGLIA_NATIVE=OFF \
    -DCMAKE_BUILD_TYPE=Release
cmake --build "$B" -j"$(nproc)"

# The packages that own the libraries the programs load.
mapfile -t libs < <(for f in "$B"/glia "$B"/test_*; do ldd "$f"; done |
    awk '$3 ~ /^\// {print $3}' | sort -u)
pkgs=()
for lib in "${libs[@]}"; do
    owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
        dpkg -S "$(readlink -f "$lib" | sed 's|^/usr/lib/|/lib/|')" 2>/dev/null || true)
    owner=${owner%%:*}
    case "$owner" in
    "" | libc6 | libstdc++6 | libgcc-s1) continue ;;  # CUDA's (not packaged) or the C runtime
    esac
    pkgs+=("$owner")
done
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
# Keep what the GPU run uses (glia, the GPU tests, ctest's files, the cache
# that names the source path) and drop the rest: what travels is limited.
# (every program `ctest -R 'cuda|cli_amsu|backend_ops|bench_check'` runs: a
# test whose program is missing fails as "Not Run")
find "$B" -mindepth 1 -maxdepth 1 -type f -name 'test_*' ! -name 'test_cuda_*' ! -name 'test_cli_amsu' \
    ! -name 'test_backend_ops' ! -name 'test_bench_check' ! -name 'test_dist' ! -name 'test_serve' -delete
find "$B" -name '*.o' -delete
rm -f "$B"/*.a
rm -rf "$B/debs"
mkdir -p "$B/debs"
(cd "$B/debs" && apt-get download "${pkgs[@]}")
echo "device_pack: $B ready: $(du -sh "$B" | cut -f1), ${#pkgs[@]} packages: ${pkgs[*]}"
