"""Fits that fail loudly: the 1TCM/2TCM quality verdict, NaN metrics with a ``_flag`` reason,
and flag columns carried into the cohort table but never tested as metrics."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gliaflow.pipeline.config import KineticsSettings, StatsSettings  # noqa: E402
from gliaflow.pipeline.io.derivatives import write_tsv  # noqa: E402
from gliaflow.pipeline.kinetics.base import frame_weights  # noqa: E402
from gliaflow.pipeline.kinetics.compartment import BOUNDS, fit_tcm, quality_flags  # noqa: E402
from gliaflow.pipeline.kinetics.metrics import tidy_metrics  # noqa: E402
from gliaflow.pipeline.kinetics.regional import fit_regional  # noqa: E402
from gliaflow.pipeline.stats.design import metric_columns, subject_table  # noqa: E402
from gliaflow.pipeline.stats.regional import regional_group_stats  # noqa: E402
from gliaflow.workflows.cohort_table import build_regional_table  # noqa: E402
from test_kinetics import FE, FRAMES, FS, PLASMA, REGIONS, VB, noisy, phantom, vt_true  # noqa: E402

#: an irreversible target (k4 = 0): the reversible 2TCM must push k4 to its lower bound
IRREVERSIBLE = (0.12, 0.10, 0.06, 0.0)


@pytest.mark.parametrize("name", list(REGIONS))
def test_noise_free_2tcm_recovered_and_trusted(name):
    p = REGIONS[name]
    r = fit_tcm(FRAMES, phantom(*p), PLASMA, 2, frame_weights(FRAMES, "duration"), vb=None)
    assert r.params["VT"] == pytest.approx(vt_true(*p), rel=0.01)
    assert r.flags == [] and r.trusted
    assert r.row("2tcm")["2tcm_flag"] == ""


def test_k4_at_bound_is_flagged_and_its_metric_is_nan():
    r = fit_tcm(FRAMES, phantom(*IRREVERSIBLE), PLASMA, 2, vb=VB)
    assert r.converged  # the optimiser is happy ...
    assert r.params["k4"] <= BOUNDS["k4"][0] * 1.01
    assert "k4_at_bound" in r.flags and not r.trusted  # ... the verdict is not
    # through the regional table to the tidy metrics
    df = pd.DataFrame({"frame_start": FS, "frame_end": FE, "good": phantom(*REGIONS["frontal"]),
                       "bad": phantom(*IRREVERSIBLE)})
    fits = fit_regional(df, PLASMA, KineticsSettings(models=["1tcm", "2tcm", "suv"], vb=VB),
                        injected_bq=3.7e8, body_weight_kg=70)
    m = tidy_metrics(fits).set_index("region")
    assert m.loc["good", "vt_2tcm"] == pytest.approx(vt_true(*REGIONS["frontal"]), rel=0.01)
    assert m.loc["good", "vt_2tcm_flag"] == ""
    assert math.isnan(m.loc["bad", "vt_2tcm"]) and math.isnan(m.loc["bad", "bpnd_2tcm"])
    assert "k4_at_bound" in m.loc["bad", "vt_2tcm_flag"]
    assert "k4_at_bound" in m.loc["bad", "k1_2tcm_flag"]
    assert "suv_flag" not in m.columns  # models without a verdict get no flag column
    # the full fit table keeps the value and says why it is not used
    assert np.isfinite(fits.set_index("region").loc["bad", "2tcm_VT"])


def test_se_limit_is_the_setting_and_named_in_the_flag():
    rng = np.random.default_rng(3)
    p = REGIONS["frontal"]
    y = noisy(phantom(*p), rng, cv_late=0.05)
    r = fit_tcm(FRAMES, y, PLASMA, 2, vb=VB)
    rel = r.se["VT"] / r.params["VT"]
    assert 0 < rel < 0.25 and r.flags == []
    tight = fit_tcm(FRAMES, y, PLASMA, 2, vb=VB, max_vt_rel_se=rel / 2)
    assert tight.flags == [f"se_vt_{round(100 * rel)}pct"]
    # through the settings object
    df = pd.DataFrame({"frame_start": FS, "frame_end": FE, "frontal": y})
    m = tidy_metrics(fit_regional(df, PLASMA, KineticsSettings(models=["2tcm"], vb=VB,
                                                               max_vt_rel_se=rel / 2)))
    assert math.isnan(m["vt_2tcm"][0]) and m["vt_2tcm_flag"][0].startswith("se_vt_")


def test_quality_rules():
    ok = {"K1": 0.1, "k2": 0.1, "k3": 0.05, "k4": 0.05, "vB": 0.0, "delay_s": 2.0, "VT": 2.0}
    free = list(ok)[:-1]
    assert quality_flags(ok, 0.1, free) == []  # vB = 0 is the physical limit: no flag
    assert quality_flags({**ok, "vB": BOUNDS["vB"][1]}, 0.1, free) == ["vB_at_bound"]
    assert quality_flags({**ok, "delay_s": BOUNDS["delay_s"][0]}, 0.1, free) == ["delay_at_bound"]
    assert quality_flags({**ok, "k3": BOUNDS["k3"][1]}, 0.1, free) == ["k3_at_bound"]
    assert quality_flags({**ok, "K1": BOUNDS["K1"][0]}, 0.1, free) == ["K1_at_bound"]
    assert quality_flags({**ok, "k4": BOUNDS["k4"][0]}, 0.1, free[:4]) == ["k4_at_bound"]
    assert quality_flags({**ok, "delay_s": 30.0}, 0.1, free[:4]) == []  # fixed: not checked
    assert quality_flags(ok, 0.84, free) == ["se_vt_42pct"]
    assert quality_flags(ok, 0.84, free, max_vt_rel_se=None) == []
    assert quality_flags(ok, math.nan, free) == ["se_vt_unknown"]
    assert quality_flags({**ok, "VT": -1.0}, 0.1, free) == ["vt_not_positive"]


def test_failed_fit_is_flagged_not_converged():
    r = fit_tcm(FRAMES, np.zeros(FRAMES.n), PLASMA, 2)
    assert not r.converged and r.flags == ["not_converged"]
    fits = pd.DataFrame({"region": ["a", "b"], "2tcm_VT": [2.0, 3.0], "2tcm_converged": [True, False],
                         "2tcm_flag": ["", ""]})
    m = tidy_metrics(fits)
    assert list(m["vt_2tcm_flag"]) == ["", "not_converged"] and math.isnan(m["vt_2tcm"][1])


def test_flags_reach_the_cohort_table_but_not_the_statistics(tmp_path):
    """Per-session tidy tables with an n/a metric and its flag -> group/regional.tsv -> stats."""
    rng = np.random.default_rng(0)
    regions = ["r1", "r2", "r3", "r4"]
    sessions = []
    for i in range(8):
        vt = 3.0 * np.exp(rng.normal(0, 0.1, len(regions)))
        flag = [""] * len(regions)
        if i == 2:
            vt[1], flag[1] = np.nan, "k4_at_bound;se_vt_312pct"
        t = pd.DataFrame({"region": regions, "vt_2tcm": vt, "vt_2tcm_flag": flag,
                          "suvr": 1.1 * vt / 3.0})
        path = write_tsv(t, tmp_path / f"s{i}.tsv")
        spec = SimpleNamespace(participant=f"{i:02d}", session_id=f"sub-{i:02d}_ses-1", covariates={
            "group": "patient" if i < 4 else "control", "tspo_genotype": "HAB" if i % 2 else "MAB"})
        sessions.append((spec, path))
    out = tmp_path / "regional.tsv"
    table = build_regional_table(sessions, out)
    assert "vt_2tcm_flag" in table.columns
    back = pd.read_csv(out, sep="\t", na_values=["n/a"], keep_default_na=False)
    bad = back[(back["participant_id"] == "sub-02") & (back["region"] == "r2")].iloc[0]
    assert bad["vt_2tcm"] == "n/a" or (isinstance(bad["vt_2tcm"], float) and math.isnan(bad["vt_2tcm"]))
    assert bad["vt_2tcm_flag"] == "k4_at_bound;se_vt_312pct"
    raw = out.read_text().splitlines()
    assert any("\tn/a\tk4_at_bound;se_vt_312pct\t" in line for line in raw)
    regional = pd.read_csv(out, sep="\t", na_values=["n/a"])
    s = StatsSettings(covariates=["tspo_genotype"], n_permutations=0, voxelwise=False)
    subjects, long = subject_table(regional, s)
    assert sorted(metric_columns(long, subjects, s)) == ["suvr", "vt_2tcm"]
    tab, _ = regional_group_stats(regional, s)
    assert set(tab["metric"]) == {"suvr", "vt_2tcm"}
    row = tab[(tab["metric"] == "vt_2tcm") & (tab["region"] == "r2")].iloc[0]
    assert row["n_missing"] == 1 and row["n"] == 7
    assert (tab[tab["region"] != "r2"]["n"] == 8).all()
