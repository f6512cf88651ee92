#!/usr/bin/env bash
# A real Slurm cluster on this one machine: a controller and two slurmd "nodes" (n1, n2), for tests.
#
#   slurm/local-cluster.sh start    install Debian's slurmctld, slurmd, slurm-client, munge when missing
#                                   (apt-get, needs root), start munged, slurmctld, slurmd -N n1 / -N n2,
#                                   wait until both nodes are idle, print the SLURM_CONF line to export
#   slurm/local-cluster.sh stop     stop the daemons this script started, by the PIDs in its pid files
#   slurm/local-cluster.sh status   exit 0 when the controller answers and both nodes are up
#   slurm/local-cluster.sh env      print 'export SLURM_CONF=...'
#
# start and stop are idempotent. State (slurm.conf, spool, logs, pid files) lives in
# $SLURM_CLUSTER_DIR, default slurm/.cluster/ (gitignored). Ports: $SLURM_CLUSTER_PORT (controller,
# default 16817), the nodes take the next two above 17000 (17001, 17002).
#
# Layout: two nodes with CPUs=2 each (whatever nproc says: SlurmdParameters=config_overrides lets a
# smaller machine claim them), so `sbatch -N2 --ntasks-per-node=2` fits. Partitions, for preemption
# experiments: `debug` (default; preempted jobs are requeued by Slurm: PreemptMode=REQUEUE),
# `lowprio` (preempted jobs are cancelled: PreemptMode=CANCEL), both with
# GraceTime=$SLURM_CLUSTER_GRACE_TIME (default 10 s), and `urgent`, a higher PriorityTier whose jobs
# preempt both. KillWait (SIGTERM -> SIGKILL) is $SLURM_CLUSTER_KILL_WAIT seconds (default 10;
# Slurm's default is 30). cred_expire is lowered to 5 s: a requeued job waits that long before it
# may start again (Slurm's default: 120 s). No cgroups here (proctrack/linuxproc, task/none): every
# task sees all CPUs, and only a process's descendants belong to its step.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${SLURM_CLUSTER_DIR:-$REPO_DIR/slurm/.cluster}
CTLD_PORT=${SLURM_CLUSTER_PORT:-16817}
KILL_WAIT=${SLURM_CLUSTER_KILL_WAIT:-10}
GRACE_TIME=${SLURM_CLUSTER_GRACE_TIME:-10}
NODES=(n1 n2)
NODE_PORTS=(17001 17002)
CONF=$STATE_DIR/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

pid_alive() {  # pid_alive FILE: the process named in FILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "Slurm is not installed and installing it needs root: apt-get install ${PACKAGES[*]}"
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is missing: install ${PACKAGES[*]}"
    log "installing ${PACKAGES[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"$STATE_DIR/log/apt.log" 2>&1; then
        apt-get update -q >>"$STATE_DIR/log/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE_DIR/log/apt.log" 2>&1 \
            || die "apt-get install ${PACKAGES[*]} failed; see $STATE_DIR/log/apt.log"
    fi
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then return 0; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE_DIR/run/munged.pid"  # ours: stop ends it
    for _ in $(seq 50); do munge_works && return 0; sleep 0.1; done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

write_config() {
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: two simulated nodes on one host.
ClusterName=localci
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=$KILL_WAIT
InactiveLimit=0
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=${NODES[0]} NodeAddr=127.0.0.1 Port=${NODE_PORTS[0]} CPUs=2 State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=127.0.0.1 Port=${NODE_PORTS[1]} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES PriorityTier=1 GraceTime=$GRACE_TIME
PartitionName=lowprio Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=YES PriorityTier=1 GraceTime=$GRACE_TIME PreemptMode=CANCEL
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=YES PriorityTier=10 PreemptMode=OFF
EOF
}

nodes_up() {  # both nodes idle, mixed or allocated
    local states
    states=$(SLURM_CONF=$CONF sinfo -h -N -p debug -o '%N %t' 2>/dev/null) || return 1
    for node in "${NODES[@]}"; do
        grep -Eq "^$node (idle|mix|alloc)\$" <<<"$states" || return 1
    done
}

cmd_start() {
    mkdir -p "$STATE_DIR"/{ctld,run,log} "${NODES[@]/#/$STATE_DIR/spool/}"
    local started_at=$SECONDS
    install_packages
    start_munge
    if ! pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        write_config
        slurmctld -c -f "$CONF"  # -c: a fresh controller, no jobs left from an earlier start
    fi
    for _ in $(seq 100); do SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
    SLURM_CONF=$CONF scontrol ping >/dev/null 2>&1 || die "slurmctld did not answer; see $STATE_DIR/log/slurmctld.log"
    for node in "${NODES[@]}"; do
        pid_alive "$STATE_DIR/run/slurmd-$node.pid" || slurmd -f "$CONF" -N "$node"
    done
    for _ in $(seq 300); do nodes_up && break; sleep 0.1; done
    nodes_up || die "nodes not idle after 30 s: $(SLURM_CONF=$CONF sinfo -N 2>&1); see $STATE_DIR/log/"
    log "up in $((SECONDS - started_at)) s: nodes ${NODES[*]}, partitions debug (default), lowprio, urgent"
    echo "export SLURM_CONF=$CONF"
}

stop_pid_files() {  # stop_pid_files FILE...: SIGTERM to each, wait up to 10 s for all, then SIGKILL
    local file pid pids=()
    for file in "$@"; do
        [[ -s $file ]] || continue
        pid=$(cat "$file")
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" && pids+=("$pid") && log "stopping $(basename "$file" .pid) ($pid)"; fi
        rm -f "$file"
    done
    for _ in $(seq 100); do
        local alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        pids=("${alive[@]}")
        [[ ${#pids[@]} == 0 ]] && return 0
        sleep 0.1
    done
    log "SIGKILL to ${pids[*]}: still running 10 s after SIGTERM"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

cmd_stop() {
    local SLURMD_PID_FILES=()
    for node in "${NODES[@]}"; do SLURMD_PID_FILES+=("$STATE_DIR/run/slurmd-$node.pid"); done
    # Jobs first: slurmstepd and the tasks outlive slurmd, so cancel them and wait (KillWait at most).
    if pid_alive "$STATE_DIR/run/slurmctld.pid" && [[ -n $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]]; then
        log "cancelling the jobs still queued or running"
        SLURM_CONF=$CONF scancel --quiet $(SLURM_CONF=$CONF squeue -h -o %i) 2>/dev/null || true
        for _ in $(seq $(( (KILL_WAIT + 5) * 10 ))); do
            [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    # Then the nodes, the controller, and munged if this script started it.
    stop_pid_files "${SLURMD_PID_FILES[@]}"
    stop_pid_files "$STATE_DIR/run/slurmctld.pid"
    stop_pid_files "$STATE_DIR/run/munged.pid"
}

cmd_status() {
    local healthy=0
    pid_alive "$STATE_DIR/run/slurmctld.pid" && echo "slurmctld: running ($(cat "$STATE_DIR/run/slurmctld.pid"))" \
        || { echo "slurmctld: stopped"; healthy=1; }
    for node in "${NODES[@]}"; do
        pid_alive "$STATE_DIR/run/slurmd-$node.pid" && echo "slurmd $node: running ($(cat "$STATE_DIR/run/slurmd-$node.pid"))" \
            || { echo "slurmd $node: stopped"; healthy=1; }
    done
    if [[ $healthy == 0 ]] && nodes_up; then
        SLURM_CONF=$CONF sinfo -N
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    return 1
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
