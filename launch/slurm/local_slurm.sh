#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (localhost), for tests and for trying the SLURM
# presets without a cluster. Needs root (it starts munged, slurmctld and slurmd).
#
#   launch/slurm/local_slurm.sh install   # apt-get install slurm-wlm munge (Debian/Ubuntu), if missing
#   launch/slurm/local_slurm.sh start     # write slurm.conf, start the daemons, wait for the node
#   eval "$(launch/slurm/local_slurm.sh env)"   # export SLURM_CONF for sbatch/squeue/ugs-train
#   ugs-train -m hydra/launcher=slurm_local schedule=smoke seed=0,1
#   launch/slurm/local_slurm.sh stop      # cancel jobs, stop the daemons this script started
#   launch/slurm/local_slurm.sh is-running  # exit status 0 if slurmctld and slurmd are up
#
# Everything (slurm.conf, state, logs, pid files) lives in $UGS_SLURM_DIR (default
# /tmp/ugs-slurm); /etc/slurm is not touched, clients find the cluster through SLURM_CONF.
# The node is `hostname -s` with CPUs = nproc, one partition `debug` (Default=YES), no
# accounting (so `sacct` fails; submitit only warns), proctrack/linuxproc (no cgroups needed).
set -euo pipefail

DIR="${UGS_SLURM_DIR:-/tmp/ugs-slurm}"
CONF="$DIR/slurm.conf"
CTLD_PORT="${UGS_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${UGS_SLURM_SLURMD_PORT:-6818}"
MUNGE_SOCKET="$DIR/munge/munge.socket"

log() { echo "[local_slurm] $*" >&2; }

running() {  # pid file -> 0 if that process is alive
    [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

cmd_install() {
    if command -v sbatch >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        log "slurm and munge already installed ($(sbatch --version))"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "installing slurm-wlm and munge needs root (apt-get)"; return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    log "installed $(sbatch --version)"
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    cat >"$CONF" <<CONF
# Written by launch/slurm/local_slurm.sh: a one-node cluster on $host.
ClusterName=ugslocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

wait_idle() {
    local i state
    for i in $(seq 1 60); do
        state="$(SLURM_CONF="$CONF" sinfo -h -o %T 2>/dev/null | head -1 || true)"
        if [[ "$state" == "idle" || "$state" == "mixed" || "$state" == "allocated" ]]; then
            log "node $(hostname -s) is $state (SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 1
    done
    log "the node did not become idle (state: '${state:-none}'); logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    return 1
}

cmd_start() {
    command -v slurmd >/dev/null || { log "slurmd not found: run '$0 install' first"; return 1; }
    [[ $(id -u) -eq 0 ]] || { log "starting the SLURM daemons needs root"; return 1; }
    if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; then
        log "already running"
        wait_idle
        return
    fi
    write_conf
    if ! running "$DIR/munged.pid"; then
        [[ -f /etc/munge/munge.key ]] || /usr/sbin/mungekey --create --force 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chown munge:munge /etc/munge/munge.key "$DIR/munge" 2>/dev/null || true
        chmod 0400 /etc/munge/munge.key
        # --force: munged refuses some container filesystems' permissions otherwise
        runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
            --seed-file="$DIR/munge/munged.seed"
        cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
    fi
    SLURM_CONF="$CONF" slurmctld -f "$CONF"
    SLURM_CONF="$CONF" slurmd -f "$CONF"
    wait_idle
}

stop_pid() {  # name pidfile
    local pid i
    [[ -f "$2" ]] || return 0
    pid="$(cat "$2")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$2"
}

cmd_stop() {
    if running "$DIR/slurmctld.pid"; then
        SLURM_CONF="$CONF" scancel --full --signal=KILL --partition=debug 2>/dev/null || true
        SLURM_CONF="$CONF" scancel --partition=debug 2>/dev/null || true
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munged.pid"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    is-running) running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid" ;;
    status) SLURM_CONF="$CONF" sinfo && SLURM_CONF="$CONF" squeue ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
