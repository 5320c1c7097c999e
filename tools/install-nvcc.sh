#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels (nvcc, ptxas, headers; ~104 MB download) and the
# header-only NVTX3 API (feature `nvtx`) into DIR (default: <repo>/target/nvcc), where kernels/build.rs
# finds them. No CUDA install, driver or GPU is needed. The versions are pinned: newer wheels emit a PTX
# ISA that the CUDA 13.0 driver of our device machines cannot load (docs/cuda.md). All wheels go in one
# pip call with --upgrade: they share the `nvidia/` folder, which pip --target replaces as a whole (so an
# older install without NVTX is completed, not skipped).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${NVG_NVCC_DIR:-$root/target/nvcc}}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
nvtx="$dir/nvidia/cu13/include/nvtx3/nvToolsExt.h"
if [ -x "$nvcc" ] && "$nvcc" --version | grep -q "V13.0.88" && [ -f "$nvtx" ]; then
  echo "nvcc 13.0.88 and NVTX3 already in $dir"
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dir" \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-nvtx==13.0.85
"$nvcc" --version | tail -1
[ -f "$nvtx" ] || { echo "install-nvcc.sh: $nvtx missing after the install" >&2; exit 1; }
echo "installed nvcc into $dir (build.rs finds it there; elsewhere set NVG_NVCC_DIR=$dir)"
