"""A full participant + group run with every image step on FSL (engine: fsl), on the real
single-node SLURM of the test setup (Dask workers as SLURM jobs that get FSLDIR through the job
environment) and on the local cluster: the cohort tables must be identical.

To fit CI, the template normalization is FSL's 12-dof FLIRT (``segmentation.transform: Affine``)
and the PET-to-T1w registration uses one start; FNIRT is exercised in test_fsl_engine.py."""
from __future__ import annotations

import os

import pandas as pd
import pytest

import test_orchestration_stages as ts
from engine_support import fsl_or_skip
from test_slurm import PARTITION, pytestmark as slurm_marks

pytestmark = [*slurm_marks, pytest.mark.fsl, pytest.mark.slow]

N_SUBJECTS = 6  # three per group: the group statistics need them


def test_fsl_cohort_on_slurm_matches_local(tmp_path):
    from gliaflow.pipeline.config import load_config
    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.session import GROUP_STEP, SESSION_STAGES
    from gliaflow.pipeline.simulate.cohort import simulate_cohort
    from gliaflow.workflows.flows import run_cohort
    from gliaflow.workflows.services.cluster import load_profile

    fsl_or_skip()
    ts.shared_prefect_server(tmp_path)
    bids = simulate_cohort(tmp_path / "bids", n_subjects=N_SUBJECTS, size="small", seed=11)
    sessions = discover(bids, require_blood=True).sessions
    cfg = load_config(overrides={"engine": "fsl", "execution.nprocs": 2, "stats.n_permutations": 100,
                                 "stats.tfce": False, "segmentation.transform": "Affine",
                                 "registration.n_starts": 1})
    assert {cfg.motion.engine, cfg.registration.engine, cfg.segmentation.engine,
            cfg.segmentation.normalization_engine} == {"fsl"}
    tables = {}
    slurm = load_profile("slurm").model_copy(update={
        "queue": PARTITION, "memory_gb": 2.0, "cores": 1, "walltime": "00:30:00"})
    for name, profile in (("local", "local"), ("slurm", slurm)):
        out = tmp_path / name
        o = run_cohort(sessions, stages=SESSION_STAGES, config=cfg, out_dir=out,
                       work_dir=tmp_path / f"{name}-work", level="all", profile=profile,
                       group_step=GROUP_STEP, show_progress=False)
        assert len(o.done) == N_SUBJECTS and not o.failed, o.failed
        assert o.group_error is None, o.group_error
        tables[name] = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
        # FSL ran (its command lines are in the cohort's provenance), and nothing else registered
        prov = (out / ".gliaflow" / "provenance.json").read_text()
        assert all(tool in prov for tool in ("mcflirt", "flirt", "bet", "fast"))
    jobs = list((tmp_path / "slurm-work" / "dask-jobs").glob("*.out"))
    assert jobs, "no SLURM job logs: the workers did not run as SLURM jobs"
    assert os.environ.get("FSLDIR")
    pd.testing.assert_frame_equal(tables["slurm"], tables["local"])
