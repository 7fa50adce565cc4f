"""Cohort dashboard: which sessions need a look, and what the group result is (one HTML file).

Inputs are tables (DataFrames or TSV paths) in the documented formats: the session ledger joined
with per-session QC values, the cohort regional table (participant/session x region rows with
metric and subject columns), ``stats_regional.tsv``, ``stats_correlation.tsv`` and the voxelwise
outputs of the group step. Everything optional degrades to a "not available" note.

Outliers are flagged with the robust z-score ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin),
|z| > 3.5, over the sessions that completed; motion counts only when high and the registration
similarity only when low (a still head or a sharp registration is not a reason to look).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from gliaflow.pipeline.io.derivatives import atomic_write_text
from gliaflow.pipeline.report import figures as F
from gliaflow.pipeline.report.html import (badge, esc, figure, flatten, guarded_section, kv_table, page, section, table,
                                          unavailable)
from gliaflow.pipeline.report.methods import methods_html, methods_text, provenance_table

__all__ = ["robust_z", "qc_outliers", "sessions_table", "write_cohort_dashboard", "QC_CATEGORIES"]

# column-name fragments that put a numeric QC column in a category (first match wins)
QC_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("motion", ("fd", "motion", "displacement", "trans_", "rot_")),
    ("registration", ("similarity", "nmi", "coreg", "registration", "mutual_info")),
    ("volume", ("volume", "vol_", "_mm3", "_ml")),
    ("uptake", ("suv", "vt", "uptake", "bqml", "bp_")),
)
# per-region uptake outliers need enough sessions for a stable median/MAD: with a handful of
# sessions and ~100 regions, |robust z| > 3.5 happens by chance in almost every session
REGIONAL_OUTLIER_MIN_SESSIONS = 8
_NOT_QC = {"seconds", "attempts", "frames", "n_frames", "n_frames_registered"}
_ID = {"session_id", "participant_id", "status", "error", "error_kind", "report", "report_html",
       "report_path", "flags", "stages_run", "stages_cached", "updated"}


def robust_z(values: pd.Series | np.ndarray) -> np.ndarray:
    """Robust z-scores ``0.6745 (x - median) / MAD``.

    When the MAD is 0 (over half the values equal), the mean absolute deviation is used instead
    (``(x - median) / (1.253314 * meanAD)``); when that is 0 too, every z is 0. NaN stays NaN.
    """
    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    z = np.full(x.shape, np.nan)
    if ok.sum() < 3:
        return z
    med = np.median(x[ok])
    mad = np.median(np.abs(x[ok] - med))
    if mad > 0:
        z[ok] = 0.6745 * (x[ok] - med) / mad
    else:
        mean_ad = np.mean(np.abs(x[ok] - med))
        z[ok] = (x[ok] - med) / (1.253314 * mean_ad) if mean_ad > 0 else 0.0
    return z


def _category(col: str) -> str:
    low = col.lower()
    for cat, frags in QC_CATEGORIES:
        if any(f in low for f in frags):
            return cat
    return "other"


def _qc_columns(sessions: pd.DataFrame) -> list[str]:
    return [c for c in sessions.columns if c not in _ID and c not in _NOT_QC
            and pd.api.types.is_numeric_dtype(sessions[c]) and not pd.api.types.is_bool_dtype(sessions[c])]


def _session_key(regional: pd.DataFrame, sessions: pd.DataFrame) -> str | None:
    if "session_id" in regional.columns and "session_id" in sessions.columns:
        return "session_id"
    if "participant_id" in regional.columns and "participant_id" in sessions.columns:
        return "participant_id"
    return None


def _metric_columns(regional: pd.DataFrame) -> list[str]:
    skip = {"participant_id", "session_id", "region", "age", "bmi", "weight", "dose"}
    return [c for c in regional.columns if c not in skip and not c.endswith("_flag")
            and pd.api.types.is_numeric_dtype(regional[c]) and _category(c) in ("uptake", "volume")]


def qc_outliers(sessions: pd.DataFrame, regional: pd.DataFrame | None = None, threshold: float = 3.5
                ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Robust z of every QC value across the completed sessions, and the reasons to look.

    Parameters
    ----------
    sessions : DataFrame
        One row per session: session_id, status (done/failed/skipped), numeric QC columns
        (e.g. mean_fd_mm, coreg_similarity, gm_volume_mm3), optional ``flags`` (text).
    regional : DataFrame, optional
        Cohort regional table (session_id or participant_id, region, metric columns such as
        suvr, vt_logan, volume_mm3); each metric's regional values and its mean over regions get
        robust z-scores too.
    threshold : float
        |z| above which a value is an outlier.

    Returns
    -------
    (z, reasons) : z has one row per completed session (index session_id) and one column per
    session-level QC value (regional metrics as ``mean <metric>``); reasons maps session_id to
    human-readable reasons (outliers, stage flags, failures).
    """
    s = sessions.copy()
    if "status" not in s.columns:
        s["status"] = "done"
    reasons: dict[str, list[str]] = {str(sid): [] for sid in s["session_id"]}
    for _, row in s.iterrows():
        sid = str(row["session_id"])
        if row["status"] != "done":
            err = row.get("error", "")
            reasons[sid].append(f"{row['status']}" + (f": {err}" if isinstance(err, str) and err else ""))
        fl = row.get("flags", "")
        if isinstance(fl, (list, tuple)):
            fl = ", ".join(map(str, fl))
        if isinstance(fl, str) and fl.strip():
            reasons[sid].append(f"flags: {fl}")
    done = s[s["status"] == "done"].set_index(s.loc[s["status"] == "done", "session_id"].astype(str))
    z = pd.DataFrame(index=done.index)
    for col in _qc_columns(done):
        z[col] = robust_z(done[col])
    if regional is not None and len(regional):
        key = _session_key(regional, sessions)
        if key is not None:
            ids = dict(zip(done[key].astype(str), done.index)) if key in done.columns else {}
            reg = regional[regional[key].astype(str).isin(ids)].copy()
            reg["_sid"] = reg[key].astype(str).map(ids)
            for m in _metric_columns(reg):
                mean = reg.groupby("_sid")[m].mean()
                z[f"mean {m}"] = pd.Series(robust_z(mean), index=mean.index).reindex(z.index)
                if "region" in reg.columns and len(done) >= REGIONAL_OUTLIER_MIN_SESSIONS:
                    wide = reg.pivot_table(index="_sid", columns="region", values=m, aggfunc="mean")
                    rz = wide.apply(lambda col: pd.Series(robust_z(col), index=col.index))
                    for sid, row in rz.iterrows():
                        out = row[row.abs() > threshold].sort_values(key=abs, ascending=False)
                        if out.empty:
                            continue
                        shown = ", ".join(f"{m} in {r}: robust z {v:+.1f}" for r, v in out.head(3).items())
                        more = f" (+{len(out) - 3} more regions)" if len(out) > 3 else ""
                        reasons[sid].append(shown + more)
    for col in z.columns:
        for sid, val in z[col][_is_outlier(col, z[col], threshold)].items():
            raw = done.at[sid, col] if col in done.columns else None
            rawtxt = f" = {F_fmt(raw)}" if raw is not None else ""
            reasons[sid].append(f"{_category(col.replace('mean ', ''))} outlier: {col}{rawtxt} "
                                f"(robust z {val:+.1f})")
    return z, reasons


def _is_outlier(col: str, z: pd.Series, threshold: float) -> pd.Series:
    """Outlier mask for one QC column: motion is bad only when high, registration similarity
    only when low; volumes, uptake and other values in both directions (|z| > threshold)."""
    cat = _category(col.replace("mean ", ""))
    if cat == "motion":
        return z > threshold
    if cat == "registration":
        return z < -threshold
    return z.abs() > threshold


def F_fmt(v: Any) -> str:
    """Short number formatting for reasons."""
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


def _scalars(d: Mapping[str, Any]) -> dict[str, float]:
    """Numeric leaves of a nested QC dict, with dotted keys."""
    return {k: float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def sessions_table(ledger: pd.DataFrame | str | Path, qc: Mapping[str, Mapping[str, Any]] | None = None,
                   flags: Mapping[str, list[str]] | None = None,
                   reports: Mapping[str, str | Path] | None = None) -> pd.DataFrame:
    """Build the ``sessions`` table of :func:`write_cohort_dashboard` from the cohort ledger.

    Parameters
    ----------
    ledger : DataFrame or path
        ``OUT_DIR/ledger.tsv`` (session_id, participant_id, status, error_kind, error, seconds...).
    qc : dict, optional
        session_id -> QC values, nested as the stages report them (e.g. ``{"pet_motion":
        {"mean_fd_mm": 0.3}, "coreg": {"similarity": 0.41}}``). Numeric leaves become columns named
        by their last key (the dotted path when two stages use the same key).
    flags : dict, optional
        session_id -> QC flags raised by the stages.
    reports : dict, optional
        session_id -> path of the session report.
    """
    df = _read(ledger)
    if df is None:
        raise FileNotFoundError(f"ledger not found: {ledger}")
    df = df.copy()
    if "error_kind" in df.columns and "error" in df.columns:
        # an all-empty column is read as float NaN: cast before filling
        kind = df["error_kind"].astype(object).fillna("").astype(str)
        err = df["error"].astype(object).fillna("").astype(str)
        df["error"] = [f"{k}: {e}" if k and e and not e.startswith(k) else (e or k) for k, e in zip(kind, err)]
    flat = {sid: _scalars(v) for sid, v in (qc or {}).items()}
    leaves: dict[str, set[str]] = {}
    for vals in flat.values():
        for key in vals:
            leaves.setdefault(key.split(".")[-1], set()).add(key)
    rename = {key: (leaf if len(keys) == 1 else key) for leaf, keys in leaves.items() for key in keys}
    rows = {sid: {rename[k]: v for k, v in vals.items()} for sid, vals in flat.items()}
    if rows:
        qdf = pd.DataFrame.from_dict(rows, orient="index")
        qdf.index.name = "session_id"
        df = df.merge(qdf.reset_index(), on="session_id", how="left")
    if flags is not None:
        df["flags"] = [", ".join(flags.get(s, [])) for s in df["session_id"]]
    if reports is not None:
        df["report"] = [str(reports[s]) if s in reports else "" for s in df["session_id"]]
    return df


def _read(x: pd.DataFrame | str | Path | None) -> pd.DataFrame | None:
    if x is None:
        return None
    if isinstance(x, pd.DataFrame):
        return x
    p = Path(x)
    if not p.exists():
        return None
    return pd.read_csv(p, sep="\t", na_values=["n/a"])


def _voxelwise_items(voxelwise: Mapping[str, Any]) -> tuple[dict[str, Path], dict[str, pd.DataFrame], float | None]:
    """Normalise the voxelwise outputs: statistic maps to show, cluster tables, threshold.

    Accepts ``{"maps": {name: path}, "clusters": {name: path|DataFrame} | path | DataFrame,
    "threshold": z}`` or the flat mapping written by the group step
    (``{"<metric>:z": path, "<metric>:clusters": path, ...}``) — only z maps are shown then.
    """
    maps: dict[str, Path] = {}
    clusters: dict[str, pd.DataFrame] = {}
    thr = voxelwise.get("threshold")

    def add_table(name: str, v: Any) -> None:
        df = _read(v)
        if df is not None:
            clusters[name] = df

    for k, v in voxelwise.items():
        if k == "maps" and isinstance(v, Mapping):
            maps.update({str(n): Path(p) for n, p in v.items()})
        elif k == "clusters":
            if isinstance(v, Mapping):
                for n, t in v.items():
                    add_table(str(n), t)
            else:
                add_table("clusters", v)
        elif k == "threshold":
            continue
        elif "cluster" in k:
            add_table(k, v)
        elif isinstance(v, (str, Path)) and str(v).endswith((".nii", ".nii.gz")):
            stat = k.split(":")[-1]
            if ":" not in k or stat == "z":
                maps[k] = Path(v)
    return maps, clusters, (float(thr) if thr is not None else None)


def _link(report: Any, out_html: Path) -> str:
    if not isinstance(report, (str, Path)) or not str(report).strip():
        return '<span class="na">none</span>'
    p = Path(report)
    target = p if p.is_absolute() else out_html.parent / p
    rel = os.path.relpath(target, out_html.parent)
    if not target.exists():
        return f'<span class="na">{esc(rel)} (not found)</span>'
    return f'<a href="{esc(Path(rel).as_posix())}">report</a>'


@dataclass
class _Cohort:
    """What the dashboard's sections read: the tables, the settings, and the outlier scores."""

    out_html: Path
    sessions: pd.DataFrame
    reg: pd.DataFrame | None  # cohort regional table
    sreg: pd.DataFrame | None  # stats_regional
    scor: pd.DataFrame | None  # stats_correlation
    voxelwise: Mapping[str, Any] | None
    settings: dict[str, Any]  # StatsSettings dump
    alpha: float
    threshold: float  # robust z
    dpi: int
    z: pd.DataFrame  # robust z per session x QC column
    reasons: dict[str, list[str]]  # session -> why it needs a look
    provenance: list[Any] = field(default_factory=list)  # ToolCall records (or their dumps)
    config: dict[str, Any] | None = None  # effective configuration dump

    @property
    def group_col(self) -> str:
        return self.settings.get("group_column", "group")

    @property
    def geno_col(self) -> str:
        return self.settings.get("genotype_column", "tspo_genotype")

    @property
    def look(self) -> dict[str, list[str]]:
        """Sessions that need a look, with the reasons."""
        return {sid: r for sid, r in self.reasons.items() if r}


def _overview(c: _Cohort) -> str:
    counts = c.sessions["status"].value_counts().to_dict()
    items = [("sessions", len(c.sessions))] + [(k, v) for k, v in sorted(counts.items())]
    items.append(("need a look", len(c.look)))
    html = kv_table(items)
    if c.look:
        rows = "".join(f"<li><b>{esc(sid)}</b>: {esc('; '.join(r))}</li>" for sid, r in c.look.items())
        html += f"<h3>Sessions that need a look</h3><ul>{rows}</ul>"
    else:
        html += "<p>" + badge("no session needs a look", "ok") + "</p>"
    return html + "<h3>Group result</h3>" + _headline(c)


def _headline(c: _Cohort) -> str:
    """One line per metric (significant regions, largest effect) and the strongest correlation."""
    sreg, scor, alpha = c.sreg, c.scor, c.alpha
    if sreg is None or sreg.empty or "hedges_g" not in sreg.columns:
        return unavailable("Group result", "no regional statistics")
    pcol = "p_fdr" if "p_fdr" in sreg.columns else "p"
    lines = []
    for metric, sub in sreg.groupby(sreg["metric"].astype(str), sort=False):
        sub = sub.dropna(subset=["hedges_g"])
        if sub.empty:
            continue
        nsig = int((sub[pcol] < alpha).sum())
        top = sub.loc[sub["hedges_g"].abs().idxmax()]
        ci = ""
        if "g_ci_low" in sub.columns:
            ci = f" [{top['g_ci_low']:.2f}, {top['g_ci_high']:.2f}]"
        lines.append(f"<li><b>{esc(metric)}</b>: {nsig} of {len(sub)} regions with {esc(pcol)} &lt; "
                     f"{alpha:g}; largest effect in <b>{esc(top['region'])}</b>: Hedges' g = "
                     f"{top['hedges_g']:.2f}{esc(ci)}, {esc(pcol)} = {top[pcol]:.3g}</li>")
    if scor is not None and not scor.empty and "p" in scor.columns:
        pc = "p_fdr" if "p_fdr" in scor.columns else "p"
        best = scor.loc[scor["p"].idxmin()]
        rtxt = f"r = {best['r']:.2f}, " if "r" in scor.columns else ""
        lines.append(f"<li>Strongest clinical correlation: {esc(best.get('metric', ''))} in "
                     f"<b>{esc(best.get('region', ''))}</b> with {esc(best.get('score', ''))}"
                     f"{' (' + esc(best['group']) + ')' if 'group' in scor.columns else ''}: "
                     f"{rtxt}{esc(pc)} = {best[pc]:.3g}</li>")
    return f"<ul>{''.join(lines)}</ul>"


def _sessions(c: _Cohort) -> str:
    """The sessions table: status, report link, reasons to look, QC values (outliers in red)."""
    df = c.sessions.copy()
    df.index = df["session_id"].astype(str)
    rep_col = next((k for k in ("report", "report_html", "report_path") if k in df.columns), None)
    shown = pd.DataFrame(index=df.index)
    shown["session_id"] = df["session_id"].astype(str)
    shown["status"] = df["status"].astype(str)
    shown["report"] = [_link(v, c.out_html) for v in (df[rep_col] if rep_col else [None] * len(df))]
    shown["needs a look"] = [esc("; ".join(c.reasons.get(s, []))) for s in df.index]
    qc_cols = _qc_columns(df)
    other = [k for k in df.columns if k in _NOT_QC and pd.api.types.is_numeric_dtype(df[k])]
    for k in qc_cols + other:
        shown[k] = df[k]
    cls = pd.DataFrame("", index=shown.index, columns=shown.columns)
    cls["status"] = ["ok" if s == "done" else "bad" for s in shown["status"]]
    cls["needs a look"] = ["warn" if c.reasons.get(s) else "" for s in shown.index]
    for k in qc_cols:
        if k in c.z.columns:
            for sid in c.z.index[_is_outlier(k, c.z[k], c.threshold)]:
                cls.at[sid, k] = "bad"
    shown = shown.reset_index(drop=True)
    cls = cls.reset_index(drop=True)
    return (f'<p class="small">Cells in red: robust z (median/MAD) beyond ±{c.threshold:g} among '
            "completed sessions (motion: high only; registration similarity: low only).</p>"
            + table(shown, classes=cls, html_cols=["report", "needs a look"]))


def _outliers(c: _Cohort) -> str:
    if c.z.empty or c.z.shape[1] == 0 or len(c.z) < 3:
        return unavailable("Outlier plot", "fewer than 3 completed sessions with QC values")
    return figure(F.robust_z_figure(c.z, c.threshold, c.dpi), "robust z of QC metrics",
                  f"Robust z per QC metric (one dot per session); red: |z| > {c.threshold:g}.")


def _failures(c: _Cohort) -> str:
    bad = c.sessions[c.sessions["status"] != "done"]
    if bad.empty:
        return "<p>" + badge("all sessions completed", "ok") + "</p>"
    cols = [k for k in ("session_id", "participant_id", "status", "error_kind", "error") if k in bad.columns]
    return table(bad[cols].reset_index(drop=True))


def _effects(c: _Cohort) -> str:
    sreg, alpha = c.sreg, c.alpha
    if sreg is None or sreg.empty or "hedges_g" not in sreg.columns:
        return unavailable("Regional effect sizes", "no stats_regional table")
    html = figure(F.effect_size_figure(sreg, c.dpi, alpha), "regional effect sizes",
                  f"Hedges' g (patient − control) with 95% CI; filled red: FDR-corrected p < {alpha:g}.")
    cols = [k for k in ("metric", "region", "n", "estimate", "se", "t", "p", "p_fdr", "hedges_g",
                        "g_ci_low", "g_ci_high", "percent_difference") if k in sreg.columns]
    srt = sreg.sort_values("p") if "p" in sreg.columns else sreg
    cls = pd.DataFrame("", index=srt.index, columns=cols)
    if "p_fdr" in srt.columns:
        cls["p_fdr"] = ["ok" if v < alpha else "" for v in srt["p_fdr"].to_numpy(float)]
    return html + "<details><summary>table</summary>" + table(srt[cols], classes=cls, max_rows=200) + "</details>"


def _genotype(c: _Cohort) -> str:
    reg, sreg = c.reg, c.sreg
    if reg is None or sreg is None or sreg.empty:
        return unavailable("Metric by group and genotype", "needs the regional and stats tables")
    metrics = [m for m in dict.fromkeys(sreg["metric"].astype(str)) if m in reg.columns][:2]
    if not metrics:
        return unavailable("Metric by group and genotype", "stats metrics not in the regional table")
    html = ""
    for m in metrics:
        sub = sreg[sreg["metric"].astype(str) == m].dropna(subset=["hedges_g"])
        region = str(sub.loc[sub["hedges_g"].abs().idxmax(), "region"])
        html += figure(F.group_genotype_figure(reg, m, region, c.group_col, c.geno_col, c.dpi),
                       f"{m} by group and genotype", f"{m} in {region} (largest effect), by "
                       f"{c.geno_col} and {c.group_col}; bars: medians.")
    return html


def _correlations(c: _Cohort) -> str:
    reg, scor = c.reg, c.scor
    if scor is None or scor.empty:
        return unavailable("Clinical correlations", "no stats_correlation table")
    srt = scor.sort_values("p") if "p" in scor.columns else scor
    html = ""
    if reg is not None:
        pairs = []
        for _, r in srt.iterrows():
            if r.get("metric") in reg.columns and r.get("score") in reg.columns:
                pairs.append({k: r.get(k) for k in ("region", "metric", "score", "r", "p")})
            if len(pairs) == 3:
                break
        if pairs:
            html += figure(F.correlation_figure(reg, pairs, c.group_col, c.dpi), "clinical scatter plots",
                           "Strongest correlations (by p) of a regional metric with a clinical score.")
    return html + table(srt.reset_index(drop=True), max_rows=30)


def _voxelwise(c: _Cohort) -> str:
    if not c.voxelwise:
        return unavailable("Voxelwise results", "no voxelwise outputs")
    maps, clusters, thr = _voxelwise_items(c.voxelwise)
    thr = thr if thr is not None else float(c.settings.get("cluster_forming_z", 3.1))
    html = ""
    for name, p in maps.items():
        if not p.exists():
            html += unavailable(name, f"missing {p.name}")
            continue
        html += figure(F.voxelwise_figure(nib.load(str(p)), thr, c.dpi, title=name), name,
                       f"{name} thresholded at |z| > {thr:g} over the MNI152 template.")
    for name, df in clusters.items():
        html += f"<h3>Clusters: {esc(name)}</h3>" + (table(df, max_rows=50) if len(df) else
                                                     '<p class="na">no clusters above threshold.</p>')
    return html or unavailable("Voxelwise results", "no maps or cluster tables")


def _methods(c: _Cohort) -> str:
    if not c.provenance:
        return unavailable("Methods text", "no provenance records: nothing to describe")
    paras, cited = methods_text(c.provenance, c.config if c.config is not None else {"stats": c.settings})
    return (methods_html(paras, cited) + "<details><summary>What ran (every recorded tool call)"
            "</summary>" + table(provenance_table(c.provenance), max_rows=500) + "</details>")


#: the dashboard's sections in page order: (anchor, title, navigation label, builder)
_SECTIONS: tuple[tuple[str, str, str, Callable[[_Cohort], str]], ...] = (
    ("overview", "Overview", "Overview", _overview),
    ("sessions", "Sessions", "Sessions", _sessions),
    ("outliers", "QC outliers", "Outliers", _outliers),
    ("failed", "Failed and skipped sessions", "Failed/skipped", _failures),
    ("effects", "Regional effect sizes", "Effect sizes", _effects),
    ("genotype", "Metric by group and genotype", "Group × genotype", _genotype),
    ("clinical", "Clinical scores", "Clinical", _correlations),
    ("voxelwise", "Voxelwise results", "Voxelwise", _voxelwise),
    ("methods", "Methods", "Methods", _methods),
)


def write_cohort_dashboard(out_html: str | Path, *, sessions: pd.DataFrame,
                           regional: pd.DataFrame | str | Path | None = None,
                           stats_regional: pd.DataFrame | str | Path | None = None,
                           stats_correlation: pd.DataFrame | str | Path | None = None,
                           voxelwise: Mapping[str, Any] | None = None,
                           stats_settings: Mapping[str, Any] | None = None, dpi: int = 80,
                           alpha: float | None = None, threshold: float = 3.5,
                           title: str = "gliaflow cohort dashboard",
                           provenance: Iterable[Any] | None = None,
                           config: Mapping[str, Any] | None = None) -> Path:
    """Write the cohort HTML dashboard (atomically).

    Parameters
    ----------
    out_html : path
        Dashboard file; links to session reports are made relative to its folder.
    sessions : DataFrame
        One row per session: session_id, status (done/failed/skipped), error, report (path of
        the session report, absolute or relative to ``out_html``'s folder), optional flags
        (text) and numeric QC columns (mean_fd_mm, max_fd_mm, coreg_similarity, volumes in mm3,
        ...). Ledger housekeeping columns (seconds, attempts) are shown but not scored.
    regional : DataFrame or path, optional
        Cohort regional table: participant_id, session_id, region, metric columns (suvr,
        vt_logan, ...; units of the metric) and subject columns (group, tspo_genotype, clinical
        scores).
    stats_regional, stats_correlation : DataFrame or path, optional
        Group-step tables (columns as written by ``pipeline.stats``: metric, region, estimate,
        se, t, p, p_fdr, hedges_g, g_ci_low, g_ci_high, ...; and metric, region, score, group,
        n, r, p, p_fdr).
    voxelwise : dict, optional
        Statistic maps and cluster tables (see :func:`_voxelwise_items`).
    stats_settings : dict, optional
        ``StatsSettings`` dump: group/genotype column names, alpha (and the stats settings of
        the methods text when ``config`` is not given).
    dpi : int
        Figure resolution.
    alpha : float, optional
        Significance level for FDR-corrected p (default ``stats_settings['fdr_alpha']`` or 0.05).
    threshold : float
        Robust-z outlier threshold (3.5).
    provenance : list of ToolCall (or their JSON dumps), optional
        What ran: the union of the sessions' stage records and the group step's; the only
        source of the methods text and the "What ran" table.
    config : dict, optional
        The effective configuration (``PipelineConfig.model_dump(mode="json")``): the settings
        the methods text states.

    Returns
    -------
    Path of the written dashboard.
    """
    out_html = Path(out_html)
    st = dict(stats_settings or {})
    sessions = sessions.copy() if sessions is not None else pd.DataFrame(columns=["session_id", "status"])
    if "status" not in sessions.columns:
        sessions["status"] = "done"
    reg = _read(regional)
    z, reasons = qc_outliers(sessions, reg, threshold)
    c = _Cohort(out_html=out_html, sessions=sessions, reg=reg, sreg=_read(stats_regional),
                scor=_read(stats_correlation), voxelwise=voxelwise, settings=st,
                alpha=float(alpha if alpha is not None else st.get("fdr_alpha", 0.05)),
                threshold=threshold, dpi=dpi, z=z, reasons=reasons, provenance=list(provenance or []),
                config=dict(config) if config is not None else None)
    warns: list[str] = []
    body = "".join(guarded_section(anchor, name, functools.partial(build, c), warns)
                   for anchor, name, _, build in _SECTIONS)
    if warns:
        body += section("warnings", "Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warns) + "</ul>")
    n_done = int((sessions["status"] == "done").sum())
    sub = f"{len(sessions)} sessions · {n_done} done · {len(c.look)} need a look"
    nav = [(anchor, label) for anchor, _, label, _ in _SECTIONS]
    return atomic_write_text(out_html, page(title, body, subtitle=sub, nav=nav))
