#!/usr/bin/env bash
# The real-GPU check, in two halves (the device machine has no network and no Rust toolchain, so the
# binaries are built here and carried there):
#
#   tools/gpu-check.sh build     # here: nvcc wheels, then the conformance tests and `nvg` with the CUDA
#                                #   backend, copied into gpu-check/ (git-ignored, debug info stripped)
#   tools/gpu-check.sh run [OUT] # on the GPU machine: conformance suite on Device::Cuda(0) and CudaEmu,
#                                #   the device autograd and optimiser tests, the emulator self-tests,
#                                #   `nvg bench device`, `nvg generate` of the fixture model on cuda vs cpu
#                                #   (time, differing PNGs) and `nvg train` of the emoji architecture on
#                                #   cuda (f32 and bf16 matmuls) vs cpu (losses, seconds per step); report in OUT (default
#                                #   gpu-check/report.md). Under 8 minutes on one H200.
#
# With the device tool: run `build`, then `run` with carry=["gpu-check"] and OUT=$OUT.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/gpu-check"
case "${1:-}" in
build)
  "$root/tools/install-nvcc.sh"
  cd "$root"
  mkdir -p "$dir"
  cargo build --release -p nvg-tools --features cuda
  cp target/release/nvg "$dir/nvg"
  for t in device_conformance tensor_core autograd_device optim; do
    bin="$(cargo test -p nvg-engine --features cuda --test "$t" --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"/" in l][-1])')"
    cp "$bin" "$dir/$t"
  done
  bin="$(cargo test -p nvg-kernels --test emu --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"/" in l][-1])')"
  cp "$bin" "$dir/emu"
  # The fixture generator and tokenizer (7.6 MB) for the whole-pipeline run on the GPU.
  fx="${NVG_FIXTURES:-$root/../shared/fixtures/nvg-tiny}"
  mkdir -p "$dir/fixture"
  cp "$fx/generator.safetensors" "$fx/tokenizer.safetensors" "$dir/fixture/"
  strip --strip-debug "$dir"/* 2>/dev/null || true   # the device tool carries at most 64 MiB
  du -sh "$dir"
  ;;
run)
  out="${2:-$dir/report.md}"
  mkdir -p "$(dirname "$out")"
  {
    echo "# nvg-rs GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi unavailable"
    echo '```'
    for t in emu device_conformance tensor_core autograd_device optim; do
      echo
      echo "## $t"
      echo '```'
      "$dir/$t" --nocapture --test-threads=1 2>&1 | grep -Ev '^\s*$' | tail -40 || echo "FAILED: $t"
      echo '```'
    done
    echo
    echo "## nvg bench device"
    "$dir/nvg" bench device --device cuda --scale 8 --iters 10 2>&1 || echo "FAILED: bench device"
    echo
    echo "## nvg generate: the fixture model on cuda and on the cpu (16 images, official settings)"
    echo '```'
    gen() {
      local dev="$1" matmul="${2:-f32}" name="$1${2:+-$2}"
      local t0
      t0=$(date +%s%N)
      "$dir/nvg" generate --generator "$dir/fixture/generator.safetensors" \
        --tokenizer "$dir/fixture/tokenizer.safetensors" --classes 1,2,3,4 --per-class 4 --batch 16 \
        --device "$dev" --matmul "$matmul" --out "$tmp/$name" >"$tmp/$name.log" 2>&1 || { echo "FAILED: generate --device $dev --matmul $matmul"; tail -5 "$tmp/$name.log"; }
      echo "$name: $((($(date +%s%N) - t0) / 1000000)) ms"
    }
    tmp="$(mktemp -d)"
    gen cuda
    gen cuda bf16
    gen cpu
    # Devices agree to rounding: count the PNGs whose bytes differ (a pixel level here and there).
    differ=0
    for f in "$tmp"/cpu/*.png; do cmp -s "$f" "$tmp/cuda/$(basename "$f")" || differ=$((differ + 1)); done
    echo "PNGs that differ between cuda and cpu: $differ of $(ls "$tmp"/cpu/*.png 2>/dev/null | wc -l)"
    echo '```'
    echo
    echo "## nvg train: the emoji model's architecture (depth 4, 8×8 grid, position tables) from scratch on"
    echo "## the structure bank (models/emoji/structures.nvgtok, 6,800 records), batch 32, cuda vs cpu"
    echo '```'
    train() {
      local dev="$1" steps="$2" matmul="$3" run="$tmp/train-$1-$3"
      "$dir/nvg" train --data "$root/models/emoji/structures.nvgtok" \
        --tokenizer "$root/models/emoji/tokenizer.safetensors" --config depth=4 --position-embedding \
        --batch 32 --steps "$steps" --checkpoint-every 1000 --log-every 1 --seed 1 --device "$dev" \
        --matmul "$matmul" --out "$run" >"$run.log" 2>&1 || { echo "FAILED: train --device $dev --matmul $matmul"; tail -5 "$run.log"; }
      echo "$dev, --matmul $matmul (step, loss, grad norm, seconds):"
      sed -E 's/.*"grad_norm":([^,]*).*"loss":([^,]*).*"seconds":([^,]*).*"step":([0-9]*).*/  \4 \2 \1 \3/' \
        "$run/log.jsonl" 2>/dev/null || true
    }
    train cuda 8 f32
    train cuda 8 bf16
    train cpu 2 f32
    rm -rf "$tmp"
    echo '```'
  } > "$out"
  cat "$out"
  ;;
*)
  echo "usage: tools/gpu-check.sh build | run [OUT]" >&2
  exit 2
  ;;
esac
