#!/usr/bin/env bash
# fetch_gpt2_ranks.sh: GPT-2's byte-level BPE ranks (gpt2.tiktoken) into
# glia's data cache, for `glia prepare --tokenizer gpt2` and BPE models.
#
# The file comes from the openai-whisper source package on PyPI, which ships
# it as whisper/assets/gpt2.tiktoken (one "base64(token) rank" per line,
# 50 256 ranks; <|endoftext|> is 50256). The package is downloaded, not
# installed: its sha256 and the extracted file's are checked against the
# values below, and only that one file is kept. Idempotent: when the file is
# already in place with the right checksum, nothing is downloaded.
#
# Where: $GLIA_DATA, else $XDG_CACHE_HOME/glia, else ~/.cache/glia (the same
# directory glia reads, host/io/data.c). glia itself never downloads.
set -euo pipefail

WHISPER_VERSION=20250625
SDIST_URL="https://files.pythonhosted.org/packages/35/8e/d36f8880bcf18ec026a55807d02fe4c7357da9f25aebd92f85178000c0dc/openai_whisper-${WHISPER_VERSION}.tar.gz"
SDIST_SHA256=37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96
# also in host/io/bpe.h (GPT2_RANKS_SHA256): glia checks it when loading
RANKS_SHA256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930

if [ -n "${GLIA_DATA:-}" ]; then
  dir=$GLIA_DATA
elif [ "${XDG_CACHE_HOME:-}" != "" ] && [ "${XDG_CACHE_HOME:0:1}" = "/" ]; then
  dir=$XDG_CACHE_HOME/glia
else
  dir=$HOME/.cache/glia
fi
dest=$dir/gpt2.tiktoken

if [ -f "$dest" ] && echo "$RANKS_SHA256  $dest" | sha256sum --check --status; then
  echo "setup: GPT-2 BPE ranks present ($dest)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup: downloading openai-whisper ${WHISPER_VERSION} (sdist) for its gpt2.tiktoken"
curl -fsSL --retry 3 -o "$tmp/whisper.tar.gz" "$SDIST_URL"
if ! echo "$SDIST_SHA256  $tmp/whisper.tar.gz" | sha256sum --check --status; then
  echo "setup: openai-whisper ${WHISPER_VERSION}: sha256 mismatch (expected $SDIST_SHA256)" >&2
  exit 1
fi
tar -xzf "$tmp/whisper.tar.gz" -C "$tmp" "openai_whisper-${WHISPER_VERSION}/whisper/assets/gpt2.tiktoken"
ranks=$tmp/openai_whisper-${WHISPER_VERSION}/whisper/assets/gpt2.tiktoken
if ! echo "$RANKS_SHA256  $ranks" | sha256sum --check --status; then
  echo "setup: gpt2.tiktoken: sha256 mismatch (expected $RANKS_SHA256)" >&2
  exit 1
fi
mkdir -p "$dir"
cp "$ranks" "$dest.tmp.$$"
mv "$dest.tmp.$$" "$dest"
echo "setup: GPT-2 BPE ranks in $dest"
