#!/usr/bin/env bash
# Start a single-host Son of Grid Engine on this machine (as root), installed by install.sh:
# sge_qmaster and sge_execd for this host, which is made an admin, submit and exec host; queue
# all.q with one slot per CPU; wait until the queue instance is up and a trivial job has run.
# Idempotent: returns at once when all.q on this host is usable. Runs beside SLURM (ports
# 6444/6445 from /etc/services, SLURM uses 6817/6818).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then echo "start.sh must run as root" >&2; exit 1; fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -x /usr/sbin/sge_qmaster ] && command -v qconf >/dev/null \
  || { echo "gridengine missing: run $HERE/install.sh" >&2; exit 1; }
# shellcheck disable=SC1091
[ -r /etc/default/gridengine ] && . /etc/default/gridengine
export SGE_ROOT="${SGE_ROOT:-/var/lib/gridengine}" SGE_CELL="${SGE_CELL:-default}"
COMMON="$SGE_ROOT/$SGE_CELL/common"
SPOOL=/var/spool/gridengine
QLOG="$SPOOL/qmaster/messages"
ELOG="$SPOOL/execd/*/messages"
UTIL=/usr/lib/gridengine
QUEUE=all.q
SLOTS="$(nproc)"

# The name SGE uses for this host: the canonical name of gethostname()
HOST="$("$UTIL/gethostname" -name)"
queue_state() {  # "ok", the queue instance's state letters (u: execd unknown, E: error...), or ""
  qstat -f -q "$QUEUE@$HOST" 2>/dev/null \
    | awk -v q="$QUEUE@$HOST" '$1 == q { print ($6 == "" ? "ok" : $6) }'
}
if pgrep -x sge_execd >/dev/null && [ "$(queue_state)" = ok ]; then
  echo "sge already running: $QUEUE@$HOST, $(qconf -sq $QUEUE | awk '$1=="slots"{print $2}') slots"
  exit 0
fi

# Hostname trap (containers): SGE's commlib rejects a connection when the peer's address resolves
# back to a different name than the one the client claims. Here `vm` -> 127.0.0.1 -> `localhost`
# ("client IP resolved to host name localhost. This is not identical to clients host name vm").
# SGE's host_aliases file declares the reverse-lookup name an alias of this host.
ADDR="$(getent hosts "$HOST" | awk '{ print $1; exit }')"
[ -n "$ADDR" ] || { echo "cannot resolve this host's name '$HOST' (check /etc/hosts)" >&2; exit 1; }
RNAME="$("$UTIL/gethostbyaddr" -name "$ADDR" 2>/dev/null || true)"
[ -n "$RNAME" ] || {
  echo "no reverse lookup for $ADDR ($HOST); add '$ADDR $HOST' to /etc/hosts" >&2; exit 1; }
ALIASES=""; [ "$RNAME" = "$HOST" ] || ALIASES="$HOST $RNAME"
if [ "$ALIASES" != "$(cat "$COMMON/host_aliases" 2>/dev/null)" ]; then
  # daemons read host_aliases when they start: restart any (e.g. started by the postinst)
  { pgrep -x sge_qmaster || pgrep -x sge_execd; } >/dev/null && bash "$HERE/stop.sh"
  rm -f "$COMMON/host_aliases"
  [ -z "$ALIASES" ] || echo "$ALIASES" > "$COMMON/host_aliases"
fi
echo "$HOST" > "$COMMON/act_qmaster"   # the master is this host (the container's name may change)
chown sgeadmin:sgeadmin "$COMMON/act_qmaster"

# qmaster (daemonises and switches to sgeadmin; pid in $SPOOL/qmaster/qmaster.pid)
if ! qconf -sh >/dev/null 2>&1; then
  pgrep -x sge_qmaster >/dev/null || /usr/sbin/sge_qmaster
  for _ in $(seq 150); do qconf -sh >/dev/null 2>&1 && break; sleep 0.2; done
  qconf -sh >/dev/null 2>&1 || {
    echo "sge_qmaster did not answer within 30 s; see $QLOG (or /tmp/qmaster_messages.*)" >&2
    exit 1; }
fi

TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
q() {  # run a configuration command quietly; on failure name it, its error and the master's log
  "$@" >"$TMP/out" 2>&1 || { echo "failed: $* ($(cat "$TMP/out")); see $QLOG" >&2; exit 1; }
}
# global configuration: allow jobs of root and system users (default min_uid/min_gid 1000; the
# tests and CI run as root)
qconf -sconf global | sed -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
  > "$TMP/global"
q qconf -Mconf "$TMP/global"
# scheduler: run every second (default 15 s) and on each submit/finish, so workers start at once
qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
  -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
  > "$TMP/sched"
q qconf -Msconf "$TMP/sched"

# this host: admin (qmaster adds itself), submit and execution host
qconf -sh 2>/dev/null | grep -qx "$HOST" || q qconf -ah "$HOST"
qconf -ss 2>/dev/null | grep -qx "$HOST" || q qconf -as "$HOST"
if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
  cat > "$TMP/exechost" <<EOF
hostname $HOST
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOF
  q qconf -Ae "$TMP/exechost"
fi
# parallel environments shipped with the package (the default queue template lists them)
for pe in /usr/share/gridengine/util/resources/pe/*; do
  qconf -sp "$(basename "$pe")" >/dev/null 2>&1 || q qconf -Ap "$pe"
done
# queue all.q: this host, one slot per CPU, no load threshold (a busy CI machine must not put
# the queue in alarm state); everything else from SGE's default queue template
if ! qconf -sq "$QUEUE" >/dev/null 2>&1; then
  cat > "$TMP/edit" <<EOF   # qconf -aq edits its template with \$EDITOR
#!/bin/sh
sed -i -e "s/^qname .*/qname $QUEUE/" -e "s/^hostlist .*/hostlist $HOST/" \\
  -e "s/^slots .*/slots $SLOTS/" -e "s/^load_thresholds .*/load_thresholds NONE/" "\$1"
EOF
  chmod +x "$TMP/edit"
  q env EDITOR="$TMP/edit" qconf -aq "$QUEUE"
else
  qconf -mattr queue hostlist "$HOST" "$QUEUE" >/dev/null 2>&1 || true
  qconf -mattr queue slots "$SLOTS" "$QUEUE" >/dev/null 2>&1 || true
  qconf -mattr queue load_thresholds NONE "$QUEUE" >/dev/null 2>&1 || true
fi

# execd (daemonises; spool and log in $SPOOL/execd/<its host name>/)
pgrep -x sge_execd >/dev/null || /usr/sbin/sge_execd
st=""
for _ in $(seq 150); do
  st="$(queue_state || true)"   # qstat may fail while execd registers: keep waiting
  case "$st" in
    ok) break;;
    *E*) qmod -c "$QUEUE@$HOST" >/dev/null 2>&1 || true;;   # error state from an earlier failure
    *d*) qmod -e "$QUEUE@$HOST" >/dev/null 2>&1 || true;;   # disabled
  esac
  sleep 0.2
done
if [ "$st" != ok ]; then
  echo "queue $QUEUE@$HOST not usable (state '${st:-missing}'); see $QLOG and $ELOG" >&2
  qstat -f >&2 || true
  exit 1
fi

# a trivial job must run to completion (-sync y waits for it and returns its exit status)
if ! (cd "$TMP" && timeout 60 qsub -sync y -b y -q "$QUEUE" -N gliaflow-probe -o /dev/null -j y \
      /bin/true >/dev/null); then
  echo "a trivial job did not complete on $QUEUE@$HOST; see $QLOG and $ELOG" >&2
  qstat -f >&2 || true
  exit 1
fi
echo "sge up: $QUEUE@$HOST, $SLOTS slots; $(qhost -h "$HOST" \
  | awk -v h="$HOST" '$1 == h { print $3 " cpus, " $8 " memory" }')"
