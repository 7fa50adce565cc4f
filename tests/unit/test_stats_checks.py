"""The statistics settings checked against participants.tsv (pipeline/stats/checks.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bidsfactory as bf  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.errors import ConfigError, StatsError  # noqa: E402
from gliaflow.pipeline.io.bids import read_participants  # noqa: E402
from gliaflow.pipeline.stats.checks import check_cohort_settings, cohort_error  # noqa: E402
from gliaflow.pipeline.stats.design import build_design  # noqa: E402

SIDECAR = {"group": {"Levels": {"FM": "fibromyalgia", "HC": "healthy control"}},
           "tspo_genotype": {"Levels": {"HAB": "high", "MAB": "mixed", "LAB": "low"}},
           "age": {"Units": "year"}}


def participants(tmp_path, n=8, labels=("FM", "HC"), sidecar=SIDECAR, **columns) -> pd.DataFrame:
    """participants.tsv written and read back as the pipeline reads it: n participants
    alternating patient/control, genotypes HAB/MAB, age, fatigue; ``columns`` replace or add
    columns (a list of values, None for n/a) or drop them (None)."""
    rows = {"participant_id": [f"sub-{i:02d}" for i in range(1, n + 1)],
            "group": [labels[i % 2] for i in range(n)],
            "tspo_genotype": ["HAB" if i % 4 < 2 else "MAB" for i in range(n)],
            "age": [30 + 3 * i for i in range(n)],
            "fatigue": [10 + i for i in range(n)]}
    for k, v in columns.items():
        if v is None:
            rows.pop(k, None)
        else:
            rows[k] = v
    recs = [{k: rows[k][i] for k in rows} for i in range(n)]
    bf.write_participants(tmp_path, recs, sidecar=sidecar)
    return read_participants(tmp_path)


def by_severity(problems, severity):
    return [p for p in problems if p.severity == severity]


FM_HC = StatsSettings(patient_label="FM", control_label="HC", covariates=["tspo_genotype", "age"])


def test_group_levels_not_matching_labels_names_levels_and_flag(tmp_path):
    df = participants(tmp_path)
    probs = check_cohort_settings(df, StatsSettings(), "participants.tsv")
    errs = by_severity(probs, "error")
    assert len(errs) == 1, probs
    msg = errs[0].message
    assert "participants.tsv column 'group' has levels FM, HC" in msg
    assert "--group-labels FM HC" in msg and "stats.patient_label/control_label" in msg
    assert errs[0].column == "group" and errs[0].setting == "stats.patient_label/control_label"
    # one label right, the other not: only that one is named
    one = check_cohort_settings(df, StatsSettings(patient_label="FM"))
    assert [p.setting for p in by_severity(one, "error")] == ["stats.control_label"]
    assert "control label 'control'" in by_severity(one, "error")[0].message
    # the settings that fit
    assert by_severity(check_cohort_settings(df, FM_HC, min_per_group=3), "error") == []
    one_level = participants(tmp_path, labels=("FM", "FM"))
    msg = by_severity(check_cohort_settings(one_level, FM_HC), "error")[0].message
    assert "has levels FM" in msg and "needs participants of two levels" in msg
    # equal labels cannot even be configured (rejected when the settings load)
    with pytest.raises(ValueError, match="must differ"):
        StatsSettings(patient_label="FM", control_label="FM")


def test_missing_group_column(tmp_path):
    df = participants(tmp_path, group=None, diagnosis=["FM", "HC"] * 4)
    errs = by_severity(check_cohort_settings(df, FM_HC), "error")
    assert errs[0].column == "group" and "--group-column" in errs[0].message
    assert "diagnosis" in errs[0].message  # the columns that exist are listed
    ok = check_cohort_settings(df, FM_HC.model_copy(update={"group_column": "diagnosis"}))
    assert by_severity(ok, "error") == []


def test_missing_genotype_column(tmp_path):
    df = participants(tmp_path, tspo_genotype=None)
    errs = by_severity(check_cohort_settings(df, FM_HC), "error")
    assert [(p.column, p.setting) for p in errs] == [("tspo_genotype", "stats.genotype_column")]
    assert "HAB/MAB/LAB" in errs[0].message and "stats.covariates" in errs[0].message
    # not a covariate: the model runs, but LAB carriers cannot be excluded
    probs = check_cohort_settings(df, FM_HC.model_copy(update={"covariates": ["age"]}))
    assert by_severity(probs, "error") == []
    assert "LAB carriers cannot be excluded" in by_severity(probs, "warning")[0].message
    quiet = FM_HC.model_copy(update={"covariates": ["age"], "lab_handling": "include"})
    assert [p for p in check_cohort_settings(df, quiet) if p.column == "tspo_genotype"] == []


def test_genotype_values(tmp_path):
    geno = ["hab ", "MAB", "XAB", "HAB", "MAB", "HAB", "HAB", "MAB"]  # case and spaces are fine
    df = participants(tmp_path, tspo_genotype=geno,
                      sidecar={k: v for k, v in SIDECAR.items() if k != "tspo_genotype"})
    errs = by_severity(check_cohort_settings(df, FM_HC), "error")
    assert len(errs) == 1 and "['XAB']" in errs[0].message and "sub-03" in errs[0].message
    assert errs[0].participants == ("sub-03",)
    # the group step refuses the same value
    sub = df.set_index("participant_id")
    with pytest.raises(StatsError, match="XAB"):
        build_design(sub, FM_HC)


def test_unknown_genotype_is_an_error_only_when_it_is_a_covariate(tmp_path):
    geno = ["HAB", None, "MAB", "HAB", "MAB", "HAB", "HAB", "MAB"]
    df = participants(tmp_path, tspo_genotype=geno)
    errs = by_severity(check_cohort_settings(df, FM_HC), "error")
    assert len(errs) == 1 and "n/a for sub-02" in errs[0].message
    with pytest.raises(StatsError, match="sub-02"):  # the group step agrees
        build_design(df.set_index("participant_id"), FM_HC)
    plain = FM_HC.model_copy(update={"covariates": ["age"]})
    probs = check_cohort_settings(df, plain)
    assert by_severity(probs, "error") == []
    assert "n/a for sub-02" in by_severity(probs, "note")[0].message
    build_design(df.set_index("participant_id"), plain)  # runs
    # outside the two groups compared, a missing genotype does not matter
    df2 = participants(tmp_path, tspo_genotype=geno, group=["FM", "other", "FM", "HC"] * 2)
    assert by_severity(check_cohort_settings(df2, FM_HC), "error") == []


def test_clinical_scores(tmp_path):
    df = participants(tmp_path, fatigue=None)
    probs = check_cohort_settings(df, FM_HC)
    assert by_severity(probs, "error") == []  # the group comparison still runs
    warn = by_severity(probs, "warning")
    assert len(warn) == 1 and warn[0].column == "fatigue" and warn[0].setting == "stats.clinical_scores"
    assert "correlation table will not be written" in warn[0].message
    df = participants(tmp_path, fatigue=[1, 2, "severe", 4, 5, 6, 7, 8])
    warn = by_severity(check_cohort_settings(df, FM_HC), "warning")
    assert "sub-03" in warn[0].message and "severe" in warn[0].message
    corr = FM_HC.model_copy(update={"correlation_groups": ["patient"]})
    assert any("correlation group 'patient'" in p.message
               for p in by_severity(check_cohort_settings(participants(tmp_path), corr), "warning"))


def test_covariates(tmp_path):
    settings = FM_HC.model_copy(update={"covariates": ["tspo_genotype", "age", "bmi"]})
    errs = by_severity(check_cohort_settings(participants(tmp_path), settings), "error")
    assert [p.column for p in errs] == ["bmi"] and "stats.covariates" in errs[0].message
    # numbers and text mixed: read as text, it would become a many-level categorical covariate
    df = participants(tmp_path, bmi=[22, 25, "unknown", 30, 21, 24, 27, 26], sidecar={})
    errs = by_severity(check_cohort_settings(df, settings), "error")
    assert len(errs) == 1 and "mixes numbers and text" in errs[0].message and "sub-03" in errs[0].message
    # declared categorical: fine
    df = participants(tmp_path, bmi=["low", "high"] * 4, sidecar={"bmi": {"Levels": {"low": "", "high": ""}}})
    assert by_severity(check_cohort_settings(df, settings), "error") == []
    # missing for a participant analysed
    df = participants(tmp_path, bmi=[22, None, 23, 30, 21, 24, 27, 26])
    errs = by_severity(check_cohort_settings(df, settings), "error")
    assert len(errs) == 1 and "n/a" in errs[0].message and "sub-02" in errs[0].message
    with pytest.raises(StatsError, match="sub-02"):
        build_design(df.set_index("participant_id"), settings)
    # the group column as a covariate
    grp = FM_HC.model_copy(update={"covariates": ["group"]})
    assert "cannot also be a covariate" in by_severity(check_cohort_settings(df, grp), "error")[0].message


def test_group_sizes_and_constant_covariates_when_the_cohort_is_known(tmp_path):
    geno = ["LAB", "HAB", "LAB", "MAB", "HAB", "MAB", "HAB", "MAB"]  # two LAB patients (FM)
    df = participants(tmp_path, tspo_genotype=geno)
    assert by_severity(check_cohort_settings(df, FM_HC), "error") == []  # sizes not checked
    errs = by_severity(check_cohort_settings(df, FM_HC, min_per_group=3), "error")
    assert len(errs) == 1 and "group 'FM'" in errs[0].message
    assert "has 2 participant(s) to analyse after excluding 2 LAB carrier(s)" in errs[0].message
    with pytest.raises(StatsError, match="group 'FM' has 2"):  # the group step agrees
        build_design(df.set_index("participant_id"), FM_HC)
    # a subset of the file: the sessions to process
    sub = ["sub-02", "sub-04", "sub-06", "sub-08", "sub-05", "sub-07"]  # HC, HC, HC, HC, FM, FM
    errs = by_severity(check_cohort_settings(df, FM_HC, subjects=sub, min_per_group=3), "error")
    assert "group 'FM'" in errs[0].message and "has 2 participant(s)" in errs[0].message
    # a covariate constant over the participants analysed
    const = participants(tmp_path, site=["KI"] * 8)
    settings = FM_HC.model_copy(update={"covariates": ["site"]})
    errs = by_severity(check_cohort_settings(const, settings, min_per_group=3), "error")
    assert len(errs) == 1 and "'KI' for every participant" in errs[0].message
    assert by_severity(check_cohort_settings(const, settings), "error") == []


def test_no_problem_means_the_design_builds(tmp_path):
    df = participants(tmp_path, n=10)
    assert by_severity(check_cohort_settings(df, FM_HC, min_per_group=3), "error") == []
    d = build_design(df.set_index("participant_id"), FM_HC)
    assert d.n_by_group() == {"FM": 5, "HC": 5}


def test_cohort_error_names_file_and_settings(tmp_path):
    df = participants(tmp_path, tspo_genotype=None)
    probs = check_cohort_settings(df, StatsSettings(), tmp_path / "participants.tsv")
    err = cohort_error(probs, tmp_path / "participants.tsv")
    assert isinstance(err, ConfigError)
    text = str(err)
    assert text.startswith(str(tmp_path / "participants.tsv"))
    assert "stats.patient_label/control_label" in err.field and "stats.genotype_column" in err.field
    assert "levels FM, HC" in text and "2 problem(s)" in text
    assert cohort_error(check_cohort_settings(participants(tmp_path), FM_HC), "x") is None
