"""Group design for the statistics: subject table, validation, design matrix, OLS, FDR.

The group model is ``metric ~ group + tspo_genotype (+ covariates)`` fitted by ordinary least
squares. This module turns a tidy regional table (one row per participant x session x region)
into one row per subject, validates the design (every failure is a
:class:`~gliaflow.pipeline.errors.StatsError` naming the column), and builds the design matrix:

- column ``intercept``;
- column ``group[patient]``: 1 for patients, 0 for controls (the tested effect, patient minus
  control, in the metric's own units);
- categorical covariates (text columns, and the genotype) as treatment dummies against their
  first level in sorted order (``tspo_genotype[MAB]`` against HAB);
- numeric covariates centred on their mean (so the intercept is the control mean at the mean
  covariate values).

All functions are pure (arrays and tables in, arrays and tables out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from gliaflow.pipeline._utils import camel_case, participant_label
from gliaflow.pipeline.config import StatsSettings
from gliaflow.pipeline.errors import StatsError

__all__ = [
    "GENOTYPES",
    "ID_COLUMNS",
    "MIN_PER_GROUP",
    "group_values",
    "normalise_genotype",
    "Design",
    "OLSResult",
    "subject_table",
    "metric_columns",
    "build_design",
    "contrast_vector",
    "fit_ols",
    "fdr_bh",
    "holm",
    "t_to_z",
]

GENOTYPES = ("HAB", "MAB", "LAB")
#: fewest subjects the group model accepts in each of the two groups
MIN_PER_GROUP = 3
ID_COLUMNS = ("participant_id", "session_id", "region")
# numeric columns of a regional table that are not outcome metrics (fit quality, sizes, times)
NON_METRIC_COLUMNS = ("n_voxels", "volume_mm3", "frame_start", "frame_end", "label", "index")
NON_METRIC_SUFFIXES = ("_se", "_sd", "_cv", "_r2", "_aic", "_bic", "_rmse", "_wssr", "_converged",
                       "_reason", "_nvox", "_flag", "_n_voxels", "_volume_mm3")


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _select_session(df: pd.DataFrame, session: str | None, file) -> pd.DataFrame:
    if "session_id" not in df.columns:
        return df
    if session is not None:
        sid = df["session_id"].astype(str)
        keep = (sid == session) | (sid == f"ses-{session}") | sid.str.endswith(f"_ses-{session}")
        if not keep.any():
            raise StatsError(f"no row has session '{session}' (stats.session); sessions present: "
                             f"{sorted(sid.unique())[:10]}", file=file, field="session_id")
        df = df[keep]
    per = df.groupby("participant_id")["session_id"].nunique()
    multi = per[per > 1]
    if len(multi):
        raise StatsError(f"participants {list(multi.index[:5])} have several sessions; set "
                         "stats.session to the session to analyse", file=file, field="session_id")
    return df


def subject_table(regional: pd.DataFrame, settings: StatsSettings, file: str | Path | None = None,
                  participants: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a tidy regional table into a subject table and the long metric table.

    Parameters
    ----------
    regional : DataFrame
        One row per participant x session x region with ``participant_id``, ``region``,
        optionally ``session_id``, metric columns and subject covariates (``group``,
        ``tspo_genotype``, ``age``...). Subject columns must be constant across a subject's rows.
    settings : StatsSettings
        ``session`` selects the session when participants have several.
    file : path, optional
        Named in errors.
    participants : DataFrame, optional
        participants.tsv; its columns are merged on ``participant_id`` (with or without ``sub-``)
        when the regional table lacks them.

    Returns
    -------
    subjects : DataFrame
        One row per subject, index ``participant_id`` (label as in the table), subject columns.
    long : DataFrame
        The selected rows of ``regional``.
    """
    for col in ("participant_id", "region"):
        if col not in regional.columns:
            raise StatsError("required column is missing from the regional table", file=file, field=col)
    df = _select_session(regional, settings.session, file)
    if participants is not None and "participant_id" in participants.columns:
        extra = [c for c in participants.columns if c != "participant_id" and c not in df.columns]
        if extra:
            p = participants[["participant_id"] + extra].copy()
            p["_pid"] = p["participant_id"].map(participant_label)
            df = df.copy()
            df["_pid"] = df["participant_id"].map(participant_label)
            df = df.merge(p.drop(columns="participant_id"), on="_pid", how="left").drop(columns="_pid")
    # subject-level columns: constant within each participant
    cand = [c for c in df.columns if c not in ID_COLUMNS]
    g = df.groupby("participant_id", sort=True)
    nun = g[cand].nunique(dropna=False) if cand else pd.DataFrame(index=g.size().index)
    subj_cols = [c for c in cand if (nun[c] <= 1).all()]
    n_regions = df["region"].nunique()
    if n_regions == 1:  # cannot tell metrics from covariates by variation across regions
        named = set(settings.covariates) | {settings.group_column, settings.genotype_column} | set(
            settings.clinical_scores)
        subj_cols = [c for c in subj_cols if c in named or not pd.api.types.is_numeric_dtype(df[c])]
    subjects = g[subj_cols].first() if subj_cols else pd.DataFrame(index=g.size().index)
    return subjects, df


def metric_columns(long: pd.DataFrame, subjects: pd.DataFrame, settings: StatsSettings,
                   file: str | Path | None = None) -> list[str]:
    """The metric columns to test: ``settings.metrics`` (checked) or every numeric column that
    varies across regions and is not a subject covariate, an identifier, or a fit-quality / size
    column (names in NON_METRIC_COLUMNS or ending in NON_METRIC_SUFFIXES, e.g. ``vt_2tcm_se``)."""
    if settings.metrics is not None:
        for m in settings.metrics:
            if m not in long.columns:
                raise StatsError("metric named in stats.metrics is not a column of the regional table",
                                 file=file, field=m)
        return list(settings.metrics)
    named = set(settings.covariates) | {settings.group_column, settings.genotype_column} | set(
        settings.clinical_scores)
    out = [c for c in long.columns
           if c not in ID_COLUMNS and c not in subjects.columns and c not in named
           and c not in NON_METRIC_COLUMNS and not str(c).endswith(NON_METRIC_SUFFIXES)
           and pd.api.types.is_numeric_dtype(long[c]) and not pd.api.types.is_bool_dtype(long[c])]
    if not out:
        raise StatsError("the regional table has no numeric metric column", file=file, field="metrics")
    return out


# ----------------------------------------------------------------------------------------------
# Design
# ----------------------------------------------------------------------------------------------

@dataclass
class Design:
    """A validated design matrix for the patient-vs-control model.

    Attributes
    ----------
    X : ndarray (n, p)
        Design matrix, rows in the order of ``subjects``.
    columns : list of str
        Column names of ``X``.
    subjects : list of str
        participant_id of each row.
    group : ndarray of str (n,)
        Group label of each row.
    contrast : ndarray (p,)
        The tested contrast (``group[patient]``: patient minus control).
    contrast_name : str
        e.g. ``patientGtControl``.
    n_excluded_lab, n_excluded_group : int
        Subjects dropped for LAB genotype, and for a group label that is neither patient nor
        control (or missing).
    table : DataFrame
        The subject rows used (index participant_id).
    """

    X: np.ndarray
    columns: list[str]
    subjects: list[str]
    group: np.ndarray
    contrast: np.ndarray
    contrast_name: str
    n_excluded_lab: int = 0
    n_excluded_group: int = 0
    covariates: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def df(self) -> int:
        return self.X.shape[0] - np.linalg.matrix_rank(self.X)

    def n_by_group(self) -> dict[str, int]:
        u, c = np.unique(self.group, return_counts=True)
        return {str(k): int(v) for k, v in zip(u, c)}

    def to_frame(self) -> pd.DataFrame:
        """The design matrix as a table with a ``participant_id`` column (for TSV output)."""
        out = pd.DataFrame(self.X, columns=self.columns)
        out.insert(0, "participant_id", self.subjects)
        out.insert(1, "group_label", self.group)
        return out


def group_values(column: pd.Series) -> pd.Series:
    """A group column as the model compares it with the labels: text, stripped, missing kept."""
    return column.astype("string").str.strip()


def normalise_genotype(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """rs6971 genotypes stripped and upper-cased (missing kept), and the mask of values that are
    not HAB, MAB or LAB (missing values are not flagged)."""
    vals = column.where(column.isna(), column.astype(str).str.strip().str.upper())
    return vals, vals.notna() & ~vals.isin(GENOTYPES)


def _genotype_clean(sub: pd.DataFrame, settings: StatsSettings, file) -> tuple[pd.DataFrame, int]:
    gcol = settings.genotype_column
    if gcol not in sub.columns:
        return sub, 0
    raw = sub[gcol]
    vals, bad = normalise_genotype(raw)
    if bad.any():
        raise StatsError(f"genotype values {sorted(set(raw[bad].astype(str)))} (participants "
                         f"{list(sub.index[bad][:5])}) are not HAB, MAB or LAB", file=file, field=gcol)
    sub = sub.copy()
    sub[gcol] = vals
    n_lab = 0
    if settings.lab_handling == "exclude":
        lab = (vals == "LAB").to_numpy()
        n_lab = int(lab.sum())
        sub = sub[~lab]
    return sub, n_lab


def build_design(subjects: pd.DataFrame, settings: StatsSettings, file: str | Path | None = None,
                 min_per_group: int = MIN_PER_GROUP) -> Design:
    """Validate the subject table and build the design matrix.

    Parameters
    ----------
    subjects : DataFrame
        One row per subject (index: participant_id) with the group column, the genotype column
        and the covariates named in ``settings.covariates``.
    settings : StatsSettings
        group_column, patient_label, control_label, covariates, genotype_column, lab_handling.
    file : path, optional
        Named in errors.
    min_per_group : int
        Fewest subjects accepted in each of the two groups (default 3).

    Raises
    ------
    StatsError
        Unknown column (group or covariate), genotype value outside HAB/MAB/LAB, fewer than
        ``min_per_group`` subjects in a group, a covariate missing for some subjects or constant,
        collinear covariates.
    """
    gcol = settings.group_column
    if gcol not in subjects.columns:
        raise StatsError("group column is missing (stats.group_column)", file=file, field=gcol)
    covs = list(dict.fromkeys(settings.covariates))
    for c in covs:  # never the group column (StatsSettings rejects that)
        if c not in subjects.columns:
            raise StatsError("covariate named in stats.covariates is not a column of the table "
                             f"(columns: {sorted(map(str, subjects.columns))})", file=file, field=c)
    sub, n_lab = _genotype_clean(subjects, settings, file)
    grp = group_values(sub[gcol])
    keep = grp.isin([settings.patient_label, settings.control_label]).fillna(False).to_numpy(bool)
    n_other = int((~keep).sum())
    sub = sub[keep]
    grp = grp[keep].to_numpy(dtype=object).astype(str)
    for label in (settings.patient_label, settings.control_label):
        k = int((grp == label).sum())
        if k < min_per_group:
            raise StatsError(f"group '{label}' has {k} subject(s) after exclusions (LAB excluded: "
                             f"{n_lab}); at least {min_per_group} are needed", file=file, field=gcol)
    cols = {"intercept": np.ones(len(sub)),
            f"{gcol}[{settings.patient_label}]": (grp == settings.patient_label).astype(float)}
    for c in covs:
        v = sub[c]
        missing = v.isna().to_numpy()
        if missing.any():
            raise StatsError(f"covariate is missing for participants {list(sub.index[missing][:10])}",
                             file=file, field=c)
        if v.nunique() < 2:
            raise StatsError(f"covariate is constant ({v.iloc[0]!r}) across the subjects analysed",
                             file=file, field=c)
        if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v) and c != settings.genotype_column:
            cols[c] = v.to_numpy(float) - v.to_numpy(float).mean()
        else:
            sv = v.astype(str).to_numpy()
            levels = sorted(set(sv))
            for lev in levels[1:]:
                cols[f"{c}[{lev}]"] = (sv == lev).astype(float)
    names = list(cols)
    X = np.column_stack([cols[k] for k in names])
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        culprits = []
        for j, nm in enumerate(names):
            if np.linalg.matrix_rank(np.delete(X, j, axis=1)) == rank:
                culprits.append(nm)
        raise StatsError(f"the design is rank deficient: columns {culprits} are collinear "
                         "(e.g. a covariate confounded with group)", file=file,
                         field=",".join(sorted({n.split('[')[0] for n in culprits if n != 'intercept'})))
    if X.shape[0] - rank < 2:
        raise StatsError(f"{X.shape[0]} subjects leave {X.shape[0] - rank} residual degrees of "
                         "freedom for {rank} design columns; add subjects or drop covariates",
                         file=file, field=",".join(covs) or gcol)
    c = np.zeros(len(names))
    c[1] = 1.0
    return Design(X=X, columns=names, subjects=[str(s) for s in sub.index], group=grp, contrast=c,
                  contrast_name=f"{camel_case(settings.patient_label)}Gt{camel_case(settings.control_label).capitalize()}",
                  n_excluded_lab=n_lab, n_excluded_group=n_other, covariates=covs, table=sub)


def contrast_vector(design: Design, spec: str | dict[str, float] | np.ndarray | None) -> np.ndarray:
    """A contrast over the design columns.

    ``None`` keeps the design's group contrast; a column name gives a unit contrast on it; a dict
    maps column names to weights; an array is used as is (length checked). Unknown column names
    raise :class:`StatsError` naming the column.
    """
    if spec is None:
        return design.contrast.copy()
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if isinstance(spec, dict):
        c = np.zeros(len(design.columns))
        for k, w in spec.items():
            if k not in design.columns:
                raise StatsError(f"contrast refers to an unknown design column (columns: "
                                 f"{design.columns})", field=k)
            c[design.columns.index(k)] = float(w)
        return c
    c = np.asarray(spec, float).ravel()
    if c.size != len(design.columns):
        raise StatsError(f"contrast has {c.size} weights for {len(design.columns)} design columns",
                         field="contrast")
    return c


# ----------------------------------------------------------------------------------------------
# OLS and multiple comparisons
# ----------------------------------------------------------------------------------------------

@dataclass
class OLSResult:
    """OLS fit of many responses on one design. Arrays have one entry per response column.

    ``estimate`` is c'beta in the response's units, ``se`` its standard error, ``t`` the
    t statistic, ``p`` the p value for ``tail``, ``sigma`` the residual standard deviation,
    ``var_factor`` c'(X'X)^-1 c (dimensionless), ``df`` residual degrees of freedom.
    """

    beta: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    sigma: np.ndarray
    df: int
    var_factor: float


def _p_from_t(t: np.ndarray, df: int, tail: str) -> np.ndarray:
    if tail == "greater":
        return sps.t.sf(t, df)
    if tail == "less":
        return sps.t.cdf(t, df)
    return np.minimum(1.0, 2.0 * sps.t.sf(np.abs(t), df))


def fit_ols(X: np.ndarray, Y: np.ndarray, contrast: np.ndarray, tail: str = "two-sided") -> OLSResult:
    """Fit ``Y = X beta + e`` for every column of ``Y`` at once and test ``contrast' beta = 0``.

    Parameters
    ----------
    X : ndarray (n, p)
        Full-rank design matrix.
    Y : ndarray (n,) or (n, m)
        Responses (any units).
    contrast : ndarray (p,)
    tail : {'two-sided', 'greater', 'less'}
    """
    X = np.asarray(X, float)
    Y = np.asarray(Y, float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, p = X.shape
    XtX_inv = np.linalg.inv(X.T @ X)
    beta = XtX_inv @ X.T @ Y
    resid = Y - X @ beta
    df = n - p
    sigma2 = (resid ** 2).sum(axis=0) / df
    c = np.asarray(contrast, float)
    v = float(c @ XtX_inv @ c)
    est = c @ beta
    se = np.sqrt(sigma2 * v)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = est / se
    return OLSResult(beta=beta, estimate=est, se=se, t=t, p=_p_from_t(t, df, tail),
                     sigma=np.sqrt(sigma2), df=df, var_factor=v)


def _adjust_finite(p: np.ndarray, adjust_sorted) -> np.ndarray:
    """Apply a step-wise p adjustment to the finite entries of ``p`` (NaN stay NaN, not counted).

    ``adjust_sorted(p_ascending, m)`` returns the adjusted values in the same (ascending) order.
    """
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    res = np.empty(m)
    res[order] = np.minimum(adjust_sorted(pv[order], m), 1.0)
    out[ok] = res
    return out


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (q values); NaN entries stay NaN and are not counted."""
    return _adjust_finite(p, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down FWER-adjusted p values; NaN entries stay NaN."""
    return _adjust_finite(p, lambda ps, m: np.maximum.accumulate(ps * (m - np.arange(m))))


def t_to_z(t: np.ndarray, df: int) -> np.ndarray:
    """Convert t statistics to z scores with the same tail probability (sign kept), accurate in
    the far tail (through log p)."""
    from scipy.special import ndtri_exp

    t = np.asarray(t, float)
    logp = sps.t.logsf(np.abs(t), df)
    z = -ndtri_exp(logp)
    return np.where(np.isfinite(t), np.sign(t) * z, np.nan)
