#!/usr/bin/env bash
# Stop the single-node SLURM started by start.sh (slurmd, slurmctld, munged). Idempotent.
set -uo pipefail
STATE="${GLIAFLOW_SLURM_STATE:-/var/lib/gliaflow-slurm}"
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
  if [ -s "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
done
echo "slurm stopped"
