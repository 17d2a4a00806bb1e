#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests and CI (needs root).
#
#   bash slurm/local_cluster.sh install   # Debian packages: slurmctld slurmd slurm-client munge
#   bash slurm/local_cluster.sh start     # write slurm.conf, start munged, slurmctld, slurmd
#   bash slurm/local_cluster.sh stop
#
# auth/munge, proctrack/linuxproc, task/none, the node named by `hostname -s` at 127.0.0.1,
# one partition "debug" holding every core. No accounting daemon: `scontrol show job` and
# `squeue` report job state (finished jobs stay visible for MinJobAge seconds).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm

install_packages() {
    if command -v slurmctld >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
}

write_conf() {
    local node cpus mem
    node=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
    cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=evomerge-local
SlurmctldHost=${node}(127.0.0.1)
$(common_settings)
StateSaveLocation=${STATE}
SlurmdSpoolDir=${SPOOL}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    install_packages
    write_conf
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    local node
    node=$(hostname -s)
    for _ in $(seq 1 60); do
        if sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
            echo "slurm: node $node is up ($(sinfo -h -o '%P %c CPUs'))"
            return 0
        fi
        scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    echo "slurm: node $node did not come up; see $LOGS" >&2
    sinfo -N -l >&2 || true
    tail -20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
    return 1
}

stop() {
    pkill -x slurmd || true
    pkill -x slurmctld || true
}

case "${1:-start}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
