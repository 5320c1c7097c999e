#!/usr/bin/env bash
# Writes the built-in emoji model (models/emoji) from the training runs of docs/emoji-demo.md:
# the generator's weights (raw or EMA) and the tokenizer stored as bf16, the evaluation classifier, the
# class names, the structure bank (structures.nvgtok) and the licences of the training data. Usage:
#   tools/ship-emoji-model.sh RUNS_DIR [raw|ema] [GENERATOR_RUN] [TOKENIZER_RUN] [DATA_DIR] [DATASET]
# RUNS_DIR holds GENERATOR_RUN/last.safetensors (nvg train; GENERATOR_RUN defaults to gen),
# TOKENIZER_RUN/tokenizer.safetensors (nvg train-tokenizer; TOKENIZER_RUN defaults to tok, e.g. tok-dec for
# a --decoder-only fine-tune of it), classifier.safetensors (nvg eval train-classifier) and
# DATASET.classes.json (nvg tokenize's class names of the generator's training data, DATASET a .nvgtok
# in RUNS_DIR; default emoji.nvgtok). Class names <category>--<subcategory> (tools/fetch-emoji.sh
# --classes subcategory) also give classes.json the groups (categories) that `nvg generate` names images
# by; a subcategory without training records (DATASET must then exist) is left out of its group. Class
# names <category>--google / --twitter / --fluent / --fluent-color / --fluent-3d (--classes category-style) give each category a group
# of its google class alone. DATA_DIR (default: the repository's target/emoji) is the
# tools/fetch-emoji.sh folder of the largest data set any of the models saw; its LICENSE-emoji.txt becomes
# LICENSE-data.txt.
set -euo pipefail
usage="usage: tools/ship-emoji-model.sh RUNS_DIR [raw|ema] [GENERATOR_RUN] [TOKENIZER_RUN] [DATA_DIR] [DATASET]"
runs=${1:?$usage}
weights=${2:-raw}
gen=${3:-gen}
tok=${4:-tok}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${5:-"$root/target/emoji"}
dataset=${6:-emoji.nvgtok}
classes="$dataset.classes.json"
out="$root/models/emoji"
nvg=${NVG:-"$root/target/release/nvg"}
[ -x "$nvg" ] || { echo "no nvg binary at $nvg: run cargo build --release -p nvg-tools (or set NVG)" >&2; exit 1; }
for f in "$gen/last.safetensors" "$tok/tokenizer.safetensors" classifier.safetensors "$classes"; do
    [ -f "$runs/$f" ] || { echo "$runs/$f is missing" >&2; exit 1; }
done
[ -f "$data/LICENSE-emoji.txt" ] || { echo "$data/LICENSE-emoji.txt is missing (a tools/fetch-emoji.sh folder?)" >&2; exit 1; }
case "$weights" in
    raw) ema=() ;;
    ema) ema=(--ema) ;;
    *) echo "weights must be raw or ema, not $weights" >&2; exit 1 ;;
esac
mkdir -p "$out"
"$nvg" convert --input "$runs/$gen/last.safetensors" --output "$out/generator.safetensors" "${ema[@]}" --dtype bf16
"$nvg" convert --input "$runs/$tok/tokenizer.safetensors" --output "$out/tokenizer.safetensors" --dtype bf16
cp "$runs/classifier.safetensors" "$out/classifier.safetensors"
# The structure bank of the README main job: the google training images' structure maps under the shipped
# tokenizer (BANK_IMAGES: a tools/fetch-emoji.sh train folder of the 9 categories, google style).
bank_images=${BANK_IMAGES:-"$root/target/emoji/train"}
[ -d "$bank_images" ] || { echo "$bank_images is missing (tools/fetch-emoji.sh; or set BANK_IMAGES)" >&2; exit 1; }
rm -f "$out/structures.nvgtok" "$out/structures.nvgtok.classes.json"
"$nvg" tokenize --images "$bank_images" --tokenizer "$out/tokenizer.safetensors" --out "$out/structures.nvgtok" \
    --resolution 64 --whole --child-order outside-first --mirror --batch 32
records=""
if grep -q -- '--' "$runs/$classes"; then
    [ -f "$runs/$dataset" ] || { echo "$runs/$dataset is missing (its records per class decide the groups)" >&2; exit 1; }
    records=$("$nvg" inspect "$runs/$dataset" | sed -n 's/^class \([0-9]*\): \([0-9]*\) records$/\1 \2/p')
fi
python3 - "$runs/$classes" "$records" > "$out/classes.json" <<'PY'
import json, sys
names = json.load(open(sys.argv[1]))["classes"]
records = dict(tuple(map(int, l.split())) for l in sys.argv[2].splitlines())
out = {"classes": names}
if any("--" in n for n in names):
    assert len(records) == len(names), "nvg inspect listed %d classes, not %d" % (len(records), len(names))
    # Classes <category>--<style> (fetch-emoji.sh --classes category-style): a category is drawn in the
    # google style, the style of the held-out images the model is scored against.
    by_style = all(n.split("--", 1)[1] in ("google", "twitter", "fluent", "fluent-color", "fluent-3d") for n in names)
    groups = {}
    for i, n in enumerate(names):
        category, rest = n.split("--", 1)
        if by_style and rest != "google":
            continue
        if records[i] > 0:  # a subcategory the generator never saw is not drawn
            groups.setdefault(category, []).append(i)
    out["groups"] = [{"name": g, "classes": ids} for g, ids in groups.items()]
print(json.dumps(out, indent=2))
PY
{
    printf '%s\n' "The emoji model of this folder was trained on the images below (copied from the LICENSE-emoji.txt that" \
        "tools/fetch-emoji.sh writes beside the data)." ""
    cat "$data/LICENSE-emoji.txt"
} > "$out/LICENSE-data.txt"
ls -l "$out"
