#!/usr/bin/env bash
# Build the FSL subset in ../shared/fsl (source, patches and build script provided to the project)
# into a cache folder OUTSIDE the repository, once; later runs reuse it. Prints the FSLDIR.
#
#   bash infrastructure/fsl/build-for-tests.sh [SHARED_FSL_DIR] [PREFIX]
#
# FSL is free for non-commercial use only: gliaflow never ships FSL source or binaries. This
# builds test binaries; users point FSLDIR at their own FSL (or the official installer).
# env: INSTALL_DEPS=1 (as root: apt-get the build dependencies), NICE, JOBS (passed on).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${1:-$here/../../../shared/fsl}
if [ "$(id -u)" = 0 ]; then default_prefix=/var/cache/gliaflow/fsl-6.0.0
else default_prefix=${XDG_CACHE_HOME:-$HOME/.cache}/gliaflow/fsl-6.0.0; fi
prefix=${2:-${GLIAFLOW_FSL_CACHE:-$default_prefix}}
needed="mcflirt flirt bet bet2 fast fnirt fnirtfileutils invwarp applywarp convert_xfm"
have_all() { for b in $needed; do [ -x "$prefix/bin/$b" ] || return 1; done; }
if have_all && [ -f "$prefix/etc/fslversion" ]; then
    echo "FSL cached at $prefix" >&2
else
    [ -f "$shared/build.sh" ] || { echo "no FSL source at $shared (../shared/fsl)" >&2; exit 2; }
    echo "building FSL from $shared into $prefix (once; several CPU-minutes)" >&2
    mkdir -p "$(dirname "$prefix")"
    t0=$(date +%s)
    NICE=${NICE:-0} JOBS=${JOBS:-2} INSTALL_DEPS=${INSTALL_DEPS:-0} \
        bash "$shared/build.sh" "$shared/fsl600-subset-src.tar.gz" "$prefix" "$prefix.build" >&2
    rm -rf "$prefix.build" "$prefix.build.src"
    have_all || { echo "FSL build finished without all of: $needed" >&2; exit 1; }
    echo "FSL built in $(( $(date +%s) - t0 )) s" >&2
fi
echo "$prefix"
