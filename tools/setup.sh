#!/usr/bin/env bash
# setup.sh: install everything glia needs to build and test, from Debian
# packages. Idempotent: when all packages are present it only checks them
# (no apt-get at all), so it is cheap to run before every build.
#
# The CUDA toolkit is not installed here: glia builds its CUDA backend when
# nvcc is on PATH and is CPU-only otherwise.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config   # C17 compiler and the build
  libopenblas-dev                    # CBLAS for the CPU backend's matmuls,
  libopenblas-openmp-dev             #   built with OpenMP (shares glia's threads)
  libcjson-dev                       # safetensors headers (JSON)
  libcriterion-dev                   # the test framework
  bible-kjv bible-kjv-text           # the default training corpus (King James Bible)
  libopenmpi-dev openmpi-bin         # data parallelism across processes (mpirun)
  libmicrohttpd-dev curl             # glia serve, and the tests that talk to it
  libpcre2-dev                       # the GPT-2 BPE pre-tokenizer (host/io/bpe.c)
  python3-pip                        # test_serve's openai client test: pip installs openai (below)
  clang libclang-rt-14-dev libomp-14-dev  # tools/fuzz.sh: libFuzzer, sanitizers, OpenMP for clang
  python3-torch python3-numpy        # tools/reference.py: the PyTorch oracle (export, fixtures)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The official openai client, for test_serve's client test (PyPI only), into
# the python3 the tests run; without it that one test skips, saying so.
if ! python3 -c 'import openai' >/dev/null 2>&1; then
  echo "setup: installing the openai Python client (pip)"
  python3 -m pip install --quiet openai >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages openai >/dev/null 2>&1 ||
    echo "setup: could not install openai; test_serve's client test will skip"
fi

# tiktoken, test_bpe's oracle for the GPT-2 tokenizer (built from the local
# ranks file below, never from the network); without it those tests skip.
if ! python3 -c 'import tiktoken' >/dev/null 2>&1; then
  echo "setup: installing tiktoken (pip)"
  python3 -m pip install --quiet tiktoken >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages tiktoken >/dev/null 2>&1 ||
    echo "setup: could not install tiktoken; test_bpe's whole-file comparisons will skip"
fi

# GPT-2's BPE ranks (gpt2.tiktoken) into glia's data cache, checksummed; a
# no-op when present. glia never downloads at run time. Without the network
# everything but the GPT-2 tokenizer still works: its tests skip, naming the
# missing file, and glia names the command that provides it.
bash "$(dirname "$0")/fetch_gpt2_ranks.sh" ||
  echo "setup: could not fetch GPT-2's BPE ranks (no network?); run tools/fetch_gpt2_ranks.sh later for BPE models"
