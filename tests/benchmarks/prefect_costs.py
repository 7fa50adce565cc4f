"""What a Prefect task run costs in each of the ways gliaflow could run a stage.

Run: ``python tests/benchmarks/prefect_costs.py`` (prints ``name<TAB>value<TAB>unit`` lines).
Against a private Prefect server on loopback, with no-op task bodies:

* a task called inside a flow (in-process);
* a task that calls 6 nested tasks (gliaflow's session task with its 6 stage task runs);
* a subflow with 6 tasks (a "session flow" per session);
* tasks submitted through prefect-dask's ``DaskTaskRunner.submit`` to 2 local workers, against
  gliaflow's submission (``tasks.run_prefect_task`` with the flow's context serialised once):
  driver time per submission and wall time per task.
These are the figures behind running one Dask task per session (workflows/tasks.py).
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

N = 30


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


@task(persist_result=False, cache_policy=NO_CACHE)
def noop(x: int) -> int:
    return x


@task(persist_result=False, cache_policy=NO_CACHE)
def six_nested(i: int) -> int:
    for s in range(6):
        noop(s)
    return i


@flow(persist_result=False, validate_parameters=False)
def six_in_subflow(i: int) -> int:
    for s in range(6):
        noop(s)
    return i


def _per_call(fn, n: int) -> float:
    fn(0)  # warm
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


@flow(persist_result=False)
def in_process() -> dict[str, float]:
    return {"task_in_flow": _per_call(noop, N),
            "task_with_6_nested_tasks": _per_call(six_nested, N // 3),
            "subflow_with_6_tasks": _per_call(six_in_subflow, 5)}


def _dask_submissions(address: str) -> dict[str, float]:
    from prefect.context import FlowRunContext, serialize_context
    from prefect_dask import DaskTaskRunner

    from gliaflow.workflows.tasks import run_prefect_task

    @flow(task_runner=DaskTaskRunner(address=address), persist_result=False)
    def via_prefect_dask() -> tuple[float, float]:
        noop.submit(0).result()
        t0 = time.perf_counter()
        futs = [noop.submit(i) for i in range(N)]
        t_sub = time.perf_counter() - t0
        for f in futs:
            f.result()
        return t_sub / N, (time.perf_counter() - t0) / N

    @flow(task_runner=DaskTaskRunner(address=address), persist_result=False)
    def via_shared_context() -> tuple[float, float]:
        client = FlowRunContext.get().task_runner.client
        ctx = serialize_context()
        client.submit(run_prefect_task, noop, uuid.uuid4(), {"x": 0}, ctx, pure=False).result()
        t0 = time.perf_counter()
        futs = [client.submit(run_prefect_task, noop, uuid.uuid4(), {"x": i}, ctx, pure=False)
                for i in range(N)]
        t_sub = time.perf_counter() - t0
        for f in futs:
            assert f.result().is_completed()
        return t_sub / N, (time.perf_counter() - t0) / N

    a = via_prefect_dask()
    b = via_shared_context()
    return {"prefect_dask_submit_driver": a[0], "prefect_dask_wall_per_task": a[1],
            "shared_context_submit_driver": b[0], "shared_context_wall_per_task": b[1]}


def main() -> None:
    from gliaflow.workflows.services.cluster import ClusterProfile, start_cluster
    from gliaflow.workflows.services.prefect_server import prefect_api

    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)
    emit("load_average_1min_at_start", os.getloadavg()[0], "")
    tmp = Path(tempfile.mkdtemp(prefix="gliaflow-prefect-costs-"))
    with prefect_api(tmp) as _url:
        for k, v in in_process().items():
            emit(k, v, "s per call")
        h = start_cluster(ClusterProfile(kind="local"), nprocs=2, mem_gb=1.0, work_dir=tmp)
        try:
            for k, v in _dask_submissions(h.address).items():
                emit(k, v, "s per task (2 workers)")
        finally:
            h.close()
    emit("load_average_1min_at_end", os.getloadavg()[0], "")


if __name__ == "__main__":
    main()
