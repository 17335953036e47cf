#!/usr/bin/env bash
# check_layers.sh: glia's layers include only downwards. Prints every include
# that points up (or sideways into another backend) and exits 1 if any does.
#   host/cmd > host/train > host/generate > host/model > host/io > kernels/{cpu,cuda} > kernels/common
# include/glia (public headers) may be included by anyone.
set -euo pipefail
cd "$(dirname "$0")/.."
rank() {
  case "$1" in
    host/cmd) echo 6 ;; host/train) echo 5 ;; host/generate) echo 4 ;; host/model) echo 3 ;;
    host/io) echo 2 ;; kernels/cpu|kernels/cuda) echo 1 ;; kernels/common) echo 0 ;; *) echo -1 ;;
  esac
}
target_dir() {  # the directory an include "x/y.h" names
  case "$1" in
    cmd/*|train/*|generate/*|model/*|io/*) echo "host/${1%%/*}" ;;
    cpu/*|cuda/*|common/*) echo "kernels/${1%%/*}" ;;
    *) echo "" ;;
  esac
}
bad=0
while IFS= read -r f; do
  dir=$(dirname "$f")
  r=$(rank "$dir")
  [ "$r" -ge 0 ] || continue
  while IFS= read -r inc; do
    t=$(target_dir "$inc")
    [ -n "$t" ] || continue
    rt=$(rank "$t")
    if [ "$rt" -gt "$r" ] || { [ "$rt" -eq "$r" ] && [ "$t" != "$dir" ]; }; then
      echo "check_layers: $f includes \"$inc\" ($t is not below $dir)"
      bad=1
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done < <(git ls-files 'host/*' 'kernels/*' | grep -E '\.(c|h|cu)$' | grep -v '^kernels/.*/emu/')
if [ "$bad" -eq 0 ]; then echo "check_layers: every include points down"; fi
exit "$bad"
