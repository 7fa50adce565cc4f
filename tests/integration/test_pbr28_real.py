"""Real [11C]PBR28 test-retest data (kinfitr, Collste et al. 2016; Matheson et al. 2017).

Reads ../shared/data/pbr28 relative to the repository root and skips when it is absent.
Checks: every model converges for every measurement (20) and region (6); frontal-cortex 2TCM VT
group means near the published values (HAB ~3.9, MAB ~2.2); test-retest ICC and mean absolute %
difference (printed); blood.py on the raw blood (continuous + discrete + parent fraction, written
as BIDS blood TSV/JSON) gives a parent input close to the processed one; the ``gliaflow
kinetics`` command runs on one measurement.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.blood.input import plasma_input_from_files
from gliaflow.pipeline.blood.tables import PlasmaInput
from gliaflow.pipeline.config import BloodSettings, KineticsSettings
from gliaflow.pipeline.kinetics.base import Frames
from gliaflow.pipeline.kinetics.compartment import fit_tcm
from gliaflow.pipeline.kinetics.regional import fit_regional_results, table_weights

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "pbr28"
pytestmark = pytest.mark.skipif(not (DATA / "measurements.tsv").exists(),
                                reason=f"real PBR28 data not found at {DATA}")
REGIONS = ["FC", "TC", "STR", "THA", "WB", "CBL"]
MODELS = ["suv", "suvr", "1tcm", "2tcm", "logan", "ma1", "srtm", "mrtm2"]


def load_tacs(pet: str) -> pd.DataFrame:
    """The kinfitr TAC table in gliaflow's form (frame_start, frame_end, regions in Bq/mL, weights)."""
    raw = pd.read_csv(DATA / "tacs" / f"{pet}_tacs.tsv", sep="\t")
    df = pd.DataFrame({"frame_start": raw["frame_start_s"],
                       "frame_end": raw["frame_start_s"] + raw["frame_dur_s"]})
    for r in REGIONS:
        df[r] = raw[r] * 1000.0  # kBq/mL -> Bq/mL
    df["weights"] = raw["weights"]
    return df


def processed_input(pet: str, end_s: float) -> PlasmaInput:
    b = pd.read_csv(DATA / "blood_processed" / f"{pet}_procblood.tsv", sep="\t")
    return PlasmaInput.from_curves(b["time_s"], b["plasma_parent_metabcorr_kBq_ml"] * 1000.0,
                                   b["wholeblood_dispcorr_kBq_ml"] * 1000.0, end_s=end_s)


def icc_31(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(3,1) (two-way mixed, consistency) for two sessions."""
    x = np.column_stack([a, b])
    n, k = x.shape
    gm = x.mean()
    ssr = k * np.sum((x.mean(axis=1) - gm) ** 2)
    ssc = n * np.sum((x.mean(axis=0) - gm) ** 2)
    sse = np.sum((x - gm) ** 2) - ssr - ssc
    msr, mse = ssr / (n - 1), sse / ((n - 1) * (k - 1))
    return float((msr - mse) / (msr + (k - 1) * mse))


@pytest.fixture(scope="module")
def measurements() -> pd.DataFrame:
    return pd.read_csv(DATA / "measurements.tsv", sep="\t")


@pytest.fixture(scope="module")
def all_fits(measurements):
    settings = KineticsSettings(models=MODELS, reference_region="WB", vb=None, fit_end_min=63.6,
                                n_starts=3, tstar_min=30.0, suvr_window_min=(60.0, 90.0))
    out = {}
    for _, m in measurements.iterrows():
        tacs = load_tacs(m["PET"])
        plasma = processed_input(m["PET"], float(tacs["frame_end"].max()))
        out[m["PET"]] = fit_regional_results(
            tacs.drop(columns="weights"), plasma, settings, injected_bq=m["injRad_MBq"] * 1e6,
            body_weight_kg=m["weight_kg"], source=m["PET"], weights=table_weights(tacs))
    return out


def test_every_model_converges(all_fits, measurements):
    assert len(all_fits) == 20
    failed = [(pet, model, reg, r.reason) for pet, res in all_fits.items()
              for model, per in res.items() for reg, r in per.items() if not r.converged]
    assert not failed, failed
    for pet, res in all_fits.items():
        for model, per in res.items():
            assert set(per) == set(REGIONS)
            for reg, r in per.items():
                assert all(np.isfinite(v) for k, v in r.params.items() if k != "k2prime"), (pet, model, reg)
        # pseudo-reference (whole brain) models: binding close to the reference, no blow-ups
        for model in ("srtm", "mrtm2"):
            bp = np.array([r.params["BPND"] for r in res[model].values()])
            assert np.all((bp > -0.5) & (bp < 1.0)), (pet, model, bp)
        vts = np.array([r.params["VT"] for r in res["2tcm"].values()])
        assert np.all((vts > 0.3) & (vts < 20)), (pet, vts)
    warned = sum(bool(r.warnings) for res in all_fits.values() for r in res["2tcm"].values())
    print(f"\n2TCM fits with a parameter at a bound: {warned} of {20 * len(REGIONS)}")


def test_frontal_2tcm_vt_near_published(all_fits, measurements):
    vt = pd.Series({pet: res["2tcm"]["FC"].params["VT"] for pet, res in all_fits.items()})
    geno = measurements.set_index("PET")["Genotype"]
    means = vt.groupby(geno).mean()
    print(f"\nFC 2TCM VT mean: HAB {means['HAB']:.3f} (published ~3.9), MAB {means['MAB']:.3f} "
          f"(published ~2.2) mL/cm3")
    assert means["HAB"] == pytest.approx(3.9, rel=0.15)
    assert means["MAB"] == pytest.approx(2.2, rel=0.15)
    assert means["HAB"] > 1.4 * means["MAB"]


def test_test_retest_reported(all_fits, measurements):
    m = measurements.set_index("PET")
    print()
    for model, par in [("2tcm", "VT"), ("1tcm", "VT"), ("logan", "VT"), ("ma1", "VT"),
                       ("suvr", "SUVR"), ("srtm", "BPND"), ("suv", "SUV")]:
        a, b = [], []
        for subj in sorted(m["Subjname"].unique()):
            a.append(all_fits[f"{subj}_1"][model]["FC"].params[par])
            b.append(all_fits[f"{subj}_2"][model]["FC"].params[par])
        a, b = np.array(a), np.array(b)
        if par == "BPND":  # near 0 against a whole-brain pseudo-reference: compare DVR = BPND + 1
            a, b, par = a + 1, b + 1, "DVR"
        icc = icc_31(a, b)
        mapd = float(np.mean(np.abs(a - b) / ((a + b) / 2)) * 100)
        print(f"test-retest FC {model} {par}: ICC {icc:.3f}, mean absolute difference {mapd:.1f}%")
        assert -1.0 <= icc <= 1.0 and np.isfinite(mapd)
        if model in ("2tcm", "logan", "ma1"):
            # published PBR28 VT reliability is good (ICC ~0.7-0.9, |diff| ~10-20%)
            assert icc > 0.5 and mapd < 30.0


def _write_bids_blood(pet: str, out: Path) -> list[Path]:
    cont = pd.read_csv(DATA / "blood_raw" / f"{pet}_blood_continuous.tsv", sep="\t")
    disc = pd.read_csv(DATA / "blood_raw" / f"{pet}_blood_discrete.tsv", sep="\t", na_values="n/a")
    pf = pd.read_csv(DATA / "blood_raw" / f"{pet}_parentfraction.tsv", sep="\t")
    tables = {
        "autosampler": cont.rename(columns={"time_s": "time", "wholeblood_kBq_ml": "whole_blood_radioactivity"}),
        "manual": disc.rename(columns={"time_s": "time", "wholeblood_kBq_ml": "whole_blood_radioactivity",
                                       "plasma_total_kBq_ml": "plasma_radioactivity"}),
        "metabolite": pf.rename(columns={"time_s": "time", "parent_fraction": "metabolite_parent_fraction"}),
    }
    units = {"time": "s", "whole_blood_radioactivity": "kBq/mL", "plasma_radioactivity": "kBq/mL",
             "metabolite_parent_fraction": "unitless"}
    paths = []
    sub = pet.replace("_", "")
    for label, df in tables.items():
        p = out / f"sub-{sub}_recording-{label}_blood.tsv"
        df.to_csv(p, sep="\t", index=False, na_rep="n/a")
        meta = {c: {"Units": units[c]} for c in df.columns}
        meta["DispersionCorrected"] = False
        p.with_suffix(".json").write_text(json.dumps(meta))
        paths.append(p)
    return paths


def test_raw_blood_processing_matches_processed(measurements, tmp_path):
    settings = BloodSettings(parent_fraction_model="hill", dispersion_tau_s=2.6, delay="fixed")
    ratios, vt_ratio = [], []
    for pet in measurements["PET"]:
        paths = _write_bids_blood(pet, tmp_path)
        tacs = load_tacs(pet)
        end = float(tacs["frame_end"].max())
        ours = plasma_input_from_files(paths, settings, scan_end_s=end)
        ref = processed_input(pet, ours.end_s)
        n = min(ours.t_s.size, ref.t_s.size)
        ratios.append([ours.parent_bqml[:n].sum() / ref.parent_bqml[:n].sum(),
                       ours.parent_bqml[:600].sum() / ref.parent_bqml[:600].sum(),
                       ours.whole_blood_bqml[:n].sum() / ref.whole_blood_bqml[:n].sum()])
        if pet in ("cgyu_1", "flfp_1", "rwrd_2"):
            t = tacs[tacs["frame_end"] > tacs["frame_start"]]
            fr = Frames.from_arrays(t["frame_start"], t["frame_end"])
            w = t["weights"].to_numpy()
            a = fit_tcm(fr, t["FC"].to_numpy(), ours, 2, w, vb=None, fit_end_s=3810, n_starts=3)
            b = fit_tcm(fr, t["FC"].to_numpy(), ref, 2, w, vb=None, fit_end_s=3810, n_starts=3)
            vt_ratio.append(a.params["VT"] / b.params["VT"])
    r = np.array(ratios)
    print(f"\nraw->parent input vs processed: AUC ratio {r[:, 0].mean():.3f} "
          f"[{r[:, 0].min():.3f}, {r[:, 0].max():.3f}], first 10 min {r[:, 1].mean():.3f}, "
          f"whole blood {r[:, 2].mean():.3f}; FC 2TCM VT ratio {np.round(vt_ratio, 3).tolist()}")
    assert np.all(np.abs(r[:, 0] - 1) < 0.10)
    assert np.all(np.abs(r[:, 1] - 1) < 0.10)
    assert np.all(np.abs(r[:, 2] - 1) < 0.05)
    assert np.all(np.abs(np.array(vt_ratio) - 1) < 0.20)


def test_cli_on_real_measurement(tmp_path):
    from gliaflow.workflows.cli.main import main

    pet = "flfp_1"
    tacs = load_tacs(pet)
    out = tacs.copy()
    for r in REGIONS:
        out[r] = out[r] / 1000.0
    tsv = tmp_path / "sub-flfp1_tacs.tsv"
    out.to_csv(tsv, sep="\t", index=False)
    tsv.with_suffix(".json").write_text(json.dumps({"Units": "kBq/mL"}))
    blood = _write_bids_blood(pet, tmp_path)
    params = tmp_path / "params.tsv"
    args = ["kinetics", "--tacs", str(tsv), "--model", "2tcm", "--model", "logan", "--model", "suvr",
            "--reference-region", "WB", "--fit-vb", "--fit-end", "63.6", "--weights", "column",
            "--dispersion-tau", "2.6", "--delay-region", "WB", "--out", str(params)]
    for b in blood:
        args += ["--blood", str(b)]
    assert main(args) == 0
    res = pd.read_csv(params, sep="\t")
    assert list(res["region"]) == REGIONS
    assert res["2tcm_converged"].all() and res["logan_converged"].all()
    meta = json.loads(params.with_suffix(".json").read_text())
    assert abs(meta["Blood"]["delay_s"]) <= 30
    fc = res.set_index("region").loc["FC"]
    assert 3.0 < fc["2tcm_VT"] < 12.0 and 3.0 < fc["logan_VT"] < 12.0  # HAB subject


#: kinfitr ``twotcm`` VT (mL/cm3) on the same input (frames 1-33, vB fitted, no delay, uniform
#: weights) quoted in issue 13; kinfitr's values for the other fits are not available as data
KINFITR_2TCM_VT = {("rbqc_1", "STR"): 2.11, ("rbqc_1", "FC"): 2.02, ("rwrd_2", "STR"): 11.7}


def test_2tcm_uniform_weights_trusted_or_flagged(measurements):
    """Issue 13 item 1: every 2TCM VT is plausible and off its bounds, or flagged n/a.

    kinfitr's VT are available for three fits only (KINFITR_2TCM_VT): each of those is within
    10 % of kinfitr or flagged. For all 120 fits the weaker checkable property is asserted: no
    unflagged VT outside the plausible PBR28 range (0.5-20 mL/cm3) and no unflagged fit with a
    parameter at a bound; the fraction flagged, the worst unflagged VT and the time per fit are
    printed.
    """
    import time

    from gliaflow.pipeline.kinetics.compartment import BOUNDS
    from gliaflow.pipeline.kinetics.metrics import tidy_metrics
    from gliaflow.pipeline.kinetics.regional import results_table

    s = KineticsSettings(models=["2tcm"], vb=None, fit_delay=False, weights="uniform", fit_end_min=63.6)
    fits, flagged, seconds = {}, [], 0.0
    for pet in measurements["PET"]:
        tacs = load_tacs(pet)
        plasma = processed_input(pet, float(tacs["frame_end"].max()))
        t0 = time.perf_counter()
        res = fit_regional_results(tacs.drop(columns="weights"), plasma, s, source=pet)
        seconds += time.perf_counter() - t0
        metrics = tidy_metrics(results_table(res)).set_index("region")
        for reg, r in res["2tcm"].items():
            fits[(pet, reg)] = r
            assert r.flags is not None
            vt = metrics.loc[reg, "vt_2tcm"]
            if r.flags:
                flagged.append((pet, reg, r.params["VT"], ";".join(r.flags)))
                assert np.isnan(vt) and metrics.loc[reg, "vt_2tcm_flag"] == ";".join(r.flags)
                continue
            assert r.converged and vt == r.params["VT"]
            assert 0.5 <= vt <= 20.0, (pet, reg, vt)
            for k in ("K1", "k2", "k3", "k4"):
                lo, hi = BOUNDS[k]
                assert lo * 1.01 < r.params[k] < hi * 0.99, (pet, reg, k, r.params[k])
            assert r.params["vB"] < 0.99 * BOUNDS["vB"][1]
            assert r.se["VT"] / vt <= s.max_vt_rel_se
    assert len(fits) == 20 * len(REGIONS)
    for key, ref in KINFITR_2TCM_VT.items():
        r = fits[key]
        assert r.flags or abs(r.params["VT"] / ref - 1) <= 0.10, (key, r.params["VT"], ref)
    vts = [r.params["VT"] for r in fits.values() if not r.flags]
    assert len(vts) >= 0.5 * len(fits)  # the verdict must not throw most real fits away
    print(f"\n2TCM (uniform weights, vB fitted, no delay, frames to 63.6 min): {len(flagged)} of "
          f"{len(fits)} fits flagged ({100 * len(flagged) / len(fits):.0f} %); unflagged VT range "
          f"{min(vts):.3f}-{max(vts):.3f} mL/cm3; {1000 * seconds / len(fits):.0f} ms per fit")
    for f in flagged:
        print("  flagged:", f[0], f[1], f"VT {f[2]:.4g}", f[3])
