#!/usr/bin/env bash
# Builds an ImageFolder of real emoji images (64×64 PNGs, 9 classes) for the embedded demo model.
#
# Usage: tools/fetch-emoji.sh [OPTIONS] [OUT]
#
#   OUT                    output folder (default: target/emoji under the repository root)
#   --styles LIST          comma-separated image styles: google (default), twitter, fluent
#                          (Microsoft's Fluent Emoji, flat style), fluent-color (Fluent Emoji, color
#                          style: gradients), fluent-3d (Fluent Emoji, 3D renders); fluent and
#                          fluent-color are SVGs rendered to 64x64 PNGs by resvg, fluent-3d 256x256
#                          WebPs scaled down to 64x64 PNGs by Pillow (the first run pip-installs
#                          resvg-py or Pillow into the cache)
#   --style S              the same as --styles S
#   --val-percent N        share of emoji held out for validation, integer 0..100 (default 10)
#   --classes KIND         category (default: the 9 categories), subcategory (the 98 subcategories
#                          of emoji.json, folders <category folder>--<subcategory>, e.g.
#                          0-smileys-emotion--face-smiling: grouped by category in sorted order) or
#                          category-style (one folder per category and style asked, e.g.
#                          0-smileys-emotion--google and 0-smileys-emotion--twitter)
#   --no-skin-tones        leave out the skin-tone variants (default: include them under the
#                          parent emoji's category)
#   --keep-duplicates      keep byte-identical copies of an image (default: keep one — the emoji
#                          of the oldest Unicode version, before its skin-tone variants, then the
#                          first file name — and list the others in counts.json); kept copies
#                          share the split of the first
#   --cache DIR            where the npm tarballs are kept (default: target/emoji-cache under the
#                          repository root, or $NVG_EMOJI_CACHE)
#   --offline              never download; use only the cached tarballs
#   -h, --help             this text
#
# Environment: NVG_EMOJI_CACHE (see --cache), NVG_EMOJI_REGISTRY (npm registry to download from;
# default: npm's configured one, and https://registry.npmjs.org for the direct download).
#
# Data: the npm packages emoji-datasource-google@16.0.0 (Noto Emoji images, Apache-2.0) and, when
# asked, emoji-datasource-twitter@16.0.0 (Twemoji images, CC-BY-4.0); the packages themselves are MIT
# (emoji-datasource by Cal Henderson). The fluent style comes from @lobehub/fluent-emoji-flat@1.1.0,
# fluent-color from @lobehub/fluent-emoji-modern@1.0.0 (LobeHub's name for the color style; both SVG
# only), fluent-3d from @lobehub/fluent-emoji-3d@1.1.0 (WebP only; Fluent Emoji by Microsoft, MIT), their
# categories from the google package's emoji.json (which is fetched for them when google is not asked).
# Each tarball is fetched once (npm pack, else curl, else python3 urllib), checked against the sha512
# pinned below (a changed upload is refused) and cached.
#
# Layout: OUT/{train,val}/<id>-<category>/<file>.png, class folders 0-smileys-emotion 1-people-body
# 2-animals-nature 3-food-drink 4-travel-places 5-activities 6-objects 7-symbols 8-flags (sorted names
# = class ids 0..8; every folder exists in both splits, even if empty; with --classes subcategory, one
# folder per subcategory named after its category's, so the sorted ids stay grouped by category; with
# --classes category-style, <category folder>--<style> for every category and style asked). "Component" emoji (the bare
# skin-tone swatches) are left out. Twitter files are named twitter-<file>.png; google ones keep the
# package's name, the fluent styles' <style>-<file>.png (fluent-, fluent-color-, fluent-3d-). OUT also
# gets counts.json, LICENSE-emoji.txt and ATTRIBUTION.md.
#
# Split: an emoji goes to val when sha256(<base image name>) mod 100 < N, where the base image name
# is the package's file name of the emoji itself (e.g. 1f385.png) — skin-tone variants and the other
# style's drawing use their parent's name, so a family of near-identical images never straddles the
# split. Fixed across runs and machines.
#
# The PNGs are copied byte for byte (mostly RGBA; a few grey+alpha or palette); `nvg`'s image reader
# composites transparent pixels onto white. Fluent flat and color images are rendered from the
# packages' SVGs by resvg (the pip package resvg-py==0.5.0, installed once into CACHE/resvg-py-0.5.0 with
# `python3 -m pip install --target`), 64x64 RGBA; the same resvg version gives the same bytes. Fluent 3D
# images are decoded from the package's 256x256 WebPs and scaled down to 64x64 RGBA (Lanczos) by
# Pillow==11.3.0, installed the same way into CACHE/pillow-11.3.0. The tree
# is built in a hidden sibling folder and renamed into place, so an interrupted run leaves the previous
# tree (or none), never half of one. Re-running with the same options gives an identical tree. Needs
# bash 4+, GNU coreutils and python3 3.7+ (standard library only; it also reads the tarballs, so tar is
# not needed; the fluent styles: 3.10+ with pip); npm or curl optional.
# See docs/emoji-data.md; self-check: tools/tests/fetch_emoji.sh.
set -euo pipefail
((BASH_VERSINFO[0] >= 4)) || { echo "fetch-emoji: error: bash 4 or newer is needed" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=16.0.0 # of the emoji-datasource packages
# npm package and version of each style's tarball.
declare -A PACKAGE=([google]=emoji-datasource-google [twitter]=emoji-datasource-twitter
  [fluent]=@lobehub/fluent-emoji-flat [fluent-color]=@lobehub/fluent-emoji-modern [fluent-3d]=@lobehub/fluent-emoji-3d)
declare -A PKG_VERSION=([google]=$VERSION [twitter]=$VERSION [fluent]=1.1.0 [fluent-color]=1.0.0 [fluent-3d]=1.1.0)
KNOWN_STYLES=(google twitter fluent fluent-color fluent-3d) # canonical order
# The Fluent styles: named by emoji.json of google, drawn as SVG (rendered by resvg) or as WebP
# (scaled down by Pillow).
declare -A FLUENT_FORMAT=([fluent]=svg [fluent-color]=svg [fluent-3d]=webp)
FLUENT_STYLES=(fluent fluent-color fluent-3d)
RESVG_PY=0.5.0 # the SVG renderer of the fluent and fluent-color styles (PyPI resvg-py)
PILLOW=11.3.0  # the WebP decoder and scaler of the fluent-3d style (PyPI pillow)
REGISTRY="${NVG_EMOJI_REGISTRY:-https://registry.npmjs.org}"
REGISTRY="${REGISTRY%/}"
# dist.integrity of the registry's uploads (https://registry.npmjs.org/PACKAGE/VERSION), checked 2025
# (fluent, fluent-color, fluent-3d: 2026-12-01): a tarball with another digest is refused.
declare -A SHA512=(
  [google]="sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
  [twitter]="sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ=="
  [fluent]="sha512-lPYCg8+N56MIj+iOgeBeH6AF0tneXxJCvgi41rOTjAWpA5rU2WUcmU1fiIXouEe8GrSTarWCYLY2ML+rdLRHsg=="
  [fluent-color]="sha512-YdZEgLC/vh29uDEl440q3W2vN50FdUFarQoKUHH9Clzx61/wW6mImLJywVBMKQPa3+GL59j3NvOlTLhH4rxleA=="
  [fluent-3d]="sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g=="
)

die() {
  echo "fetch-emoji: error: $*" >&2
  exit 1
}
note() { echo "fetch-emoji: $*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# ---- options ---------------------------------------------------------------------------------------
styles_arg=google
classes=category
val_percent=10
skin=1
dedup=1
offline=0
cache="${NVG_EMOJI_CACHE:-$root/target/emoji-cache}"
out=""
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
  -h | --help) usage; exit 0 ;;
  --style | --styles) need_value "$@"; styles_arg="$2"; shift 2 ;;
  --style=* | --styles=*) styles_arg="${1#*=}"; shift ;;
  --classes) need_value "$@"; classes="$2"; shift 2 ;;
  --classes=*) classes="${1#*=}"; shift ;;
  --val-percent) need_value "$@"; val_percent="$2"; shift 2 ;;
  --val-percent=*) val_percent="${1#*=}"; shift ;;
  --no-skin-tones) skin=0; shift ;;
  --keep-duplicates) dedup=0; shift ;;
  --cache) need_value "$@"; cache="$2"; shift 2 ;;
  --cache=*) cache="${1#*=}"; shift ;;
  --offline) offline=1; shift ;;
  --) shift; [[ $# -le 1 && ( $# -eq 0 || -z "$out" ) ]] || die "more than one OUT given"; [[ $# -eq 0 ]] || { out="$1"; shift; } ;;
  -*) die "unknown option '$1' (see --help)" ;;
  *) [[ -z "$out" ]] || die "more than one OUT given ('$out', '$1')"; out="$1"; shift ;;
  esac
done
[[ "$classes" == category || "$classes" == subcategory || "$classes" == category-style ]] ||
  die "--classes must be category, subcategory or category-style, not '$classes'"
[[ "$val_percent" =~ ^[0-9]+$ ]] && ((10#$val_percent <= 100)) ||
  die "--val-percent must be an integer from 0 to 100, not '$val_percent'"
val_percent=$((10#$val_percent))
styles=()
IFS=',' read -r -a requested <<<"$styles_arg"
for s in "${KNOWN_STYLES[@]}"; do # canonical order, whatever the order asked
  for r in "${requested[@]}"; do [[ "$r" == "$s" ]] && { styles+=("$s"); break; }; done
done
for r in "${requested[@]}"; do
  [[ -n "${PACKAGE[$r]+x}" ]] || die "unknown style '$r' (known: ${KNOWN_STYLES[*]})"
done
((${#styles[@]} > 0)) || die "no style given (known: ${KNOWN_STYLES[*]})"

command -v python3 >/dev/null || die "python3 is needed (standard library only)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 7))' || die "python3 3.7 or newer is needed"

out="${out:-$root/target/emoji}"
out="$(realpath -m -- "$out")"
cache="$(realpath -m -- "$cache")"
[[ "$out" != / && "$out" != "$root" && "$out" != "${HOME:-/}" ]] || die "refusing OUT=$out"
[[ "$cache" != "$out" && "$cache" != "$out"/* ]] || die "the cache ($cache) must not be inside OUT ($out)"
# Only a tree this script made may be replaced.
if [[ -e "$out" || -L "$out" ]]; then
  [[ -d "$out" && ! -L "$out" ]] || die "$out exists and is not a folder; remove it or choose another OUT"
  if [[ -n "$(ls -A -- "$out")" ]] &&
    ! grep -qs '"generator": "tools/fetch-emoji.sh"' -- "$out/counts.json"; then
    die "$out exists and was not made by this script (no counts.json from it); remove it or choose another OUT"
  fi
fi

# ---- fetching --------------------------------------------------------------------------------------
# sha512 of FILE in npm's integrity form (sha512-BASE64).
integrity_of() {
  python3 - "$1" <<'PY'
import base64, hashlib, sys
h = hashlib.sha512()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print("sha512-" + base64.b64encode(h.digest()).decode())
PY
}

# The file name `npm pack NAME@VERSION` writes: a scope's '@' dropped and its '/' turned into '-'.
tarball_name() {
  local name="${1#@}"
  echo "${name//\//-}-$2.tgz"
}

# Downloads package NAME@VER's tarball into folder DIR (empty) as $(tarball_name NAME VER); prints
# nothing, fails on error.
download() {
  local name="$1" ver="$2" dir="$3" url file npm_args=()
  file="$(tarball_name "$name" "$ver")"
  url="$REGISTRY/$name/-/${name##*/}-$ver.tgz"
  # npm uses its own configured registry unless NVG_EMOJI_REGISTRY is set.
  [[ -z "${NVG_EMOJI_REGISTRY:-}" ]] || npm_args=(--registry "$REGISTRY")
  if command -v npm >/dev/null; then
    if (cd "$dir" && npm pack "$name@$ver" ${npm_args[@]+"${npm_args[@]}"} --ignore-scripts --silent >/dev/null 2>"$dir/npm.log"); then
      [[ -f "$dir/$file" ]] && return 0
      note "npm pack did not leave $file; trying a direct download"
    else
      note "npm pack failed ($(tail -n 1 "$dir/npm.log" 2>/dev/null)); trying a direct download"
    fi
  else
    note "npm not found; downloading $url directly"
  fi
  rm -f -- "$dir"/*.tgz
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 --connect-timeout 30 -o "$dir/$file" "$url" && return 0
    note "curl could not fetch $url; trying python3 urllib"
  fi
  python3 - "$url" "$dir/$file" <<'PY' || die "could not download $url"
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f, 1 << 20)
PY
}

# Makes sure the verified tarball of STYLE is in the cache; prints its path.
fetch() {
  local style="$1" name ver base file got tmp
  name="${PACKAGE[$style]}"
  ver="${PKG_VERSION[$style]}"
  base="$(tarball_name "$name" "$ver")"
  file="$cache/$base"
  if [[ -f "$file" ]]; then
    got="$(integrity_of "$file")"
    if [[ "$got" == "${SHA512[$style]}" ]]; then
      echo "$file"
      return
    fi
    ((offline == 0)) || die "cached $file has $got, expected ${SHA512[$style]} (--offline: not downloading again)"
    note "cached $file does not match the pinned sha512; downloading it again"
    rm -f -- "$file"
  fi
  ((offline == 0)) || die "$file is not cached and --offline was given"
  mkdir -p -- "$cache"
  tmp="$(mktemp -d "$cache/.download.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: tmp is local
  trap "rm -rf -- '$tmp'" EXIT
  note "downloading $name@$ver into $cache"
  download "$name" "$ver" "$tmp"
  got="$(integrity_of "$tmp/$base")"
  [[ "$got" == "${SHA512[$style]}" ]] ||
    die "$base from the registry has $got, expected ${SHA512[$style]}: refusing a changed or corrupt upload"
  mv -f -- "$tmp/$base" "$file"
  rm -rf -- "$tmp"
  trap - EXIT
  echo "$file"
}

# Whether folder DIR holds pip package PKG==VER whose module MODULE (compiled parts included) imports
# from DIR under this python3 — not another copy of it elsewhere on the machine, whose version would
# change the images.
pip_tool_ok() {
  local dir="$1" pkg="$2" ver="$3" module="$4"
  PYTHONPATH="$dir" python3 - "$dir" "$pkg" "$ver" "$module" 2>/dev/null <<'PY'
import importlib, importlib.metadata, os, sys
folder, pkg, ver, module = sys.argv[1:]
mod = importlib.import_module(module)
inside = os.path.realpath(mod.__file__).startswith(os.path.realpath(folder) + os.sep)
sys.exit(0 if inside and importlib.metadata.version(pkg) == ver else 1)
PY
}

# Makes sure the pip package PKG==VER (importable as MODULE) is installed under the cache, for the
# styles named in WHO; prints the folder to put on PYTHONPATH. Installed into a temporary folder and
# renamed, so a half install is never used.
pip_tool() {
  local pkg="$1" ver="$2" module="$3" who="$4" dir="$cache/$1-$2" tmp
  if pip_tool_ok "$dir" "$pkg" "$ver" "$module"; then
    echo "$dir"
    return
  fi
  ((offline == 0)) || die "$pkg $ver is needed (for $who) in $dir and --offline was given (run once without it)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "python3 3.10 or newer is needed for $pkg ($who)"
  python3 -m pip --version >/dev/null 2>&1 || die "pip (python3 -m pip) is needed to install $pkg ($who)"
  mkdir -p -- "$cache"
  rm -rf -- "$dir"
  tmp="$(mktemp -d "$cache/.$pkg.XXXXXX")"
  note "installing $pkg==$ver into $dir (pip)"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --target "$tmp" "$pkg==$ver" >&2 || { rm -rf -- "$tmp"; die "pip could not install $pkg==$ver"; }
  mv -T -- "$tmp" "$dir"
  pip_tool_ok "$dir" "$pkg" "$ver" "$module" || die "$pkg $ver in $dir does not import from there (python3 $(python3 -V 2>&1))"
  echo "$dir"
}

start=$SECONDS
tarballs=()
for s in "${styles[@]}"; do
  file="$(fetch "$s")"
  tarballs+=("$s" "${SHA512[$s]}" "$file")
done
# emoji.json (categories and file names) comes from the first emoji-datasource tarball; the fluent styles
# have none of their own, so alone they bring the google one in for its emoji.json.
meta_style="${styles[0]}"
meta="${tarballs[2]}"
pythonpath="${PYTHONPATH:-}"
fluent_entries=()
need_resvg=0
need_pillow=0
for s in "${FLUENT_STYLES[@]}"; do
  fluent_entries+=("\"$s\": \"${PACKAGE[$s]}@${PKG_VERSION[$s]}\"")
  [[ " ${styles[*]} " == *" $s "* ]] || continue
  if [[ "${FLUENT_FORMAT[$s]}" == svg ]]; then need_resvg=1; else need_pillow=1; fi
  [[ " ${FLUENT_STYLES[*]} " != *" $meta_style "* ]] || { meta_style=google; meta="$(fetch google)"; }
done
((need_resvg == 0)) || pythonpath="$(pip_tool resvg-py "$RESVG_PY" resvg_py "the SVG styles, fluent and fluent-color")${pythonpath:+:$pythonpath}"
((need_pillow == 0)) || pythonpath="$(pip_tool pillow "$PILLOW" PIL.Image "style fluent-3d")${pythonpath:+:$pythonpath}"
# {"fluent": "@lobehub/fluent-emoji-flat@1.1.0", ...}: the package of every Fluent style, asked or not
fluent_packages="{$(IFS=,; echo "${fluent_entries[*]}")}"
note "tarballs verified ($((SECONDS - start)) s)"

# ---- building --------------------------------------------------------------------------------------
parent="$(dirname -- "$out")"
base="$(basename -- "$out")"
mkdir -p -- "$parent"
# Left by runs killed outright (no trap ran), once their process is gone: partial trees are removed; a
# previous tree moved aside just before the swap is put back if OUT is missing, else removed.
for stale in "$parent/.$base.partial."* "$parent/.$base.old."*; do
  [[ -d "$stale" ]] || continue
  pid="${stale##*.}"
  [[ "$pid" =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null || continue
  if [[ "$stale" == "$parent/.$base.old.$pid" && ! -e "$out" ]]; then
    mv -T -- "$stale" "$out"
  else
    rm -rf -- "$stale"
  fi
done
work="$parent/.$base.partial.$$"
old="$parent/.$base.old.$$"
rm -rf -- "$work"
# On any exit before the end: drop the partial tree, and put the previous tree back if it was moved.
cleanup() {
  rm -rf -- "$work"
  if [[ ! -e "$out" && -d "$old" ]]; then mv -T -- "$old" "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -- "$work"

PYTHONPATH="$pythonpath" python3 - "${BASH_SOURCE[0]}" "$work" "$val_percent" "$skin" "$dedup" "$VERSION" "$classes" \
  "$meta_style" "${SHA512[$meta_style]}" "$meta" "$fluent_packages" "$RESVG_PY" "$PILLOW" "${tarballs[@]}" <<'PY' || die "building the image folder failed"
import hashlib, json, os, re, struct, sys, tarfile

script, work, val_percent, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[6]
skin, dedup = sys.argv[4] == "1", sys.argv[5] == "1"
by_subcategory = sys.argv[7] == "subcategory"
by_style = sys.argv[7] == "category-style"
# The emoji-datasource tarball whose emoji.json names the fluent images (style, integrity, path), the
# package (name@version) of every Fluent style, the resvg-py version that renders the SVG ones and the
# Pillow version that scales the WebP ones.
meta_style, meta_integrity, meta_path, fluent_packages, resvg_version, pillow_version = sys.argv[8:14]
FLUENT_PACKAGE = json.loads(fluent_packages)
rest = sys.argv[14:]  # style, integrity, path; style, integrity, path; ...
sources = [rest[i:i + 3] for i in range(0, len(rest), 3)]
tarballs = [(s, path) for s, _, path in sources]
integrity = {s: i for s, i, _ in sources}

CLASSES = [  # (category in emoji.json, folder); the folder names sort in this order -> class ids 0..8
    ("Smileys & Emotion", "0-smileys-emotion"),
    ("People & Body", "1-people-body"),
    ("Animals & Nature", "2-animals-nature"),
    ("Food & Drink", "3-food-drink"),
    ("Travel & Places", "4-travel-places"),
    ("Activities", "5-activities"),
    ("Objects", "6-objects"),
    ("Symbols", "7-symbols"),
    ("Flags", "8-flags"),
]
FOLDER = dict(CLASSES)
assert sorted(f for _, f in CLASSES) == [f for _, f in CLASSES]
if by_subcategory:
    folders = set()
elif by_style:  # every (category, style) folder, so the class ids do not depend on which images exist
    folders = {f + "--" + s for _, f in CLASSES for s, _ in tarballs}
else:
    folders = {f for _, f in CLASSES}


def class_folder(e, style):
    """The class folder of emoji entry e drawn in style: its category's; with --classes subcategory
    <category folder>--<subcategory> (lower case, runs of other characters as one '-'); with
    --classes category-style <category folder>--<style>."""
    if by_style:
        return FOLDER[e["category"]] + "--" + style
    if not by_subcategory:
        return FOLDER[e["category"]]
    sub = e.get("subcategory")
    if not sub:
        fail("emoji %s has no subcategory" % e.get("unified"))
    slug = "-".join("".join(c if c.isalnum() else " " for c in sub.lower()).split())
    return FOLDER[e["category"]] + "--" + slug

SKIPPED_CATEGORIES = {"Component"}
PREFIX = {"google": "", "twitter": "twitter-", "fluent": "fluent-", "fluent-color": "fluent-color-", "fluent-3d": "fluent-3d-"}
FLUENT_STYLE_WORD = {"fluent": "flat", "fluent-color": "color", "fluent-3d": "3D"}  # Microsoft's names of the styles
FLUENT_SUFFIX = {"fluent": ".svg", "fluent-color": ".svg", "fluent-3d": ".webp"}  # the packages' file types
assert set(FLUENT_STYLE_WORD) == set(FLUENT_PACKAGE) == set(FLUENT_SUFFIX)
HOW_DRAWN = {  # counts.json's "rendered_with", ATTRIBUTION.md's and LICENSE-emoji.txt's words, by file type
    ".svg": ("resvg-py==%s (SVG -> 64x64 RGBA PNG)" % resvg_version,
             "rendered from SVG to 64x64 PNG by resvg (resvg-py %s)" % resvg_version,
             "the SVGs were rendered to 64x64 PNGs by\nresvg (resvg-py %s)" % resvg_version),
    ".webp": ("pillow==%s (WebP, 256 px -> 64x64 RGBA PNG, Lanczos)" % pillow_version,
              "scaled down from 256-pixel WebP to 64x64 PNG by Pillow %s (Lanczos)" % pillow_version,
              "the WebPs (256 pixels wide) were scaled down to\n64x64 PNGs by Pillow %s (Lanczos)" % pillow_version),
}
LICENCE = {
    "google": ("Noto Emoji (Google)", "Apache-2.0", "https://github.com/googlefonts/noto-emoji"),
    "twitter": ("Twemoji (Twitter, Inc. and contributors; fork by jdecked)", "CC-BY-4.0", "https://github.com/jdecked/twemoji"),
    "fluent": ("Fluent Emoji, flat style (Microsoft Corporation)", "MIT", "https://github.com/microsoft/fluentui-emoji"),
    "fluent-color": ("Fluent Emoji, color style (Microsoft Corporation)", "MIT", "https://github.com/microsoft/fluentui-emoji"),
    "fluent-3d": ("Fluent Emoji, 3D style (Microsoft Corporation)", "MIT", "https://github.com/microsoft/fluentui-emoji"),
}
# The Fluent Emoji licence (https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE); the npm
# packages @lobehub/fluent-emoji-flat, -modern and -3d carry no LICENSE file of their own (package.json: MIT).
FLUENT_LICENCE = """MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def fail(msg):
    sys.exit("fetch-emoji: error: " + msg)


def warn(msg):
    print("fetch-emoji: warning: " + msg, file=sys.stderr)


def png_size(data, name):
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        fail(name + " is not a PNG")
    return struct.unpack(">II", data[16:24])


def read_tarball(path, wanted, files_under, suffix):
    """The files of tarball path named in wanted, and those directly under folder files_under that end
    in suffix (by name within that folder)."""
    files, meta = {}, {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            if not m.isfile():
                continue
            rel = m.name[len(files_under):]
            if m.name.startswith(files_under) and m.name.endswith(suffix) and "/" not in rel:
                files[rel] = tar.extractfile(m).read()
            elif m.name in wanted:
                meta[m.name] = tar.extractfile(m).read()
    for need in wanted:
        if need not in meta:
            fail("%s has no %s" % (path, need))
    if not files:
        fail("%s has no %s files under %s" % (path, suffix, files_under))
    return files, meta


def check_package(path, meta, name, ver):
    pkg = json.loads(meta["package/package.json"])
    if pkg.get("version") != ver or pkg.get("name") != name:
        fail("%s holds %s@%s, expected %s@%s" % (path, pkg.get("name"), pkg.get("version"), name, ver))


DATASOURCE_META = ("package/emoji.json", "package/LICENSE", "package/package.json")


_datasource = {}


def read_datasource(style, path):
    """(images by file name, emoji.json entries, LICENSE text) of an emoji-datasource tarball; read once
    (the fluent style's emoji.json may come from a tarball that is also a style of its own)."""
    if path not in _datasource:
        pngs, meta = read_tarball(path, DATASOURCE_META, "package/img/%s/64/" % style, ".png")
        check_package(path, meta, "emoji-datasource-" + style, version)
        _datasource[path] = (pngs, json.loads(meta["package/emoji.json"]), meta["package/LICENSE"].decode("utf-8"))
    return _datasource[path]


def fluent_image_name(file, suffix):
    """The emoji.json image name of a Fluent style's file: "1f600.svg" -> "1f600.png", the first code
    point padded to 4 hex digits (the color and 3D packages also spell 14 files without leading zeros,
    "23-fe0f-20e3.svg" beside "0023-fe0f-20e3.svg"; the exact name wins). Files without the suffix's dot
    are not read: the color package's ten, e.g. "1f446svg", are stray light-skin-tone drawings beside the emoji's own
    "1f446.svg"."""
    first, _, rest = file[:-len(suffix)].partition("-")
    return first.rjust(4, "0") + ("-" + rest if rest else "") + ".png"


def render_svg(svg, name):
    """A 64x64 RGBA PNG of SVG text svg, by resvg (no system fonts: the Fluent SVGs hold no text, and
    the machine's fonts must not change the images). The root's size is set to 64x64, so a drawing whose
    viewBox is not square (two are 32x33) is fitted and centred, not stretched (SVG's default
    preserveAspectRatio)."""
    try:
        import resvg_py
    except ImportError:
        fail("resvg_py is not importable (it should have been installed into the cache)")
    text = svg.decode("utf-8")
    root = re.search(r"<svg\b[^>]*>", text)
    if not root or "viewBox" not in root.group(0):
        fail("%s has no <svg> root with a viewBox" % name)
    tag = re.sub(r'\s(width|height)="[^"]*"', "", root.group(0))
    tag = tag[:4] + ' width="64" height="64"' + tag[4:]
    try:
        return bytes(resvg_py.svg_to_bytes(svg_string=text[:root.start()] + tag + text[root.end():], skip_system_fonts=True))
    except Exception as err:  # resvg raises ValueError on a bad SVG
        fail("rendering %s: %s" % (name, err))


def scale_webp(webp, name):
    """A 64x64 RGBA PNG of a 3D-style WebP (256x256; four are 256x264), by Pillow: scaled by Lanczos so
    the longer side is 64 (Pillow premultiplies alpha while resampling RGBA, so transparent pixels do
    not bleed their colour into the edges) and centred on a transparent 64x64 canvas, like resvg's
    fitting of the SVG styles. Saved without metadata, so the bytes depend only on the Pillow wheel (its
    own libwebp and zlib)."""
    import io
    try:
        import PIL
        from PIL import Image
    except ImportError as err:
        fail("Pillow does not import (it should have been installed into the cache): %s" % err)
    if PIL.__version__ != pillow_version:
        fail("Pillow %s imported from %s, expected %s" % (PIL.__version__, PIL.__file__, pillow_version))
    try:
        im = Image.open(io.BytesIO(webp))
        if im.format != "WEBP":
            fail("%s is not a WebP (%s)" % (name, im.format))
        im = im.convert("RGBA")
    except OSError as err:
        fail("decoding %s: %s" % (name, err))
    w, h = im.size
    size = (max(1, round(64 * w / max(w, h))), max(1, round(64 * h / max(w, h))))
    canvas = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    canvas.paste(im.resize(size, Image.Resampling.LANCZOS), ((64 - size[0]) // 2, (64 - size[1]) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def draw_fluent(style, data, name):
    """The 64x64 RGBA PNG of a Fluent style's file."""
    return render_svg(data, name) if FLUENT_SUFFIX[style] == ".svg" else scale_webp(data, name)


# Every candidate image: (split key, output name, class folder, bytes, style, kind)
items = []
skipped = {"no_image_flag": 0, "missing_file": 0, "component": 0, "skin_tone_variants": 0}
licences = {}
unreferenced = {}
fluent_asked = [s for s, _ in tarballs if s in FLUENT_PACKAGE]
if fluent_asked:
    _, meta_entries, meta_licence = read_datasource(meta_style, meta_path)
for style, path in tarballs:
    if style in FLUENT_PACKAGE:
        skipped["not_in_" + style] = 0
        name, ver = FLUENT_PACKAGE[style].rsplit("@", 1)
        suffix = FLUENT_SUFFIX[style]
        drawings, meta = read_tarball(path, ("package/package.json",), "package/assets/", suffix)
        check_package(path, meta, name, ver)
        entries = meta_entries
        licences[style] = FLUENT_LICENCE
        # The file of emoji image "1f600.png" is "1f600.svg" or "1f600.webp" (the same lower-case code
        # points).
        # A zero-less spelling is read under its padded name unless a file has that name.
        images = {n[:-len(suffix)] + ".png": d for n, d in drawings.items()}
        shadowed = []
        for n in sorted(drawings):
            exact, padded = n[:-len(suffix)] + ".png", fluent_image_name(n, suffix)
            if padded == exact:
                continue
            if padded in images:  # the exactly named file wins (four of the color package's pairs differ)
                del images[exact]
                shadowed.append(n)
            else:
                images[padded] = images.pop(exact)
        if shadowed:
            warn("%s: %d files spelled without leading zeros beside the exactly named one, not read (e.g. %s)"
                 % (style, len(shadowed), shadowed[0]))
    else:
        images, entries, licences[style] = read_datasource(style, path)
    flag = "has_img_" + style
    seen = set()
    for e in entries:
        cat = e.get("category")
        if cat in SKIPPED_CATEGORIES:
            skipped["component"] += 1 + len(e.get("skin_variations") or {})
            seen.add(e.get("image"))
            seen.update(v.get("image") for v in (e.get("skin_variations") or {}).values())
            continue
        if cat not in FOLDER:
            fail("unknown category %r (emoji %s): the class list needs updating" % (cat, e.get("unified")))
        key = e["image"]
        folder = class_folder(e, style)
        folders.add(folder)
        variants = [(e, "base")]
        for tone in sorted(e.get("skin_variations") or {}):
            variants.append((e["skin_variations"][tone], "skin"))
        for v, kind in variants:
            img = v.get("image")
            if not img:
                fail("emoji %s has no image field" % v.get("unified"))
            if img in seen:
                warn("%s listed twice in emoji.json; keeping the first" % img)
                continue
            seen.add(img)
            if kind == "skin" and not skin:
                skipped["skin_tone_variants"] += 1
                continue
            if style in FLUENT_PACKAGE:  # emoji.json has no flag for it: the package draws an emoji or not
                if img not in images:
                    skipped["not_in_" + style] += 1
                    continue
                data = draw_fluent(style, images[img], img[:-4] + FLUENT_SUFFIX[style])
            else:
                if not v.get(flag, False):
                    skipped["no_image_flag"] += 1
                    continue
                if img not in images:
                    warn("%s: %s is flagged but not in the tarball; skipped" % (style, img))
                    skipped["missing_file"] += 1
                    continue
                data = images[img]
            w, h = png_size(data, img)
            if (w, h) != (64, 64):
                fail("%s: %s is %dx%d, expected 64x64" % (style, img, w, h))
            added = tuple(int(x) for x in str(v.get("added_in") or e.get("added_in") or "99").split(".") if x.isdigit())
            items.append([key, PREFIX[style] + img, folder, data, style, kind, added])
    unreferenced[style] = sorted(set(images) - seen)
    if unreferenced[style]:
        warn("%s: %d images not named in emoji.json, left out (e.g. %s)" % (style, len(unreferenced[style]), unreferenced[style][0]))

# Byte-identical images (the same flag for several territories, identical family pictures, a
# snowboarder whose skin tones do not show): keep the first by (style, oldest Unicode version, emoji
# before its skin-tone variants, output name), so fr, us, es stay and the territories sharing their
# flag go. With --keep-duplicates all stay, each on the same side of the split as the one kept.
items.sort(key=lambda it: (list(PREFIX).index(it[4]), it[6], it[5] != "base", it[1]))
first = {}
duplicates = []
kept = []
for it in items:
    digest = hashlib.sha256(it[3]).hexdigest()
    if digest in first:
        orig = first[digest]
        duplicates.append({"file": it[1], "same_as": orig[1]})
        if orig[2] != it[2]:
            warn("%s (%s) is identical to %s (%s)" % (it[1], it[2], orig[1], orig[2]))
        if dedup:
            continue
        it[0] = orig[0]
    else:
        first[digest] = it
    kept.append(it)
duplicates.sort(key=lambda d: d["file"])


def is_val(key):
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100 < val_percent


folders = sorted(folders)
KIND_WORDS = "subcategory" if by_subcategory else "category and style" if by_style else "category"
counts = {split: {f: 0 for f in folders} for split in ("train", "val")}
for split in counts:
    for f in folders:
        os.makedirs(os.path.join(work, split, f))
for key, name, folder, data, style, kind, added in kept:
    split = "val" if is_val(key) else "train"
    with open(os.path.join(work, split, folder, name), "xb") as f:
        f.write(data)
    counts[split][folder] += 1

PACKAGE_OF = {s: FLUENT_PACKAGE.get(s) or "emoji-datasource-%s@%s" % (s, version) for s in PREFIX}
sources_report = []
for s, _ in tarballs:
    src = {"package": PACKAGE_OF[s], "integrity": integrity[s], "images": LICENCE[s][0], "image_licence": LICENCE[s][1]}
    if s in FLUENT_PACKAGE:
        src["rendered_with"] = HOW_DRAWN[FLUENT_SUFFIX[s]][0]
        src["emoji_json_from"] = PACKAGE_OF[meta_style]
    sources_report.append(src)
meta_only = bool(fluent_asked) and meta_style not in dict(tarballs)
if meta_only:  # fluent styles alone: the google tarball gave emoji.json, none of its images
    sources_report.append({"package": PACKAGE_OF[meta_style], "integrity": meta_integrity, "used_for": "emoji.json only"})

report = {
    "generator": "tools/fetch-emoji.sh",
    "sources": sources_report,
    "styles": [s for s, _ in tarballs],
    "val_percent": val_percent,
    "split_rule": "val iff int(sha256(base image file name), 16) % 100 < val_percent",
    "skin_tone_variants": skin,
    "duplicates_dropped": dedup,
    "classes": folders,
    "train": counts["train"],
    "val": counts["val"],
    "total": {"train": sum(counts["train"].values()), "val": sum(counts["val"].values())},
    "skipped": skipped,
    "duplicates": duplicates,
}
with open(os.path.join(work, "counts.json"), "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")

# Licences and attribution.
# The Apache-2.0 text is kept verbatim at the end of this script, after the marker line.
with open(script, encoding="utf-8") as f:
    marker = "\n__APACHE_LICENSE_2_0__\n"
    text = f.read()
    apache = text.split(marker, 1)[1].split("\n__END_OF_APACHE_LICENSE__\n", 1)[0] + "\n" if marker in text else ""
rule = "=" * 78 + "\n"
parts = ["Licences of the emoji images and data in this folder (made by tools/fetch-emoji.sh).\n\n"]
for s, _ in tarballs:
    if s not in FLUENT_PACKAGE:
        parts += [rule, "%s (emoji.json and packaging; package/LICENSE, copied as is): MIT\n" % PACKAGE_OF[s], rule, licences[s], "\n"]
if meta_only:
    parts += [rule, "%s (its emoji.json only; package/LICENSE, copied as is): MIT\n" % PACKAGE_OF[meta_style], rule, meta_licence, "\n"]
if "google" in dict(tarballs):
    if not apache.strip():
        fail("the Apache-2.0 text is missing")
    parts += [rule, "Images without a prefix: Noto Emoji, Copyright Google LLC, Apache License 2.0\n",
              "(https://github.com/googlefonts/noto-emoji; flag images: public domain, see its README)\n", rule, apache, "\n"]
if "twitter" in dict(tarballs):
    parts += [rule, "Images named twitter-*.png: Twemoji, Copyright 2019 Twitter, Inc and other contributors,\n",
              "Copyright 2024 jdecked and other contributors (https://github.com/jdecked/twemoji).\n",
              "Licensed under the Creative Commons Attribution 4.0 International licence (CC BY 4.0):\n",
              "https://creativecommons.org/licenses/by/4.0/ (legal code:\n",
              "https://creativecommons.org/licenses/by/4.0/legalcode). Changes: the PNGs are copied byte for\n",
              "byte (nvg's image reader composites their transparent pixels onto white when it reads them); the\n",
              "images were sorted into %s folders and renamed with the twitter- prefix.\n" % KIND_WORDS, rule]
for s in fluent_asked:
    change = HOW_DRAWN[FLUENT_SUFFIX[s]][2]
    parts += [rule, "Images named %s*.png: Fluent Emoji (%s style), Copyright (c) Microsoft Corporation\n" % (PREFIX[s], FLUENT_STYLE_WORD[s]),
              "(https://github.com/microsoft/fluentui-emoji), from the npm package %s\n" % FLUENT_PACKAGE[s],
              "(packaging Copyright (c) 2023 LobeHub, MIT). Changes: %s, sorted into %s folders and renamed with the %s prefix.\n" % (change, KIND_WORDS, PREFIX[s]),
              "The licence of the images:\n", rule, FLUENT_LICENCE, "\n"]
with open(os.path.join(work, "LICENSE-emoji.txt"), "w") as f:
    f.write("".join(parts))

drawn = [("the %s ones rendered from SVG" if FLUENT_SUFFIX[s] == ".svg" else "the %s ones scaled down from WebP") % s
         for s in fluent_asked]
att = ["# Attribution\n\n",
       "This folder was made by `tools/fetch-emoji.sh` of nvg-rs. It holds emoji images sorted into %d\n" % len(folders),
       "%s folders (from `emoji.json`), unchanged%s, for training and evaluating a demo model.\n\n"
       % (KIND_WORDS, " (%s)" % ", ".join(drawn) if drawn else "")]
if "google" in dict(tarballs):
    att += ["- Images without a prefix: **Noto Emoji** by Google (v2.048, https://github.com/googlefonts/noto-emoji),\n",
            "  Apache License 2.0 (full text in `LICENSE-emoji.txt`).\n"]
if "twitter" in dict(tarballs):
    att += ["- Images named `twitter-*.png`: **Twemoji** by Twitter, Inc and other contributors, and jdecked and\n",
            "  other contributors (v16.0.1 fork, https://github.com/jdecked/twemoji), licensed under CC BY 4.0\n",
            "  (https://creativecommons.org/licenses/by/4.0/). Not modified apart from renaming.\n"]
for s in fluent_asked:
    att += ["- Images named `%s*.png`: **Fluent Emoji** (%s style) by Microsoft Corporation\n" % (PREFIX[s], FLUENT_STYLE_WORD[s]),
            "  (https://github.com/microsoft/fluentui-emoji), MIT licence (text in `LICENSE-emoji.txt`), from the\n",
            "  npm package `%s`; %s.\n" % (FLUENT_PACKAGE[s], HOW_DRAWN[FLUENT_SUFFIX[s]][1])]
datasource = [PACKAGE_OF[s] for s, _ in tarballs if s not in FLUENT_PACKAGE] or [PACKAGE_OF[meta_style]]
att += ["- Emoji data (`emoji.json`: categories, file names) and packaging: **emoji-datasource** by Cal\n",
        "  Henderson (https://github.com/iamcal/emoji-data), MIT licence (text in `LICENSE-emoji.txt`), from the\n",
        "  npm package%s %s.\n" % ("s" if len(datasource) > 1 else "", ", ".join("`%s`" % p for p in datasource))]
with open(os.path.join(work, "ATTRIBUTION.md"), "w") as f:
    f.write("".join(att))

# The table.
names = folders
width = max(map(len, names))
print("%-*s %6s %6s" % (width, "class", "train", "val"))
for f in names:
    print("%-*s %6d %6d" % (width, f, counts["train"][f], counts["val"][f]))
print("%-*s %6d %6d" % (width, "total", report["total"]["train"], report["total"]["val"]))
if duplicates:
    print("(%d byte-identical duplicates %s; see counts.json)" % (len(duplicates), "dropped" if dedup else "kept"), file=sys.stderr)
PY

# Into place: the old tree (if any) is moved aside, the new one renamed in, the old one removed.
if [[ -e "$out" ]]; then mv -T -- "$out" "$old"; fi
mv -T -- "$work" "$out"
rm -rf -- "$old"
trap - EXIT
note "wrote $out ($((SECONDS - start)) s in all)"
exit 0

# Below: the Apache License 2.0, verbatim (https://www.apache.org/licenses/LICENSE-2.0.txt), copied into
# OUT/LICENSE-emoji.txt for the Noto images (read from this file; the here-document is never run).
: <<'__END_OF_APACHE_LICENSE__'
__APACHE_LICENSE_2_0__

                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   1. Definitions.

      "License" shall mean the terms and conditions for use, reproduction,
      and distribution as defined by Sections 1 through 9 of this document.

      "Licensor" shall mean the copyright owner or entity authorized by
      the copyright owner that is granting the License.

      "Legal Entity" shall mean the union of the acting entity and all
      other entities that control, are controlled by, or are under common
      control with that entity. For the purposes of this definition,
      "control" means (i) the power, direct or indirect, to cause the
      direction or management of such entity, whether by contract or
      otherwise, or (ii) ownership of fifty percent (50%) or more of the
      outstanding shares, or (iii) beneficial ownership of such entity.

      "You" (or "Your") shall mean an individual or Legal Entity
      exercising permissions granted by this License.

      "Source" form shall mean the preferred form for making modifications,
      including but not limited to software source code, documentation
      source, and configuration files.

      "Object" form shall mean any form resulting from mechanical
      transformation or translation of a Source form, including but
      not limited to compiled object code, generated documentation,
      and conversions to other media types.

      "Work" shall mean the work of authorship, whether in Source or
      Object form, made available under the License, as indicated by a
      copyright notice that is included in or attached to the work
      (an example is provided in the Appendix below).

      "Derivative Works" shall mean any work, whether in Source or Object
      form, that is based on (or derived from) the Work and for which the
      editorial revisions, annotations, elaborations, or other modifications
      represent, as a whole, an original work of authorship. For the purposes
      of this License, Derivative Works shall not include works that remain
      separable from, or merely link (or bind by name) to the interfaces of,
      the Work and Derivative Works thereof.

      "Contribution" shall mean any work of authorship, including
      the original version of the Work and any modifications or additions
      to that Work or Derivative Works thereof, that is intentionally
      submitted to Licensor for inclusion in the Work by the copyright owner
      or by an individual or Legal Entity authorized to submit on behalf of
      the copyright owner. For the purposes of this definition, "submitted"
      means any form of electronic, verbal, or written communication sent
      to the Licensor or its representatives, including but not limited to
      communication on electronic mailing lists, source code control systems,
      and issue tracking systems that are managed by, or on behalf of, the
      Licensor for the purpose of discussing and improving the Work, but
      excluding communication that is conspicuously marked or otherwise
      designated in writing by the copyright owner as "Not a Contribution."

      "Contributor" shall mean Licensor and any individual or Legal Entity
      on behalf of whom a Contribution has been received by Licensor and
      subsequently incorporated within the Work.

   2. Grant of Copyright License. Subject to the terms and conditions of
      this License, each Contributor hereby grants to You a perpetual,
      worldwide, non-exclusive, no-charge, royalty-free, irrevocable
      copyright license to reproduce, prepare Derivative Works of,
      publicly display, publicly perform, sublicense, and distribute the
      Work and such Derivative Works in Source or Object form.

   3. Grant of Patent License. Subject to the terms and conditions of
      this License, each Contributor hereby grants to You a perpetual,
      worldwide, non-exclusive, no-charge, royalty-free, irrevocable
      (except as stated in this section) patent license to make, have made,
      use, offer to sell, sell, import, and otherwise transfer the Work,
      where such license applies only to those patent claims licensable
      by such Contributor that are necessarily infringed by their
      Contribution(s) alone or by combination of their Contribution(s)
      with the Work to which such Contribution(s) was submitted. If You
      institute patent litigation against any entity (including a
      cross-claim or counterclaim in a lawsuit) alleging that the Work
      or a Contribution incorporated within the Work constitutes direct
      or contributory patent infringement, then any patent licenses
      granted to You under this License for that Work shall terminate
      as of the date such litigation is filed.

   4. Redistribution. You may reproduce and distribute copies of the
      Work or Derivative Works thereof in any medium, with or without
      modifications, and in Source or Object form, provided that You
      meet the following conditions:

      (a) You must give any other recipients of the Work or
          Derivative Works a copy of this License; and

      (b) You must cause any modified files to carry prominent notices
          stating that You changed the files; and

      (c) You must retain, in the Source form of any Derivative Works
          that You distribute, all copyright, patent, trademark, and
          attribution notices from the Source form of the Work,
          excluding those notices that do not pertain to any part of
          the Derivative Works; and

      (d) If the Work includes a "NOTICE" text file as part of its
          distribution, then any Derivative Works that You distribute must
          include a readable copy of the attribution notices contained
          within such NOTICE file, excluding those notices that do not
          pertain to any part of the Derivative Works, in at least one
          of the following places: within a NOTICE text file distributed
          as part of the Derivative Works; within the Source form or
          documentation, if provided along with the Derivative Works; or,
          within a display generated by the Derivative Works, if and
          wherever such third-party notices normally appear. The contents
          of the NOTICE file are for informational purposes only and
          do not modify the License. You may add Your own attribution
          notices within Derivative Works that You distribute, alongside
          or as an addendum to the NOTICE text from the Work, provided
          that such additional attribution notices cannot be construed
          as modifying the License.

      You may add Your own copyright statement to Your modifications and
      may provide additional or different license terms and conditions
      for use, reproduction, or distribution of Your modifications, or
      for any such Derivative Works as a whole, provided Your use,
      reproduction, and distribution of the Work otherwise complies with
      the conditions stated in this License.

   5. Submission of Contributions. Unless You explicitly state otherwise,
      any Contribution intentionally submitted for inclusion in the Work
      by You to the Licensor shall be under the terms and conditions of
      this License, without any additional terms or conditions.
      Notwithstanding the above, nothing herein shall supersede or modify
      the terms of any separate license agreement you may have executed
      with Licensor regarding such Contributions.

   6. Trademarks. This License does not grant permission to use the trade
      names, trademarks, service marks, or product names of the Licensor,
      except as required for reasonable and customary use in describing the
      origin of the Work and reproducing the content of the NOTICE file.

   7. Disclaimer of Warranty. Unless required by applicable law or
      agreed to in writing, Licensor provides the Work (and each
      Contributor provides its Contributions) on an "AS IS" BASIS,
      WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
      implied, including, without limitation, any warranties or conditions
      of TITLE, NON-INFRINGEMENT, MERCHANTABILITY, or FITNESS FOR A
      PARTICULAR PURPOSE. You are solely responsible for determining the
      appropriateness of using or redistributing the Work and assume any
      risks associated with Your exercise of permissions under this License.

   8. Limitation of Liability. In no event and under no legal theory,
      whether in tort (including negligence), contract, or otherwise,
      unless required by applicable law (such as deliberate and grossly
      negligent acts) or agreed to in writing, shall any Contributor be
      liable to You for damages, including any direct, indirect, special,
      incidental, or consequential damages of any character arising as a
      result of this License or out of the use or inability to use the
      Work (including but not limited to damages for loss of goodwill,
      work stoppage, computer failure or malfunction, or any and all
      other commercial damages or losses), even if such Contributor
      has been advised of the possibility of such damages.

   9. Accepting Warranty or Additional Liability. While redistributing
      the Work or Derivative Works thereof, You may choose to offer,
      and charge a fee for, acceptance of support, warranty, indemnity,
      or other liability obligations and/or rights consistent with this
      License. However, in accepting such obligations, You may act only
      on Your own behalf and on Your sole responsibility, not on behalf
      of any other Contributor, and only if You agree to indemnify,
      defend, and hold each Contributor harmless for any liability
      incurred by, or claims asserted against, such Contributor by reason
      of your accepting any such warranty or additional liability.

   END OF TERMS AND CONDITIONS

   APPENDIX: How to apply the Apache License to your work.

      To apply the Apache License to your work, attach the following
      boilerplate notice, with the fields enclosed by brackets "[]"
      replaced with your own identifying information. (Don't include
      the brackets!)  The text should be enclosed in the appropriate
      comment syntax for the file format. We also recommend that a
      file or class name and description of purpose be included on the
      same "printed page" as the copyright notice for easier
      identification within third-party archives.

   Copyright [yyyy] [name of copyright owner]

   Licensed under the Apache License, Version 2.0 (the "License");
   you may not use this file except in compliance with the License.
   You may obtain a copy of the License at

       http://www.apache.org/licenses/LICENSE-2.0

   Unless required by applicable law or agreed to in writing, software
   distributed under the License is distributed on an "AS IS" BASIS,
   WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
   See the License for the specific language governing permissions and
   limitations under the License.
__END_OF_APACHE_LICENSE__
