#!/usr/bin/env bash
# Install a single-node SLURM (slurm-wlm) and munge from Debian packages. Idempotent: returns at
# once when both are already installed. Run as root.
set -euo pipefail
if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
   && command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
  echo "slurm-wlm and munge already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh must run as root (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends slurm-wlm munge
# apt-get can succeed without giving the commands start.sh and the tests use: say which is missing
for c in slurmctld slurmd munged sbatch sinfo; do
  command -v "$c" >/dev/null 2>&1 || { echo "slurm-wlm/munge installed but $c is missing" >&2; exit 1; }
done
