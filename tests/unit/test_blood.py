"""Arterial input processing (gliaflow.pipeline.blood) on synthetic blood data with known truth."""
from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.blood.delay import apply_delay, estimate_delay
from gliaflow.pipeline.blood.input import dispersion_correct, plasma_input_from_files, plasma_input_from_tables
from gliaflow.pipeline.blood.parent_fraction import fit_parent_fraction, parent_fraction_curve
from gliaflow.pipeline.blood.tables import PlasmaInput, clean_blood_table
from gliaflow.pipeline.config import BloodSettings
from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.kinetics.forward import feng_input, tcm_tac
from gliaflow.pipeline.numerics import exp_conv

SCAN_END = 5400.0
HILL = {"a": 0.9, "b": 2.5, "c_min": 8.0}


def true_curves(t):
    """Whole blood (Bq/mL), plasma/whole-blood ratio, parent fraction, on times t (s)."""
    wb = feng_input(t, 4.0e5, 2.5e3, 1.5e3, 4.0, 0.25, 0.008, 15.0)
    ratio = 1.1 + 0.2 * (t / SCAN_END)
    pf = parent_fraction_curve(t, "hill", HILL)
    return wb, ratio, pf


def recordings(seed=0):
    """Autosampler (1 s, 0-600 s, whole blood), manual samples (wb + plasma) and parent fraction."""
    t_auto = np.arange(1.0, 601.0)
    wb_a, _, _ = true_curves(t_auto)
    auto = pd.DataFrame({"time_s": t_auto, "plasma_bqml": np.nan, "whole_blood_bqml": wb_a,
                         "parent_fraction": np.nan})
    t_man = np.array([60, 120, 180, 300, 450, 600, 900, 1200, 1800, 2400, 3000, 3600, 4500, 5400.0])
    wb_m, r_m, _ = true_curves(t_man)
    man = pd.DataFrame({"time_s": t_man, "plasma_bqml": wb_m * r_m, "whole_blood_bqml": wb_m,
                        "parent_fraction": np.nan})
    t_pf = np.array([0, 60, 180, 300, 600, 1200, 2400, 3600, 5400.0])
    pf = pd.DataFrame({"time_s": t_pf, "plasma_bqml": np.nan, "whole_blood_bqml": np.nan,
                       "parent_fraction": parent_fraction_curve(t_pf, "hill", HILL)})
    return [auto, man, pf], ["autosampler", "manual", "metabolite"]


def test_parent_input_matches_truth():
    tabs, labels = recordings()
    pi = plasma_input_from_tables(tabs, BloodSettings(delay="fixed"), scan_end_s=SCAN_END, labels=labels)
    assert isinstance(pi, PlasmaInput)
    assert pi.t_s[0] == 0 and np.allclose(np.diff(pi.t_s), 1.0) and pi.t_s[-1] >= SCAN_END
    wb, ratio, pf = true_curves(pi.t_s)
    truth = wb * ratio * pf
    auc_err = abs(np.trapezoid(pi.parent_bqml) / np.trapezoid(truth) - 1)
    assert auc_err < 0.01
    late = pi.t_s > 600
    assert np.max(np.abs(pi.parent_bqml[late] - truth[late]) / truth[late]) < 0.03
    assert pi.parent_fraction_params["a"] == pytest.approx(0.9, rel=0.02)
    assert np.allclose(pi.whole_blood_bqml[:601][10:], wb[:601][10:], rtol=1e-6)


@pytest.mark.parametrize("model", ["hill", "exponential", "power"])
def test_parent_fraction_models_fit_their_own_curves(model):
    t = np.array([0, 60, 180, 300, 600, 1200, 2400, 3600, 5400.0])
    truth = {"hill": {"a": 0.85, "b": 2.0, "c_min": 6.0},
             "exponential": {"a": 0.7, "b_per_min": 0.2, "c_per_min": 0.01},
             "power": {"a_per_min": 0.15, "b": 2.0, "c": 0.4}}[model]
    y = parent_fraction_curve(t, model, truth)
    p = fit_parent_fraction(t, y, model)
    tt = np.linspace(0, 5400, 200)
    assert np.max(np.abs(parent_fraction_curve(tt, model, p) - parent_fraction_curve(tt, model, truth))) < 0.01
    assert parent_fraction_curve([0.0], model, p)[0] == pytest.approx(1.0)


def test_raw_and_none_parent_fraction():
    tabs, labels = recordings()
    raw = plasma_input_from_tables(tabs, BloodSettings(parent_fraction_model="raw", delay="fixed"),
                                   SCAN_END, labels)
    _, _, pf = true_curves(raw.t_s)
    assert np.max(np.abs(raw.parent_fraction - pf)) < 0.06
    # an already metabolite-corrected input: one plasma table, fraction 1
    t = np.array([10, 30, 60, 120, 300, 600, 1200, 2400, 3600, 5400.0])
    cp = feng_input(t, 4e5, 2e3, 1e3, 4, 0.2, 0.01, 5)
    df = pd.DataFrame({"time_s": t, "plasma_bqml": cp})
    pi = plasma_input_from_tables([df], BloodSettings(parent_fraction_model="none", delay="fixed"), SCAN_END)
    assert np.allclose(np.interp(t, pi.t_s, pi.parent_bqml), cp)
    assert np.all(pi.parent_fraction == 1.0)
    assert any("stands in for whole blood" in n for n in pi.notes)
    with pytest.raises(BloodDataError, match="metabolite_parent_fraction"):
        plasma_input_from_tables([df], BloodSettings(parent_fraction_model="hill"), SCAN_END)


def test_bad_input_handling():
    tabs, labels = recordings()
    auto, man, pf = tabs
    s = BloodSettings(delay="fixed")
    # out of order and duplicates: documented handling
    shuffled = man.sample(frac=1.0, random_state=1)
    dup = pd.concat([shuffled, shuffled.iloc[:2]])
    out, notes = clean_blood_table(dup, "manual.tsv")
    assert out["time_s"].is_monotonic_increasing and not out["time_s"].duplicated().any()
    assert any("sorted" in n for n in notes) and any("duplicate" in n for n in notes)
    # small negative noise is zeroed, large negatives are an error naming file and column
    noisy = auto.copy()
    noisy.loc[0, "whole_blood_bqml"] = -1.0
    out, notes = clean_blood_table(noisy, "auto.tsv")
    assert out["whole_blood_bqml"].min() == 0 and notes
    bad = auto.copy()
    bad.loc[100, "whole_blood_bqml"] = -0.5 * auto["whole_blood_bqml"].max()
    with pytest.raises(BloodDataError) as e:
        clean_blood_table(bad, "auto.tsv")
    assert e.value.file == "auto.tsv" and e.value.field == "whole_blood_radioactivity"
    # parent fraction above 1
    badpf = pf.copy()
    badpf.loc[3, "parent_fraction"] = 1.5
    with pytest.raises(BloodDataError, match="parent fraction"):
        plasma_input_from_tables([auto, man, badpf], s, SCAN_END, labels)
    # curve shorter than the scan: extrapolated when a little is missing, error when too much
    short = man[man["time_s"] <= 4500]
    pi = plasma_input_from_tables([auto, short, pf], s, SCAN_END, labels)
    assert any("extrapolated" in n for n in pi.notes)
    wb, ratio, pft = true_curves(pi.t_s)
    assert abs(pi.parent_bqml[-1] / (wb * ratio * pft)[-1] - 1) < 0.1
    with pytest.raises(BloodDataError, match="ends at"):
        plasma_input_from_tables([auto, man[man["time_s"] <= 1800], pf], s, SCAN_END, labels)
    # gaps are noted
    gappy = man[(man["time_s"] < 1200) | (man["time_s"] > 3600)]
    pi = plasma_input_from_tables([auto, gappy, pf], s, SCAN_END, labels)
    assert any("gap" in n for n in pi.notes)


def test_dispersion_correction_inverts_exponential_dispersion():
    t = np.arange(0.0, 600.0, 1.0)
    true = feng_input(t, 4e5, 2.5e3, 1.5e3, 4.0, 0.25, 0.008, 15.0)
    tau = 5.0
    # dispersed = true convolved with exp(-t/tau)/tau (exact for piecewise-linear input)
    dispersed = exp_conv(true, 1.0, 60.0 / tau) * (60.0 / tau)
    corr = dispersion_correct(t, dispersed, tau)
    peak = true.max()
    assert abs(corr.max() - peak) < 0.5 * abs(dispersed.max() - peak)   # peak restored
    assert np.max(np.abs(corr - true)) < 0.5 * np.max(np.abs(dispersed - true))
    late = t > 120
    assert np.max(np.abs(corr[late] - true[late]) / true[late]) < 0.02


def test_delay_estimation_recovers_shift():
    tabs, labels = recordings()
    pi = plasma_input_from_tables(tabs, BloodSettings(delay="fixed"), SCAN_END, labels)
    dur = [10] * 8 + [20] * 5 + [30] * 4 + [60] * 4 + [180] * 4 + [360] * 12
    fe = np.cumsum(dur) * 1.0
    fs = fe - np.array(dur)
    true_delay = 8.0  # the tissue sees the input 8 s later than measured
    shifted = pi.shifted(true_delay)
    tac = tcm_tac(fs, fe, pi.t_s, shifted.parent_bqml, shifted.whole_blood_bqml, 0.1, 0.08, 0, 0, 0.05)
    d, info = estimate_delay(pi, fs, fe, tac, (-20, 20), 600.0)
    assert d == pytest.approx(true_delay, abs=1.0)
    assert info["K1"] == pytest.approx(0.1, rel=0.05)
    fitted, info = apply_delay(pi, BloodSettings(delay="fit", delay_range_s=(-20, 20)), fs, fe, tac)
    assert fitted.delay_s == pytest.approx(true_delay, abs=1.0)
    fixed, info = apply_delay(pi, BloodSettings(delay="fixed", delay_s=5.0))
    assert info == {} and fixed.delay_s == 5.0
    assert np.allclose(fixed.parent_bqml[100:], pi.parent_bqml[95:-5])
    with pytest.raises(BloodDataError, match="TAC"):
        apply_delay(pi, BloodSettings(delay="fit"))


def test_from_bids_files(tmp_path):
    tabs, labels = recordings()
    paths = []
    for tab, lab in zip(tabs, labels):
        cols = {"time_s": "time", "plasma_bqml": "plasma_radioactivity",
                "whole_blood_bqml": "whole_blood_radioactivity",
                "parent_fraction": "metabolite_parent_fraction"}
        df = tab.rename(columns=cols).dropna(axis=1, how="all")
        units = {"time": "s", "plasma_radioactivity": "kBq/mL", "whole_blood_radioactivity": "kBq/mL",
                 "metabolite_parent_fraction": "unitless"}
        for c in df.columns:
            if c.endswith("radioactivity"):
                df[c] = df[c] / 1000.0  # write kBq/mL
        p = tmp_path / f"sub-01_recording-{lab}_blood.tsv"
        df.to_csv(p, sep="\t", index=False, na_rep="n/a")
        p.with_suffix(".json").write_text(json.dumps({c: {"Units": units[c]} for c in df.columns}))
        paths.append(p)
    pi = plasma_input_from_files(paths, BloodSettings(delay="fixed"), scan_end_s=SCAN_END)
    ref = plasma_input_from_tables(tabs, BloodSettings(delay="fixed"), SCAN_END, labels)
    assert np.allclose(pi.parent_bqml, ref.parent_bqml, rtol=1e-6, atol=1e-6)
    # units missing -> error naming the file and column
    meta = json.loads(paths[1].with_suffix(".json").read_text())
    del meta["plasma_radioactivity"]
    paths[1].with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(BloodDataError) as e:
        plasma_input_from_files(paths, BloodSettings(delay="fixed"), scan_end_s=SCAN_END)
    assert e.value.field == "plasma_radioactivity" and "manual" in e.value.file
