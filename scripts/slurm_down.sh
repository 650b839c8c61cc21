#!/usr/bin/env bash
# Stop the single-node SLURM that scripts/slurm_up.sh started: slurmd, slurmctld, then munged,
# each by the PID in its own PID file (never by name). Jobs still running are killed with slurmd.
set -uo pipefail

RUN_DIR=/run/slurm-aevb
for f in "$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid" /run/munge/munged.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    echo "slurm_down: stopping $(basename "$f" .pid) (pid $p)"
    kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { echo "slurm_down: pid $p still running after 10 s; sending SIGKILL"; kill -9 "$p"; }
  fi
  rm -f "$f"
done
exit 0
