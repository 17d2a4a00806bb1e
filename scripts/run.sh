#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the embedded default: build the model zoo
# on first use, search the default space, report on held-out data, export the best recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
for a in "$@"; do [ "$a" = -v ] || [ "$a" = --verbose ] && export EVOMERGE_VERBOSE=1; done
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/evomerge quickstart "$@"
