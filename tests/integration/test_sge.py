"""A tiny cohort through a real single-host Son of Grid Engine (infrastructure/sge/start.sh): Dask
workers as SGE jobs (dask-jobqueue, the `sge` profile) must give the same outputs as a local run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

import test_orchestration_stages as ts

from gliaflow.pipeline.io.bids import discover
from gliaflow.pipeline.config import load_config
from gliaflow.workflows.services.cluster import load_profile
from gliaflow.workflows.flows import run_cohort

QUEUE = "all.q"
INSTALLED = shutil.which("qsub") is not None and shutil.which("qstat") is not None


def _usable_queue_instance() -> str | None:
    """The first instance of QUEUE (``all.q@host``) with no state flags (execd up, not in
    alarm/error/disabled state), or None (qmaster down, no exec host, ...)."""
    try:
        r = subprocess.run(["qstat", "-f", "-q", QUEUE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines():
        f = line.split()
        if f and f[0].startswith(QUEUE + "@") and len(f) == 5:  # name qtype slots load arch
            return f[0]
    return None


def _probe_job(timeout: float = 60) -> str | None:
    """Run a trivial job through QUEUE; None when it finished, else why not. `qstat -f` alone
    can say "up" for minutes after an execd died; jobs would then wait forever."""
    try:
        r = subprocess.run(["qsub", "-terse", "-b", "y", "-q", QUEUE, "-N", "gliaflow-probe",
                            "-o", "/dev/null", "-j", "y", "/bin/true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"qsub failed: {exc}"
    if r.returncode != 0:
        return f"qsub failed: {r.stderr.strip()}"
    job = r.stdout.strip()
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        q = subprocess.run(["qstat", "-j", job], capture_output=True, text=True)
        if q.returncode != 0 and "do not exist" in q.stdout + q.stderr:
            return None  # no longer known to the master: finished
        time.sleep(0.5)
    subprocess.run(["qdel", job], capture_output=True)
    return f"a trivial job ({job}) did not finish within {timeout:.0f} s"


INSTANCE = _usable_queue_instance() if INSTALLED else None
# these skips fail instead when GLIAFLOW_REQUIRE_SERVICES=1 (tests/run.sh as root; tests/service_policy.py)
pytestmark = [
    pytest.mark.sge,
    pytest.mark.skipif(not INSTALLED,
                       reason="Grid Engine not installed: no qsub/qstat "
                              "(run infrastructure/sge/install.sh as root)"),
    pytest.mark.skipif(INSTALLED and INSTANCE is None,
                       reason=f"Grid Engine has no usable exec host in {QUEUE} "
                              "(run infrastructure/sge/start.sh as root; see `qstat -f`)"),
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A two-subject dataset and its local-run reference outputs."""
    why = _probe_job()
    if why:
        pytest.skip(f"Grid Engine cannot run jobs in {QUEUE}: {why} "
                    "(run infrastructure/sge/start.sh as root; see `qstat -f`)")
    root = tmp_path_factory.mktemp("sge")
    ds, ref = ts.local_reference(root)  # the toy stages must import in the SGE jobs: PYTHONPATH
    return root, ds, ref


def test_sge_profile_workers_are_sge_jobs(cohort):
    root, ds, ref = cohort
    d = discover(ds, require_blood=True)
    prof = load_profile("sge").model_copy(update={
        "queue": QUEUE, "memory_gb": 1.0, "cores": 1, "walltime": "00:15:00",
        "job_prologue": ['echo "gliaflow job shell: ${BASH_VERSION:+bash}"']})
    out = root / "sge"
    cfg = load_config(overrides={"execution.nprocs": 2})
    work = root / "sge-work"
    o = run_cohort(d.sessions, stages=ts.STAGES, config=cfg, out_dir=out, work_dir=work,
                   level="all", profile=prof, show_progress=False)
    assert len(o.done) == 2 and not o.failed
    ts.assert_same_outputs(out, ref)
    # `-o DIR/ -j y`: Grid Engine names each job's log <job name>.o<job id>
    logs = [p for p in (work / "dask-jobs").glob("*") if re.fullmatch(r".+\.o\d+", p.name)]
    assert logs, "no SGE job logs: workers did not run as SGE jobs"
    # the job script ran under bash (qsub -S /bin/bash), not the queue's /bin/sh
    assert all("gliaflow job shell: bash" in p.read_text() for p in logs), logs[0].read_text()
    pids = {line.split()[1] for f in work.glob("*/runs.log")
            for line in f.read_text().splitlines()}
    assert pids and all(int(p) != os.getpid() for p in pids)
