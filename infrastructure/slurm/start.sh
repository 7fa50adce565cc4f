#!/usr/bin/env bash
# Start a single-node SLURM on this machine (as root): munged under the munge user with /run/munge,
# a small slurm.conf describing this machine's real CPUs and memory (`slurmd -C`), slurmctld and
# slurmd; wait until `sinfo` shows the node idle. Idempotent: returns at once when it is up.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${GLIAFLOW_SLURM_STATE:-/var/lib/gliaflow-slurm}"
CONF=/etc/slurm/slurm.conf
if [ "$(id -u)" -ne 0 ]; then echo "start.sh must run as root" >&2; exit 1; fi
command -v slurmctld >/dev/null || { echo "slurm-wlm missing: run $HERE/install.sh" >&2; exit 1; }

if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  echo "slurm already running: $(sinfo -h -o '%N %T %c cpus %m MB')"
  exit 0
fi

# munge: key, dirs, daemon as the munge user
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# slurm.conf from the machine's real resources
mkdir -p "$STATE/slurmd" "$STATE/ctld" /etc/slurm
NODE_LINE="$(slurmd -C | sed -n 1p)"
NODENAME="$(echo "$NODE_LINE" | sed -E 's/^NodeName=([^ ]+).*/\1/')"
HOST="$(hostname -s)"
[ -n "$NODENAME" ] || { echo "slurmd -C did not describe this machine" >&2; exit 1; }
sed -e "s|@HOST@|$HOST|" -e "s|@STATE@|$STATE|g" -e "s|@NODE_LINE@|$NODE_LINE|" \
    -e "s|@NODENAME@|$NODENAME|" -e "s|@CTLD_PORT@|${GLIAFLOW_SLURMCTLD_PORT:-6817}|" \
    -e "s|@SLURMD_PORT@|${GLIAFLOW_SLURMD_PORT:-6818}|" "$HERE/slurm.conf.template" > "$CONF.tmp"
mv "$CONF.tmp" "$CONF"

pgrep -x slurmctld >/dev/null || slurmctld -c   # -c: clean start (no stale job state)
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 150); do
  st="$(sinfo -h -o '%T' 2>/dev/null | head -1 || true)"
  case "$st" in
    idle|mixed|allocated) echo "slurm up: $(sinfo -h -o '%N %T %c cpus %m MB')"; exit 0;;
    down*|drain*) scontrol update nodename="$NODENAME" state=resume 2>/dev/null || true;;
  esac
  sleep 0.2
done
echo "slurm did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
sinfo >&2 || true
exit 1
