#!/usr/bin/env bash
# Create .venv and install evomerge with its dev extras. Idempotent: a second run only checks
# a stamp. Without an NVIDIA GPU the CPU build of torch is installed first (pip would otherwise
# pull a multi-GB CUDA build to satisfy torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EVOMERGE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.evomerge-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $VENV (first run takes a few minutes) ..." >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "torch==${EVOMERGE_TORCH:-2.13.0}"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
