"""The `address` profile: a Dask scheduler and workers started outside gliaflow (as the
docker-compose file or a site service starts them), a shared Prefect server, and `gliaflow run
--cluster address`. The run must use those workers and leave them running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil

import bidsfactory as bf
import test_orchestration_stages as ts

from gliaflow.workflows.services.cluster import MEMORY_RESOURCE, WORKER_PRELOAD
from gliaflow.workflows.ledger import read_ledger


def _start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_run_on_an_existing_scheduler_and_workers(tmp_path):
    api = ts.shared_prefect_server(tmp_path / "prefect")
    env = dict(os.environ, PREFECT_API_URL=api, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0",
               PYTHONPATH=ts.pythonpath_with_stages(),
               OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    sched_file = tmp_path / "scheduler.json"
    bindir = Path(sys.executable).parent
    dask_cli = [str(bindir / "dask")] if (bindir / "dask").exists() else [sys.executable, "-m", "dask"]
    procs = [_start(dask_cli + ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                "--no-dashboard", "--scheduler-file", str(sched_file)],
                    env, tmp_path / "scheduler.log")]
    try:
        t0 = time.time()
        while not sched_file.exists() and time.time() - t0 < 60:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        mem = 1 << 30
        procs.append(_start(dask_cli + ["worker", address, "--nworkers", "2", "--nthreads", "1",
                                        "--memory-limit", str(mem), "--resources",
                                        f"{MEMORY_RESOURCE}={mem}", "--preload", WORKER_PRELOAD],
                            env, tmp_path / "workers.log"))
        ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
        out = tmp_path / "out"
        r = subprocess.run(
            [sys.executable, "-m", "gliaflow.workflows", "run", str(ds), str(out), "all",
             "--cluster", "address", "--mem", "1",
             "--stages", "test_orchestration_stages:STAGES",
             "--group-step", "test_orchestration_stages:group_step"],
            env=dict(env, GLIAFLOW_DASK_ADDRESS=address), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert address in r.stdout + r.stderr  # the scheduler it printed is the one given
        led = read_ledger(out)
        assert len(led) == 3 and all(row.status == "done" for row in led.values())
        table = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
        assert len(table) == 3 * len(ts.REGIONS)
        # the stages ran in the external worker processes, and those are still running
        workers = {p.pid for p in psutil.Process(procs[1].pid).children(recursive=True)}
        pids = {int(line.split()[1]) for f in (out / ".gliaflow" / "work").glob("*/runs.log")
                for line in f.read_text().splitlines()}
        assert pids and pids <= workers, (pids, workers)
        assert all(p.poll() is None for p in procs), "gliaflow stopped a cluster it does not own"
    finally:
        _stop(procs)
