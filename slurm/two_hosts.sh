#!/usr/bin/env bash
# A two-node Slurm cluster on this one machine, for the multi-node tests (needs root):
# two network namespaces ("hosts") evh1 and evh2 on a bridge, each running its own slurmd
# (node1 at 10.77.0.11, node2 at 10.77.0.12) against a second slurmctld at 10.77.0.1.
# The single-node cluster of local_cluster.sh keeps running beside it; clients reach this one
# with SLURM_CONF=/etc/slurm-two/slurm.conf (printed by `start`).
#
#   bash slurm/two_hosts.sh start    # namespaces, bridge, slurmctld, two slurmds; prints SLURM_CONF
#   bash slurm/two_hosts.sh stop     # stops the daemons, removes the namespaces and the bridge
#
# The namespaces share the file system (as nodes share NFS) but not the network: each node
# has its own address, and traffic between them crosses the bridge. Munge is shared.
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONF_DIR=/etc/slurm-two
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld-two
SPOOL=/var/spool/slurmd-two
LOGS=/var/log/slurm
BR=evbr0
CTL_IP=10.77.0.1
declare -A ADDR=([node1]=10.77.0.11 [node2]=10.77.0.12)
declare -A NS=([node1]=evh1 [node2]=evh2)

network_up() {
    ip link show "$BR" >/dev/null 2>&1 || {
        ip link add "$BR" type bridge
        ip addr add "$CTL_IP/24" dev "$BR"
    }
    ip link set "$BR" up
    for node in node1 node2; do
        local ns=${NS[$node]}
        ip netns list | grep -qw "$ns" || ip netns add "$ns"
        if ! ip link show "$ns-o" >/dev/null 2>&1; then
            ip link add "$ns-o" type veth peer name "$ns-i"
            ip link set "$ns-i" netns "$ns"
            ip link set "$ns-o" master "$BR"
            ip netns exec "$ns" ip link set "$ns-i" name eth0
            ip netns exec "$ns" ip addr add "${ADDR[$node]}/24" dev eth0
        fi
        ip link set "$ns-o" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip link set eth0 up
        ip netns exec "$ns" ip route replace default via "$CTL_IP"
    done
}

write_conf() {
    local host
    host=$(hostname -s)
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
    cat > "$CONF" <<CONF
ClusterName=evomerge-two
SlurmctldHost=${host}(${CTL_IP})
SlurmctldPort=6917
SlurmdPort=6918
$(common_settings)
StateSaveLocation=${STATE}
SlurmdSpoolDir=${SPOOL}/%n
SlurmctldPidFile=/run/slurmctld-two.pid
SlurmdPidFile=/run/slurmd-two-%n.pid
SlurmctldLogFile=${LOGS}/slurmctld-two.log
SlurmdLogFile=${LOGS}/slurmd-two-%n.log
NodeName=node1 NodeAddr=${ADDR[node1]} CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
NodeName=node2 NodeAddr=${ADDR[node2]} CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=two Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    bash "$(dirname "$0")/local_cluster.sh" start >/dev/null  # munge (and the 1-node cluster)
    network_up
    write_conf
    mkdir -p "$SPOOL/node1" "$SPOOL/node2"
    pgrep -f "slurmctld -f $CONF" >/dev/null || slurmctld -f "$CONF"
    for node in node1 node2; do
        # nsenter joins the network namespace only (ip netns exec would remount /sys, hiding
        # the cgroup file system that slurmd opens)
        pgrep -f "slurmd -N $node -f $CONF" >/dev/null \
            || nsenter --net="/var/run/netns/${NS[$node]}" slurmd -N "$node" -f "$CONF"
    done
    export SLURM_CONF=$CONF
    for _ in $(seq 1 60); do
        if [ "$(sinfo -h -o '%T' -N 2>/dev/null | grep -Ec '^(idle|mixed|allocated)$')" = 2 ]; then
            echo "SLURM_CONF=$CONF"
            return 0
        fi
        scontrol update NodeName=node1,node2 State=RESUME >/dev/null 2>&1 || true
        sleep 1
    done
    echo "two_hosts: the nodes did not come up; see $LOGS/*-two*.log" >&2
    sinfo -N -l >&2 || true
    return 1
}

stop() {
    pkill -f "slurmd -N node[12] -f $CONF" || true
    pkill -f "slurmctld -f $CONF" || true
    for ns in evh1 evh2; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 || true
        ip link del "$ns-o" 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
