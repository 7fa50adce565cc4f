"""Design validation, OLS, FDR/Holm and t->z of the group statistics (pipeline/stats_design.py)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import statsmodels.api as sm  # noqa: E402
from scipy import stats as sps  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.errors import StatsError  # noqa: E402
from gliaflow.pipeline.stats.design import (  # noqa: E402
    build_design, contrast_vector, fdr_bh, fit_ols, holm, subject_table, t_to_z)


def subjects(n_per_group=8, seed=0, lab=0):
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    geno = np.array(["HAB", "MAB"] * n_per_group, dtype=object)
    geno[:lab] = "LAB"
    return pd.DataFrame({
        "group": ["patient"] * n_per_group + ["control"] * n_per_group,
        "tspo_genotype": geno,
        "age": rng.uniform(20, 70, n),
        "sex": rng.choice(["F", "M"], n),
        "site": ["A", "B"] * n_per_group,
        "fatigue": rng.normal(5, 2, n),
    }, index=[f"sub-{i:02d}" for i in range(n)])


def test_design_columns_and_coding():
    s = StatsSettings(covariates=["tspo_genotype", "age", "sex"])
    d = build_design(subjects(), s)
    assert d.columns == ["intercept", "group[patient]", "tspo_genotype[MAB]", "age", "sex[M]"]
    assert d.X.shape == (16, 5)
    np.testing.assert_allclose(d.X[:, 3].mean(), 0, atol=1e-12)  # numeric covariate centred
    np.testing.assert_array_equal(d.X[:, 1], [1] * 8 + [0] * 8)
    np.testing.assert_array_equal(d.contrast, [0, 1, 0, 0, 0])
    assert d.n_by_group() == {"control": 8, "patient": 8}


def test_lab_excluded_by_default_and_counted():
    sub = subjects(n_per_group=8, lab=2)
    d = build_design(sub, StatsSettings())
    assert d.n_excluded_lab == 2 and d.n == 14
    d2 = build_design(sub, StatsSettings(lab_handling="include"))
    assert d2.n_excluded_lab == 0 and d2.n == 16
    assert "tspo_genotype[LAB]" in d2.columns and "tspo_genotype[MAB]" in d2.columns


def test_genotype_case_and_whitespace_normalised():
    sub = subjects()
    sub["tspo_genotype"] = [" hab", "Mab "] * 8
    d = build_design(sub, StatsSettings())
    assert "tspo_genotype[MAB]" in d.columns


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s.assign(group=["patient"] * 2 + ["control"] * 14), "group"),
    (lambda s: s.assign(age=[np.nan] + list(s["age"].iloc[1:])), "age"),
    (lambda s: s.assign(age=40.0), "age"),
    (lambda s: s.assign(tspo_genotype=["HAB", "XAB"] * 8), "tspo_genotype"),
    (lambda s: s.drop(columns="group"), "group"),
])
def test_bad_input_names_the_column(mutate, field):
    s = StatsSettings(covariates=["tspo_genotype", "age"])
    with pytest.raises(StatsError) as ei:
        build_design(mutate(subjects()), s)
    assert ei.value.field == field
    assert field in str(ei.value)


def test_unknown_covariate_named():
    with pytest.raises(StatsError) as ei:
        build_design(subjects(), StatsSettings(covariates=["tspo_genotype", "bmi"]))
    assert ei.value.field == "bmi"


def test_genotype_constant_after_lab_exclusion_is_an_error():
    sub = subjects()
    sub["tspo_genotype"] = ["HAB", "LAB"] * 8
    with pytest.raises(StatsError) as ei:
        build_design(sub, StatsSettings())
    assert ei.value.field == "tspo_genotype" and "constant" in str(ei.value)


def test_too_few_after_lab_exclusion():
    sub = subjects(n_per_group=4)
    sub["tspo_genotype"] = ["LAB", "LAB", "HAB", "MAB"] * 2
    with pytest.raises(StatsError) as ei:
        build_design(sub, StatsSettings())
    assert ei.value.field == "group" and "LAB excluded: 4" in str(ei.value)


def test_collinear_covariate_named():
    sub = subjects()
    sub["site"] = np.where(sub["group"] == "patient", "A", "B")  # confounded with group
    with pytest.raises(StatsError) as ei:
        build_design(sub, StatsSettings(covariates=["tspo_genotype", "site"]))
    assert "site" in ei.value.field


def test_contrast_vector_unknown_column():
    d = build_design(subjects(), StatsSettings(covariates=["tspo_genotype", "age"]))
    np.testing.assert_array_equal(contrast_vector(d, "age"), [0, 0, 0, 1])
    np.testing.assert_array_equal(contrast_vector(d, {"group[patient]": 1, "age": -1}), [0, 1, 0, -1])
    with pytest.raises(StatsError) as ei:
        contrast_vector(d, "bmi")
    assert ei.value.field == "bmi"
    with pytest.raises(StatsError):
        contrast_vector(d, [1, 0])


def test_ols_matches_statsmodels():
    rng = np.random.default_rng(3)
    d = build_design(subjects(seed=3), StatsSettings(covariates=["tspo_genotype", "age", "sex"]))
    Y = rng.normal(size=(d.n, 5)) + d.X @ rng.normal(size=(d.X.shape[1], 5))
    r = fit_ols(d.X, Y, d.contrast)
    for j in range(Y.shape[1]):
        m = sm.OLS(Y[:, j], d.X).fit()
        np.testing.assert_allclose(r.beta[:, j], m.params, rtol=1e-10)
        np.testing.assert_allclose(r.se[j], m.bse[1], rtol=1e-10)
        np.testing.assert_allclose(r.t[j], m.tvalues[1], rtol=1e-10)
        np.testing.assert_allclose(r.p[j], m.pvalues[1], rtol=1e-8)
        tt = m.t_test(d.contrast)
        np.testing.assert_allclose(r.estimate[j], tt.effect[0], rtol=1e-10)
    assert r.df == d.n - d.X.shape[1]
    g = fit_ols(d.X, Y, d.contrast, tail="greater")
    np.testing.assert_allclose(g.p, sps.t.sf(r.t, r.df))


def test_fdr_and_holm_match_statsmodels():
    rng = np.random.default_rng(1)
    p = np.r_[rng.uniform(0, 0.01, 5), rng.uniform(0, 1, 30)]
    np.testing.assert_allclose(fdr_bh(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    q = fdr_bh(np.r_[p[:3], np.nan])
    assert np.isnan(q[3]) and np.allclose(q[:3], multipletests(p[:3], method="fdr_bh")[1])


def test_t_to_z_tail_probability():
    t = np.array([-3.0, -0.5, 0.0, 1.0, 4.0, 40.0])
    z = t_to_z(t, 12)
    np.testing.assert_allclose(sps.norm.sf(np.abs(z[:5])), sps.t.sf(np.abs(t[:5]), 12), rtol=1e-9)
    assert np.all(np.sign(z) == np.sign(t)) and np.isfinite(z[-1])
    # far tail (p ~ 1e-14): same log tail probability
    np.testing.assert_allclose(sps.norm.logsf(z[-1]), sps.t.logsf(40.0, 12), rtol=1e-9)


def test_subject_table_sessions():
    rows = []
    for i in range(6):
        for ses in ("baseline", "followup"):
            for r in ("a", "b"):
                rows.append({"participant_id": f"sub-{i}", "session_id": f"sub-{i}_ses-{ses}",
                             "region": r, "suvr": i + (r == "a"), "group": "patient" if i < 3 else "control",
                             "tspo_genotype": "HAB"})
    df = pd.DataFrame(rows)
    with pytest.raises(StatsError) as ei:
        subject_table(df, StatsSettings())
    assert ei.value.field == "session_id"
    sub, long = subject_table(df, StatsSettings(session="baseline"))
    assert len(sub) == 6 and set(sub.columns) == {"group", "tspo_genotype"}
    assert (long["session_id"].str.endswith("baseline")).all()
    with pytest.raises(StatsError):
        subject_table(df, StatsSettings(session="nope"))
