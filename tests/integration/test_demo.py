"""`gliaflow demo` end to end, as a new user runs it: simulate, process every stage on a private
Prefect server + Dask LocalCluster, group statistics, reports, dashboard.

As root the demo runs inside a new network namespace (`unshare -n`) that has only a loopback
interface: that proves the whole run (Prefect server, Dask workers, templates, atlases) needs no
network. The demo's session report and dashboard are then opened in headless Chromium, and a
rerun must recompute nothing.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from test_browser import CHROMIUM, _keep, _open, _QuietHandler, chromium  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

GLIAFLOW = Path(sys.executable).with_name("gliaflow")
N_SUBJECTS = 6


def _new_user_env() -> dict[str, str]:
    """This environment without Prefect settings (other test modules point PREFECT_API_URL at
    their shared server, which a fresh user does not have and the namespace cannot reach)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"COLUMNS": "120"}


def _offline_prefix() -> list[str]:
    """Run a command in a fresh network namespace with only loopback up (needs root)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return []
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    prefix = _offline_prefix()
    cmd = prefix + [str(GLIAFLOW), "demo", "--out", str(out), "--subjects", str(N_SUBJECTS),
                    "--size", "small", "--nprocs", "2"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_new_user_env())
    seconds = time.perf_counter() - t0
    print(f"\ndemo: {seconds:.1f} s, offline namespace: {bool(prefix)}\n{run.stderr[-3000:]}")
    return {"out": out, "run": run, "seconds": seconds, "offline": bool(prefix), "cmd": cmd}


def test_demo_completes(demo):
    run = demo["run"]
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    deriv = demo["out"] / "derivatives"
    ledger = pd.read_csv(deriv / "ledger.tsv", sep="\t", na_values="n/a")
    assert len(ledger) == N_SUBJECTS and set(ledger["status"]) == {"done"}
    assert "Dashboard:" in run.stderr and "Accuracy against the phantom truth" in run.stderr
    assert len(list(deriv.glob("sub-*.html"))) == N_SUBJECTS
    desc = json.loads((deriv / "dataset_description.json").read_text())
    gen = desc["GeneratedBy"][0]
    assert desc["DatasetType"] == "derivative" and gen["Name"] == "gliaflow"
    assert len(gen["ConfigHash"]) == 16 and (deriv / gen["ConfigFile"]).is_file()


def test_demo_ran_without_network(demo):
    if not demo["offline"]:
        pytest.skip("network namespaces need root and unshare; ran with the network available")
    assert demo["run"].returncode == 0


def test_demo_cohort_table_and_accuracy(demo):
    from gliaflow.workflows.cli.demo import truth_check

    table = demo["out"] / "derivatives" / "group" / "regional.tsv"
    df = pd.read_csv(table, sep="\t", na_values="n/a")
    for col in ("participant_id", "session_id", "region", "suvr", "vt_2tcm", "vt_logan", "vt_ma1",
                "vt_2tcm_pvc", "group", "tspo_genotype", "fatigue"):
        assert col in df.columns, col
    assert df["participant_id"].nunique() == N_SUBJECTS
    errors = {m: e for m, e, n in truth_check(demo["out"] / "bids", table)}
    # regional VT against the phantom's true regional VT (no PVC), regions > 5 mL
    assert errors["vt_2tcm"] < 10 and errors["vt_logan"] < 10 and errors["vt_ma1"] < 10, errors
    assert errors["suvr"] < 10, errors


def test_demo_group_statistics(demo):
    group = demo["out"] / "derivatives" / "group"
    stats = pd.read_csv(group / "stats_regional.tsv", sep="\t", na_values="n/a")
    assert {"region", "metric", "estimate", "p", "p_fdr", "hedges_g"} <= set(stats.columns)
    assert len(list((group / "voxelwise").glob("*stat-z_statmap.nii.gz"))) >= 1
    assert (group / "dashboard.html").stat().st_size > 20_000


def test_demo_rerun_recomputes_nothing(demo):
    assert demo["run"].returncode == 0
    t0 = time.perf_counter()
    again = subprocess.run(demo["cmd"], capture_output=True, text=True, timeout=600,
                           env=_new_user_env())
    seconds = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr[-3000:]
    ledger = pd.read_csv(demo["out"] / "derivatives" / "ledger.tsv", sep="\t", na_values="n/a",
                         keep_default_na=False)
    assert (ledger["stages_run"].fillna("") == "").all(), ledger[["session_id", "stages_run"]]
    assert seconds < 120, seconds


@pytest.fixture(scope="module")
def demo_server(demo):
    handler = functools.partial(_QuietHandler, directory=str(demo["out"] / "derivatives"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")
def test_demo_reports_in_browser(demo, demo_server, chromium, tmp_path):  # noqa: F811
    assert demo["run"].returncode == 0
    report = sorted((demo["out"] / "derivatives").glob("sub-*.html"))[0].name
    shot = tmp_path / "demo_session_report.png"
    info, errors = _open(chromium, f"{demo_server}/{report}", shot)
    _keep(shot)
    assert errors == [] and info["external"] == []
    assert len(info["imgs"]) >= 8 and all(i["complete"] and i["w"] > 0 for i in info["imgs"])

    shot = tmp_path / "demo_dashboard.png"
    info, errors = _open(chromium, f"{demo_server}/group/dashboard.html", shot)
    _keep(shot)
    assert errors == [] and info["external"] == []
    assert len(info["imgs"]) >= 3 and all(i["complete"] and i["w"] > 0 for i in info["imgs"])
    assert len(info["links"]) >= N_SUBJECTS and all(link["status"] == 200 for link in info["links"])
