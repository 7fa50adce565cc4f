"""A tiny cohort through a real single-node SLURM (infrastructure/slurm/start.sh): Dask workers
as SLURM jobs (dask-jobqueue, the `slurm` profile) and array-job mode (`gliaflow submit`); both
must give the same outputs as a local run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

import test_orchestration_stages as ts

from gliaflow.pipeline.io.bids import discover
from gliaflow.pipeline.config import load_config
from gliaflow.workflows.services.cluster import load_profile
from gliaflow.workflows.flows import run_cohort


def _partition() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    r = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        part, state = line.split()[:2]
        if state in ("idle", "mixed"):
            return part.rstrip("*")
    return None


PARTITION = _partition()
# these skips fail instead when GLIAFLOW_REQUIRE_SERVICES=1 (tests/run.sh as root; tests/service_policy.py)
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="SLURM not installed (run infrastructure/slurm/install.sh as root)"),
    pytest.mark.skipif(shutil.which("sinfo") is not None and PARTITION is None,
                       reason="SLURM has no idle node (run infrastructure/slurm/start.sh as root)"),
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A two-subject dataset and its local-run reference outputs."""
    root = tmp_path_factory.mktemp("slurm")
    ds, ref = ts.local_reference(root)
    return root, ds, ref


def test_slurm_profile_workers_are_slurm_jobs(cohort):
    root, ds, ref = cohort
    d = discover(ds, require_blood=True)
    prof = load_profile("slurm").model_copy(update={
        "queue": PARTITION, "memory_gb": 1.0, "cores": 1, "walltime": "00:15:00"})
    out = root / "slurm"
    cfg = load_config(overrides={"execution.nprocs": 2})
    work = root / "slurm-work"
    info: dict = {}
    o = run_cohort(d.sessions, stages=ts.STAGES, config=cfg, out_dir=out, work_dir=work,
                   level="all", profile=prof, show_progress=False, info=info)
    assert len(o.done) == 2 and not o.failed
    ts.assert_same_outputs(out, ref)
    logs = list((work / "dask-jobs").glob("*.out")) + list((work / "dask-jobs").glob("*.err"))
    assert logs, "no SLURM job logs: workers did not run as SLURM jobs"
    pids = {line.split()[1] for f in work.glob("*/runs.log")
            for line in f.read_text().splitlines()}
    assert pids and all(int(p) != os.getpid() for p in pids)


def test_array_jobs_match_local_run(cohort):
    root, ds, ref = cohort
    out = root / "array"
    cmd = [sys.executable, "-m", "gliaflow.workflows", "submit", str(ds), str(out),
           "--scheduler", "slurm", "--partition", PARTITION, "--mem", "1", "--walltime", "00:15:00",
           "--stages", "test_orchestration_stages:STAGES",
           "--group-step", "test_orchestration_stages:group_step"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line.split("\t")[1] for line in r.stdout.splitlines() if "\t" in line]
    assert len(ids) == 3  # two sessions + the group job
    t0 = time.time()
    while time.time() - t0 < 300:
        q = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"],
                           capture_output=True, text=True)
        if not q.stdout.strip():
            break
        time.sleep(1)
    else:
        subprocess.run(["scancel"] + ids)
        pytest.fail("array jobs did not finish within 300 s")
    logs = "\n".join(p.read_text() for p in (out / ".gliaflow" / "jobs").glob("*.out"))
    assert (out / "group" / "regional.tsv").is_file(), logs[-4000:]
    ts.assert_same_outputs(out, ref)
    assert (out / "group" / "toy_group.tsv").is_file()
