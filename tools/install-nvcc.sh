#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels (nvcc, ptxas, headers; ~104 MB download) into DIR
# (default: <repo>/target/nvcc), where kernels/build.rs finds them. No CUDA install, driver or GPU is
# needed. The versions are pinned: newer wheels emit a PTX ISA that the CUDA 13.0 driver of our device
# machines cannot load (docs/cuda.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${NVG_NVCC_DIR:-$root/target/nvcc}}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
if [ -x "$nvcc" ] && "$nvcc" --version | grep -q "V13.0.88"; then
  echo "nvcc 13.0.88 already in $dir"
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
"$nvcc" --version | tail -1
echo "installed nvcc into $dir (build.rs finds it there; elsewhere set NVG_NVCC_DIR=$dir)"
