#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, slow and end-to-end tests included.
# As root with apt-get (CI, a fresh machine) it also installs Slurm, Chromium and PostgreSQL
# from Debian and starts a local Slurm cluster and PostgreSQL server, so the Slurm, browser
# and PostgreSQL tests run for real. Without arguments it then runs the vLLM backend's tests
# in their own virtualenv (scripts/vllm_test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${EVOMERGE_NO_SYSTEM_DEPS:-0}" != 1 ]; then
    bash scripts/system_deps.sh
    EVOMERGE_TEST_POSTGRES=$(bash scripts/postgres.sh start | tail -n 1)
    export EVOMERGE_TEST_POSTGRES EVOMERGE_REQUIRE_POSTGRES=1
    export EVOMERGE_REQUIRE_SLURM=1 EVOMERGE_REQUIRE_BROWSER=1
fi
export EVOMERGE_REQUIRE_MERGEKIT=1  # setup installs mergekit (dev extra): its oracle tests must run
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
.venv/bin/python -m pytest -q --durations=20 "$@" || status=$?
# The whole suite (no arguments) also runs the vLLM backend's tests in their own virtualenv
# (scripts/vllm_test.sh; vLLM pins torch and transformers). EVOMERGE_NO_VLLM=1 skips them.
if [ $# -eq 0 ] && [ "${EVOMERGE_NO_VLLM:-0}" != 1 ]; then
    bash scripts/vllm_test.sh || status=$?
fi
exit $status
