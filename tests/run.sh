#!/usr/bin/env bash
# Install gliaflow with its test extras into a virtual environment, install and start the system
# services the integration tests use (single-node SLURM with munge, single-host Grid Engine,
# headless Chromium) and build FSL from ../shared/fsl (cached outside the repository) when run as
# root on Debian, lint, then run the test suite. `.ci/run` runs
# exactly this.
#
# As root on Debian the services are required: a service that fails to install or start ends the
# run (non-zero exit naming the service), and GLIAFLOW_REQUIRE_SERVICES=1 makes any test that
# needs SLURM, Grid Engine, Chromium or FSL fail instead of skip (tests/service_policy.py).
# GLIAFLOW_SKIP_SYSTEM=1 opts out of both; elsewhere (not root, no apt-get) those tests skip and
# the summary lists every skip with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
venv=${GLIAFLOW_TEST_VENV:-$repo/.venv}
py=${PYTHON:-python3}

echo "== gliaflow tests: virtual environment $venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install --quiet -e "$repo[test]"

fail_service() {  # fail_service SERVICE WHAT: end the run naming the service that is not usable
    echo "error: $1 $2; the integration tests need it (GLIAFLOW_SKIP_SYSTEM=1 runs without" \
         "the system services, their tests then skip)" >&2
    exit 1
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${GLIAFLOW_SKIP_SYSTEM:-0}" != 1 ]; then
    echo "== system packages (slurm-wlm, munge, gridengine, chromium) and services"
    bash infrastructure/slurm/install.sh || fail_service SLURM "did not install (infrastructure/slurm/install.sh)"
    bash infrastructure/sge/install.sh || fail_service "Grid Engine" "did not install (infrastructure/sge/install.sh)"
    if [ ! -x /usr/bin/chromium ]; then  # tests/integration/test_browser.py runs /usr/bin/chromium
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || fail_service Chromium "did not install (apt-get install chromium)"
    fi
    bash infrastructure/slurm/start.sh || fail_service SLURM "did not start (infrastructure/slurm/start.sh)"
    bash infrastructure/sge/start.sh || fail_service "Grid Engine" "did not start (infrastructure/sge/start.sh)"
    dom=$(timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu --dump-dom \
          "data:text/html,<p>gliaflow-probe</p>" 2>/dev/null || true)
    case "$dom" in
        *gliaflow-probe*) echo "chromium up: $(/usr/bin/chromium --version 2>/dev/null || true)" ;;
        *) fail_service Chromium "did not start (/usr/bin/chromium --headless --dump-dom rendered nothing)" ;;
    esac
    echo "== FSL (built once from ../shared/fsl into a cache outside the repository)"
    fsldir=$(INSTALL_DEPS=1 bash infrastructure/fsl/build-for-tests.sh) \
        || fail_service FSL "did not build (infrastructure/fsl/build-for-tests.sh)"
    export FSLDIR=$fsldir FSLOUTPUTTYPE=NIFTI_GZ
    export GLIAFLOW_REQUIRE_SERVICES=1
else
    echo "== system services: not installed or started here (that needs root, apt-get and" \
         "GLIAFLOW_SKIP_SYSTEM unset); SLURM, Grid Engine and browser tests skip if unavailable"
    if [ -z "${FSLDIR:-}" ] && fsldir=$(bash infrastructure/fsl/build-for-tests.sh 2>/dev/null); then
        export FSLDIR=$fsldir FSLOUTPUTTYPE=NIFTI_GZ
    fi
    echo "== FSL: ${FSLDIR:-not available (FSL tests skip)}"
fi

export PATH="$venv/bin:$PATH" NIPYPE_NO_ET=1 MPLBACKEND=Agg
echo "== ruff check"
"$venv/bin/python" -m ruff check . || { echo "error: ruff found lint errors (above)" >&2; exit 1; }

echo "== pytest"
set +e
# -ra: the short summary lists every skip (and failure, error, xfail) with its reason
"$venv/bin/python" -m pytest tests -p no:cacheprovider -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests"
    rc=0
fi
exit "$rc"
