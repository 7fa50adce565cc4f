#!/usr/bin/env bash
# Install a single-host Son of Grid Engine (Debian gridengine-master/-exec/-client 8.1.9).
# Debconf is preseeded so the packages create cell "default" with this host as the master (the
# master's postinst runs init_cluster: berkeleydb spool in /var/spool/gridengine/spooldb, sgeadmin
# as manager). start.sh starts the daemons. Idempotent: returns at once when already installed.
# Run as root.
set -euo pipefail
if command -v qsub >/dev/null 2>&1 && command -v qconf >/dev/null 2>&1 \
   && [ -x /usr/sbin/sge_qmaster ] && [ -x /usr/sbin/sge_execd ]; then
  echo "gridengine already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh must run as root (apt-get)" >&2
  exit 1
fi
# SGE refuses to work unless the master's name, as written to act_qmaster, resolves; use the
# name start.sh will use (hostname -f, falling back to the short name)
MASTER="$(hostname -f 2>/dev/null || hostname)"
export DEBIAN_FRONTEND=noninteractive
debconf-set-selections <<SEL
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $MASTER
SEL
# (the three gridengine packages share these "shared/" questions)
apt-get update -qq
apt-get install -y -qq --no-install-recommends gridengine-master gridengine-exec gridengine-client
# apt-get can succeed without giving what start.sh and the tests use: say what is missing
for f in /usr/sbin/sge_qmaster /usr/sbin/sge_execd; do
  [ -x "$f" ] || { echo "gridengine installed but $f is missing" >&2; exit 1; }
done
for c in qsub qstat qconf; do
  command -v "$c" >/dev/null 2>&1 || { echo "gridengine installed but $c is missing" >&2; exit 1; }
done
