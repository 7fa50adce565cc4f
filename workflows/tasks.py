"""The Prefect task that runs one processing stage of one session on a Dask worker.

The task body is :func:`execute_stage`: it builds the :class:`StageContext`, sets the thread
count of numerical libraries, runs the stage function, and writes the stage's completion
manifest (atomically) once every output exists. Results travel back as plain dicts
(``StageResult.model_dump()``), never as Prefect persisted results.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from .cache import write_manifest

__all__ = ["execute_stage", "stage_task"]


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
    """
    from gliaflow.pipeline.session import StageContext, StageResult, set_threads

    set_threads(n_threads)
    t0 = time.perf_counter()
    wall0 = time.time()
    session_work = Path(work_dir) / spec.session_id
    session_work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(spec=spec, config=config, out_dir=Path(out_dir), work_dir=session_work,
                       n_threads=n_threads)
    up = {k: StageResult(**v) for k, v in upstream.items()}
    tb_file = session_work / f"{stage}.traceback.txt"
    try:
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
