"""Side by side: the same phantom sessions through the ANTs engine and through the FSL engine.

For each engine (``--engines ants fsl``; FSL needs $FSLDIR) and each simulated session, every
stage runs in a fresh process (its own peak RSS), then the outputs are scored against the
phantom truth (derivatives/phantom-truth, see ``gliaflow simulate``):

* motion error: the realignment reference is a mean of moving late frames, so its pose is only
  defined through the estimates: with ``C_i = H_i^-1 M_i`` (true motion ``H_i``, estimate ``M_i``;
  constant for a perfect realignment), the error of frame ``i`` is the mean displacement (mm,
  over the brain in PET space) between ``C_i`` and the medoid ``C_k`` of the registered frames;
* PET-to-T1 error: mean displacement (mm, over the T1w brain) of the estimated T1w-to-PET-reference
  registration against the truth in that reference pose, ``C_k^-1 pet_to_t1^-1``;
* Dice of GM and WM (dseg) against the true tissue fractions > 0.5;
* regional VT: median |error| % of vt_2tcm, vt_logan, vt_ma1 (no PVC) against the true
  region VT (regions > 5 mL);
* wall time (s) and peak RSS (MiB) per stage.

Run: ``python tests/benchmarks/engines.py [--subjects 2] [--size small] [--engines ants fsl]``.
Prints ``name<TAB>value<TAB>unit`` lines, then one table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


def _run_stage(q, stage_name: str, spec_json: str, cfg_json: str, out: str, work: str, up: str) -> None:
    """Child process: one stage; sends (result dict, wall s, peak RSS MiB)."""
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    from gliaflow.pipeline.config import PipelineConfig
    from gliaflow.pipeline.io.bids import SessionSpec
    from gliaflow.pipeline.session import StageContext, StageResult, stage_by_name

    spec = SessionSpec.model_validate_json(spec_json)
    cfg = PipelineConfig.model_validate_json(cfg_json)
    ctx = StageContext(spec=spec, config=cfg, out_dir=Path(out), work_dir=Path(work))
    upstream = {k: StageResult.model_validate(v) for k, v in json.loads(up).items()}
    st = stage_by_name(stage_name)
    t0 = time.perf_counter()
    res = st.func(ctx, {r: upstream[r] for r in st.requires})
    wall = time.perf_counter() - t0
    q.put((res.model_dump(mode="json"), wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_session_measured(spec, cfg, out: Path, work: Path) -> tuple[dict, dict]:
    """Every stage (but the report) in its own process: results, and {stage: (wall s, MiB)}."""
    from gliaflow.pipeline.session import SESSION_STAGES

    ctx = mp.get_context("spawn")
    results: dict = {}
    cost: dict = {}
    for st in SESSION_STAGES:
        if st.name == "report":
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_run_stage, args=(q, st.name, spec.model_dump_json(), cfg.model_dump_json(),
                                                 str(out), str(work), json.dumps(results)))
        p.start()
        res, wall, rss = q.get()
        p.join()
        results[st.name] = res
        cost[st.name] = (wall, rss)
    return results, cost


def outputs_found(spec, deriv: Path) -> dict:
    """The stage outputs :func:`score` reads, found by their BIDS names under ``deriv``."""
    d = deriv / f"sub-{spec.participant}" / "ses-baseline"
    one = lambda pattern: str(next(d.glob(pattern)))  # noqa: E731
    motion = pd_read(one("pet/*desc-hmc_timeseries.tsv"))
    return {"coreg": {"outputs": {"xfm_petref_to_t1w": one("pet/*from-petref_to-T1w_mode-image_xfm.txt")}},
            "pet_motion": {"outputs": {"xfm_hmc": one("pet/*desc-hmc_xfm.txt")},
                           "values": {"registered": list(motion["registered"].astype(str).str.lower() == "true")}},
            "anat": {"outputs": {"dseg": one("anat/*_ses-baseline_dseg.nii.gz")}},
            "kinetics": {"outputs": {"regional_metrics": one("pet/*desc-regional_metrics.tsv")}}}


def pd_read(path: str):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values="n/a")


def score(bids: Path, spec, results: dict) -> dict[str, float]:
    """Errors of one session's outputs against the phantom truth (see the module docstring)."""
    import nibabel as nib
    import pandas as pd

    from gliaflow.pipeline.spatial.transforms import displacement_error, mask_world_coords, read_itk_text

    tdir = bids / "derivatives" / "phantom-truth" / f"sub-{spec.participant}" / "ses-baseline"
    ent = f"sub-{spec.participant}_ses-baseline"
    gm_true = nib.load(str(next(tdir.glob(f"{ent}*label-GM_probseg.nii.gz"))))
    wm_true = nib.load(str(next(tdir.glob(f"{ent}*label-WM_probseg.nii.gz"))))
    brain = (gm_true.get_fdata() + wm_true.get_fdata()) > 0.5
    coords_t1 = mask_world_coords(brain, gm_true.affine, step=2)
    pet_to_t1 = np.asarray(json.loads(next(tdir.glob("*from-pet_to-T1w_xfm.json")).read_text())["matrix"])
    # H_f maps reference-pose PET points to their place in frame f (truth README)
    h = [np.asarray(x) for x in json.loads(next(tdir.glob("*desc-motion_xfms.json")).read_text())["matrices"]]
    coords_pet = coords_t1 @ np.linalg.inv(pet_to_t1)[:3, :3].T + np.linalg.inv(pet_to_t1)[:3, 3]
    mats = read_itk_text(results["pet_motion"]["outputs"]["xfm_hmc"])
    reg = results["pet_motion"]["values"]["registered"]
    c = [np.linalg.inv(t) @ m for m, t, ok in zip(mats, h, reg) if ok] or [np.eye(4)]
    spread = [sum(displacement_error(ci, ck, coords_pet) for ci in c) for ck in c]
    ck = c[int(np.argmin(spread))]
    errs = [displacement_error(ci, ck, coords_pet) for ci in c]
    est = read_itk_text(results["coreg"]["outputs"]["xfm_petref_to_t1w"])[0]   # T1w point -> PET point
    out = {"coreg_error_mm": displacement_error(est, np.linalg.inv(ck) @ np.linalg.inv(pet_to_t1), coords_t1)}
    out["motion_error_mm"] = float(np.mean(errs)) if errs else float("nan")
    dseg = nib.load(results["anat"]["outputs"]["dseg"]).get_fdata()
    for lab, img, k in (("gm", gm_true, 1), ("wm", wm_true, 2)):
        t = img.get_fdata() > 0.5
        d = dseg == k
        out[f"dice_{lab}"] = float(2 * (t & d).sum() / (t.sum() + d.sum()))
    got = pd.read_csv(results["kinetics"]["outputs"]["regional_metrics"], sep="\t", na_values="n/a")
    truth = pd.read_csv(next(tdir.glob("*desc-truth_kinetics.tsv")), sep="\t", na_values="n/a")
    truth = truth[(truth["volume_ml"] > 5)]
    m = got.merge(truth, left_on="region", right_on="name")
    for metric in ("vt_2tcm", "vt_logan", "vt_ma1"):
        if metric in m:
            out[f"{metric}_median_abs_err_pct"] = float((100 * (m[metric] / m["VT_region"] - 1)).abs().median())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--size", default="small")
    ap.add_argument("--engines", nargs="+", default=["ants", "fsl"])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--score-only", action="store_true",
                    help="score the outputs already in --work (no processing; no times)")
    args = ap.parse_args()
    from gliaflow.pipeline.config import engine_overrides, load_config
    from gliaflow.pipeline.engines import check_engines
    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.simulate.cohort import simulate_cohort

    work = args.work or Path(tempfile.mkdtemp(prefix="gliaflow_engines_"))
    bids = work / "bids"
    if not (bids / "participants.tsv").is_file():
        simulate_cohort(bids, n_subjects=args.subjects, size=args.size, seed=21)
    sessions = discover(bids, require_blood=True).sessions
    table: dict[str, dict[str, list[float]]] = {}
    for eng in args.engines:
        cfg = load_config(overrides=engine_overrides(eng))
        check_engines(cfg)
        rows = table.setdefault(eng, {})
        for spec in sessions:
            if args.score_only:
                res, cost = outputs_found(spec, work / eng / "derivatives"), {}
            else:
                res, cost = run_session_measured(spec, cfg, work / eng / "derivatives", work / eng / "work")
            for k, v in score(bids, spec, res).items():
                rows.setdefault(k, []).append(v)
            for st, (wall, rss) in cost.items():
                rows.setdefault(f"{st}_wall_s", []).append(wall)
                rows.setdefault(f"{st}_peak_rss_mib", []).append(rss)
    names = list(next(iter(table.values())))
    for eng, rows in table.items():
        for n in names:
            unit = "mm" if n.endswith("_mm") else "s" if n.endswith("_s") else "MiB" if n.endswith("mib") \
                else "%" if n.endswith("pct") else ""
            _emit(f"{eng}_{n}", float(np.nanmean(rows[n])), unit)
    print(f"\n{'figure (mean over ' + str(len(sessions)) + ' sessions, size ' + args.size + ')':60s}"
          + "".join(f"{e:>12s}" for e in table))
    for n in names:
        print(f"{n:60s}" + "".join(f"{np.nanmean(table[e][n]):12.3f}" for e in table))


if __name__ == "__main__":
    main()
