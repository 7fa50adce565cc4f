"""Orchestration on real engines: a Prefect server process, a Dask LocalCluster of worker
processes, real files. Stages are the small real stages of test_orchestration_stages.py."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import bidsfactory as bf
import test_orchestration_stages as ts

from gliaflow.pipeline.io.bids import discover
from gliaflow.pipeline.config import load_config
from gliaflow.pipeline.errors import ConfigError
from gliaflow.workflows.cli import main as cli
from gliaflow.workflows.services.cluster import ClusterProfile, load_profile, start_cluster
from gliaflow.workflows.flows import run_cohort
from gliaflow.workflows.ledger import read_ledger

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    os.environ["PYTHONPATH"] = ts.pythonpath_with_stages()  # workers import the test stages
    return ts.shared_prefect_server(tmp_path_factory.mktemp("prefect"))


@pytest.fixture(scope="module")
def cluster(api, tmp_path_factory):
    h = start_cluster(load_profile("local"), nprocs=2, mem_gb=1.0,
                      work_dir=tmp_path_factory.mktemp("dask"))
    yield h
    h.close()


def _run(ds, out, handle, overrides=None, level="all", info=None):
    d = discover(ds, require_blood=True)
    cfg = load_config(overrides=overrides or {})
    return run_cohort(d.sessions, stages=ts.STAGES, config=cfg, out_dir=out, level=level,
                      invalid=d.invalid, group_step=ts.group_step, handle=handle,
                      show_progress=False, info=info)


def _runs(out, sid) -> collections.Counter:
    log = Path(out) / ".gliaflow" / "work" / sid / "runs.log"
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in log.read_text().splitlines())


def _sids(ds):
    return [s.session_id for s in discover(ds).sessions]


def test_cohort_resume_and_selective_invalidation(tmp_path, cluster, api):
    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03", "04"))
    shutil.rmtree(ds / "sub-04" / "anat")  # invalid: no T1w
    out = tmp_path / "out"
    info: dict = {}
    o1 = _run(ds, out, cluster, info=info)
    sids = _sids(ds)
    assert len(o1.done) == 3 and not o1.failed
    assert info["submissions"] == 3  # one Dask task per session, its stages nested in it
    # workers report each stage as it starts (Dask events, shown by the progress bar)
    assert info["stage_events"] and set(info["stage_events"]) <= {
        (s, st.name) for s in sids for st in ts.STAGES}
    led = read_ledger(out)
    assert {k: r.status for k, r in led.items()} == {
        **{s: "done" for s in sids}, "sub-04_trc-PBR28": "skipped"}
    assert "T1w" in led["sub-04_trc-PBR28"].error
    assert (out / "ledger.tsv").is_file()
    for s in sids:
        assert _runs(out, s) == collections.Counter({st.name: 1 for st in ts.STAGES})
    table = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    assert len(table) == 3 * len(ts.REGIONS)
    assert list(table.columns[:5]) == ["participant_id", "session_id", "region", "suvr", "vt_logan"]
    assert {"group", "tspo_genotype", "age"} <= set(table.columns)
    assert set(table.participant_id) == {"sub-01", "sub-02", "sub-03"}
    assert (out / "group" / "toy_group.tsv").is_file()
    # in Prefect: a task run per session, and a nested task run per session x stage, none left
    # RUNNING (the server is shared with other test modules: count this run's task runs only)
    runs = [r for r in ts.task_runs(api) if r.flow_run_id == info["flow_run_id"]]
    by_name = {r.name: r for r in runs}
    assert len(runs) == 3 + 18 and all(r.state.type.value == "COMPLETED" for r in runs)
    for s in sids:
        for st in ts.STAGES:
            parents = dict(by_name[f"{s}:{st.name}"].task_inputs)["__parents__"]
            assert [p.id for p in parents] == [by_name[s].id]

    # rerun: nothing recomputed, no services started
    t0 = time.perf_counter()
    o2 = _run(ds, out, None)
    assert time.perf_counter() - t0 < 20
    assert "prefect_start_s" not in o2.timings
    assert all(p.cached == [st.name for st in ts.STAGES] for p in o2.plans)
    for s in sids:
        assert sum(_runs(out, s).values()) == len(ts.STAGES)
    assert pd.read_csv(out / "group" / "regional.tsv", sep="\t").equals(table)

    # one subject's PET changes: only that subject's PET-dependent stages rerun
    pet = discover(ds).sessions[1].pet
    img = nib.load(str(pet))
    data = np.asanyarray(img.dataobj) * 1.5
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), str(pet))
    changed = discover(ds).sessions[1].session_id
    _run(ds, out, cluster)
    for s in sids:
        c = _runs(out, s)
        if s == changed:
            assert c["anat"] == 1 and all(c[x] == 2 for x in ("pet_motion", "coreg", "labels_tacs",
                                                               "kinetics", "report"))
        else:
            assert sum(c.values()) == len(ts.STAGES)

    # a kinetics setting changes: only kinetics and later stages rerun, for every session
    before = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    _run(ds, out, cluster, overrides={"kinetics.tstar_min": 10.0})
    for s in sids:
        c = _runs(out, s)
        assert c["kinetics"] == c["report"] == (3 if s == changed else 2)
        assert c["labels_tacs"] == (2 if s == changed else 1) and c["anat"] == 1
    after = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    assert not np.allclose(before.vt_logan, after.vt_logan)


def test_corrupt_session_is_isolated(tmp_path, cluster, api):
    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    pet = discover(ds).sessions[1].pet
    raw = pet.read_bytes()
    pet.write_bytes(raw[: len(raw) // 3])  # header still readable, voxel data truncated
    d = discover(ds, require_blood=True)
    assert len(d.sessions) == 3  # discovery reads headers only
    out = tmp_path / "out"
    o = _run(ds, out, cluster)
    bad = d.sessions[1].session_id
    assert set(o.failed) == {bad} and len(o.done) == 2
    row = read_ledger(out)[bad]
    assert row.status == "failed" and row.error_kind == "image"
    assert "pet_motion" in row.error and "cannot read image data" in row.error and pet.name in row.error
    table = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    assert len(table) == 2 * len(ts.REGIONS) and bad not in set(table.session_id)
    assert ts.task_run_states(api).get("RUNNING", 0) == 0

    # a failing group step is reported; the session results and the ledger stay
    d = discover(ds, require_blood=True)
    o2 = run_cohort(d.sessions, stages=ts.STAGES, config=load_config(), out_dir=out, level="group",
                    group_step=ts.failing_group_step, show_progress=False)
    assert "too few subjects" in o2.group_error and "field 'group'" in o2.group_error
    assert o2.table_path == out / "group" / "regional.tsv"
    assert read_ledger(out)[bad].status == "failed"
    assert sum(r.status == "done" for r in read_ledger(out).values()) == 2


def test_killed_worker_task_is_resubmitted_once(tmp_path, cluster, api):
    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    (ds / "toy_knobs.json").write_text(json.dumps({"sleep": "sub-01:labels_tacs:6"}))
    out = tmp_path / "out"
    sid = discover(ds).sessions[0].session_id
    marker = out / ".gliaflow" / "work" / sid / "started_labels_tacs"
    info: dict = {}
    res: dict = {}
    th = threading.Thread(target=lambda: res.setdefault("o", _run(ds, out, cluster, info=info)))
    th.start()
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 120:
        time.sleep(0.1)
    assert marker.exists(), "the stage never started"
    time.sleep(0.5)
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the worker process running the stage
    th.join(timeout=180)
    assert not th.is_alive()
    o = res["o"]
    assert len(o.done) == 2 and not o.failed
    assert info["crashes"] == 1
    c = _runs(out, sid)
    assert c["labels_tacs"] == 2 and c["kinetics"] == 1 and c["anat"] == 1
    states = ts.task_run_states(api)
    assert states.get("CRASHED", 0) >= 1 and states.get("RUNNING", 0) == 0
    assert read_ledger(out)[sid].attempts == len(ts.STAGES) + 1


def test_driver_killed_then_rerun_resumes(tmp_path, api):
    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    (ds / "toy_knobs.json").write_text(json.dumps({"sleep": "sub-03:kinetics:60"}))
    out = tmp_path / "out"
    # two single-task workers: sub-03 sleeps in kinetics on one while the other finishes the rest
    cmd = [sys.executable, "-m", "gliaflow.workflows", "run", str(ds), str(out), "all",
           "--stages", "test_orchestration_stages:STAGES",
           "--group-step", "test_orchestration_stages:group_step", "--nprocs", "2", "--quiet"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    sids = _sids(ds)
    marker = out / ".gliaflow" / "work" / sids[2] / "started_kinetics"
    t0 = time.time()
    reports = [out / ".gliaflow" / "stages" / s / "report.json" for s in sids[:2]]
    while time.time() - t0 < 150 and proc.poll() is None and not (
            marker.exists() and all(r.exists() for r in reports)):
        time.sleep(0.2)  # sub-03 sleeps in kinetics while the others finish
    assert marker.exists(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "slow"
    os.kill(proc.pid, signal.SIGKILL)  # the driver
    proc.wait()
    time.sleep(0.5)
    try:  # then what it left behind (its Dask worker processes, same process group)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    done_before = {s: _runs(out, s) for s in sids}
    finished = {s: {st.name for st in ts.STAGES
                    if (out / ".gliaflow" / "stages" / s / f"{st.name}.json").is_file()} for s in sids}
    assert finished[sids[0]] == {st.name for st in ts.STAGES}  # finished before the kill
    assert "kinetics" not in finished[sids[2]]
    assert not (out / "group" / "regional.tsv").exists()
    (ds / "toy_knobs.json").unlink()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    led = read_ledger(out)
    assert all(led[s].status == "done" for s in sids)
    for s in sids:  # stages finished before the kill are not recomputed; the others run once
        after = _runs(out, s)
        for st in ts.STAGES:
            started = done_before[s][st.name]
            assert after[st.name] == (started if st.name in finished[s] else started + 1), (s, st.name)
    assert _runs(out, sids[2])["kinetics"] == 2
    table = pd.read_csv(out / "group" / "regional.tsv", sep="\t")
    assert len(table) == 3 * len(ts.REGIONS)
    for f in out.rglob("*"):  # every final file is complete
        if f.suffix == ".json" and not f.name.startswith("."):
            json.loads(f.read_text())


def test_disk_full_gives_clear_error_and_no_partial_file(tmp_path, cluster, api):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        ds = bf.make_dataset(tmp_path / "ds", subjects=("01",))
        (ds / "toy_knobs.json").write_text(json.dumps({"big_mb": 2}))
        out = mnt / "out"
        d = discover(ds, require_blood=True)
        cfg = load_config(overrides={"execution.work_dir": str(tmp_path / "work")})
        o = run_cohort(d.sessions, stages=ts.STAGES, config=cfg, out_dir=out, level="participant",
                       handle=cluster, show_progress=False)
        sid = d.sessions[0].session_id
        assert set(o.failed) == {sid}
        row = read_ledger(out)[sid]
        assert row.error_kind == "output" and "report" in row.error
        assert "No space left" in row.error and "report.html" in row.error
        assert not list(out.rglob("*report.html"))
        assert not [f for f in out.rglob("*") if ".tmp" in f.name]
        assert (out / ".gliaflow" / "stages" / sid / "kinetics.json").is_file()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_library_warnings_go_to_the_run_logs_not_the_terminal(tmp_path, api, capfd):
    """A stage on a worker process and the group step in the driver make numpy warn (and the
    stage makes nipype log): the lines land in OUT_DIR/.gliaflow/logs/, none on the terminal."""
    from gliaflow.workflows.runlog import run_log_path, session_log_path

    ds = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    (ds / "toy_knobs.json").write_text(json.dumps({"warn": "pet_motion"}))
    out = tmp_path / "out"
    d = discover(ds, require_blood=True)
    cfg = load_config(overrides={"execution.nprocs": 1, "execution.mem_gb": 1.0})
    # the cluster starts inside the test, so that its workers write to the captured terminal
    o = run_cohort(d.sessions, stages=ts.STAGES, config=cfg, out_dir=out, level="all",
                   group_step=ts.group_step_with_warning, profile="local", show_progress=False)
    assert len(o.done) == 1 and o.group_error is None
    term = capfd.readouterr()
    for text in ("Warning", "toy interface output", "voxels left out"):
        assert text not in term.out + term.err, text
    sid = d.sessions[0].session_id
    stage_log = session_log_path(out, sid).read_text()
    assert "RuntimeWarning: divide by zero encountered in log" in stage_log
    assert f"nipype.interface INFO: {sid}:pet_motion: toy interface output" in stage_log
    assert o.log_path == run_log_path(out)
    run_text = o.log_path.read_text()
    assert "RuntimeWarning: invalid value encountered in divide" in run_text
    assert "gliaflow.pipeline.stats.group INFO: toy: 3 voxels left out" in run_text


def test_cli_dry_run_profiles_and_submit_scripts(tmp_path, capsys):
    ds = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    out = tmp_path / "out"
    rc = cli.main(["run", str(ds), str(out), "participant", "--dry-run",
                   "--stages", "test_orchestration_stages:STAGES"])
    text = capsys.readouterr().out
    assert rc == 0 and "2 sessions valid" in text and "12 session-stages to run" in text
    assert not out.exists()
    for name in ("local", "address", "slurm", "pbs", "sge", "lsf"):
        assert load_profile(name).kind == name
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: slurm\ncores: 0\nqueue_name: x\n")
    with pytest.raises(ConfigError) as exc:
        load_profile(bad)
    assert "cores" in str(exc.value) and "queue_name" in str(exc.value)
    with pytest.raises(ConfigError):
        load_profile("nonexistent")
    # two subjects cannot make the statistics' two groups of three: the toy group step instead
    rc = cli.main(["submit", str(ds), str(out), "--no-submit", "--partition", "debug",
                   "--stages", "test_orchestration_stages:STAGES",
                   "--group-step", "test_orchestration_stages:group_step"])
    assert rc == 0
    jobs = out / ".gliaflow" / "jobs"
    scripts = sorted(p.name for p in jobs.glob("*.sbatch"))
    assert scripts == ["group.sbatch", "sub-01.sbatch", "sub-02.sbatch"]
    s1 = (jobs / "sub-01.sbatch").read_text()
    assert "--participant-label 01" in s1 and "#SBATCH --partition=debug" in s1
    assert "participant" in s1 and "--stages test_orchestration_stages:STAGES" in s1
    assert "#SBATCH --dependency=afterany:@DEPS@" in (jobs / "group.sbatch").read_text()


def test_memory_request_escalates_and_is_capped(tmp_path):
    from gliaflow.workflows.services.cluster import ClusterHandle
    from gliaflow.workflows.flows import SessionPlan, _Scheduler
    from gliaflow.workflows.ledger import Ledger
    from gliaflow.workflows.progress import CohortProgress

    ds = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    spec = discover(ds).sessions[0]
    cfg = load_config(overrides={"execution.memory_escalation": 2.0})
    handle = ClusterHandle(ClusterProfile(kind="address", address="tcp://x:1"), address="tcp://x:1",
                           worker_memory_bytes=200 << 20)
    sched = _Scheduler([], ts.STAGES, cfg, tmp_path, tmp_path, handle,
                       CohortProgress(1, enabled=False), Ledger(tmp_path))
    plan = SessionPlan(spec=spec, keys={})
    # the session asks for its largest stage estimate (64 MiB; report alone needs 16 MiB)
    assert sched.memory_request(plan) == 64 << 20
    plan.attempts["coreg"] = 1  # one crash of the session
    assert sched.memory_request(plan) == 128 << 20
    plan.attempts["labels_tacs"] = 1  # a second crash
    assert sched.memory_request(plan) == 200 << 20  # capped at the worker's memory
    plan.results = {st.name: {} for st in ts.STAGES if st.name != "report"}
    plan.attempts.clear()
    assert sched.memory_request(plan) == 16 << 20  # only the stages still to run count
    handle.use_resources = False
    assert sched.memory_request(plan) is None


def test_code_version_follows_imported_pipeline_modules():
    from gliaflow.workflows.cache import code_files, code_version

    names = {Path(f).name for f in code_files(ts.kinetics)}
    assert {"test_orchestration_stages.py", "derivatives.py"} <= names
    from gliaflow.pipeline.session import SESSION_STAGES

    by = {s.name: s for s in SESSION_STAGES}
    if "anat" in by:  # the anat stage's key follows spatial/anatomy.py and the engine it runs
        files = {str(Path(f).relative_to(Path(f).parents[1])) for f in code_files(by["anat"].func)}
        assert {"spatial/anatomy.py", "engines/ants.py"} <= files, sorted(files)
    assert code_version(ts.anat) == code_version(ts.anat)
