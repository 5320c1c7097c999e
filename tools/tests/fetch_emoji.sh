#!/usr/bin/env bash
# Self-check of tools/fetch-emoji.sh (not run by cargo). Needs the google tarball in the cache
# (target/emoji-cache, or $NVG_EMOJI_CACHE) — run tools/fetch-emoji.sh once first; everything else
# runs offline against a local HTTP server. Writes only under a temporary folder.
#
#   tools/tests/fetch_emoji.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
script="$root/tools/fetch-emoji.sh"
src_cache="${NVG_EMOJI_CACHE:-$root/target/emoji-cache}"
tgz=emoji-datasource-google-16.0.0.tgz
[[ -f "$src_cache/$tgz" ]] || { echo "SKIP: $src_cache/$tgz not cached; run tools/fetch-emoji.sh first" >&2; exit 0; }

tmp="$(mktemp -d)"
server=""
cleanup() {
  [[ -z "$server" ]] || kill "$server" 2>/dev/null || true
  rm -rf -- "$tmp"
}
trap cleanup EXIT
failures=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }
# expect_fail NAME PATTERN CMD...: CMD must fail with PATTERN in its stderr.
expect_fail() {
  local name="$1" pattern="$2"
  shift 2
  if "$@" >"$tmp/out" 2>"$tmp/err"; then
    bad "$name: succeeded"
  elif grep -q -- "$pattern" "$tmp/err"; then
    ok "$name"
  else
    bad "$name: stderr lacks '$pattern': $(tail -n 2 "$tmp/err")"
  fi
}
tree_hash() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1); }

cache="$tmp/cache"
mkdir -p "$cache"
cp "$src_cache/$tgz" "$cache/"

# Options.
# (captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail)
help="$("$script" --help)" && grep -q -- '--val-percent' <<<"$help" && grep -q -- 'fluent' <<<"$help" && ok "--help" || bad "--help"
expect_fail "unknown option" "unknown option" "$script" --bogus
expect_fail "unknown style" "unknown style 'apple' (known: google twitter fluent fluent-color fluent-3d)" "$script" --style apple "$tmp/o"
expect_fail "bad class kind" "category, subcategory or category-style" "$script" --classes genus "$tmp/o"
expect_fail "bad val percent" "integer from 0 to 100" "$script" --val-percent 101 "$tmp/o"
expect_fail "two OUTs" "more than one OUT" "$script" "$tmp/a" "$tmp/b"
expect_fail "offline, not cached" "not cached" "$script" --offline --cache "$tmp/empty" "$tmp/o"

# A real build, twice: same tree; the PNGs are 64x64; counts.json agrees with the files.
out="$tmp/emoji"
"$script" --offline --cache "$cache" "$out" >"$tmp/table1" 2>/dev/null
h1="$(tree_hash "$out")"
"$script" --offline --cache "$cache" "$out" >"$tmp/table2" 2>/dev/null
h2="$(tree_hash "$out")"
[[ "$h1" == "$h2" ]] && cmp -s "$tmp/table1" "$tmp/table2" && ok "re-run gives the same tree" || bad "re-run changed the tree"
if python3 - "$out" <<'PY'; then ok "files, sizes, counts.json"; else bad "files, sizes, counts.json"; fi
import json, os, struct, sys
out = sys.argv[1]
j = json.load(open(os.path.join(out, "counts.json")))
classes = ["0-smileys-emotion", "1-people-body", "2-animals-nature", "3-food-drink", "4-travel-places",
           "5-activities", "6-objects", "7-symbols", "8-flags"]
assert j["classes"] == classes
names = {}
for split in ("train", "val"):
    assert sorted(os.listdir(os.path.join(out, split))) == classes
    for c in classes:
        files = os.listdir(os.path.join(out, split, c))
        assert len(files) == j[split][c], (split, c)
        for f in files:
            b = open(os.path.join(out, split, c, f), "rb").read(24)
            assert b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR", f
            assert struct.unpack(">II", b[16:24]) == (64, 64), f
            assert f not in names, f
            names[f] = split
assert len(names) == 3762 and j["total"] == {"train": 3400, "val": 362}, j["total"]
assert all(names.get(d["same_as"]) for d in j["duplicates"]) and not any(d["file"] in names for d in j["duplicates"])
for f in ("LICENSE-emoji.txt", "ATTRIBUTION.md"):
    assert os.path.getsize(os.path.join(out, f)) > 500, f
assert "Apache License" in open(os.path.join(out, "LICENSE-emoji.txt")).read()
PY

# Another split share and the skin-tone option change the tree, and the split is nested: every val
# file at 10 % is a val file at 20 %.
"$script" --offline --cache "$cache" --val-percent 20 --no-skin-tones "$tmp/e20" >/dev/null 2>&1
if python3 - "$out" "$tmp/e20" <<'PY'; then ok "--val-percent 20 --no-skin-tones"; else bad "--val-percent 20 --no-skin-tones"; fi
import json, os, sys
a, b = sys.argv[1:]
ja, jb = json.load(open(a + "/counts.json")), json.load(open(b + "/counts.json"))
assert jb["val_percent"] == 20 and not jb["skin_tone_variants"] and jb["skipped"]["skin_tone_variants"] == 1875
val = lambda d: {f for c in os.listdir(d + "/val") for f in os.listdir(d + "/val/" + c)}
va = val(a)
vb = val(b)
train_b = {f for c in os.listdir(b + "/train") for f in os.listdir(b + "/train/" + c)}
assert not (va & train_b), "a 10 % val image is in the 20 % train split"
assert 1.5 * jb["total"]["val"] > 0.2 * sum(jb["total"].values()) > 0.5 * jb["total"]["val"]
PY

# --classes subcategory: the same files, one folder per subcategory, grouped under the category folder
# names in sorted order (so a category's subcategories have consecutive class ids).
"$script" --offline --cache "$cache" --classes subcategory "$tmp/sub" >/dev/null 2>&1
if python3 - "$out" "$tmp/sub" <<'PY'; then ok "--classes subcategory"; else bad "--classes subcategory"; fi
import json, os, sys
a, b = sys.argv[1:]
ja, jb = json.load(open(a + "/counts.json")), json.load(open(b + "/counts.json"))
assert len(jb["classes"]) == 98 and jb["classes"] == sorted(jb["classes"]), jb["classes"]
assert "0-smileys-emotion--face-smiling" in jb["classes"] and "4-travel-places--sky-weather" in jb["classes"]
for split in ("train", "val"):
    assert sorted(os.listdir(os.path.join(b, split))) == jb["classes"]
    files = lambda d, cat: {f: c.split("--")[0] if cat else c for c in os.listdir(d + "/" + split) for f in os.listdir(d + "/" + split + "/" + c)}
    fa, fb = files(a, False), files(b, True)
    assert fa == fb, split  # every file in the same split, under its category
    for cat in ja["classes"]:
        subs = [c for c in jb["classes"] if c.split("--")[0] == cat]
        assert sum(jb[split][c] for c in subs) == ja[split][cat], (split, cat)
PY

# --classes category-style: the same files, in <category folder>--<style> folders (google only here;
# with the twitter tarball cached too, both styles: 18 folders, each file under its own style).
"$script" --offline --cache "$cache" --classes category-style "$tmp/style" >/dev/null 2>&1
styles=google
tw=emoji-datasource-twitter-16.0.0.tgz
if [[ -f "$src_cache/$tw" ]]; then
  mkdir -p "$tmp/cache2" # the checks below expect the google tarball alone in $cache
  cp "$src_cache/$tgz" "$src_cache/$tw" "$tmp/cache2/"
  "$script" --offline --cache "$tmp/cache2" --classes category-style --styles google,twitter "$tmp/style2" >/dev/null 2>&1
  rm -rf -- "$tmp/cache2"
  styles=google,twitter
fi
if python3 - "$out" "$tmp/style" "$tmp/style2" "$styles" <<'PY'; then ok "--classes category-style ($styles)"; else bad "--classes category-style"; fi
import json, os, sys
a, b, b2, styles = sys.argv[1:]
ja, jb = json.load(open(a + "/counts.json")), json.load(open(b + "/counts.json"))
assert jb["classes"] == [c + "--google" for c in ja["classes"]], jb["classes"]
files = lambda d, split: {f: c for c in os.listdir(d + "/" + split) for f in os.listdir(d + "/" + split + "/" + c)}
for split in ("train", "val"):
    assert sorted(os.listdir(os.path.join(b, split))) == jb["classes"]
    assert {f: c + "--google" for f, c in files(a, split).items()} == files(b, split), split
if styles == "google,twitter":
    j2 = json.load(open(b2 + "/counts.json"))
    assert j2["classes"] == sorted(c + "--" + s for c in ja["classes"] for s in ("google", "twitter")), j2["classes"]
    for split in ("train", "val"):
        f2 = files(b2, split)
        assert {f: c for f, c in f2.items() if not f.startswith("twitter-")} == files(b, split), split
        tw = {f: c for f, c in f2.items() if f.startswith("twitter-")}
        assert tw and all(c.endswith("--twitter") for c in tw.values()), split
PY

# The fluent style (when its tarball and the renderer are cached): rendered 64x64 PNGs, the same bytes on
# a re-run, categories and splits from the google emoji.json (an emoji's fluent image lies in the split of
# its google image), the google tarball named as the source of emoji.json only, the MIT notice; offline
# without the renderer it is refused.
fl=lobehub-fluent-emoji-flat-1.1.0.tgz
rv=resvg-py-0.5.0
if [[ -f "$src_cache/$fl" && -d "$src_cache/$rv" ]]; then
  mkdir -p "$tmp/cache3"
  cp "$src_cache/$tgz" "$src_cache/$fl" "$tmp/cache3/"
  expect_fail "fluent offline without the renderer" "resvg-py 0.5.0 is needed" "$script" --offline --cache "$tmp/cache3" --style fluent "$tmp/f0"
  cp -r "$src_cache/$rv" "$tmp/cache3/"
  "$script" --offline --cache "$tmp/cache3" --style fluent "$tmp/f1" >/dev/null 2>&1
  "$script" --offline --cache "$tmp/cache3" --style fluent "$tmp/f2" >/dev/null 2>&1
  [[ "$(tree_hash "$tmp/f1")" == "$(tree_hash "$tmp/f2")" ]] && ok "fluent: re-run gives the same tree" || bad "fluent: re-run changed the tree"
  "$script" --offline --cache "$tmp/cache3" --styles fluent,google --classes category-style "$tmp/f3" >/dev/null 2>&1
  rm -rf -- "$tmp/cache3"
  if python3 - "$out" "$tmp/f1" "$tmp/f3" <<'PY'; then ok "--style fluent"; else bad "--style fluent"; fi
import json, os, struct, sys
g, f, fg = sys.argv[1:]
jg, jf, jfg = (json.load(open(d + "/counts.json")) for d in (g, f, fg))
assert jf["classes"] == jg["classes"] and jf["styles"] == ["fluent"], jf["classes"]
assert [s["package"] for s in jf["sources"]] == ["@lobehub/fluent-emoji-flat@1.1.0", "emoji-datasource-google@16.0.0"]
assert jf["sources"][1]["used_for"] == "emoji.json only" and jf["sources"][0]["image_licence"] == "MIT"
assert 3000 < sum(jf["total"].values()) < sum(jg["total"].values()), jf["total"]
files = lambda d: {f: (split, c) for split in ("train", "val") for c in os.listdir(d + "/" + split) for f in os.listdir(d + "/" + split + "/" + c)}
fg_files, g_files, f_files = files(fg), files(g), files(f)
assert f_files and all(n.startswith("fluent-") for n in f_files)
shared = 0
for n, (split, c) in f_files.items():
    b = open(os.path.join(f, split, c, n), "rb").read(24)
    assert b[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", b[16:24]) == (64, 64), n
    if n[len("fluent-"):] in g_files:
        shared += 1
        assert g_files[n[len("fluent-"):]] == (split, c), n  # same split, same category as its google image
assert shared > 0.9 * len(f_files), shared
assert jfg["classes"] == sorted(c + "--" + s for c in jg["classes"] for s in ("fluent", "google")), jfg["classes"]
assert {n: sc for n, sc in fg_files.items() if n.startswith("fluent-")} == {n: (s, c + "--fluent") for n, (s, c) in f_files.items()}
assert "Microsoft Corporation" in open(f + "/LICENSE-emoji.txt").read() and "Fluent Emoji" in open(f + "/ATTRIBUTION.md").read()
PY
else
  echo "skip fluent checks: $src_cache/$fl or $src_cache/$rv not cached (run tools/fetch-emoji.sh --style fluent once)"
fi

# The fluent-color style (its tarball and the renderer cached): like fluent, its files found under
# emoji.json's names although the package spells 14 of them without leading zeros (the keycaps), and
# beside fluent its byte-identical drawings (the flags) dropped as duplicates of the fluent ones.
fc=lobehub-fluent-emoji-modern-1.0.0.tgz
if [[ -f "$src_cache/$fc" && -f "$src_cache/$fl" && -d "$src_cache/$rv" ]]; then
  mkdir -p "$tmp/cache4"
  cp -r "$src_cache/$tgz" "$src_cache/$fl" "$src_cache/$fc" "$src_cache/$rv" "$tmp/cache4/"
  "$script" --offline --cache "$tmp/cache4" --style fluent-color "$tmp/c1" >/dev/null 2>&1
  "$script" --offline --cache "$tmp/cache4" --styles fluent-color,fluent --classes category-style "$tmp/c2" >/dev/null 2>&1
  "$script" --offline --cache "$tmp/cache4" --styles fluent --classes category-style "$tmp/c3" >/dev/null 2>&1
  rm -rf -- "$tmp/cache4"
  if python3 - "$out" "$tmp/c1" "$tmp/c2" "$tmp/c3" <<'PY'; then ok "--style fluent-color"; else bad "--style fluent-color"; fi
import json, os, struct, sys
g, c, cf, f = sys.argv[1:]
jg, jc, jcf = (json.load(open(d + "/counts.json")) for d in (g, c, cf))
assert jc["classes"] == jg["classes"] and jc["styles"] == ["fluent-color"], jc["classes"]
assert [s["package"] for s in jc["sources"]] == ["@lobehub/fluent-emoji-modern@1.0.0", "emoji-datasource-google@16.0.0"]
assert 3000 < sum(jc["total"].values()) < sum(jg["total"].values()), jc["total"]
files = lambda d: {f: (split, c) for split in ("train", "val") for c in os.listdir(d + "/" + split) for f in os.listdir(d + "/" + split + "/" + c)}
g_files, c_files, cf_files, f_files = files(g), files(c), files(cf), files(f)
assert c_files and all(n.startswith("fluent-color-") for n in c_files)
assert "fluent-color-0023-fe0f-20e3.png" in c_files  # the package's 0023-fe0f-20e3.svg (beside 23-fe0f-20e3.svg)
for n, (split, cat) in c_files.items():
    b = open(os.path.join(c, split, cat, n), "rb").read(24)
    assert b[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", b[16:24]) == (64, 64), n
    if n[len("fluent-color-"):] in g_files:
        assert g_files[n[len("fluent-color-"):]] == (split, cat), n  # same split, same category as its google image
assert jcf["styles"] == ["fluent", "fluent-color"], jcf["styles"]
assert jcf["classes"] == sorted(k + "--" + s for k in jg["classes"] for s in ("fluent", "fluent-color")), jcf["classes"]
# beside fluent: the fluent images as alone, and fluent-color's flags (drawn as in fluent) dropped
assert {n: sc for n, sc in cf_files.items() if not n.startswith("fluent-color-")} == f_files
flags = lambda fs: sum(1 for n, (_, k) in fs.items() if k.startswith("8-flags") and n.startswith("fluent-color-"))
assert flags(c_files) > 200 and flags(cf_files) < 20, (flags(c_files), flags(cf_files))
assert "Fluent Emoji (color style)" in open(c + "/LICENSE-emoji.txt").read()
assert "**Fluent Emoji** (color style)" in open(c + "/ATTRIBUTION.md").read()
PY
else
  echo "skip fluent-color checks: $src_cache/$fc, $src_cache/$fl or $src_cache/$rv not cached (run tools/fetch-emoji.sh --styles fluent,fluent-color once)"
fi

# The fluent-3d style (its tarball and Pillow cached): 64x64 PNGs scaled from the package's WebPs, the
# same bytes on a re-run, the exactly named file read where a zero-less spelling of it exists too, the
# four 256x264 drawings fitted and centred (not stretched), each image in the split and category of its
# google twin, the google images beside it unchanged, Pillow named as the scaler; offline without Pillow
# it is refused.
f3=lobehub-fluent-emoji-3d-1.1.0.tgz
pil=pillow-11.3.0
if [[ -f "$src_cache/$f3" && -d "$src_cache/$pil" ]]; then
  mkdir -p "$tmp/cache5"
  cp "$src_cache/$tgz" "$src_cache/$f3" "$tmp/cache5/"
  expect_fail "fluent-3d offline without Pillow" "pillow 11.3.0 is needed" "$script" --offline --cache "$tmp/cache5" --style fluent-3d "$tmp/d0"
  cp -r "$src_cache/$pil" "$tmp/cache5/"
  for d in d1 d2; do
    "$script" --offline --cache "$tmp/cache5" --style fluent-3d "$tmp/$d" >/dev/null 2>"$tmp/err" || bad "fluent-3d build: $(tail -n 1 "$tmp/err")"
  done
  [[ -d "$tmp/d1" && "$(tree_hash "$tmp/d1")" == "$(tree_hash "$tmp/d2")" ]] && ok "fluent-3d: re-run gives the same tree" || bad "fluent-3d: re-run changed the tree"
  "$script" --offline --cache "$tmp/cache5" --styles fluent-3d,google --classes category-style "$tmp/d3" >/dev/null 2>"$tmp/err" ||
    bad "fluent-3d,google build: $(tail -n 1 "$tmp/err")"
  rm -rf -- "$tmp/cache5"
  if PYTHONPATH="$src_cache/$pil" python3 - "$out" "$tmp/d1" "$tmp/d3" "$src_cache/$f3" <<'PY'; then ok "--style fluent-3d"; else bad "--style fluent-3d"; fi
import io, json, os, sys, tarfile
from PIL import Image
g, d, dg, tgz = sys.argv[1:]
jg, jd, jdg = (json.load(open(x + "/counts.json")) for x in (g, d, dg))
assert jd["classes"] == jg["classes"] and jd["styles"] == ["fluent-3d"], jd["classes"]
assert [s["package"] for s in jd["sources"]] == ["@lobehub/fluent-emoji-3d@1.1.0", "emoji-datasource-google@16.0.0"]
assert jd["sources"][0]["rendered_with"].startswith("pillow==11.3.0") and jd["sources"][0]["image_licence"] == "MIT"
assert 3000 < sum(jd["total"].values()) < sum(jg["total"].values()), jd["total"]
files = lambda x: {f: (split, c) for split in ("train", "val") for c in os.listdir(x + "/" + split) for f in os.listdir(x + "/" + split + "/" + c)}
g_files, d_files, dg_files = files(g), files(d), files(dg)
assert d_files and all(n.startswith("fluent-3d-") for n in d_files)
tar = tarfile.open(tgz)
webp = lambda name: Image.open(io.BytesIO(tar.extractfile("package/assets/" + name).read())).convert("RGBA")
# the package has both 0023-fe0f-20e3.webp and 23-fe0f-20e3.webp, drawn differently: the first is read
split, c = d_files["fluent-3d-0023-fe0f-20e3.png"]
got = Image.open(os.path.join(d, split, c, "fluent-3d-0023-fe0f-20e3.png")).tobytes()
assert got == webp("0023-fe0f-20e3.webp").resize((64, 64), Image.Resampling.LANCZOS).tobytes()
assert got != webp("23-fe0f-20e3.webp").resize((64, 64), Image.Resampling.LANCZOS).tobytes()
shared = 0
for n, (split, c) in d_files.items():
    im = Image.open(os.path.join(d, split, c, n))
    assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGBA", n
    if n[len("fluent-3d-"):] in g_files:
        shared += 1
        assert g_files[n[len("fluent-3d-"):]] == (split, c), n  # same split, same category as its google image
assert shared > 0.9 * len(d_files), shared
# 1fa90 (ringed planet) is 256x264 in the package: fitted (62x64, centred), not stretched to 64x64
src = webp("1fa90.webp")
assert src.size == (256, 264), src.size
split, c = d_files["fluent-3d-1fa90.png"]
got = Image.open(os.path.join(d, split, c, "fluent-3d-1fa90.png"))
want = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
want.paste(src.resize((62, 64), Image.Resampling.LANCZOS), (1, 0))
assert got.tobytes() == want.tobytes()
assert got.tobytes() != src.resize((64, 64), Image.Resampling.LANCZOS).tobytes()
assert jdg["classes"] == sorted(k + "--" + s for k in jg["classes"] for s in ("fluent-3d", "google")), jdg["classes"]
assert {n: sc for n, sc in dg_files.items() if n.startswith("fluent-3d-")} == {n: (s, k + "--fluent-3d") for n, (s, k) in d_files.items()}
for n, (s, k) in g_files.items():  # the google images beside fluent-3d: the same files, byte for byte
    assert dg_files[n] == (s, k + "--google"), n
    assert open(os.path.join(dg, s, k + "--google", n), "rb").read() == open(os.path.join(g, s, k, n), "rb").read(), n
assert "Fluent Emoji (3D style)" in open(d + "/LICENSE-emoji.txt").read() and "Pillow 11.3.0" in open(d + "/ATTRIBUTION.md").read()
PY
else
  echo "skip fluent-3d checks: $src_cache/$f3 or $src_cache/$pil not cached (run tools/fetch-emoji.sh --style fluent-3d once)"
fi

# Output safety: a folder not made by the script, or a file, is never replaced.
mkdir -p "$tmp/mine" && echo keep >"$tmp/mine/x"
expect_fail "foreign OUT refused" "not made by this script" "$script" --offline --cache "$cache" "$tmp/mine"
[[ "$(cat "$tmp/mine/x")" == keep ]] && ok "foreign OUT untouched" || bad "foreign OUT touched"
echo x >"$tmp/file"
expect_fail "file OUT refused" "not a folder" "$script" --offline --cache "$cache" "$tmp/file"

# An interrupted run leaves the previous tree, and no partial folder.
"$script" --offline --cache "$cache" --val-percent 50 "$out" >/dev/null 2>&1 &
pid=$!
sleep 1.5
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
h3="$(tree_hash "$out")"
if [[ "$h3" == "$h1" ]] || grep -q '"val_percent": 50' "$out/counts.json"; then
  ok "interrupted run: a whole tree ($([[ "$h3" == "$h1" ]] && echo previous || echo finished too soon: new))"
else
  bad "interrupted run left a changed tree"
fi
[[ -z "$(find "$tmp" -maxdepth 1 -name '.emoji.*')" ]] && ok "no partial folder left" || bad "partial folder left: $(ls -a "$tmp")"

# Leftovers of a run killed outright (SIGKILL: no trap) are cleared by the next run.
dead="$(sh -c 'echo $$')"
mkdir -p "$tmp/k/.emoji.partial.$dead/train" "$tmp/k/.emoji.old.$dead"
cp "$out/counts.json" "$tmp/k/.emoji.old.$dead/"
"$script" --offline --cache "$cache" "$tmp/k/emoji" >/dev/null 2>&1
[[ "$(ls -A "$tmp/k")" == emoji && "$(tree_hash "$tmp/k/emoji")" == "$h1" ]] &&
  ok "leftovers of a killed run cleared" || bad "leftovers: $(ls -A "$tmp/k")"

# A corrupt cached tarball: refused offline, downloaded again online (here from a local server that
# also serves a tampered upload of the twitter package, which must be refused).
reg="$tmp/registry"
mkdir -p "$reg/emoji-datasource-google/-" "$reg/emoji-datasource-twitter/-"
cp "$src_cache/$tgz" "$reg/emoji-datasource-google/-/"
head -c 100000 "$src_cache/$tgz" >"$reg/emoji-datasource-twitter/-/emoji-datasource-twitter-16.0.0.tgz"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(cd "$reg" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
# npm would go to its own registry: hide it behind a failing stand-in, to test the fallbacks.
mkdir -p "$tmp/bin"
printf '#!/bin/sh\necho "npm: stand-in failure" >&2\nexit 1\n' >"$tmp/bin/npm"
chmod +x "$tmp/bin/npm"
export NVG_EMOJI_REGISTRY="http://127.0.0.1:$port"
printf 'corrupt' >"$cache/$tgz"
expect_fail "corrupt cache refused offline" "expected sha512-" "$script" --offline --cache "$cache" "$tmp/c"
if PATH="$tmp/bin:$PATH" "$script" --cache "$cache" "$tmp/c" >/dev/null 2>"$tmp/err" &&
  [[ "$(tree_hash "$tmp/c")" == "$h1" ]]; then ok "corrupt cache downloaded again (npm failing, curl)"; else bad "re-download: $(tail -n 3 "$tmp/err")"; fi
rm -f "$cache/$tgz"
printf '#!/bin/sh\nexit 22\n' >"$tmp/bin/curl"
chmod +x "$tmp/bin/curl"
if PATH="$tmp/bin:$PATH" "$script" --cache "$cache" "$tmp/c" >/dev/null 2>"$tmp/err" &&
  [[ "$(tree_hash "$tmp/c")" == "$h1" ]]; then ok "download with python3 urllib (npm, curl failing)"; else bad "urllib: $(tail -n 3 "$tmp/err")"; fi
expect_fail "tampered upload refused" "refusing a changed or corrupt upload" \
  env PATH="$tmp/bin:$PATH" "$script" --cache "$cache" --style twitter "$tmp/t"
[[ ! -e "$cache/emoji-datasource-twitter-16.0.0.tgz" && -z "$(ls -A "$cache" | grep -v "^$tgz\$")" ]] &&
  ok "nothing tampered cached" || bad "cache holds: $(ls -A "$cache")"

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
