"""The statistics settings checked against participants.tsv, before any session is processed.

The group step compares ``stats.patient_label`` with ``stats.control_label`` in
``stats.group_column``, adjusts for ``stats.covariates`` (the rs6971 genotype among them by
default), excludes LAB carriers (``stats.lab_handling``) and correlates ``stats.clinical_scores``
with the metrics. When these settings do not fit participants.tsv, the group step fails only after
every session has been processed. :func:`check_cohort_settings` finds the same problems from
participants.tsv alone, using the parsing of :mod:`.design` (:func:`~.design.group_values`,
:func:`~.design.normalise_genotype`), so the prediction and the group step agree.

Severities: ``error`` (the group step would fail), ``warning`` (part of the analysis would be
skipped or would lose participants: the clinical correlations, the LAB exclusion), ``note``
(information, nothing is lost).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import pandas as pd

from gliaflow.pipeline._utils import participant_label
from gliaflow.pipeline.config import StatsSettings
from gliaflow.pipeline.errors import ConfigError
from gliaflow.pipeline.stats.design import GENOTYPES, group_values, normalise_genotype

__all__ = ["CohortProblem", "check_cohort_settings", "cohort_error"]

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class CohortProblem:
    """One mismatch between the statistics settings and participants.tsv.

    Attributes
    ----------
    severity : {'error', 'warning', 'note'}
        error: the group step would fail; warning: part of the analysis would be skipped or lose
        participants; note: information.
    column : str
        The participants.tsv column concerned.
    setting : str
        The setting to change (``stats.<field>``).
    message : str
        What is wrong and what to do, naming the column, the values found and the setting/flag.
    participants : tuple of str
        The participants concerned (``sub-<label>``), when the problem is about some of them.
    """

    severity: Severity
    column: str
    setting: str
    message: str
    participants: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"

    def as_record(self) -> dict:
        """A JSON-serialisable description."""
        return {"severity": self.severity, "column": self.column, "setting": self.setting,
                "message": self.message, "participants": list(self.participants)}


def _ids(index: Iterable, limit: int = 5) -> str:
    ids = [str(i) for i in index]
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _levels_declared(participants: pd.DataFrame, column: str) -> bool:
    desc = (participants.attrs.get("sidecar") or {}).get(column)
    return isinstance(desc, dict) and "Levels" in desc


def _text_values(column: pd.Series) -> pd.Series:
    """Mask of present values that are not numbers (all False for a numeric column)."""
    if pd.api.types.is_numeric_dtype(column):
        return pd.Series(False, index=column.index)
    return column.notna() & pd.to_numeric(column, errors="coerce").isna()


def check_cohort_settings(participants: pd.DataFrame, settings: StatsSettings,
                          source: str | Path = "participants.tsv",
                          subjects: Iterable[str] | None = None,
                          min_per_group: int | None = None) -> list[CohortProblem]:
    """Check participants.tsv against the statistics settings, as the group step will use them.

    Parameters
    ----------
    participants : DataFrame
        participants.tsv as read by :func:`gliaflow.pipeline.io.bids.read_participants` (column
        ``participant_id``; ``attrs["sidecar"]`` the participants.json content, if any).
    settings : StatsSettings
        group_column, patient_label, control_label, genotype_column, lab_handling, covariates,
        clinical_scores, correlation_groups.
    source : path or str
        Named in the messages.
    subjects : iterable of str, optional
        The participants whose sessions will be analysed (with or without ``sub-``); None: every
        row. Columns and group levels are checked on the whole file, values on these rows.
    min_per_group : int, optional
        When given, ``subjects`` is the cohort the group step will analyse, and the checks that
        depend on its size are made: each group has at least this many participants after the
        LAB exclusion, and no covariate is constant. None skips them (e.g. when validating a
        subset of the dataset).

    Returns
    -------
    list of CohortProblem
        Empty when the settings fit the file.
    """
    src = Path(str(source)).name
    table = participants.copy()
    table.index = [f"sub-{participant_label(p)}" for p in table["participant_id"]]
    rows = table
    if subjects is not None:
        wanted = {f"sub-{participant_label(s)}" for s in subjects}
        rows = table[table.index.isin(wanted)]
    columns = ", ".join(c for c in table.columns if c != "participant_id") or "none"
    out: list[CohortProblem] = []

    def add(severity: Severity, column: str, setting: str, message: str, who=()) -> None:
        out.append(CohortProblem(severity, column, setting, message, tuple(str(w) for w in who)))

    # -- groups ---------------------------------------------------------------------------------
    gcol, pat, con = settings.group_column, settings.patient_label, settings.control_label
    groups = None
    labels_ok = False
    if gcol not in table.columns:
        add("error", gcol, "stats.group_column",
            f"{src} has no column '{gcol}' (columns: {columns}); name the column that holds the "
            "patient and control labels with --group-column or stats.group_column")
    else:
        levels = sorted(set(group_values(table[gcol]).dropna()))
        absent = [f"{role} label '{lab}'" for role, lab in (("patient", pat), ("control", con))
                  if lab not in levels]
        example = " ".join(levels) if len(levels) == 2 else "PATIENT CONTROL"
        fix = (f"set --group-labels {example} or stats.patient_label/control_label" if len(levels) > 1
               else "the group comparison needs participants of two levels (a patient and a "
               "control group)")
        if pat == con:
            add("error", gcol, "stats.patient_label",
                f"the patient and control labels are both '{pat}'; set two different levels of "
                f"{src} column '{gcol}' with --group-labels PATIENT CONTROL or "
                "stats.patient_label/control_label")
        elif absent:
            setting = ("stats.patient_label/control_label" if len(absent) == 2 else
                       "stats.patient_label" if pat not in levels else "stats.control_label")
            add("error", gcol, setting,
                f"{src} column '{gcol}' has levels {', '.join(levels) or '(none)'}; the "
                f"{' and the '.join(absent)} {'is' if len(absent) == 1 else 'are'} not among them: "
                + fix)
        else:
            labels_ok = True
        groups = group_values(rows[gcol])
        for g in settings.correlation_groups or []:
            if g not in levels:
                add("warning", gcol, "stats.correlation_groups",
                    f"correlation group '{g}' is not a level of {src} column '{gcol}' (levels: "
                    f"{', '.join(levels)}): the clinical correlations will not be computed")
    in_groups = (groups.isin([pat, con]).fillna(False).astype(bool) if groups is not None
                 else pd.Series(True, index=rows.index))

    # -- genotype -------------------------------------------------------------------------------
    geno_col = settings.genotype_column
    geno_is_cov = geno_col in settings.covariates
    lab = pd.Series(False, index=rows.index)
    if geno_col not in table.columns:
        if geno_is_cov:
            add("error", geno_col, "stats.genotype_column",
                f"{src} has no column '{geno_col}'; the group model adjusts for the rs6971 "
                f"genotype (stats.covariates): add the column ({'/'.join(GENOTYPES)}, n/a when "
                "unknown), name it with stats.genotype_column, or remove it from stats.covariates")
        elif settings.lab_handling == "exclude":
            add("warning", geno_col, "stats.genotype_column",
                f"{src} has no column '{geno_col}': LAB carriers cannot be excluded "
                "(stats.lab_handling: exclude); add the column or name it with stats.genotype_column")
    else:
        geno, bad = normalise_genotype(rows[geno_col])
        if bad.any():
            add("error", geno_col, "stats.genotype_column",
                f"{src} column '{geno_col}' has values {sorted(set(rows[geno_col][bad].astype(str)))} "
                f"(participants {_ids(rows.index[bad])}); rs6971 genotypes are "
                f"{', '.join(GENOTYPES)}, or n/a when unknown", rows.index[bad])
        if settings.lab_handling == "exclude":
            lab = (geno == "LAB").fillna(False).astype(bool)
        unknown = geno.isna() & in_groups & ~lab
        if unknown.any():
            if geno_is_cov:
                add("error", geno_col, "stats.covariates",
                    f"{src} column '{geno_col}' is n/a for {_ids(rows.index[unknown])}; the group "
                    "model adjusts for the genotype (stats.covariates), so every participant "
                    "analysed needs one: fill it in, leave these participants out "
                    "(--participant-label), or remove it from stats.covariates", rows.index[unknown])
            else:
                add("note", geno_col, "stats.genotype_column",
                    f"{src} column '{geno_col}' is n/a for {_ids(rows.index[unknown])}: they are "
                    "analysed (not excluded as LAB)", rows.index[unknown])
    analysed = in_groups & ~lab

    if min_per_group is not None and labels_ok:
        for label in (pat, con):
            in_label = (groups == label).fillna(False).astype(bool)
            k = int((analysed & in_label).sum())
            if k < min_per_group:
                n_lab = int((lab & in_label).sum())
                add("error", gcol, "stats.patient_label" if label == pat else "stats.control_label",
                    f"group '{label}' ({src} column '{gcol}') has {k} participant(s) to analyse"
                    + (f" after excluding {n_lab} LAB carrier(s)" if n_lab else "")
                    + f"; the group model needs at least {min_per_group}")

    # -- covariates -----------------------------------------------------------------------------
    for cov in dict.fromkeys(settings.covariates):
        if cov == gcol:
            add("error", cov, "stats.covariates",
                f"the group column '{cov}' cannot also be a covariate; remove it from stats.covariates")
            continue
        if cov not in table.columns:
            if cov != geno_col:  # reported above
                add("error", cov, "stats.covariates",
                    f"covariate '{cov}' (stats.covariates) is not a column of {src} (columns: "
                    f"{columns}); add it or remove it from stats.covariates")
            continue
        col = rows[cov]
        if cov != geno_col and not _levels_declared(participants, cov):
            text = _text_values(col)
            nums = col.notna() & ~text
            if text.any() and nums.any():
                add("error", cov, "stats.covariates",
                    f"{src} column '{cov}' mixes numbers and text ({sorted(set(col[text].astype(str)))[:5]} "
                    f"for {_ids(rows.index[text])}), so it would be taken as categorical: a numeric "
                    "covariate holds numbers or n/a (a categorical one: declare its Levels in "
                    "participants.json)", rows.index[text])
        if cov != geno_col:
            miss = col.isna() & analysed
            if miss.any():
                add("error", cov, "stats.covariates",
                    f"covariate '{cov}' is n/a in {src} for {_ids(rows.index[miss])}; every "
                    "participant analysed needs it: fill it in, leave them out "
                    "(--participant-label), or remove it from stats.covariates", rows.index[miss])
        if min_per_group is not None:
            vals = col[analysed].dropna()
            if len(vals) and vals.astype(str).str.strip().str.upper().nunique() < 2:
                add("error", cov, "stats.covariates",
                    f"covariate '{cov}' is '{vals.iloc[0]}' for every participant analysed; a "
                    "constant covariate cannot be estimated: remove it from stats.covariates")

    # -- clinical scores ------------------------------------------------------------------------
    for score in dict.fromkeys(settings.clinical_scores):
        if score not in table.columns:
            add("warning", score, "stats.clinical_scores",
                f"clinical score '{score}' (stats.clinical_scores) is not a column of {src} "
                f"(columns: {columns}): the clinical correlation table will not be written; add "
                "the column or change stats.clinical_scores")
            continue
        text = _text_values(rows[score])
        if text.any():
            add("warning", score, "stats.clinical_scores",
                f"clinical score '{score}' in {src} is not a number for {_ids(rows.index[text])} "
                f"({sorted(set(rows[score][text].astype(str)))[:5]}): they are left out of the "
                "correlations", rows.index[text])
    return out


def cohort_error(problems: Iterable[CohortProblem], file: str | Path) -> ConfigError | None:
    """One :class:`ConfigError` naming ``file`` and the settings of every ``error`` problem, or
    None when there is none."""
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        return None
    lines = "\n".join(f"  - {p.message}" for p in errors)
    return ConfigError(f"the statistics settings do not fit it, the group step would fail "
                       f"({len(errors)} problem(s)):\n{lines}", file=file,
                       field=", ".join(dict.fromkeys(p.setting for p in errors)))
