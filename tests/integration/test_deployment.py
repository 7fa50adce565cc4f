"""The Prefect deployment (infrastructure/prefect/prefect.yaml) used the way a site admin does:
``prefect work-pool create``, ``prefect deploy``, ``prefect deployment run``, ``prefect worker
start``, all real CLI processes against a private Prefect server, on a toy BIDS dataset run by
the small real stages of test_orchestration_stages.py."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bidsfactory as bf
import test_orchestration_stages as ts

from gliaflow.pipeline.io.bids import discover
from gliaflow.workflows.ledger import read_ledger

REPO = Path(__file__).resolve().parents[2]

PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect")
pytestmark = pytest.mark.skipif(PREFECT is None, reason="the `prefect` command line is not installed")

PREFECT_FILE = "infrastructure/prefect/prefect.yaml"
POOL = "gliaflow-pool"
DEPLOYMENT = "gliaflow-deployment/gliaflow-cohort"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    return ts.shared_prefect_server(tmp_path_factory.mktemp("prefect"))


def _env(api: str, home: Path) -> dict[str, str]:
    """What an admin's shell has: the server's URL, a Prefect home of its own, and (for the toy
    stages) tests/integration on PYTHONPATH, which the worker passes to flow runs and they to
    their Dask workers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home), PREFECT_CLI_COLORS="false",
               COLUMNS="200", PYTHONPATH=ts.pythonpath_with_stages(env.get("PYTHONPATH", "")))
    return env


def _prefect(args: list[str], env: dict, cwd: Path, timeout: float = 60) -> str:
    r = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    text = r.stdout + r.stderr
    hint = ""
    if "422" in text and "valid integer" in text:
        hint = ("\nThe Prefect server rejected an explicit null: FastAPI >= 0.151 no longer "
                "replaces null body values by their defaults, which Prefect 3.8's client sends.")
    assert r.returncode == 0, f"prefect {' '.join(args)} exited {r.returncode}:\n{text[-4000:]}{hint}"
    return text


def _run_deployment(params: dict, env: dict, cwd: Path) -> str:
    args = ["deployment", "run", DEPLOYMENT]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    out = _prefect(args, env, cwd)
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert m, out
    return m.group(1)


def _worker_run_once(env: dict, cwd: Path, log: Path, timeout: float = 150) -> tuple[int, str]:
    """``prefect worker start --run-once``: submits the scheduled runs and waits for them."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process",
                                 "--run-once"], env=env, cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and the flow runs it started
            proc.wait()
            pytest.fail(f"the worker did not finish within {timeout:.0f} s:\n"
                        + log.read_text(errors="replace")[-4000:])
    return rc, log.read_text(errors="replace")


def test_deployment_created_triggered_and_run_by_a_process_worker(tmp_path, api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId,
                                                LogFilter, LogFilterFlowRunId, TaskRunFilter,
                                                TaskRunFilterFlowRunId)
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    sids = [s.session_id for s in discover(ds).sessions]
    out = tmp_path / "out"
    missing = tmp_path / "no-such-bids"
    env = _env(api, tmp_path / "prefect-home")
    elsewhere = tmp_path / "admin"  # the worker runs outside the repository
    elsewhere.mkdir()

    # the admin: a process work pool, the deployment from the repository root, two runs
    _prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env, elsewhere)
    text = _prefect(["--no-prompt", "deploy", "--prefect-file", PREFECT_FILE, "--all"], env, REPO)
    assert f"'{DEPLOYMENT}' successfully created" in " ".join(text.split())
    good = _run_deployment({"bids_dir": ds, "out_dir": out, "nprocs": 2,
                            "stages": "test_orchestration_stages:STAGES",
                            "group_step": "test_orchestration_stages:group_step"}, env, elsewhere)
    bad = _run_deployment({"bids_dir": missing, "out_dir": tmp_path / "out-bad"}, env, elsewhere)

    rc, log = _worker_run_once(env, elsewhere, tmp_path / "worker.log")
    assert rc == 0, log[-4000:]

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        dep = c.read_deployment_by_name(DEPLOYMENT)
        assert dep.work_pool_name == POOL
        assert dep.entrypoint == "workflows/services/deployment.py:gliaflow_cohort"
        # the pull step names the checkout `prefect deploy` ran in
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": str(REPO)}}]

        run = c.read_flow_run(good)
        assert run.deployment_id == dep.id
        assert run.state.type == StateType.COMPLETED, f"{run.state.message}\n{log[-4000:]}"

        failed = c.read_flow_run(bad)
        assert failed.state.type == StateType.FAILED, f"{failed.state.message}\n{log[-4000:]}"
        assert "BIDS folder not found" in failed.state.message and str(missing) in failed.state.message

        # `gliaflow run` inside the flow run used this server (no private one): its cohort flow
        # run is a subflow of the deployment's run, its task runs (from the Dask workers) too
        subs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])), limit=10)
        assert len(subs) == 1 and c.read_flow(subs[0].flow_id).name == "gliaflow-cohort"
        assert subs[0].state.type == StateType.COMPLETED
        trs = c.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[subs[0].id])), limit=200)
        assert len(trs) == len(sids) * (1 + len(ts.STAGES))  # a task per session, one per stage
        assert all(tr.state.type == StateType.COMPLETED for tr in trs)

        # the run's summary line reaches the flow run's log (the UI)
        logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)
        assert any(f"{len(sids)} done, 0 failed" in lg.message for lg in logs), \
            [lg.message for lg in logs]
    assert not (out / ".gliaflow" / "work" / "prefect").exists()  # where a private server would live

    table = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    assert len(table) == len(sids) * len(ts.REGIONS)
    assert sorted(zip(table.session_id, table.region)) == sorted(
        (s, r) for s in sids for r in ts.REGIONS)  # one row per session x region
    led = read_ledger(out)
    assert {s: r.status for s, r in led.items()} == {s: "done" for s in sids}
