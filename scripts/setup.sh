#!/usr/bin/env bash
# Create .venv and install evomerge with its dev extras. Idempotent: a second run only checks
# a stamp. Without an NVIDIA GPU the CPU build of torch is installed first (pip would otherwise
# pull a multi-GB CUDA build to satisfy torch>=2.4). pip's output goes to $VENV/setup.log
# (shown if a step fails); EVOMERGE_VERBOSE=1 streams it instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EVOMERGE_VENV:-.venv}
stamp="$VENV/.evomerge-installed"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
[ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
log="$VENV/setup.log"
: > "$log"
step() {  # step "what" command...: one line of progress; the command's output to the log
    local what=$1 t0=$SECONDS
    shift
    printf 'setup: %s ...' "$what" >&2
    if [ "${EVOMERGE_VERBOSE:-0}" = 1 ]; then
        echo >&2
        "$@" 2>&1 | tee -a "$log" >&2
    elif ! "$@" >>"$log" 2>&1; then
        echo " failed; the last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    echo " done ($((SECONDS - t0)) s)" >&2
}
step "upgrading pip" "$VENV/bin/python" -m pip install --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
    step "installing PyTorch ${EVOMERGE_TORCH:-2.13.0} (CPU build: no NVIDIA GPU here)" \
        "$VENV/bin/python" -m pip install "torch==${EVOMERGE_TORCH:-2.13.0}"
fi
step "installing evomerge and its dependencies into $VENV (a few minutes the first time)" \
    "$VENV/bin/python" -m pip install -e ".[dev]"
echo "$want" > "$stamp"
