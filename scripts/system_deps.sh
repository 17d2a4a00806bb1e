#!/usr/bin/env bash
# System packages for the Slurm, browser and PostgreSQL tests, from Debian, and a running
# single-node Slurm cluster (slurm/local_cluster.sh). Needs root and apt-get; scripts/test.sh calls it when
# both are there (set EVOMERGE_NO_SYSTEM_DEPS=1 to skip; those tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null || need+=(slurmctld slurmd slurm-client munge)
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v ip >/dev/null && command -v nsenter >/dev/null || need+=(iproute2 util-linux)
if (( ${#need[@]} )); then
    echo "system_deps: installing ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
bash slurm/local_cluster.sh start
