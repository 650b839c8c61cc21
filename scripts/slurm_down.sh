#!/usr/bin/env bash
# Stop the single-node SLURM that scripts/slurm_up.sh started: first its jobs (cancelled, and waited for
# until SLURM has seen them end, so that no job's slurmstepd is left retrying to report to a stopped
# slurmd), then slurmd, slurmctld and munged, each by the PID in its own PID file (never by name).
set -uo pipefail

RUN_DIR=/run/slurm-aevb
if [ -f "$RUN_DIR/slurmctld.pid" ] && kill -0 "$(cat "$RUN_DIR/slurmctld.pid")" 2>/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    echo "slurm_down: cancelling jobs $(echo $jobs)"
    scancel $jobs 2>/dev/null
  fi
  # also jobs that just ended and are still completing (state CG)
  for _ in $(seq 120); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
fi
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
