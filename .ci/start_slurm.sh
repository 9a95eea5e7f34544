#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (munge + slurmctld + slurmd on localhost),
# installing Debian's slurm-wlm and munge first when they are missing. Idempotent: when the
# node already answers, it only prints the partition. Needs root.
#
#   bash .ci/start_slurm.sh        # prints the partition name ("debug") once the node is idle
#
# The tests that drive the data pipeline and examples/slurm/ through Slurm call this script
# themselves and skip, with its output as the reason, when it fails.
set -euo pipefail

PARTITION=debug
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf

node_ready() {
  command -v sinfo >/dev/null 2>&1 &&
    timeout 10 sinfo -h -p "$PARTITION" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

if node_ready; then
  echo "$PARTITION"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "start_slurm.sh: needs root to install and start slurmctld/slurmd" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: a key shared by the controller and the node (one machine: one key), run as munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged --force
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

HEADER="# written by dsm-engine .ci/start_slurm.sh"
if [ -f "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$HEADER"; then
  echo "start_slurm.sh: $CONF is another Slurm's configuration; not touching it" >&2
  exit 1
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# nproc honours OMP_NUM_THREADS, which a test worker may have lowered: count the CPUs
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$CONF.new" <<CONF
$HEADER: one node, no cgroups, no accounting
ClusterName=dsm
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.new" "$CONF"

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if node_ready; then
    echo "$PARTITION"
    exit 0
  fi
  # a node left down or drained by an earlier start comes back
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "start_slurm.sh: the node did not become idle; sinfo says:" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
