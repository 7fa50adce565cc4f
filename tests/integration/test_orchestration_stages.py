"""Small real stages for orchestration tests and the scaling benchmark (no tests in this file).

Each stage reads real input files (the session's PET/T1w NIfTI, upstream outputs), writes its
outputs atomically as BIDS-like derivatives, and appends its name to ``WORK/<session>/runs.log``
so tests can count executions. Knobs (environment, read on the worker):

GLIAFLOW_TOY_CPU_S     seconds of pure-Python CPU work per stage (benchmark)
GLIAFLOW_TOY_SLEEP     "sub-02:labels_tacs:5" sleep 5 s in that session's stage (kill tests)
GLIAFLOW_TOY_BIG_MB    the report stage writes a file of this many MB (disk-full test)
GLIAFLOW_TOY_WARN      "pet_motion": that stage makes numpy warn and nipype log (run-log test)
The same knobs can be given per dataset in BIDS_DIR/toy_knobs.json ({"sleep": ..., "big_mb": ...,
"cpu_s": ..., "warn": ...}), which worker processes started earlier also see.
"""
from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from gliaflow.pipeline.io.derivatives import atomic_path, atomic_write_json, atomic_write_text, write_tsv
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.session import Stage, StageResult

REGIONS = ["frontal", "parietal", "cingulate"]


def knobs(spec) -> dict:
    """Behaviour knobs: BIDS_DIR/toy_knobs.json overrides the GLIAFLOW_TOY_* environment."""
    k = {"cpu_s": os.environ.get("GLIAFLOW_TOY_CPU_S", "0"),
         "sleep": os.environ.get("GLIAFLOW_TOY_SLEEP", ""),
         "big_mb": os.environ.get("GLIAFLOW_TOY_BIG_MB", "0"),
         "warn": os.environ.get("GLIAFLOW_TOY_WARN", "")}
    f = Path(spec.bids_dir) / "toy_knobs.json"
    if f.is_file():
        k.update(json.loads(f.read_text()))
    return k


def _log(ctx, stage: str) -> None:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    with open(ctx.work_dir / "runs.log", "a") as fh:
        fh.write(f"{stage} {os.getpid()}\n")
    (ctx.work_dir / f"started_{stage}").write_text(str(os.getpid()))
    kn = knobs(ctx.spec)
    cpu = float(kn["cpu_s"] or 0)
    if cpu > 0:
        t_end = time.process_time() + cpu
        x = 0
        while time.process_time() < t_end:
            for i in range(10000):
                x += i * i
    if kn["warn"] == stage:
        _library_noise(f"{ctx.spec.session_id}:{stage}")
    spec = kn["sleep"]
    if spec:
        sub, st, secs = spec.split(":")
        if ctx.spec.session_id.startswith(sub) and st == stage:
            time.sleep(float(secs))


def _library_noise(tag: str) -> None:
    """What libraries print during a stage: a numpy RuntimeWarning and a nipype INFO line."""
    import logging

    with np.errstate(divide="warn"):
        np.log(np.zeros(1))
    nipype = logging.getLogger("nipype.interface")
    nipype.setLevel(logging.INFO)
    nipype.info("%s: toy interface output", tag)


def group_step_with_warning(table, config, out_dir):
    """The toy group step, after a library warning and an INFO record of gliaflow's (as the
    statistics of a real group step)."""
    import logging

    with np.errstate(invalid="warn"):
        np.array([0.0]) / np.array([0.0])
    logging.getLogger("gliaflow.pipeline.stats.group").info("toy: 3 voxels left out")
    return group_step(table, config, out_dir)


def _load(path: Path) -> np.ndarray:
    try:
        return np.asanyarray(nib.load(str(path)).dataobj, dtype=np.float64)
    except Exception as exc:  # truncated / corrupt image data
        raise ImageError(f"cannot read image data: {exc}", file=path) from exc


def anat(ctx, upstream):
    _log(ctx, "anat")
    t1 = _load(ctx.spec.t1w)
    out = ctx.path("T1w", ".json", datatype="anat", desc="toy")
    atomic_write_json(out, {"mean": float(t1.mean()), "max": float(t1.max())})
    return StageResult(stage="anat", outputs={"summary": out}, values={"t1_mean": float(t1.mean())})


def pet_motion(ctx, upstream):
    _log(ctx, "pet_motion")
    pet = _load(ctx.spec.pet)
    means = pet.reshape(-1, pet.shape[-1]).mean(axis=0)
    out = ctx.path("pet", ".tsv", desc="framemeans")
    write_tsv(pd.DataFrame({"frame_mean": means}), out)
    return StageResult(stage="pet_motion", outputs={"frames": out}, values={"n_frames": int(means.size)})


def coreg(ctx, upstream):
    _log(ctx, "coreg")
    t1_mean = upstream["anat"].values["t1_mean"]
    frames = pd.read_csv(upstream["pet_motion"].outputs["frames"], sep="\t")
    out = ctx.path("xfm", ".json", **{"from": "petref", "to": "T1w"})
    atomic_write_json(out, {"scale": float(frames.frame_mean.mean() / (t1_mean + 1))})
    return StageResult(stage="coreg", outputs={"xfm": out})


def labels_tacs(ctx, upstream):
    _log(ctx, "labels_tacs")
    frames = pd.read_csv(upstream["pet_motion"].outputs["frames"], sep="\t")["frame_mean"].to_numpy()
    import json

    scale = json.loads(Path(upstream["coreg"].outputs["xfm"]).read_text())["scale"]
    tac = {"frame_start": ctx.spec.frame_start_s, "frame_end": ctx.spec.frame_end_s}
    for i, r in enumerate(REGIONS):
        tac[r] = frames * (1 + 0.1 * i) * (1 + 0.01 * scale)
    out = ctx.path("tacs", ".tsv", seg="toy")
    write_tsv(pd.DataFrame(tac), out)
    return StageResult(stage="labels_tacs", outputs={"tacs": out})


def kinetics(ctx, upstream):
    _log(ctx, "kinetics")
    tacs = pd.read_csv(upstream["labels_tacs"].outputs["tacs"], sep="\t")
    tstar_s = ctx.config.kinetics.tstar_min * 60
    late = tacs[tacs.frame_start >= tstar_s]
    whole = tacs[REGIONS].to_numpy().mean()
    rows = []
    for r in REGIONS:
        rows.append({"region": r, "suvr": float(late[r].mean() / whole),
                     "vt_logan": float(late[r].sum() / 100.0)})
    out = ctx.path("pet", ".tsv", desc="regional", meas="metrics")
    write_tsv(pd.DataFrame(rows), out)
    return StageResult(stage="kinetics", outputs={"regional_metrics": out},
                       values={"mean_suvr": float(np.mean([x["suvr"] for x in rows]))})


def report(ctx, upstream):
    _log(ctx, "report")
    out = ctx.path("report", ".html", datatype="figures")
    big = float(knobs(ctx.spec)["big_mb"] or 0)
    if big > 0:
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * int(big * 1024 * 1024))
    else:
        atomic_write_text(out, f"<html><body>{ctx.spec.session_id}: "
                          f"{upstream['kinetics'].values['mean_suvr']:.4f}</body></html>\n")
    return StageResult(stage="report", outputs={"html": out})


def _pet(spec):
    return [spec.pet, spec.pet_json]


STAGES = [
    Stage("anat", anat, (), ("segmentation", "atlas"), lambda s: [s.t1w], lambda s: 64 << 20),
    Stage("pet_motion", pet_motion, (), ("motion",), _pet, lambda s: 64 << 20),
    Stage("coreg", coreg, ("anat", "pet_motion"), ("registration",), lambda s: [], lambda s: 64 << 20),
    Stage("labels_tacs", labels_tacs, ("coreg", "pet_motion"), ("atlas", "tacs"), lambda s: [],
          lambda s: 64 << 20),
    Stage("kinetics", kinetics, ("labels_tacs",), ("blood", "kinetics"),
          lambda s: [b.tsv for b in s.blood], lambda s: 64 << 20),
    Stage("report", report, ("kinetics",), ("report",), lambda s: [], lambda s: 16 << 20),
]


def group_step(table, config, out_dir):
    """Toy group step: mean SUVR per region and group."""
    df = pd.read_csv(table, sep="\t")
    res = df.groupby(["region", "group"])["suvr"].mean().reset_index()
    return write_tsv(res, Path(out_dir) / "group" / "toy_group.tsv")


def failing_group_step(table, config, out_dir):
    """A group step whose design is unusable."""
    from gliaflow.pipeline.errors import StatsError

    raise StatsError("too few subjects in group 'control'", file=table, field="group")


HERE = Path(__file__).resolve().parent


def pythonpath_with_stages(pythonpath: str | None = None) -> str:
    """``pythonpath`` (default: this process's PYTHONPATH) with this folder first, so that
    worker processes and batch jobs can import these stages."""
    pp = os.environ.get("PYTHONPATH", "") if pythonpath is None else pythonpath
    parts = [p for p in pp.split(os.pathsep) if p]
    return os.pathsep.join(parts if str(HERE) in parts else [str(HERE)] + parts)


def local_reference(root: Path, subjects=("01", "02")):
    """A toy dataset under ``root/ds`` run through the local profile (one worker); returns the
    dataset folder and its ``group/regional.tsv`` as a DataFrame (what other executors must
    reproduce). Exports PYTHONPATH and PREFECT_API_URL for the processes started later."""
    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.config import load_config
    from gliaflow.workflows.flows import run_cohort

    import bidsfactory as bf

    os.environ["PYTHONPATH"] = pythonpath_with_stages()
    shared_prefect_server(root)
    ds = bf.make_dataset(root / "ds", subjects=tuple(subjects))
    cfg = load_config(overrides={"execution.nprocs": 1, "execution.mem_gb": 1.0})
    o = run_cohort(discover(ds, require_blood=True).sessions, stages=STAGES, config=cfg,
                   out_dir=root / "local", level="all", profile="local", show_progress=False)
    assert len(o.done) == len(subjects)
    return ds, pd.read_csv(root / "local" / "group" / "regional.tsv", sep="\t")


def assert_same_outputs(out: Path, ref: pd.DataFrame) -> None:
    """OUT_DIR's cohort table equals ``ref`` and every ledger row is done."""
    from gliaflow.workflows.ledger import read_ledger

    pd.testing.assert_frame_equal(pd.read_csv(Path(out) / "group" / "regional.tsv", sep="\t"), ref)
    rows = read_ledger(out)
    assert rows and all(r.status == "done" for r in rows.values())


_SERVER = {}


def shared_prefect_server(home: Path) -> str:
    """One private Prefect server per test process (started once, stopped at exit); sets
    PREFECT_API_URL so that runs and the processes they start use it."""
    from gliaflow.workflows.services.prefect_server import PrefectServer

    if "server" not in _SERVER:
        srv = PrefectServer(Path(home) / "prefect").start()
        _SERVER["server"] = srv
        atexit.register(srv.stop)
    url = _SERVER["server"].api_url
    os.environ["PREFECT_API_URL"] = url
    return url


def task_runs(api_url: str) -> list:
    """Every task run on the server (prefect TaskRun objects)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as c:
            runs, off = [], 0
            while True:
                page = c.read_task_runs(limit=200, offset=off, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
                runs += page
                off += len(page)
                if len(page) < 200:
                    break
    return runs


def task_run_states(api_url: str) -> dict[str, int]:
    """Count of task runs per state type on the server."""
    out: dict[str, int] = {}
    for r in task_runs(api_url):
        t = r.state.type.value if r.state else "NONE"
        out[t] = out.get(t, 0) + 1
    return out
