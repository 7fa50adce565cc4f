#!/usr/bin/env bash
# Stop the single-host Grid Engine started by start.sh: sge_execd (with its jobs) and sge_qmaster.
# Idempotent. Leaves the configuration (spool) in place, so start.sh brings the same cell back.
set -uo pipefail
[ -r /etc/default/gridengine ] && . /etc/default/gridengine
export SGE_ROOT="${SGE_ROOT:-/var/lib/gridengine}" SGE_CELL="${SGE_CELL:-default}"
pids="$( { pgrep -x sge_qmaster; pgrep -x sge_execd; } | tr '\n' ' ')"
if [ -z "$pids" ]; then echo "sge not running"; exit 0; fi
# while the master answers, have the execution daemons kill their jobs on the way down
if command -v qconf >/dev/null 2>&1 && qconf -sh >/dev/null 2>&1; then
  qconf -kej all >/dev/null 2>&1 || true
fi
# SIGTERM is a controlled shutdown for both daemons (the master takes ~10 s)
kill $pids 2>/dev/null || true
for _ in $(seq 300); do
  alive=""; for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
  [ -z "$alive" ] && break
  sleep 0.1
done
if [ -n "$alive" ]; then
  echo "sge daemons$alive did not stop within 30 s; killing them" >&2
  kill -9 $alive 2>/dev/null || true
fi
echo "sge stopped"
