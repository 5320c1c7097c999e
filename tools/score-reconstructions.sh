#!/usr/bin/env bash
# The tokenizer's ceiling on the `nvg eval` metrics: every image of a held-out ImageFolder goes through the
# tokenizer (encode → cluster → quantise → decode, `nvg reconstruct --whole`), the reconstructions are
# written as OUT/CCCC_IIIII.png (class = index of the sorted class folder, as `nvg tokenize` numbers them)
# and scored with `nvg eval score` against the same folder. A generator drawing through this tokenizer
# cannot be expected to score better than its reconstructions. It also prints the mean PSNR per image, and
# the same for the encoder's features decoded without quantisation (what the autoencoder alone loses). Usage:
#   tools/score-reconstructions.sh TOKENIZER.safetensors HELD_OUT_DIR OUT [RESOLUTION] [-- SCORE_ARGS...]
# e.g. tools/score-reconstructions.sh models/emoji/tokenizer.safetensors target/emoji/val target/emoji-eval/recon
set -euo pipefail
usage="usage: tools/score-reconstructions.sh TOKENIZER HELD_OUT_DIR OUT [RESOLUTION] [-- SCORE_ARGS...]"
tokenizer=${1:?$usage}
images=${2:?$usage}
out=${3:?$usage}
shift 3
resolution=64
if [ $# -gt 0 ] && [ "$1" != "--" ]; then resolution=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
root=$(cd "$(dirname "$0")/.." && pwd)
nvg=${NVG:-"$root/target/release/nvg"}
[ -x "$nvg" ] || { echo "no nvg binary at $nvg: run cargo build --release -p nvg-tools (or set NVG)" >&2; exit 1; }
[ -d "$images" ] || { echo "$images is not a folder" >&2; exit 1; }
[ -e "$out" ] && { echo "$out exists; choose a new folder" >&2; exit 1; }
mkdir -p "$out"
class=0
count=0
psnrs=()
while IFS= read -r dir; do
    index=0
    while IFS= read -r image; do
        line=$("$nvg" reconstruct --tokenizer "$tokenizer" --image "$image" --resolution "$resolution" --whole \
            --out "$out/$(printf '%04d_%05d.png' "$class" "$index")")
        # "... PSNR Q dB against the preprocessed input; U dB without quantisation)" → "Q U"
        [[ $line == *"dB without quantisation"* ]] || { echo "unexpected nvg reconstruct output (an older nvg?): $line" >&2; exit 1; }
        psnrs+=("$(sed -E 's/.*PSNR ([0-9.]+|inf) dB[^;]*; ([0-9.]+|inf) dB without.*/\1 \2/' <<<"$line")")
        index=$((index + 1))
        count=$((count + 1))
    done < <(find "$dir" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) | LC_ALL=C sort)
    class=$((class + 1))
done < <(find "$images" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort)
echo "$count reconstructions of $class classes in $out" >&2
printf '%s\n' "${psnrs[@]}" | awk '{q += $1; u += $2} END {printf "mean PSNR per image: %.2f dB (%.2f dB without quantisation)\n", q / NR, u / NR}' >&2
"$nvg" eval score --images "$out" --real "$images" "$@"
