"""Dask clusters from profiles: local processes, an existing scheduler, or batch jobs.

Profiles live in ``infrastructure/clusters/<name>.yaml`` (or any YAML path) and are validated
by :class:`ClusterProfile`. Every worker declares a ``MEMORY`` resource (bytes) so that stage
tasks can ask for memory with ``dask.annotate(resources={"MEMORY": n})``.

The scheduler is configured with ``distributed.scheduler.allowed-failures = 0``: when a worker
dies, the task fails at once with ``KilledWorker`` instead of being silently retried on another
worker, and the flow resubmits it as a new Prefect task run with more memory (see
:mod:`gliaflow.workflows.flows`).
"""
from __future__ import annotations

import importlib.resources
import os
import shlex
from pathlib import Path
from typing import Any, Literal

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gliaflow.pipeline.errors import ConfigError

__all__ = ["ClusterProfile", "AdaptiveSpec", "load_profile", "ClusterHandle", "start_cluster",
           "PROFILE_DIR", "MEMORY_RESOURCE"]

#: the shipped profiles: gliaflow.infrastructure/clusters, in a source checkout and an installed wheel
PROFILE_DIR = Path(str(importlib.resources.files("gliaflow.infrastructure") / "clusters"))
MEMORY_RESOURCE = "MEMORY"
GiB = 1024 ** 3
WORKER_PRELOAD = "gliaflow.workflows.services.worker_setup"  # imports the task engine at worker start


class AdaptiveSpec(BaseModel):
    """Adaptive scaling bounds (number of jobs)."""

    model_config = ConfigDict(extra="forbid")
    minimum: int = Field(0, ge=0)
    maximum: int = Field(8, ge=1)


class ClusterProfile(BaseModel):
    """A cluster profile (one YAML file).

    Memory in GiB; walltime as ``HH:MM:SS`` for every scheduler (LSF gets ``HH:MM``, rounded
    up to the minute).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "address", "slurm", "pbs", "sge", "lsf"]
    # local
    workers: int | None = Field(None, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    dashboard: bool = True
    # address
    address: str | None = None
    worker_resources: bool = True
    # common
    memory_gb: float | None = Field(None, gt=0, description="Per worker (local/address) or per job.")
    local_scratch: str | None = None
    # jobqueue
    queue: str | None = None
    account: str | None = None
    cores: int = Field(1, ge=1)
    processes: int = Field(1, ge=1)
    walltime: str | None = Field("01:00:00", pattern=r"^\d+:[0-5]\d:[0-5]\d$")
    resource_spec: str | None = Field(None, description="SGE: the -l request; default "
                                      "mem_free=<memory_gb>G")
    adaptive: AdaptiveSpec | None = None
    job_prologue: list[str] = Field(default_factory=list)
    container: str | None = None
    interface: str | None = None
    job_extra: list[str] = Field(default_factory=list)
    log_directory: str | None = None


def load_profile(name_or_path: str | Path) -> ClusterProfile:
    """Read and validate a profile: a name (looked up in ``GLIAFLOW_PROFILE_DIR`` folders, then
    :data:`PROFILE_DIR`, the shipped ``infrastructure/clusters``) or a YAML path.

    Raises
    ------
    ConfigError
        Unknown profile, unreadable YAML, or bad fields (each named).
    """
    p = Path(name_or_path)
    if not p.suffix:
        dirs = [Path(d) for d in os.environ.get("GLIAFLOW_PROFILE_DIR", "").split(os.pathsep) if d]
        for d in dirs + [PROFILE_DIR]:
            p = d / f"{name_or_path}.yaml"
            if p.is_file():
                break
    if not p.is_file():
        known = sorted(q.stem for q in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown cluster profile {str(name_or_path)!r}; known: {known}", file=p)
    try:
        data = yaml.safe_load(p.read_text()) or {}
        return ClusterProfile(**data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse: {exc}", file=p) from exc
    except ValidationError as exc:
        fields = [".".join(map(str, e["loc"])) for e in exc.errors()]
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid cluster profile: {msgs}", file=p, field=", ".join(fields)) from exc


class ClusterHandle:
    """A running cluster (or a connection target) and what the flow needs to know about it.

    Attributes
    ----------
    cluster : distributed cluster or None
        None for the ``address`` profile.
    address : str
        Scheduler address.
    worker_memory_bytes : int or None
        Memory of one worker (bytes): the largest MEMORY request a task may make.
    use_resources : bool
        Whether workers declare the MEMORY resource.
    dashboard_link : str or None
    """

    def __init__(self, profile: ClusterProfile, cluster=None, address: str | None = None,
                 worker_memory_bytes: int | None = None, use_resources: bool = True):
        self.profile = profile
        self.cluster = cluster
        self.address = address or (cluster.scheduler_address if cluster is not None else None)
        self.worker_memory_bytes = worker_memory_bytes
        self.use_resources = use_resources
        self.dashboard_link = getattr(cluster, "dashboard_link", None) if cluster is not None else None

    def task_runner(self):
        """A prefect_dask DaskTaskRunner bound to this cluster."""
        from prefect_dask import DaskTaskRunner

        # by address, never the cluster object: Prefect serialises the flow (and its task
        # runner) into every task submission, and a running cluster does not pickle
        return DaskTaskRunner(address=self.address)

    def close(self) -> None:
        """Shut the cluster down (no-op for ``address``)."""
        if self.cluster is not None:
            try:
                self.cluster.close()
            finally:
                self.cluster = None


def _dask_config() -> dict[str, Any]:
    return {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.daemon": False,  # stages may start their own processes
        "distributed.admin.tick.limit": "30s",
        "distributed.logging.distributed": "error",
        "distributed.deploy.lost-worker-timeout": "5s",
    }


def _worker_env(extra_env: dict[str, str] | None, threads: int) -> dict[str, str]:
    from gliaflow.workflows.services.prefect_server import quiet_prefect_env
    from gliaflow.workflows.services.threads import thread_environment

    env = {k: os.environ.get(k, v) for k, v in quiet_prefect_env().items()}
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    env.update(thread_environment(threads))
    env["NIPYPE_NO_ET"] = "1"
    env.update(extra_env or {})
    return env


def start_cluster(profile: ClusterProfile, *, nprocs: int | None = None, mem_gb: float | None = None,
                  threads_per_task: int = 1, work_dir: str | Path = ".",
                  env: dict[str, str] | None = None) -> ClusterHandle:
    """Start (or connect to) the Dask cluster a profile describes.

    Parameters
    ----------
    profile : ClusterProfile
    nprocs : int, optional
        Workers (local) or jobs (batch); overrides the profile.
    mem_gb : float, optional
        Memory per worker / job (GiB); overrides the profile.
    threads_per_task : int
        Threads each stage may use (sets OMP/ITK threads in the workers).
    work_dir : path
        Scratch root; worker spill goes to ``work_dir/dask`` unless the profile names one.
    env : dict, optional
        Environment for the workers (e.g. PREFECT_API_URL); exported in batch job scripts too.
    """
    import dask

    dask.config.set(_dask_config())
    # the workers' environment goes to the worker processes (Nanny env) or the job scripts;
    # the driver's own environment is left alone
    worker_env = _worker_env(env, threads_per_task)
    work_dir = Path(work_dir).absolute()
    scratch = profile.local_scratch or str(work_dir / "dask")
    kind = profile.kind

    if kind == "local":
        from distributed import LocalCluster

        cores = os.cpu_count() or 1
        # one single-task worker process per task's CPU allotment: ANTsPy holds the GIL, so two
        # tasks in one worker process run one after the other (measured: 100% CPU of 200%)
        n = nprocs or profile.workers or max(1, cores // max(1, threads_per_task))
        threads = profile.threads_per_worker or 1
        total = psutil.virtual_memory().total
        mem = int((mem_gb or profile.memory_gb or 0.9 * total / GiB / n) * GiB)
        scratch = os.path.expandvars(scratch)  # this machine is the node
        Path(scratch).mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=threads, processes=True, memory_limit=mem,
            resources={MEMORY_RESOURCE: mem}, local_directory=scratch,
            dashboard_address="127.0.0.1:0" if profile.dashboard else None,
            host="127.0.0.1", silence_logs=40, preload=[WORKER_PRELOAD], env=worker_env)
        return ClusterHandle(profile, cluster=cluster, worker_memory_bytes=mem)

    if kind == "address":
        address = os.environ.get("GLIAFLOW_DASK_ADDRESS") or profile.address
        if not address:
            raise ConfigError("the 'address' profile needs an address (or GLIAFLOW_DASK_ADDRESS)",
                              field="address")
        mem = int((mem_gb or profile.memory_gb) * GiB) if (mem_gb or profile.memory_gb) else None
        return ClusterHandle(profile, address=address, worker_memory_bytes=mem,
                             use_resources=profile.worker_resources and mem is not None)

    import dask_jobqueue

    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
               "sge": dask_jobqueue.SGECluster, "lsf": dask_jobqueue.LSFCluster}
    mem_job = float(mem_gb or profile.memory_gb or 4)
    mem_worker = int(mem_job * GiB / profile.processes)
    prologue = [f"export {k}={shlex.quote(v)}" for k, v in worker_env.items()]
    prologue += list(profile.job_prologue)
    python = f"{profile.container} python" if profile.container else None
    kwargs: dict[str, Any] = dict(
        queue=profile.queue, account=profile.account, cores=profile.cores,
        processes=profile.processes, memory=f"{mem_job}GiB", walltime=profile.walltime,
        job_script_prologue=prologue, job_extra_directives=list(profile.job_extra),
        worker_extra_args=["--resources", f"{MEMORY_RESOURCE}={mem_worker}",
                           "--preload", WORKER_PRELOAD],
        # node-local scratch such as "$TMPDIR" stays unexpanded: the job's shell expands it
        local_directory=scratch,
        log_directory=profile.log_directory or str(work_dir / "dask-jobs"),
        scheduler_options={"dashboard_address": ":0"},
    )
    if python:
        kwargs["python"] = python
    if profile.interface:
        kwargs["interface"] = profile.interface
    if kind in ("lsf", "sge"):  # both call the account a project (bsub -P, qsub -P)
        kwargs.pop("account")
        kwargs["project"] = profile.account
    if kind == "lsf" and profile.walltime:  # bsub -W takes [HH:]MM
        h, m, sec = (int(x) for x in profile.walltime.split(":"))
        total_min = h * 60 + m + (1 if sec else 0)
        kwargs["walltime"] = f"{total_min // 60:02d}:{total_min % 60:02d}"
    if kind == "sge":  # SGE reserves memory only through a resource request
        kwargs["resource_spec"] = profile.resource_spec or f"mem_free={mem_job:g}G"
        # Grid Engine ignores the script's `#!/usr/bin/env bash`: it runs the queue's shell
        # (/bin/sh on Debian, /bin/csh on stock installs), where bash prologue lines such as
        # `source env/bin/activate` fail; ask for bash unless the profile names a shell (-S)
        if not any(x.split()[:1] == ["-S"] for x in profile.job_extra):
            kwargs["job_extra_directives"] = ["-S /bin/bash"] + kwargs["job_extra_directives"]
    try:
        cluster = classes[kind](**{k: v for k, v in kwargs.items() if v is not None})
    except Exception as exc:  # missing sbatch/qsub/bsub, bad walltime, ...
        raise ConfigError(f"cannot start the {kind} cluster: {exc}", field="cluster") from exc
    if nprocs:
        cluster.scale(jobs=nprocs)
    else:
        ad = profile.adaptive or AdaptiveSpec()
        cluster.adapt(minimum_jobs=ad.minimum, maximum_jobs=ad.maximum)
    return ClusterHandle(profile, cluster=cluster, worker_memory_bytes=mem_worker)
