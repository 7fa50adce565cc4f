"""Prefect tasks that run on Dask workers: one ``session`` task per session, whose stages run
as nested ``stage`` task runs in the same worker process.

Why nested (``tests/benchmarks/prefect_costs.py``): a task submitted through prefect-dask's
``DaskTaskRunner`` costs about 0.05 s of driver CPU (the whole settings model is serialised for
every submission) plus its worker-side set-up (settings re-validated, TLS contexts built);
with one per stage that came to 0.2 s per session-stage. A task called inside a running task
costs about 2 ms, while a Prefect subflow per session costs about 1.1 s (its heartbeat thread
is joined at the end). So the Dask unit is the session, and Prefect still records one task run
per session x stage (``<session>:<stage>``), each a child of its ``session`` task run.

Results travel back as plain dicts (``StageResult.model_dump()``), never as Prefect persisted
results. Every finished stage writes its manifest (atomically) before the next starts, so a
session whose worker dies resumes from the stage that was running.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from gliaflow.workflows.cache import write_manifest
from gliaflow.workflows.runlog import run_log, session_log_path

__all__ = ["execute_stage", "stage_task", "run_session", "session_task", "SessionWork", "StageFailed",
           "error_record", "run_prefect_task", "PROGRESS_TOPIC"]

PROGRESS_TOPIC = "gliaflow-stage"  # Dask event topic: {"session": id, "stage": name}


class StageFailed(Exception):
    """A stage of a session failed; carries the stages the session finished before it.

    Parameters
    ----------
    stage : str
        The stage that failed.
    kind : str
        Error kind (``GliaflowError.kind``, or ``internal``).
    message : str
        The error message (GliaflowError messages verbatim; otherwise ``Type: message`` plus
        where the traceback was written).
    finished : dict
        Results (dicts) of the stages this task run finished before the failure.
    """

    def __init__(self, stage: str, kind: str, message: str, finished: dict[str, dict]):
        self.stage, self.kind, self.message, self.finished = stage, kind, message, finished
        super().__init__(f"{stage}: {message}")

    def __reduce__(self):  # pickled back to the driver through Dask
        return (StageFailed, (self.stage, self.kind, self.message, self.finished))


def execute_stage(func: Callable, stage: str, spec: Any, config: Any, out_dir: str, work_dir: str,
                  key: str, upstream: dict[str, dict], n_threads: int = 1) -> dict:
    """Run one stage and record it as finished.

    Parameters
    ----------
    func : callable
        ``func(ctx, upstream) -> StageResult`` (the Stage's function).
    stage : str
        Stage name.
    spec : SessionSpec
    config : PipelineConfig
    out_dir, work_dir : str
        Derivatives root and the scratch root (the session gets ``work_dir/<session_id>``).
    key : str
        The stage's cache key (written into its manifest).
    upstream : dict
        Results of the required stages, as dicts.
    n_threads : int
        CPU threads the stage may use.

    Returns
    -------
    dict
        The StageResult as a JSON-able dict, plus ``seconds`` (wall time, s) in ``_meta``.

    Warnings and library log records of the stage go to ``OUT_DIR/.gliaflow/logs/<session_id>.log``
    (:func:`gliaflow.workflows.runlog.run_log`).
    """
    from gliaflow.pipeline.session import StageContext, StageResult
    from gliaflow.workflows.services.threads import set_process_threads

    set_process_threads(n_threads)
    t0 = time.perf_counter()
    wall0 = time.time()
    session_work = Path(work_dir) / spec.session_id
    session_work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(spec=spec, config=config, out_dir=Path(out_dir), work_dir=session_work)
    up = {k: StageResult(**v) for k, v in upstream.items()}
    tb_file = session_work / f"{stage}.traceback.txt"
    try:
        with run_log(session_log_path(out_dir, spec.session_id)):  # library warnings: not the terminal
            res = func(ctx, up)
    except Exception:
        # the terminal stays quiet (Prefect task-run errors are logged at CRITICAL only); the
        # full traceback goes next to the session's scratch, the ledger names it
        import traceback

        tb_file.write_text(traceback.format_exc())
        raise
    tb_file.unlink(missing_ok=True)
    if not isinstance(res, StageResult):
        res = StageResult(**dict(res))
    if res.stage != stage:
        res = res.model_copy(update={"stage": stage})
    data = res.model_dump(mode="json")
    missing = [k for k, p in res.outputs.items() if not Path(p).exists()]
    if missing:
        from gliaflow.pipeline.errors import OutputError

        raise OutputError(f"stage {stage} reported outputs that do not exist: {missing}",
                          file=str(res.outputs[missing[0]]))
    write_manifest(out_dir, spec.session_id, key, data)
    data["_meta"] = {"seconds": time.perf_counter() - t0, "pid": os.getpid(), "start": wall0,
                     "end": time.time()}
    return data


stage_task = task(execute_stage, name="stage", persist_result=False, cache_policy=NO_CACHE,
                  retries=0, log_prints=False)


def _announce(session_id: str, stage: str) -> None:
    """Tell the driver (Dask event ``PROGRESS_TOPIC``) which stage a session is in."""
    try:
        from distributed import get_worker

        get_worker().log_event(PROGRESS_TOPIC, {"session": session_id, "stage": stage})
    except ValueError:  # not on a Dask worker
        pass


def error_record(exc: BaseException, tb_file: Path | None = None) -> tuple[str, str]:
    """(kind, message) for the ledger: GliaflowError kind and message verbatim; anything else is
    ``internal`` with ``Type: message`` and the traceback file when it was written."""
    from gliaflow.pipeline.errors import GliaflowError

    if isinstance(exc, GliaflowError):
        return exc.kind, str(exc)
    msg = f"{type(exc).__name__}: {exc}"
    return "internal", f"{msg} (traceback: {tb_file})" if tb_file and tb_file.exists() else msg


class SessionWork:
    """What a session task needs, in a plain object: Prefect walks lists, dicts, dataclasses and
    pydantic models passed as task parameters looking for futures (and Dask rewrites tuples),
    which costs tens of milliseconds per submission for a config and a spec.

    Attributes
    ----------
    stages : list of (name, func, requires)
        All stages of the pipeline, in dependency order.
    spec : SessionSpec
    config : PipelineConfig
    keys : dict
        Cache key of every stage.
    done : dict
        Results (dicts) of the stages already finished (cached); they are not rerun.
    """

    __slots__ = ("stages", "spec", "config", "keys", "done")

    def __init__(self, stages: Sequence[tuple[str, Callable, tuple[str, ...]]], spec: Any,
                 config: Any, keys: dict[str, str], done: dict[str, dict]):
        self.stages, self.spec, self.config, self.keys, self.done = stages, spec, config, keys, done

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:  # what the Prefect UI shows as the parameter
        return f"SessionWork({self.spec.session_id})"


def run_session(work: SessionWork, out_dir: str, work_dir: str, n_threads: int = 1) -> dict[str, dict]:
    """Run a session's unfinished stages in order, each as a nested ``stage`` task run.

    Parameters
    ----------
    work : SessionWork
        Stages, session, config, cache keys and the results already finished.
    out_dir, work_dir, n_threads :
        As for :func:`execute_stage`.

    Returns
    -------
    dict
        Results of the stages run here, by stage name, in the order they ran.

    Raises
    ------
    StageFailed
        When a stage raises; it names the stage and carries the stages finished before it.
    """
    spec, config = work.spec, work.config
    results = {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in work.done.items()}
    ran: dict[str, dict] = {}
    sid = spec.session_id
    for name, func, requires in work.stages:
        if name in results:
            continue
        _announce(sid, name)
        t = stage_task.with_options(name=name, task_run_name=f"{sid}:{name}")
        try:  # quote(): Prefect need not walk the models looking for futures
            data = t(func=func, stage=name, spec=quote(spec), config=quote(config),
                     out_dir=out_dir, work_dir=work_dir, key=work.keys[name],
                     upstream=quote({r: results[r] for r in requires}), n_threads=n_threads)
        except Exception as exc:
            kind, msg = error_record(exc, Path(work_dir) / sid / f"{name}.traceback.txt")
            raise StageFailed(name, kind, msg, ran) from None
        ran[name] = data
        results[name] = {k: v for k, v in data.items() if k != "_meta"}
    return ran


session_task = task(run_session, name="session", persist_result=False, cache_policy=NO_CACHE,
                    retries=0, log_prints=False)


def run_prefect_task(task_obj, task_run_id, parameters: dict[str, Any], context: dict[str, Any]):
    """Worker side of a submission: run ``task_obj`` as the Prefect task run ``task_run_id``
    inside the flow run described by ``context`` (``prefect.context.serialize_context()``, taken
    once per flow run on the driver), as prefect-dask does for each of its submissions.

    Returns
    -------
    prefect.State
        The task run's final state (its result or exception inside).
    """
    from prefect.task_engine import run_task_sync

    return run_task_sync(task_obj, task_run_id=task_run_id, parameters=parameters,
                         context=context, return_type="state",
                         dependencies={k: set() for k in parameters})
