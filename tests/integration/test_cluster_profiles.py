"""Batch-scheduler profiles (slurm, pbs, sge, lsf) turned into dask-jobqueue job scripts.

SLURM (and SGE where installed) are also run for real in test_slurm.py / test_sge.py; PBS and
LSF have no Debian packages, so for them the job script is what can be checked here: every
profile field must reach the script in that scheduler's own syntax.
"""
from __future__ import annotations

import pytest

from gliaflow.pipeline.errors import ConfigError
from gliaflow.workflows.services.cluster import (WORKER_PRELOAD, AdaptiveSpec, ClusterProfile, load_profile,
                                        start_cluster)

# scheduler -> lines the script must contain for queue, account, walltime and memory
EXPECTED = {
    "slurm": ["#SBATCH -p q1", "#SBATCH -A acct7", "#SBATCH -t 01:30:20", "#SBATCH --mem=3G",
              "#SBATCH --cpus-per-task=2"],
    "pbs": ["#PBS -q q1", "#PBS -A acct7", "#PBS -l walltime=01:30:20", "ncpus=2:mem=3072MB"],
    "sge": ["#$ -S /bin/bash", "#$ -q q1", "#$ -P acct7", "#$ -l h_rt=01:30:20", "#$ -l mem_free=3G"],
    "lsf": ["#BSUB -q q1", '#BSUB -P "acct7"', "#BSUB -W 01:31", "#BSUB -n 2"],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_profile_fields_reach_the_job_script(kind, tmp_path):
    prof = load_profile(kind).model_copy(update={
        "queue": "q1", "account": "acct7", "walltime": "01:30:20", "memory_gb": 3.0, "cores": 2,
        "job_prologue": ["module load apptainer"],
        "container": "apptainer exec --bind /data gliaflow.sif", "local_scratch": "$TMPDIR",
        "adaptive": AdaptiveSpec(minimum=0, maximum=2)})  # adaptive from 0: no job is submitted
    h = start_cluster(prof, work_dir=tmp_path, env={"PREFECT_API_URL": "http://10.0.0.5:4200/api"})
    try:
        script = h.cluster.job_script()
    finally:
        h.close()
    for line in EXPECTED[kind]:
        assert line in script, (line, script)
    lines = script.splitlines()
    worker = next(x for x in lines if "distributed.cli.dask_worker" in x)
    # the container wraps the worker's python; node-local scratch expands on the node
    assert worker.startswith("apptainer exec --bind /data gliaflow.sif python -m ")
    assert "--local-directory $TMPDIR" in worker
    assert f"--resources MEMORY={3 * 1024 ** 3}" in worker and f"--preload {WORKER_PRELOAD}" in worker
    # the workers are told where the Prefect API is, then the site's prologue runs
    i_api = lines.index("export PREFECT_API_URL=http://10.0.0.5:4200/api")
    assert i_api < lines.index("module load apptainer") < lines.index(worker)
    assert "export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1" in lines


def test_bad_walltime_is_named():
    with pytest.raises(ValueError) as exc:
        ClusterProfile(kind="slurm", walltime="90")
    assert "walltime" in str(exc.value)


def test_sge_resource_spec_overrides_the_memory_default(tmp_path):
    prof = ClusterProfile(kind="sge", resource_spec="h_vmem=6G", adaptive=AdaptiveSpec(minimum=0))
    h = start_cluster(prof, work_dir=tmp_path)
    try:
        script = h.cluster.job_script()
    finally:
        h.close()
    assert "#$ -l h_vmem=6G" in script and "mem_free" not in script


def test_unknown_profile_field_is_a_config_error(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("kind: pbs\nwalltime: '1h'\nqueue: batch\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(bad)
    assert "walltime" in str(exc.value) and str(bad) in str(exc.value)
