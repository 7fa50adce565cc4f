"""Array-job mode: one batch job per session plus a dependent group job (no long-running driver).

Each session job runs ``gliaflow run BIDS OUT participant --participant-label X
[--session-label Y]`` with the same config inside its allocation (a one-worker local cluster,
its own work dir so private Prefect servers never share a database). The group job runs
``gliaflow run BIDS OUT group`` after all of them (``--dependency=afterany:<ids>``), so it
also runs when some sessions failed; the ledger says which.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, Field

from gliaflow.pipeline.errors import ConfigError

__all__ = ["JobSettings", "ArrayJobPlan", "write_array_jobs", "submit_array_jobs"]


class JobSettings(BaseModel):
    """Resources of each session job (SLURM terms)."""

    partition: str | None = None
    account: str | None = None
    cpus: int = Field(1, ge=1)
    mem_gb: float = Field(4.0, gt=0, description="Memory per session job (GiB).")
    walltime: str = "04:00:00"
    group_mem_gb: float = Field(4.0, gt=0)
    prologue: list[str] = Field(default_factory=list, description="Shell lines before the command.")
    extra: list[str] = Field(default_factory=list, description="Extra #SBATCH directives.")


class ArrayJobPlan(BaseModel):
    """The scripts written: per session (keyed 'sub-X[_ses-Y]') and the group job."""

    jobs_dir: Path
    session_scripts: dict[str, Path]
    group_script: Path
    job_ids: dict[str, str] = Field(default_factory=dict)
    group_job_id: str | None = None


def _header(name: str, log: Path, js: JobSettings, cpus: int, mem_gb: float,
            dependency: str | None = None) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={log}",
             f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --mem={int(mem_gb * 1024)}M",
             f"#SBATCH --time={js.walltime}"]
    if js.partition:
        lines.append(f"#SBATCH --partition={js.partition}")
    if js.account:
        lines.append(f"#SBATCH --account={js.account}")
    if dependency:
        lines.append(f"#SBATCH --dependency={dependency}")
    lines += [f"#SBATCH {x}" for x in js.extra]
    lines += ["set -euo pipefail", "export NIPYPE_NO_ET=1",
              f"export OMP_NUM_THREADS={cpus} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={cpus}"]
    return lines + list(js.prologue)


def write_array_jobs(bids_dir: str | Path, out_dir: str | Path, specs: Sequence, *,
                     jobs_dir: str | Path | None = None, work_dir: str | Path | None = None,
                     config: str | Path | None = None, job: JobSettings | None = None,
                     extra_args: Sequence[str] = (), python: str | None = None) -> ArrayJobPlan:
    """Write one sbatch script per participant x session and the group script.

    Parameters
    ----------
    bids_dir, out_dir : path
    specs : list of SessionSpec
        Valid sessions (one job per distinct participant/session pair).
    jobs_dir : path, optional
        Where scripts and job logs go (default ``OUT_DIR/.gliaflow/jobs``).
    work_dir : path, optional
        Scratch root; each job uses ``work_dir/<job>`` (default ``OUT_DIR/.gliaflow/work``).
    config : path, optional
        The config file every job uses.
    job : JobSettings
    extra_args : list of str
        Extra arguments for every ``gliaflow run`` command line.
    python : str, optional
        Python executable on the compute nodes (default: this one).
    """
    job = job or JobSettings()
    bids_dir, out_dir = Path(bids_dir).absolute(), Path(out_dir).absolute()
    jobs_dir = Path(jobs_dir or out_dir / ".gliaflow" / "jobs").absolute()
    work_dir = Path(work_dir or out_dir / ".gliaflow" / "work").absolute()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    py = python or sys.executable
    base = [py, "-m", "gliaflow.workflows", "run", str(bids_dir), str(out_dir)]
    common = (["--config", str(Path(config).absolute())] if config else []) + list(extra_args)
    pairs: dict[str, tuple[str, str | None]] = {}
    for s in specs:
        name = f"sub-{s.participant}" + (f"_ses-{s.session}" if s.session else "")
        pairs.setdefault(name, (s.participant, s.session))
    scripts: dict[str, Path] = {}
    for name, (sub, ses) in sorted(pairs.items()):
        cmd = base + ["participant", "--participant-label", sub]
        if ses:
            cmd += ["--session-label", ses]
        cmd += ["--work-dir", str(work_dir / name), "--cluster", "local", "--nprocs", "1",
                "--mem", f"{job.mem_gb * 0.9:.2f}", "--quiet"] + common
        lines = _header(f"gf-{name}", jobs_dir / f"{name}-%j.out", job, job.cpus, job.mem_gb)
        # exit 0 even when the session failed: the ledger records it, the group job still runs
        lines += [" ".join(shlex.quote(c) for c in cmd) + " || echo \"gliaflow: session failed "
                  "(exit $?), see OUT_DIR/ledger.tsv\""]
        p = jobs_dir / f"{name}.sbatch"
        p.write_text("\n".join(lines) + "\n")
        scripts[name] = p
    gcmd = base + ["group", "--work-dir", str(work_dir / "group"), "--quiet"] + common
    glines = _header("gf-group", jobs_dir / "group-%j.out", job, 1, job.group_mem_gb,
                     dependency="afterany:@DEPS@")
    glines.append(" ".join(shlex.quote(c) for c in gcmd))
    gp = jobs_dir / "group.sbatch"
    gp.write_text("\n".join(glines) + "\n")
    return ArrayJobPlan(jobs_dir=jobs_dir, session_scripts=scripts, group_script=gp)


def _sbatch(args: list[str]) -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise ConfigError("sbatch not found: array-job mode needs SLURM (or use --no-submit)",
                          field="--scheduler")
    out = subprocess.run([exe, "--parsable"] + args, capture_output=True, text=True)
    if out.returncode != 0:
        raise ConfigError(f"sbatch failed: {out.stderr.strip()}", file=args[-1])
    return out.stdout.strip().split(";")[0]


def submit_array_jobs(plan: ArrayJobPlan) -> ArrayJobPlan:
    """Submit the session jobs, then the group job depending on all of them (``afterany``)."""
    ids = {name: _sbatch([str(p)]) for name, p in plan.session_scripts.items()}
    text = plan.group_script.read_text()
    deps = ":".join(ids.values())
    if deps:
        text = text.replace("@DEPS@", deps)
    else:
        text = "\n".join(line for line in text.splitlines() if "--dependency" not in line) + "\n"
    plan.group_script.write_text(text)
    plan.job_ids = ids
    plan.group_job_id = _sbatch([str(plan.group_script)])
    return plan
