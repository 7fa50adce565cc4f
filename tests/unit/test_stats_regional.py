"""Regional group statistics on synthetic phantom cohorts (pipeline/stats_regional.py)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402
from scipy import stats as sps  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.errors import StatsError  # noqa: E402
from gliaflow.pipeline.stats.regional import (  # noqa: E402
    hedges_correction, hedges_g_ci, partial_correlation, regional_correlations, regional_group_stats)

REGIONS = [f"ctx_{i:02d}" for i in range(12)]
AFFECTED = {"ctx_01", "ctx_05", "ctx_09"}


def cohort(seed=0, n_per_group=8, effect=1.25, n_lab=0, fatigue_r=0.0):
    """Phantom regional table: SUVR and VT (mL/cm3) per participant x region.

    Genotype scales binding (MAB = 0.55 x HAB, LAB = 0.1 x HAB); between-subject CV 6 %, region
    noise CV 5 %; patients have ``effect`` x uptake in AFFECTED; fatigue correlates with the
    patients' uptake in ctx_01 with strength ``fatigue_r``.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    group = np.array(["patient"] * n_per_group + ["control"] * n_per_group)
    geno = np.array(["HAB", "MAB"] * n_per_group, dtype=object)
    if n_lab:
        geno[rng.choice(n, n_lab, replace=False)] = "LAB"
    scale = np.select([geno == "HAB", geno == "MAB"], [1.0, 0.55], 0.1)
    age = rng.uniform(25, 65, n)
    subj = scale * np.exp(rng.normal(0, 0.06, n))
    lat = rng.normal(size=n)
    fatigue = np.where(group == "patient", 5 + 2 * lat, np.nan)
    rows = []
    for i in range(n):
        for r in REGIONS:
            v = subj[i] * np.exp(rng.normal(0, 0.05))
            if group[i] == "patient" and r in AFFECTED:
                v *= effect
            if r == "ctx_01" and group[i] == "patient":
                v *= np.exp(0.05 * fatigue_r * lat[i])
            rows.append({"participant_id": f"sub-{i:02d}", "session_id": f"sub-{i:02d}_ses-01",
                         "region": r, "suvr": 1.2 * v, "vt_2tcm": 3.0 * v * np.exp(rng.normal(0, 0.02)),
                         "group": group[i], "tspo_genotype": geno[i], "age": age[i],
                         "sex": "F" if i % 3 else "M", "fatigue": fatigue[i]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_effect_detected_no_false_region(seed):
    s = StatsSettings(covariates=["tspo_genotype", "age"], n_permutations=999, seed=seed)
    tab, design = regional_group_stats(cohort(seed), s)
    assert set(tab["metric"]) == {"suvr", "vt_2tcm"}
    assert len(tab) == 2 * len(REGIONS)
    for metric, t in tab.groupby("metric"):
        hit = t[t["region"].isin(AFFECTED)]
        miss = t[~t["region"].isin(AFFECTED)]
        assert (hit["p_fdr"] < 0.05).all() and (hit["p_fwer_perm"] < 0.05).all(), hit
        assert (hit["p_holm"] < 0.05).all()
        assert (miss["p_fdr"] >= 0.05).all() and (miss["p_fwer_perm"] >= 0.05).all(), miss
        assert hit["significant"].all() and not miss["significant"].any()
        # estimated size near the planted 25 %
        assert hit["percent_difference"].between(12, 40).all()
        assert (hit["hedges_g"] > 1).all() and (hit["g_ci_low"] > 0).all()
        assert (t["g_ci_low"] < t["hedges_g"]).all() and (t["hedges_g"] < t["g_ci_high"]).all()


def test_regional_estimates_match_statsmodels():
    df = cohort(5)
    s = StatsSettings(covariates=["tspo_genotype", "age", "sex"], n_permutations=0)
    tab, design = regional_group_stats(df, s)
    assert design.columns == ["intercept", "group[patient]", "tspo_genotype[MAB]", "age", "sex[M]"]
    for region in ("ctx_01", "ctx_02"):
        sub = df[df["region"] == region].copy()
        sub["patient"] = (sub["group"] == "patient").astype(float)
        m = smf.ols("vt_2tcm ~ patient + C(tspo_genotype) + age + C(sex)", data=sub).fit()
        row = tab[(tab["metric"] == "vt_2tcm") & (tab["region"] == region)].iloc[0]
        np.testing.assert_allclose(row["estimate"], m.params["patient"], rtol=1e-9)
        np.testing.assert_allclose(row["se"], m.bse["patient"], rtol=1e-9)
        np.testing.assert_allclose(row["t"], m.tvalues["patient"], rtol=1e-9)
        np.testing.assert_allclose(row["p"], m.pvalues["patient"], rtol=1e-7)
        lo, hi = m.conf_int().loc["patient"]
        np.testing.assert_allclose([row["ci_low"], row["ci_high"]], [lo, hi], rtol=1e-9)
        assert row["df"] == m.df_resid
    assert tab["p_fwer_perm"].isna().all()  # no permutations requested


def test_lab_excluded_and_counted():
    tab, design = regional_group_stats(cohort(3, n_per_group=9, n_lab=3), StatsSettings(n_permutations=0))
    assert (tab["n_excluded_lab"] == 3).all() and (tab["n"] == 15).all()
    tab2, _ = regional_group_stats(cohort(3, n_per_group=9, n_lab=3),
                                   StatsSettings(n_permutations=0, lab_handling="include"))
    assert (tab2["n_excluded_lab"] == 0).all() and (tab2["n"] == 18).all()


def test_missing_metric_value_drops_subject_for_that_region_only():
    df = cohort(4)
    df.loc[(df["participant_id"] == "sub-00") & (df["region"] == "ctx_03"), "suvr"] = np.nan
    tab, _ = regional_group_stats(df, StatsSettings(n_permutations=99))
    r = tab.set_index(["metric", "region"])
    assert r.loc[("suvr", "ctx_03"), "n"] == 15 and r.loc[("suvr", "ctx_03"), "n_missing"] == 1
    assert r.loc[("suvr", "ctx_04"), "n"] == 16
    assert np.isnan(r.loc[("suvr", "ctx_03"), "p_fwer_perm"])
    assert np.isfinite(r.loc[("suvr", "ctx_04"), "p_fwer_perm"])


def test_constant_region_not_tested_and_kept_out_of_the_null():
    """A reference region's SUVR is 1 in every subject: no statistics (instead of rounding
    noise's t), no numpy warning, not in the max-T null of the other regions; reported."""
    import warnings

    df = cohort(6)
    s = StatsSettings(covariates=["tspo_genotype"], n_permutations=199, seed=3)
    base, _ = regional_group_stats(df, s)
    ref = df[df["region"] == "ctx_00"].copy()
    ref["region"] = "ref"
    ref["suvr"] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tab, _ = regional_group_stats(pd.concat([df, ref], ignore_index=True), s)
    r = tab.set_index(["metric", "region"])
    assert r.loc[("suvr", "ref"), "n"] == 16
    assert r.loc[("suvr", "ref"), ["t", "p", "hedges_g", "p_fdr", "p_fwer_perm"]].isna().all()
    assert np.isfinite(r.loc[("vt_2tcm", "ref"), "p_fwer_perm"])  # VT of that region varies
    assert tab.attrs["untestable"] == {"suvr": {"ref": "constant"}}
    # the other SUVR regions' results are those of the table without the constant region
    b = base[base["metric"] == "suvr"].set_index(["metric", "region"])
    for col in ("t", "p", "p_fdr", "p_fwer_perm"):
        np.testing.assert_allclose(r.loc[b.index, col].to_numpy(float), b[col].to_numpy(float),
                                   rtol=1e-12, err_msg=col)


def test_hedges_g_equals_classic_formula_without_covariates():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 9), rng.normal(0, 1, 11)
    X = np.column_stack([np.ones(20), np.r_[np.ones(9), np.zeros(11)]])
    y = np.r_[a, b]
    from gliaflow.pipeline.stats.design import fit_ols
    r = fit_ols(X, y, np.array([0, 1.0]))
    g, lo, hi = hedges_g_ci(float(r.t[0]), r.df, r.var_factor)
    sp = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / 18)
    d = (a.mean() - b.mean()) / sp
    assert abs(hedges_correction(18) - (1 - 3 / (4 * 18 - 1))) < 1e-3
    np.testing.assert_allclose(g, d * hedges_correction(18), rtol=1e-10)
    assert lo < g < hi and (hi - lo) > 1.0


def test_hedges_g_ci_coverage():
    rng = np.random.default_rng(7)
    X = np.column_stack([np.ones(20), np.r_[np.ones(10), np.zeros(10)]])
    from gliaflow.pipeline.stats.design import fit_ols
    Y = rng.normal(size=(20, 300)) + 0.8 * X[:, [1]]
    r = fit_ols(X, Y, np.array([0, 1.0]))
    J = hedges_correction(r.df)
    cover = 0
    for t in r.t:
        g, lo, hi = hedges_g_ci(float(t), r.df, r.var_factor)
        cover += lo / J <= 0.8 <= hi / J  # CI of d (true d = 0.8)
    assert 0.91 <= cover / 300 <= 0.99


def test_partial_correlation_matches_ols_t_and_fisher_ci():
    rng = np.random.default_rng(2)
    n = 30
    Z = np.column_stack([rng.integers(0, 2, n), rng.normal(size=n)])
    x = rng.normal(size=n) + Z[:, 0]
    y = 0.5 * x + Z @ [1.0, -0.5] + rng.normal(size=n)
    pc = partial_correlation(x, y, Z)
    import statsmodels.api as sm
    m = sm.OLS(y, np.column_stack([np.ones(n), x, Z])).fit()
    t = m.tvalues[1]
    np.testing.assert_allclose(pc["t"], t, rtol=1e-9)
    np.testing.assert_allclose(pc["p"], m.pvalues[1], rtol=1e-7)
    np.testing.assert_allclose(pc["r"], t / np.sqrt(t * t + m.df_resid), rtol=1e-9)
    assert pc["df"] == n - 4
    zr, se = np.arctanh(pc["r"]), 1 / np.sqrt(n - 3 - 2)
    np.testing.assert_allclose(pc["ci_low"], np.tanh(zr - sps.norm.isf(0.025) * se), rtol=1e-9)


def test_correlations_table_detects_planted_fatigue_link():
    s = StatsSettings(covariates=["tspo_genotype", "age"], n_permutations=0)
    c = regional_correlations(cohort(11, n_per_group=14, fatigue_r=4.0), s)
    assert set(c["group"]) == {"patient"} and set(c["score"]) == {"fatigue"}
    assert (c["n"] == 14).all() and (c["controls"] == "tspo_genotype[MAB]+age").all()
    top = c[c["metric"] == "suvr"].sort_values("p").iloc[0]
    assert top["region"] == "ctx_01" and top["r"] > 0.5 and top["p_fdr"] < 0.05
    assert (c["ci_low"] < c["r"]).all() and (c["r"] < c["ci_high"]).all()


def test_correlation_bad_score_and_small_group():
    s = StatsSettings(clinical_scores=["pain"], n_permutations=0)
    with pytest.raises(StatsError) as ei:
        regional_correlations(cohort(0), s)
    assert ei.value.field == "pain"
    s = StatsSettings(correlation_groups=["control"], n_permutations=0)
    with pytest.raises(StatsError) as ei:  # controls have no fatigue score
        regional_correlations(cohort(0), s)
    assert ei.value.field == "fatigue"


def test_unknown_metric_named():
    with pytest.raises(StatsError) as ei:
        regional_group_stats(cohort(0), StatsSettings(metrics=["vt_logan"]))
    assert ei.value.field == "vt_logan"


def test_covariate_varying_within_participant_is_not_a_covariate():
    df = cohort(0)
    df["age"] = df["age"] + np.arange(len(df)) * 0.01  # inconsistent across a subject's rows
    with pytest.raises(StatsError) as ei:
        regional_group_stats(df, StatsSettings(covariates=["tspo_genotype", "age"]))
    assert ei.value.field == "age"


def test_fit_quality_columns_are_not_tested_as_metrics():
    df = cohort(0)
    df["vt_2tcm_se"] = np.random.default_rng(0).uniform(0.01, 0.1, len(df))
    df["n_voxels"] = np.random.default_rng(1).integers(100, 1000, len(df))
    df["2tcm_converged"] = np.arange(len(df)) % 3 > 0
    df["2tcm_wssr"] = np.random.default_rng(2).uniform(0, 1, len(df))
    tab, _ = regional_group_stats(df, StatsSettings(n_permutations=0))
    assert set(tab["metric"]) == {"suvr", "vt_2tcm"}
    tab, _ = regional_group_stats(df, StatsSettings(n_permutations=0, metrics=["vt_2tcm_se"]))
    assert set(tab["metric"]) == {"vt_2tcm_se"}
