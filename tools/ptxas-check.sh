#!/usr/bin/env bash
# Assembles every PTX module that kernels/build.rs embedded with `ptxas -arch=<arch> -v`: fails on any
# ptxas error and prints registers, shared memory and spills per kernel (CI runs it after the build).
# Usage: tools/ptxas-check.sh [target dir]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$root/target}"
ptxas="${PTXAS:-${NVG_NVCC_DIR:-$target/nvcc}/nvidia/cu13/bin/ptxas}"
[ -x "$ptxas" ] || ptxas="$(command -v ptxas || true)"
if [ -z "$ptxas" ]; then
  echo "ptxas not found: run tools/install-nvcc.sh" >&2
  exit 1
fi
# The newest build's PTX (one per module and architecture).
mapfile -t files < <(find "$target" -path '*nvg-kernels-*/out/*.ptx' -printf '%T@ %p\n' | sort -rn | awk '{print $2}' \
  | awk -F/ '!seen[$NF]++')
if [ "${#files[@]}" -eq 0 ]; then
  echo "no PTX under $target: build with nvcc available (tools/install-nvcc.sh)" >&2
  exit 1
fi
spills=0
for f in "${files[@]}"; do
  arch="$(basename "$f" .ptx)"; arch="${arch##*.}"
  out="$("$ptxas" -arch="$arch" -v "$f" -o /dev/null 2>&1)" || { echo "$out"; echo "ptxas failed on $f" >&2; exit 1; }
  echo "== $(basename "$f")"
  echo "$out" | awk '/Compiling entry/ {k=$7; gsub(/'"'"'/, "", k)}
    /registers/ {sub(/.*: Used/, "Used"); print "  " k ": " $0}
    /spill/ && ($5 != 0 || $9 != 0) {print "  " k ": SPILLS: " $0}'
  if echo "$out" | grep -Eq '[1-9][0-9]* bytes spill'; then spills=1; fi
done
[ "$spills" -eq 0 ] && echo "ptxas: ${#files[@]} modules, no errors, no spills" || echo "ptxas: ${#files[@]} modules, no errors; some kernels spill (see above)"
