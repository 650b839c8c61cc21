#!/usr/bin/env bash
# Install (once) and start a single-node SLURM on this Debian machine, as root, without systemd:
# munged, slurmctld and slurmd are started by hand; the node gets this machine's CPUs and memory
# and one partition ("debug", the default). Idempotent: what is installed is not installed again,
# daemons that run with the same configuration are left running. Waits until the node is idle.
#
# Exit status: 0 the cluster is up; 3 it cannot run here (not root, no apt-get, install failed:
# the reason is the last line on stderr); anything else: it should have started and did not.
# Stop it with scripts/slurm_down.sh.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm-aevb
LOG_DIR=/var/log/slurm-aevb
RUN_DIR=/run/slurm-aevb
# A requeued job waits cred_expire seconds before it may start again (SLURM's default: 120).
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-10}
WAIT_S=${SLURM_UP_WAIT_S:-60}

cannot() { echo "slurm_up: cannot start SLURM here: $*" >&2; exit 3; }
say() { echo "slurm_up: $*"; }

[ "$(id -u)" -eq 0 ] || cannot "not root (SLURM's daemons are started as root)"

# --- install ----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || cannot "slurm-wlm is not installed and there is no apt-get (a Debian machine is needed)"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || cannot "apt-get update failed (no network or no package mirror?)"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || cannot "apt-get install slurm-wlm munge failed"
fi

# --- munge ------------------------------------------------------------------------------------
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
MUNGE_PID=/run/munge/munged.pid
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! pid_alive "$MUNGE_PID"; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || { echo "slurm_up: munged does not answer" >&2; exit 1; }

# --- configuration ----------------------------------------------------------------------------
HOST=$(hostname -s)
NODE=$(slurmd -C | head -1)  # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. ... RealMemory=..
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/" <<<"$NODE")  # leave room for the system
mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR" "$RUN_DIR"
NEW=$(mktemp)
cat >"$NEW" <<EOF
# Written by aevb's scripts/slurm_up.sh: a single-node test cluster (no systemd, no cgroups).
ClusterName=aevb
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=3600
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
CHANGED=0
if ! cmp -s "$NEW" "$CONF_DIR/slurm.conf"; then
  install -m 0644 "$NEW" "$CONF_DIR/slurm.conf"
  CHANGED=1
fi
rm -f "$NEW"

# --- daemons ----------------------------------------------------------------------------------
stop_pid() {  # stop one daemon by its own PID file
  local f=$1
  if pid_alive "$f"; then
    local p; p=$(cat "$f"); kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
}
if [ "$CHANGED" -eq 1 ]; then
  stop_pid "$RUN_DIR/slurmd.pid"; stop_pid "$RUN_DIR/slurmctld.pid"
fi
if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld -i  # -i: ignore state that does not fit this configuration
fi
if ! pid_alive "$RUN_DIR/slurmd.pid"; then
  say "starting slurmd"
  slurmd
fi

# --- wait for the node ------------------------------------------------------------------------
state=""
for _ in $(seq $((WAIT_S * 2))); do
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mix|alloc) say "node $HOST is $state ($(sinfo -h -n "$HOST" -o '%c CPUs, %m MB' | head -1)); partition debug"; exit 0 ;;
    down*|drain*|drng*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "slurm_up: node $HOST not idle after ${WAIT_S}s (state '$state'); see $LOG_DIR/slurmctld.log and slurmd.log" >&2
exit 1
