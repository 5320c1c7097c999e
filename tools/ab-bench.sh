#!/usr/bin/env bash
# A/B timing of two builds of `nvg` on the same command, interleaved.
#
# Usage: tools/ab-bench.sh [--rounds N] OLD_BIN NEW_BIN -- ARGS...
#
# Runs `OLD_BIN ARGS...` and `NEW_BIN ARGS...` alternately, N rounds (default 5; the side that goes first
# alternates too), and prints each run's wall time, the median of each side and NEW's speed relative to
# OLD (> 1: NEW is faster). `{out}` in ARGS is replaced by a fresh scratch folder per run (removed
# afterwards), for commands that insist on writing somewhere.
#
# Why interleaved: this 2-vCPU VM drifts by ±30 % within minutes (other tenants), so timing the two
# builds one after the other measures the drift; alternating them run by run spreads it over both.
#
# Example (a tokenizer training step, before and after a change):
#   cp target/release/nvg /tmp/nvg-old; <change, cargo build --release -p nvg-tools>
#   tools/ab-bench.sh /tmp/nvg-old target/release/nvg -- train-tokenizer --images target/emoji/train \
#       --out {out} --steps 12 --batch 16 --eval-every 1000 --checkpoint-every 1000
set -euo pipefail

rounds=5
if [[ "${1:-}" == "--rounds" ]]; then
    rounds="$2"
    shift 2
fi
if [[ $# -lt 3 || "$3" != "--" ]]; then
    sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
old="$1" new="$2"
shift 3
for bin in "$old" "$new"; do
    [[ -x "$bin" ]] || { echo "ab-bench: $bin is not an executable" >&2; exit 2; }
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Wall seconds of one run of "$1" with the arguments (stdout and stderr kept in $scratch/last.log).
run_once() {
    local bin="$1" out="$scratch/out" args=() a
    for a in "${ARGS[@]}"; do args+=("${a//\{out\}/$out}"); done
    rm -rf "$out"
    local t0 t1
    t0=$(date +%s.%N)
    if ! "$bin" "${args[@]}" >"$scratch/last.log" 2>&1; then
        echo "ab-bench: $bin failed; its output:" >&2
        tail -20 "$scratch/last.log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}

ARGS=("$@")
old_times=() new_times=()
for ((r = 0; r < rounds; r++)); do
    if ((r % 2 == 0)); then order=(old new); else order=(new old); fi
    for side in "${order[@]}"; do
        if [[ $side == old ]]; then
            t=$(run_once "$old"); old_times+=("$t")
        else
            t=$(run_once "$new"); new_times+=("$t")
        fi
        echo "round $((r + 1)) $side ${t} s"
    done
done

python3 - "${old_times[*]}" "${new_times[*]}" "$old" "$new" <<'PY'
import statistics, sys
old = [float(v) for v in sys.argv[1].split()]
new = [float(v) for v in sys.argv[2].split()]
mo, mn = statistics.median(old), statistics.median(new)
print(f"old {sys.argv[3]}: median {mo:.3f} s over {len(old)} runs ({', '.join(f'{v:.2f}' for v in old)})")
print(f"new {sys.argv[4]}: median {mn:.3f} s over {len(new)} runs ({', '.join(f'{v:.2f}' for v in new)})")
print(f"new speed / old speed: {mo / mn:.3f}x")
PY
