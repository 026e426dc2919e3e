#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for development and CI.
#   scripts/slurm_local.sh DIR          start it (idempotent: a running cluster is left as it is)
#   scripts/slurm_local.sh DIR --stop   stop its daemons, by the PIDs in DIR/pids
# Installs Debian's slurm-wlm and munge when missing, writes DIR/slurm.conf for this host (its
# short name, cores and memory), starts munged, slurmctld and slurmd by hand (no systemd) and
# waits until the node is idle. Then `export SLURM_CONF=DIR/slurm.conf` points sbatch, squeue,
# sacct and scancel at it.
set -euo pipefail
dir=${1:?usage: scripts/slurm_local.sh DIR [--stop]}
mkdir -p "$dir"
dir=$(realpath "$dir")
conf=$dir/slurm.conf
export SLURM_CONF=$conf

pid_of() { [ -s "$dir/pids/$1.pid" ] && cat "$dir/pids/$1.pid" 2>/dev/null; }
alive() { local p; p=$(pid_of "$1") && kill -0 "$p" 2>/dev/null; }

if [ "${2:-}" = "--stop" ]; then
    for d in slurmd slurmctld munged; do
        if alive "$d"; then
            pid=$(pid_of "$d")
            kill "$pid" && echo "stopped $d ($pid)"
        fi
    done
    exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q slurm-wlm munge
fi

mkdir -p "$dir"/{state,spool,pids,log,munge}
host=$(hostname -s)
cpus=$(nproc)
memory=$(free -m | awk 'NR == 2 { print int($2 * 0.95) }')
cat > "$conf.tmp" <<CONF
# Written by scripts/slurm_local.sh for $host.
ClusterName=simatlocal
SlurmctldHost=$host
SlurmUser=$(id -un)
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10,socket=$dir/munge/munge.socket.2
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MaxArraySize=10001
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/pids/slurmctld.pid
SlurmdPidFile=$dir/pids/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
mv "$conf.tmp" "$conf"

if ! alive munged; then
    key=$dir/munge/munge.key
    [ -s "$key" ] || { mungekey --create --keyfile="$key" 2>/dev/null || dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; }
    chmod 600 "$key"
    munged --key-file="$key" --socket="$dir/munge/munge.socket.2" --pid-file="$dir/pids/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" --force
fi
if ! alive slurmctld; then slurmctld -i -f "$conf"; fi
if ! alive slurmd; then slurmd -f "$conf"; fi

for _ in $(seq 1 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -n 1 || true)
    if [ "$state" = idle ] || [ "$state" = mix ] || [ "$state" = alloc ]; then
        echo "slurm: node $host $state (SLURM_CONF=$conf)"
        echo "stop: scripts/slurm_local.sh $dir --stop (PIDs $(pid_of munged) $(pid_of slurmctld) $(pid_of slurmd))"
        exit 0
    fi
    sleep 1
done
echo "slurm: the node did not become idle in 60 s; logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
