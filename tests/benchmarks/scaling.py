"""Orchestration benchmark: scaling, per-task overhead, planning a large cohort, cached rerun.

Run: ``python tests/benchmarks/scaling.py`` (prints ``name<TAB>value<TAB>unit`` lines).

Stages are the small real stages of tests/integration/test_orchestration_stages.py (they read
the session's NIfTI files and write real outputs atomically); ``cpu_s`` adds pure-Python CPU
work per stage for the scaling figure, 0 gives the "no-op pipeline" for the overhead figure.
Overhead = 2 workers x cohort wall time - the stages' own time, i.e. every worker-second not
spent inside a stage (Prefect task runs, Dask, the driver, the Prefect server competing for
the 2 cores, flow start and stop), per session; measured at two cohort sizes so the fixed
per-run part and the marginal per-session part can be told apart.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "integration"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(TESTS / "integration")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


def make_cohort(root: Path, n: int) -> Path:
    import bidsfactory as bf

    return bf.make_dataset(root, subjects=tuple(f"{i:04d}" for i in range(1, n + 1)))


def run(ds: Path, out: Path, handle, cpu_s: float = 0.0):
    import json

    import test_orchestration_stages as ts

    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.config import load_config
    from gliaflow.workflows.flows import run_cohort

    (ds / "toy_knobs.json").write_text(json.dumps({"cpu_s": cpu_s}))
    d = discover(ds, require_blood=True)
    info: dict = {}
    t0 = time.perf_counter()
    o = run_cohort(d.sessions, stages=ts.STAGES, config=load_config(), out_dir=out,
                   level="participant", handle=handle, show_progress=False, info=info)
    wall = time.perf_counter() - t0
    assert not o.failed, o.failed
    return wall, o, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=4, help="sessions for the scaling figure")
    ap.add_argument("--cpu-s", type=float, default=1.0, help="CPU seconds per stage (scaling)")
    ap.add_argument("--noop-sessions", type=int, default=20)
    ap.add_argument("--plan-sessions", type=int, default=1000)
    args = ap.parse_args()

    import test_orchestration_stages as ts

    from gliaflow.workflows.cli import main as cli
    from gliaflow.workflows.services.cluster import ClusterProfile, start_cluster
    from gliaflow.workflows.services.prefect_server import PrefectServer, prefect_api

    n_stages = len(ts.STAGES)
    emit("cpu_count", os.cpu_count() or 0, "cores")
    emit("load_average_1min_at_start", os.getloadavg()[0], "(other processes compete for the cores)")
    tmp = Path(tempfile.mkdtemp(prefix="gliaflow-bench-"))
    try:
        srv = PrefectServer(tmp / "prefect-probe").start()
        emit("prefect_server_start", srv.startup_s, "s")
        srv.stop()
        with prefect_api(tmp / "work") as _url:
            # scaling: 1 vs 2 single-threaded workers on a CPU-bound stage set
            ds = make_cohort(tmp / "ds_cpu", args.sessions)
            walls = {}
            for n in (1, 2):
                t0 = time.perf_counter()
                h = start_cluster(ClusterProfile(kind="local", threads_per_worker=1), nprocs=n,
                                  mem_gb=1.0, work_dir=tmp / f"dask{n}")
                emit(f"cluster_start_{n}_workers", time.perf_counter() - t0, "s")
                try:
                    walls[n], _, _ = run(ds, tmp / f"out_cpu_{n}", h, cpu_s=args.cpu_s)
                finally:
                    h.close()
                emit(f"cohort_wall_{n}_workers", walls[n], "s")
            emit("cpu_work_per_cohort", args.sessions * n_stages * args.cpu_s, "s")
            emit("scaling_efficiency_2_workers", walls[1] / (2 * walls[2]) * 100, "%")

            # overhead: no-op pipeline, 2 workers, two cohort sizes (fixed + per-session cost)
            walls0, over = {}, {}
            for n in sorted({args.noop_sessions, 3 * args.noop_sessions}):
                ds0 = make_cohort(tmp / f"ds_noop{n}", n)
                h = start_cluster(ClusterProfile(kind="local", threads_per_worker=1), nprocs=2,
                                  mem_gb=1.0, work_dir=tmp / f"dask_noop{n}")
                try:
                    wall, o, info = run(ds0, tmp / f"out_noop{n}", h, cpu_s=0.0)
                finally:
                    h.close()
                stage_s = sum(p.results[s]["_meta"]["seconds"] for p in o.plans for s in p.ran)
                walls0[n], over[n] = wall, wall * 2 - stage_s  # idle or overhead worker-seconds
                emit(f"noop_cohort_wall_{n}_sessions", wall, "s")
                emit(f"noop_stage_compute_total_{n}_sessions", stage_s, "s")
                emit(f"overhead_per_session_{n}_sessions", over[n] / n,
                     "s (2 workers x wall - stage time) / sessions, all 6 stages")
                emit(f"overhead_per_session_stage_{n}_sessions", over[n] / (n * n_stages), "s")
                emit(f"task_submissions_{n}_sessions", info.get("submissions", 0), "session tasks")
                emit(f"driver_submit_time_per_session_{n}_sessions",
                     info.get("submit_s", 0) / max(1, info.get("submissions", 1)), "s")
            n1, n2 = sorted(over)
            if n2 > n1:
                emit("marginal_overhead_per_session", (over[n2] - over[n1]) / (n2 - n1),
                     f"s (slope between {n1} and {n2} sessions)")
                emit("fixed_overhead_per_run", over[n1] - n1 * (over[n2] - over[n1]) / (n2 - n1),
                     "worker-s (flow start/stop, first task)")

            # fully cached rerun of the same sessions
            n = args.noop_sessions
            t0 = time.perf_counter()
            _, o2, _ = run(tmp / f"ds_noop{n}", tmp / f"out_noop{n}", None, cpu_s=0.0)
            emit(f"cached_rerun_{n}_sessions", time.perf_counter() - t0, "s")
            assert all(not p.ran for p in o2.plans)

        # plan + dry run of a large cohort
        t0 = time.perf_counter()
        big = make_cohort(tmp / "ds_big", args.plan_sessions)
        emit(f"write_{args.plan_sessions}_session_dataset", time.perf_counter() - t0, "s")
        import contextlib
        import io

        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(["run", str(big), str(tmp / "out_big"), "participant", "--dry-run",
                           "--stages", "test_orchestration_stages:STAGES"])
        emit(f"dry_run_{args.plan_sessions}_sessions", time.perf_counter() - t0, "s")
        assert rc == 0 and f"{args.plan_sessions} sessions valid" in buf.getvalue(), buf.getvalue()[:500]
        emit("load_average_1min_at_end", os.getloadavg()[0], "")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
