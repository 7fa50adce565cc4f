"""Regional group statistics: patient vs control per region and metric, clinical correlations.

For each metric and region: OLS ``metric ~ group + tspo_genotype (+ covariates)``
(:func:`~gliaflow.pipeline.stats.design.build_design`), the patient-minus-control estimate in
the metric's units with SE, t, p; a covariate-adjusted Hedges' g (estimate over the residual SD,
small-sample corrected) with a 95% CI from the noncentral t; Benjamini-Hochberg FDR and Holm
FWER across regions within each metric; and, when permutations are requested, a Freedman-Lane
max-T FWER p across regions (same engine as the voxelwise analysis).

Clinical correlations: partial Pearson correlation of the metric with a clinical score (e.g.
``fatigue``) within a group, controlling for genotype and the covariates, with a Fisher-z 95% CI.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps
from scipy.special import gammaln

from gliaflow.pipeline.config import StatsSettings
from gliaflow.pipeline.errors import StatsError
from gliaflow.pipeline.stats.design import Design, build_design, fdr_bh, fit_ols, holm, metric_columns, subject_table
from gliaflow.pipeline.stats.voxelwise import SCREEN_REASONS, permutation_glm, screen_columns

__all__ = [
    "hedges_correction",
    "hedges_g_ci",
    "partial_correlation",
    "regional_group_stats",
    "regional_correlations",
    "REGIONAL_COLUMNS",
    "CORRELATION_COLUMNS",
]

REGIONAL_COLUMNS = [
    "metric", "region", "contrast", "n", "n_patient", "n_control", "n_excluded_lab",
    "n_excluded_group", "n_missing", "df", "mean_patient", "mean_control", "estimate", "se",
    "ci_low", "ci_high", "percent_difference", "t", "p", "hedges_g", "g_ci_low", "g_ci_high",
    "p_fdr", "p_holm", "p_fwer_perm", "significant", "covariates",
]
log = logging.getLogger(__name__)

CORRELATION_COLUMNS = [
    "metric", "region", "score", "group", "n", "controls", "r", "ci_low", "ci_high", "t", "df", "p",
    "p_fdr",
]


def hedges_correction(df: float) -> float:
    """Exact small-sample correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2))."""
    df = float(df)
    return float(np.exp(gammaln(df / 2) - 0.5 * np.log(df / 2) - gammaln((df - 1) / 2)))


def hedges_g_ci(t: float, df: int, var_factor: float, level: float = 0.95) -> tuple[float, float, float]:
    """Covariate-adjusted Hedges' g and its CI from the noncentral t distribution.

    With d = estimate / residual SD, the contrast's t statistic is noncentral t with
    noncentrality d / sqrt(var_factor) (var_factor = c'(X'X)^-1 c). The CI of the noncentrality
    is found by inverting the noncentral t CDF (Steiger & Fouladi 1997), scaled by
    sqrt(var_factor) and by Hedges' J(df).

    Returns
    -------
    g, ci_low, ci_high : float (dimensionless)
    """
    if not np.isfinite(t):
        return np.nan, np.nan, np.nan
    J = hedges_correction(df)
    s = np.sqrt(var_factor)
    g = J * t * s
    alpha = (1 - level) / 2

    def root(target):
        f = lambda ncp: sps.nct.cdf(t, df, ncp) - target  # noqa: E731  (decreasing in ncp)
        width = 10 + 2 * abs(t)
        lo, hi = t - width, t + width
        try:
            return optimize.brentq(f, lo, hi, xtol=1e-8)
        except ValueError:
            return np.nan

    nc_lo, nc_hi = root(1 - alpha), root(alpha)
    if not (np.isfinite(nc_lo) and np.isfinite(nc_hi)):  # normal approximation fallback
        z = sps.norm.isf(alpha)
        se = np.sqrt(1 + t * t / (2 * df))
        nc_lo, nc_hi = t - z * se, t + z * se
    return float(g), float(J * nc_lo * s), float(J * nc_hi * s)


def partial_correlation(x: np.ndarray, y: np.ndarray, Z: np.ndarray | None = None,
                        level: float = 0.95) -> dict:
    """Partial Pearson correlation of x and y controlling for the columns of Z.

    Both are residualised on ``[1, Z]``; r is their correlation. df = n - 2 - k (k columns of Z),
    t = r sqrt(df / (1 - r^2)), two-sided p; CI by Fisher z with SE 1/sqrt(n - 3 - k).

    Returns
    -------
    dict with r, ci_low, ci_high, t, df, p, n (NaN entries when n - 3 - k < 1).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    Zf = np.ones((n, 1)) if Z is None or np.size(Z) == 0 else np.column_stack([np.ones(n), Z])
    k = Zf.shape[1] - 1
    rx = x - Zf @ np.linalg.lstsq(Zf, x, rcond=None)[0]
    ry = y - Zf @ np.linalg.lstsq(Zf, y, rcond=None)[0]
    out = {"r": np.nan, "ci_low": np.nan, "ci_high": np.nan, "t": np.nan, "df": n - 2 - k,
           "p": np.nan, "n": n}
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    if n - 3 - k < 1 or den == 0:
        return out
    r = float(np.clip((rx * ry).sum() / den, -1.0, 1.0))
    df = n - 2 - k
    t = r * np.sqrt(df / max(1e-300, 1 - r * r))
    p = float(min(1.0, 2 * sps.t.sf(abs(t), df)))
    zc = sps.norm.isf((1 - level) / 2)
    zr = np.arctanh(np.clip(r, -0.9999999, 0.9999999))
    se = 1.0 / np.sqrt(n - 3 - k)
    out.update(r=r, ci_low=float(np.tanh(zr - zc * se)), ci_high=float(np.tanh(zr + zc * se)),
               t=float(t), p=p)
    return out


def _wide(long: pd.DataFrame, metric: str, subjects: list[str]) -> pd.DataFrame:
    w = long.pivot_table(index="participant_id", columns="region", values=metric, aggfunc="mean",
                         dropna=False)
    return w.reindex([s for s in subjects])


def regional_group_stats(regional: pd.DataFrame, settings: StatsSettings,
                         file: str | Path | None = None, participants: pd.DataFrame | None = None
                         ) -> tuple[pd.DataFrame, Design]:
    """Patient-vs-control statistics per metric and region.

    Parameters
    ----------
    regional : DataFrame
        Tidy table: participant_id, [session_id], region, metric columns (units of the metric,
        e.g. VT in mL/cm3, SUVR unitless), subject covariates.
    settings : StatsSettings
        Model and correction settings (covariates, lab_handling, fdr_alpha, n_permutations,
        seed, tail, metrics).
    file : path, optional
        Named in errors.
    participants : DataFrame, optional
        participants.tsv merged in for missing covariate columns.

    Returns
    -------
    table : DataFrame
        One row per metric x region, columns :data:`REGIONAL_COLUMNS`. ``estimate`` is patient
        minus control in the metric's units; ``percent_difference`` is 100 x estimate / the
        covariate-adjusted control mean (the model's prediction for every subject as a control,
        averaged over the sample, i.e. at the sample's genotype mix and covariates).
        ``significant`` is ``p_fdr < settings.fdr_alpha``. Regions that cannot be tested
        (the same value in every subject, as a reference region's SUVR, or fitted exactly by the
        design) keep their subject counts but no statistics; ``table.attrs["untestable"]`` is
        ``{metric: {region: reason}}`` (reasons as in ``stats.voxelwise.SCREEN_REASONS``).
    design : Design
        The full design (subjects with any data).
    """
    subjects, long = subject_table(regional, settings, file, participants)
    design = build_design(subjects, settings, file)
    metrics = metric_columns(long, subjects, settings, file)
    rows = []
    untestable: dict[str, dict[str, str]] = {}  # metric -> region -> reason
    cov_txt = "+".join([settings.group_column] + design.covariates)
    for metric in metrics:
        W = _wide(long, metric, design.subjects)
        regions = list(W.columns)
        mrows = []
        for region in regions:
            y = W[region].to_numpy(float)
            ok = np.isfinite(y)
            row = {"metric": metric, "region": region, "contrast": design.contrast_name,
                   "n_excluded_lab": design.n_excluded_lab,
                   "n_excluded_group": design.n_excluded_group, "n_missing": int((~ok).sum()),
                   "covariates": cov_txt}
            Xr, gr = design.X[ok], design.group[ok]
            npat = int((gr == settings.patient_label).sum())
            ncon = int((gr == settings.control_label).sum())
            row.update(n=int(ok.sum()), n_patient=npat, n_control=ncon)
            usable = (npat >= 3 and ncon >= 3 and np.linalg.matrix_rank(Xr) == Xr.shape[1]
                      and Xr.shape[0] - Xr.shape[1] >= 2)
            why = _untestable_reason(y[ok], Xr) if usable else None
            if why:
                untestable.setdefault(metric, {})[region] = why
                usable = False
            if usable:
                r = fit_ols(Xr, y[ok], design.contrast, settings.tail)
                tq = sps.t.isf(0.025, r.df)
                est, se, t = float(r.estimate[0]), float(r.se[0]), float(r.t[0])
                g, glo, ghi = hedges_g_ci(t, r.df, r.var_factor)
                X0 = Xr.copy()
                X0[:, 1] = 0.0  # every subject as a control: adjusted control mean of the sample
                ctrl = float((X0 @ r.beta[:, 0]).mean())
                row.update(df=r.df, mean_patient=float(np.mean(y[ok][gr == settings.patient_label])),
                           mean_control=float(np.mean(y[ok][gr == settings.control_label])),
                           estimate=est, se=se, ci_low=est - tq * se, ci_high=est + tq * se,
                           percent_difference=100 * est / ctrl if ctrl != 0 else np.nan,
                           t=t, p=float(r.p[0]), hedges_g=g, g_ci_low=glo, g_ci_high=ghi)
            mrows.append(row)
        mdf = pd.DataFrame(mrows)
        for col in ("p", "t"):
            if col not in mdf.columns:
                mdf[col] = np.nan
        mdf["p_fdr"] = fdr_bh(mdf["p"].to_numpy(float))
        mdf["p_holm"] = holm(mdf["p"].to_numpy(float))
        mdf["p_fwer_perm"] = np.nan
        Yc = W.to_numpy(float)
        # regions complete in every subject and testable (see screen_columns)
        testable = ~np.logical_or.reduce(list(screen_columns(Yc, design.X).values()))
        if settings.n_permutations > 0 and testable.any():
            res = permutation_glm(Yc[:, testable], design.X, design.contrast,
                                  n_permutations=settings.n_permutations, seed=settings.seed,
                                  tail=settings.tail, dtype=np.float64)
            mdf.loc[np.flatnonzero(testable), "p_fwer_perm"] = res.p_fwer
        mdf["significant"] = mdf["p_fdr"] < settings.fdr_alpha
        rows.append(mdf)
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = table.reindex(columns=REGIONAL_COLUMNS)
    for metric, regs in untestable.items():
        log.info("regional %s: %d region(s) not tested: %s", metric, len(regs),
                 "; ".join(f"{r} ({SCREEN_REASONS[k]})" for r, k in regs.items()))
    table.attrs["untestable"] = untestable
    return table, design


def _untestable_reason(y: np.ndarray, X: np.ndarray) -> str | None:
    """Why one region's values ``y`` (subjects with data) cannot be tested with the design rows
    ``X``: a key of :data:`SCREEN_REASONS` (e.g. ``constant``: a reference region's SUVR is 1 in
    every subject), or None."""
    for reason, flagged in screen_columns(y[:, None], X).items():
        if flagged[0]:
            return reason
    return None


def regional_correlations(regional: pd.DataFrame, settings: StatsSettings,
                          file: str | Path | None = None, participants: pd.DataFrame | None = None
                          ) -> pd.DataFrame:
    """Partial correlation of each metric x region with each clinical score, within a group.

    Controls: the genotype and the covariates of ``settings.covariates`` (dummy-coded / centred
    as in the group model) that vary within the group; a covariate constant within the group is
    dropped from the controls (named in the ``controls`` column). Subjects with a missing score
    or metric are left out (``n`` reports who was used). BH FDR across regions within each
    metric x score x group.

    Raises
    ------
    StatsError
        A clinical score that is not a column; a group with fewer than 4 subjects with the score.
    """
    subjects, long = subject_table(regional, settings, file, participants)
    design = build_design(subjects, settings, file)
    metrics = metric_columns(long, subjects, settings, file)
    tab = design.table
    groups = settings.correlation_groups or [settings.patient_label]
    for g in groups:
        if g not in set(design.group):
            raise StatsError(f"correlation group '{g}' has no subject (groups: "
                             f"{sorted(set(design.group))})", file=file, field=settings.group_column)
    out = []
    for score in settings.clinical_scores:
        if score not in tab.columns:
            raise StatsError("clinical score named in stats.clinical_scores is not a column",
                             file=file, field=score)
        sc = pd.to_numeric(tab[score], errors="coerce").to_numpy(float)
        for g in groups:
            in_g = design.group == g
            for metric in metrics:
                W = _wide(long, metric, design.subjects)
                mrows = []
                for region in W.columns:
                    y = W[region].to_numpy(float)
                    ok = in_g & np.isfinite(sc) & np.isfinite(y)
                    if ok.sum() < 4:
                        raise StatsError(f"group '{g}' has {int(ok.sum())} subjects with both the score "
                                         f"and {metric} in {region}; at least 4 are needed",
                                         file=file, field=score)
                    Z = design.X[ok][:, 2:]
                    names = design.columns[2:]
                    keepc = [j for j in range(Z.shape[1]) if np.ptp(Z[:, j]) > 0 and names[j] != score]
                    Zk = Z[:, keepc]
                    if Zk.size and np.linalg.matrix_rank(Zk) < Zk.shape[1]:
                        # drop collinear dummies greedily
                        sel = []
                        for j in range(Zk.shape[1]):
                            if np.linalg.matrix_rank(Zk[:, sel + [j]]) == len(sel) + 1:
                                sel.append(j)
                        Zk = Zk[:, sel]
                        keepc = [keepc[j] for j in sel]
                    pc = partial_correlation(y[ok], sc[ok], Zk)
                    mrows.append({"metric": metric, "region": region, "score": score, "group": g,
                                  "controls": "+".join(names[j] for j in keepc), **pc})
                mdf = pd.DataFrame(mrows)
                mdf["p_fdr"] = fdr_bh(mdf["p"].to_numpy(float))
                out.append(mdf)
    table = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    return table.reindex(columns=CORRELATION_COLUMNS)
