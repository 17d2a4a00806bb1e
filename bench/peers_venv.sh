#!/usr/bin/env bash
# The real mergekit-evolve (mergekit 0.1.5 with its `evolve` extra: ray, cma, lm_eval) in its
# own virtualenv, for bench/peers.py: MERGEKIT_EVOLVE_VENV (default /work/venvs/mergekit-evolve).
# torch is installed first, pinned to the CPU build, so the extra never pulls a CUDA build.
# bench/peers_mergekit.py puts bench/peers_shim/ on its PYTHONPATH at run time (read it: it
# edits no file of mergekit, it works around the exact errors it names).
set -euo pipefail
V=${MERGEKIT_EVOLVE_VENV:-/work/venvs/mergekit-evolve}
[ -x "$V/bin/python" ] || python3 -m venv "$V"
"$V/bin/pip" install -q "torch==${EVOMERGE_TORCH:-2.13.0}"
"$V/bin/pip" install -q "mergekit[evolve]==0.1.5" "torch==${EVOMERGE_TORCH:-2.13.0}"
PYTHONPATH="$(cd "$(dirname "$0")" && pwd)/peers_shim" "$V/bin/mergekit-evolve" --help >/dev/null
echo "mergekit-evolve is ready in $V"
