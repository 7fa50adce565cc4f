"""Arterial input function: from BIDS blood recordings to a metabolite-corrected plasma input.

Internal units: time in seconds from injection, concentrations in Bq/mL, fractions 0..1. The
inputs are tables with the columns of :meth:`gliaflow.pipeline.bids_models.BloodRecording.table`
(``time_s``, ``plasma_bqml``, ``whole_blood_bqml``, ``parent_fraction``; NaN where absent).

Processing (:func:`plasma_input_from_tables`):

1. each table is checked (:func:`clean_blood_table`): rows out of time order are sorted;
   duplicate times within one recording are averaged; negative concentrations down to
   ``negative_tolerance`` x the recording's peak are noise and set to 0, larger ones are an error;
   a parent fraction above 1 (or below 0) by more than 0.05 is an error, smaller excursions are
   clipped to 0..1;
2. continuous (autosampler) recordings are optionally dispersion corrected
   (``c + tau dc/dt``) and provide the whole-blood curve over their time span; discrete (manual)
   samples provide it afterwards;
3. total plasma = whole blood x plasma-to-whole-blood ratio, with the ratio from the samples that
   have both (``interpolate``: linear in time, constant beyond the samples; ``constant``: the
   median; ``linear``: a straight line in time). With no whole blood at all, the plasma samples are
   used directly and also stand in for whole blood (noted);
4. parent fraction: ``hill``, ``exponential``, ``power`` model fitted to the samples, ``raw``
   linear interpolation, or ``none`` (the plasma is already the parent input, fraction 1);
5. everything is interpolated linearly onto a uniform grid from 0 s (0 activity at injection
   when the first sample is later) to the scan end; a curve ending before the scan end is
   extended with a mono-exponential fitted to its last third when the missing part is at most
   ``max_extrapolation_fraction`` of the scan, and is an error otherwise;
6. delay (:func:`apply_delay`, separately, since fitting needs a TAC): fixed ``delay_s``, or
   fitted (:func:`estimate_delay`) against a whole-brain TAC with a 1TCM + vB on the first
   ``delay_fit_end_min`` minutes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import curve_fit, nnls

from gliaflow.pipeline.config import BloodSettings
from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.numerics import exp_conv
from gliaflow.pipeline.provenance import STEP_DELAY, STEP_PLASMA, ToolCall, gliaflow_call, library_call

__all__ = [
    "PlasmaInput",
    "clean_blood_table",
    "parent_fraction_curve",
    "fit_parent_fraction",
    "dispersion_correct",
    "plasma_input_from_tables",
    "plasma_input_from_files",
    "estimate_delay",
    "apply_delay",
    "shift_curve",
    "PF_MODELS",
]

_COLS = ("time_s", "plasma_bqml", "whole_blood_bqml", "parent_fraction")


class PlasmaInput(BaseModel):
    """Blood input curves on a uniform grid from t = 0.

    Attributes
    ----------
    t_s : ndarray
        Uniform grid (s), ``t_s[0] == 0``.
    parent_bqml : ndarray
        Metabolite-corrected (parent) arterial plasma (Bq/mL), delay applied.
    whole_blood_bqml : ndarray
        Whole-blood activity (Bq/mL), delay applied.
    plasma_total_bqml, parent_fraction : ndarray or None
        Total plasma (Bq/mL) and parent fraction (0..1) on the grid (None when not derived).
    delay_s : float
        Delay applied (s; positive: measured curves moved later).
    parent_fraction_model : str
        ``hill``, ``exponential``, ``power``, ``raw`` or ``none``.
    parent_fraction_params : dict
        Fitted parameters of the parent fraction model (time in minutes).
    dispersion_tau_s : float or None
        Dispersion constant applied to continuous recordings (s).
    notes : list of str
        What was done to the data that a reader should know (extrapolation, clipping...).
    provenance : list of ToolCall
        What built the input (gliaflow's functions and the library routines they called).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    t_s: np.ndarray
    parent_bqml: np.ndarray
    whole_blood_bqml: np.ndarray
    plasma_total_bqml: np.ndarray | None = None
    parent_fraction: np.ndarray | None = None
    delay_s: float = 0.0
    parent_fraction_model: str = "none"
    parent_fraction_params: dict[str, float] = Field(default_factory=dict)
    plasma_to_blood: str = ""
    dispersion_tau_s: float | None = None
    notes: list[str] = Field(default_factory=list)
    provenance: list[ToolCall] = Field(default_factory=list)

    @property
    def dt_s(self) -> float:
        """Grid step (s)."""
        return float(self.t_s[1] - self.t_s[0])

    @property
    def end_s(self) -> float:
        return float(self.t_s[-1])

    @classmethod
    def from_curves(cls, t_s, parent_bqml, whole_blood_bqml=None, step_s: float = 1.0,
                    end_s: float | None = None, **kw) -> "PlasmaInput":
        """Interpolate sampled curves (s, Bq/mL) linearly onto a uniform grid from 0 to ``end_s``.

        Values are 0 at t = 0 when the first sample is later, and held at the last sample beyond
        the end (use :func:`plasma_input_from_tables` for checked, extrapolated input).
        ``whole_blood_bqml`` None uses the parent curve in its place.
        """
        t = np.asarray(t_s, dtype=float)
        end = float(end_s if end_s is not None else t[-1])
        grid = np.arange(0.0, end + step_s * 0.5, step_s)
        if grid[-1] < end:
            grid = np.append(grid, grid[-1] + step_s)
        cp = _interp0(grid, t, np.asarray(parent_bqml, dtype=float))
        cb = cp.copy() if whole_blood_bqml is None else _interp0(grid, t, np.asarray(whole_blood_bqml, float))
        return cls(t_s=grid, parent_bqml=cp, whole_blood_bqml=cb, **kw)

    def shifted(self, delay_s: float) -> "PlasmaInput":
        """A copy with all curves moved by ``delay_s`` (s; positive: later) on the same grid."""
        upd = {"parent_bqml": shift_curve(self.t_s, self.parent_bqml, delay_s),
               "whole_blood_bqml": shift_curve(self.t_s, self.whole_blood_bqml, delay_s),
               "delay_s": self.delay_s + float(delay_s)}
        if self.plasma_total_bqml is not None:
            upd["plasma_total_bqml"] = shift_curve(self.t_s, self.plasma_total_bqml, delay_s)
        return self.model_copy(update=upd)

    def to_frame(self) -> pd.DataFrame:
        """The curves as a table (``time_s``, ``parent_bqml``, ``whole_blood_bqml``, ...)."""
        d = {"time_s": self.t_s, "parent_bqml": self.parent_bqml,
             "whole_blood_bqml": self.whole_blood_bqml}
        if self.plasma_total_bqml is not None:
            d["plasma_total_bqml"] = self.plasma_total_bqml
        if self.parent_fraction is not None:
            d["parent_fraction"] = self.parent_fraction
        return pd.DataFrame(d)


def _interp0(grid: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear interpolation with an implicit (0 s, 0) sample when the data start later."""
    ok = np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size == 0:
        return np.zeros_like(grid)
    if t[0] > 0:
        t = np.concatenate([[0.0], t])
        y = np.concatenate([[0.0], y])
    return np.interp(grid, t, y)


def shift_curve(t_s: np.ndarray, y: np.ndarray, delay_s: float) -> np.ndarray:
    """``y(t - delay)`` on the grid ``t_s`` (s): 0 before the start, held at the end."""
    if delay_s == 0:
        return np.asarray(y, dtype=float).copy()
    return np.interp(np.asarray(t_s) - delay_s, t_s, y, left=0.0, right=float(y[-1]))


# --------------------------------------------------------------------------- table checks
def clean_blood_table(df: pd.DataFrame, source: str = "blood table",
                      negative_tolerance: float = 0.05) -> tuple[pd.DataFrame, list[str]]:
    """Check one recording and apply the documented fixes.

    Parameters
    ----------
    df : DataFrame
        Columns ``time_s`` (s), ``plasma_bqml``, ``whole_blood_bqml`` (Bq/mL) and
        ``parent_fraction`` (0..1); missing columns are treated as absent (NaN).
    source : str
        File name used in error messages.
    negative_tolerance : float
        Negative concentrations down to this fraction of the column's peak are set to 0.

    Returns
    -------
    table : DataFrame
        Sorted by time, duplicates averaged, small negatives zeroed, fractions clipped to 0..1.
    notes : list of str

    Raises
    ------
    BloodDataError
        Missing or non-finite times, negative times... large negative concentrations, a parent
        fraction outside 0..1 (by more than 0.05), a table without any concentration.
    """
    notes: list[str] = []
    if "time_s" not in df.columns:
        raise BloodDataError("no time column", file=source, field="time")
    out = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
                        for c in _COLS}, index=df.index).astype(float)
    t = out["time_s"].to_numpy()
    if not np.all(np.isfinite(t)):
        raise BloodDataError("times must be finite numbers", file=source, field="time")
    if np.any(t < -1e-9):
        # samples before injection: a baseline; keep only when zero
        notes.append(f"{source}: {int((t < 0).sum())} sample(s) before injection dropped")
        out = out[out["time_s"] >= 0]
    if out[["plasma_bqml", "whole_blood_bqml", "parent_fraction"]].isna().all().all():
        raise BloodDataError("no concentration or parent-fraction values", file=source)
    if not out["time_s"].is_monotonic_increasing:
        notes.append(f"{source}: samples out of time order were sorted")
        out = out.sort_values("time_s", kind="stable")
    if out["time_s"].duplicated().any():
        ndup = int(out["time_s"].duplicated().sum())
        notes.append(f"{source}: {ndup} duplicate time(s) averaged")
        out = out.groupby("time_s", as_index=False).mean()
    for col, field in (("plasma_bqml", "plasma_radioactivity"),
                       ("whole_blood_bqml", "whole_blood_radioactivity")):
        v = out[col].to_numpy()
        if np.all(np.isnan(v)):
            continue
        peak = np.nanmax(np.abs(v))
        neg = v < 0
        if neg.any():
            if np.nanmin(v) < -negative_tolerance * peak:
                raise BloodDataError(
                    f"negative concentration {np.nanmin(v):g} Bq/mL at t = "
                    f"{out['time_s'].to_numpy()[np.nanargmin(v)]:g} s (more than "
                    f"{negative_tolerance:.0%} of the peak)", file=source, field=field)
            notes.append(f"{source}: {int(neg.sum())} small negative {field} value(s) set to 0")
            out[col] = np.where(neg, 0.0, v)
    pf = out["parent_fraction"].to_numpy()
    if np.any(pf > 1.05) or np.any(pf < -0.05):
        raise BloodDataError(f"parent fraction outside 0..1 (range {np.nanmin(pf):g} to "
                             f"{np.nanmax(pf):g}); percentages need Units 'percent'", file=source,
                             field="metabolite_parent_fraction")
    if np.any((pf > 1) | (pf < 0)):
        notes.append(f"{source}: parent fraction clipped to 0..1")
        out["parent_fraction"] = np.clip(pf, 0, 1)
    return out.reset_index(drop=True), notes


def _is_continuous(label: str, t: np.ndarray) -> bool:
    if re.search(r"auto|contin|twilite|pump", label, re.I):
        return True
    if re.search(r"manual|discrete", label, re.I):
        return False
    return t.size >= 30 and float(np.median(np.diff(t))) <= 5.0


# --------------------------------------------------------------------------- parent fraction
def _pf_hill(t, a, b, c):
    tb = np.power(np.maximum(t, 0.0), b)
    return 1.0 - a * tb / (np.power(c, b) + tb)


def _pf_exponential(t, a, b, c):
    return a * np.exp(-b * t) + (1.0 - a) * np.exp(-c * t)


def _pf_power(t, a, b, c):
    return np.power(1.0 + np.power(a * np.maximum(t, 0.0), b), -c)


#: name -> (function of t in minutes, parameter names, lower bounds, upper bounds, starts)
PF_MODELS = {
    "hill": (_pf_hill, ("a", "b", "c_min"), (0.0, 0.2, 0.01), (1.0, 10.0, 500.0),
             [(0.9, 2.0, 8.0), (0.95, 1.5, 4.0), (0.7, 3.0, 20.0)]),
    "exponential": (_pf_exponential, ("a", "b_per_min", "c_per_min"), (0.0, 1e-4, 1e-5),
                    (1.0, 10.0, 10.0), [(0.9, 0.1, 0.001), (0.7, 0.3, 0.01), (0.5, 0.05, 0.005)]),
    "power": (_pf_power, ("a_per_min", "b", "c"), (1e-4, 0.1, 1e-3), (10.0, 10.0, 10.0),
              [(0.1, 2.0, 0.5), (0.2, 1.5, 1.0), (0.05, 3.0, 0.3)]),
}


def fit_parent_fraction(t_s, pf, model: str, source: str = "blood") -> dict[str, float]:
    """Fit a parent-fraction model to samples.

    Parameters
    ----------
    t_s : array_like
        Sample times (s).
    pf : array_like
        Parent fractions (0..1).
    model : {"hill", "exponential", "power"}
        ``hill``: ``1 - a t^b / (c^b + t^b)``; ``exponential``: ``a e^{-bt} + (1-a) e^{-ct}``;
        ``power``: ``(1 + (a t)^b)^{-c}`` (t in minutes; all equal 1 at t = 0).

    Returns
    -------
    dict
        Parameter name -> value, plus ``rmse``.

    Raises
    ------
    BloodDataError
        Fewer than 3 samples, or no start converged.
    """
    t = np.asarray(t_s, dtype=float) / 60.0
    y = np.asarray(pf, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size < 3:
        raise BloodDataError(f"{model} parent-fraction model needs at least 3 samples, got {t.size}",
                             file=source, field="metabolite_parent_fraction")
    f, names, lo, hi, starts = PF_MODELS[model]
    best = None
    for p0 in starts:
        try:
            p, _ = curve_fit(f, t, y, p0=p0, bounds=(lo, hi), maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        r = float(np.sqrt(np.mean((f(t, *p) - y) ** 2)))
        if best is None or r < best[1]:
            best = (p, r)
    if best is None:
        raise BloodDataError(f"the {model} parent-fraction model did not converge", file=source,
                             field="metabolite_parent_fraction")
    out = {n: float(v) for n, v in zip(names, best[0])}
    out["rmse"] = best[1]
    return out


def parent_fraction_curve(t_s, model: str, params: dict[str, float] | None = None,
                          samples: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Parent fraction (0..1) at times ``t_s`` (s) from a fitted model, raw samples, or none.

    ``raw`` interpolates ``samples`` (times s, fractions) linearly, 1 at t = 0 when the first
    sample is later, held constant after the last; ``none`` is 1 everywhere.
    """
    t = np.asarray(t_s, dtype=float)
    if model == "none":
        return np.ones_like(t)
    if model == "raw":
        ts, ys = samples
        ok = np.isfinite(ts) & np.isfinite(ys)
        ts, ys = np.asarray(ts)[ok], np.asarray(ys)[ok]
        if ts.size == 0 or ts[0] > 0:
            ts = np.concatenate([[0.0], ts])
            ys = np.concatenate([[1.0], ys])
        return np.clip(np.interp(t, ts, ys), 0.0, 1.0)
    f, names, *_ = PF_MODELS[model]
    return np.clip(f(t / 60.0, *[params[n] for n in names]), 0.0, 1.0)


# --------------------------------------------------------------------------- dispersion
def dispersion_correct(t_s, c, tau_s: float) -> np.ndarray:
    """Correct a continuously sampled curve for the dispersion of the sampling line.

    ``c_true = c + tau dc/dt`` (single-exponential dispersion kernel with time constant ``tau``,
    s); the derivative is taken on a 3-sample running mean to limit noise amplification.
    Negative results are set to 0.
    """
    t = np.asarray(t_s, dtype=float)
    y = np.asarray(c, dtype=float)
    if tau_s is None or tau_s <= 0 or y.size < 3:
        return y.copy()
    sm = np.convolve(np.pad(y, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return np.maximum(y + tau_s * np.gradient(sm, t), 0.0)


# --------------------------------------------------------------------------- assembly
def _tail_extend(grid: np.ndarray, t: np.ndarray, y: np.ndarray, notes: list[str], what: str,
                 t_end_data: float) -> np.ndarray:
    """Values on ``grid`` beyond ``t_end_data`` from a mono-exponential fit to the last third."""
    out = np.interp(grid, t, y)
    beyond = grid > t_end_data
    if not beyond.any():
        return out
    sel = (t >= t[0] + (t_end_data - t[0]) * 2 / 3) & (y > 0)
    if sel.sum() >= 3:
        slope, icpt = np.polyfit(t[sel], np.log(y[sel]), 1)
        slope = min(slope, 0.0)
        out[beyond] = np.exp(icpt + slope * grid[beyond])
        notes.append(f"{what} extrapolated from {t_end_data:.0f} s to {grid[-1]:.0f} s "
                     f"(mono-exponential, rate {abs(slope) * 60:.3g}/min)")
    else:
        notes.append(f"{what} held constant from {t_end_data:.0f} s to {grid[-1]:.0f} s")
    return out


def plasma_input_from_tables(tables: Sequence[pd.DataFrame], settings: BloodSettings | None = None,
                             scan_end_s: float | None = None, labels: Sequence[str] | None = None,
                             sources: Sequence[str] | None = None,
                             continuous: Sequence[bool] | None = None) -> PlasmaInput:
    """Build the metabolite-corrected plasma input from one or more blood recordings.

    Parameters
    ----------
    tables : list of DataFrame
        One per recording, columns as in :meth:`BloodRecording.table` (s, Bq/mL, fraction).
    settings : BloodSettings
        Parent-fraction model, ratio model, dispersion, grid step, tolerances. No delay is applied
        here (fitting it needs a TAC): use :func:`apply_delay` (fit or fixed) or
        :meth:`PlasmaInput.shifted`.
    scan_end_s : float, optional
        End of the last PET frame (s): the grid runs to max(scan end, last sample).
    labels : list of str, optional
        Recording labels (``autosampler``, ``manual``...) used to tell continuous from discrete.
    sources : list of str, optional
        File names for messages.
    continuous : list of bool, optional
        Override the continuous/discrete classification.

    Returns
    -------
    PlasmaInput

    Raises
    ------
    BloodDataError
        Unusable data, naming the file and column.
    """
    s = settings or BloodSettings()
    if not tables:
        raise BloodDataError("no blood recordings given")
    n = len(tables)
    sources = list(sources) if sources is not None else [f"blood recording {i + 1}" for i in range(n)]
    labels = list(labels) if labels is not None else [""] * n
    notes: list[str] = []
    cleaned = []
    for df, src in zip(tables, sources):
        tab, nn = clean_blood_table(df, src, s.negative_tolerance)
        cleaned.append(tab)
        notes += nn
    is_cont = list(continuous) if continuous is not None else [
        _is_continuous(lab, tab["time_s"].to_numpy()) for lab, tab in zip(labels, cleaned)]

    # -- whole blood: continuous (dispersion corrected) over its span, then discrete samples
    wb_t, wb_y, cont_end = [], [], -np.inf
    for tab, cont, src in zip(cleaned, is_cont, sources):
        v = tab["whole_blood_bqml"].to_numpy()
        ok = np.isfinite(v)
        if cont and ok.sum() >= 3:
            tt = tab["time_s"].to_numpy()[ok]
            yy = v[ok]
            if s.dispersion_tau_s:
                yy = dispersion_correct(tt, yy, s.dispersion_tau_s)
                notes.append(f"{src}: dispersion corrected (tau {s.dispersion_tau_s:g} s)")
            wb_t.append(tt)
            wb_y.append(yy)
            cont_end = max(cont_end, tt[-1])
    for tab, cont in zip(cleaned, is_cont):
        v = tab["whole_blood_bqml"].to_numpy()
        tt = tab["time_s"].to_numpy()
        ok = np.isfinite(v) & (tt > cont_end) if not cont else np.zeros_like(v, bool)
        wb_t.append(tt[ok])
        wb_y.append(v[ok])
    wb_t = np.concatenate(wb_t) if wb_t else np.empty(0)
    wb_y = np.concatenate(wb_y) if wb_y else np.empty(0)
    order = np.argsort(wb_t, kind="stable")
    wb_t, wb_y = wb_t[order], wb_y[order]
    if wb_t.size:
        wb = pd.DataFrame({"t": wb_t, "y": wb_y}).groupby("t", as_index=False).mean()
        wb_t, wb_y = wb["t"].to_numpy(), wb["y"].to_numpy()

    # -- plasma samples and plasma/whole-blood pairs
    pl_t = np.concatenate([t["time_s"].to_numpy()[np.isfinite(t["plasma_bqml"].to_numpy())] for t in cleaned])
    pl_y = np.concatenate([t["plasma_bqml"].to_numpy()[np.isfinite(t["plasma_bqml"].to_numpy())] for t in cleaned])
    o = np.argsort(pl_t, kind="stable")
    pl_t, pl_y = pl_t[o], pl_y[o]
    pair_t, pair_r = [], []
    for tab in cleaned:
        p, w = tab["plasma_bqml"].to_numpy(), tab["whole_blood_bqml"].to_numpy()
        ok = np.isfinite(p) & np.isfinite(w) & (w > 0) & (p > 0)
        pair_t.append(tab["time_s"].to_numpy()[ok])
        pair_r.append(p[ok] / w[ok])
    pair_t, pair_r = np.concatenate(pair_t), np.concatenate(pair_r)
    o = np.argsort(pair_t, kind="stable")
    pair_t, pair_r = pair_t[o], pair_r[o]

    if wb_t.size == 0 and pl_t.size == 0:
        raise BloodDataError("no plasma or whole-blood concentrations in any recording",
                             file=", ".join(sources), field="plasma_radioactivity")

    data_end = max(float(wb_t[-1]) if wb_t.size else 0.0, float(pl_t[-1]) if pl_t.size else 0.0)
    end = max(data_end, float(scan_end_s or 0.0))
    step = s.grid_step_s
    grid = np.arange(0.0, end + step * 0.5, step)
    if grid[-1] < end - 1e-9:
        grid = np.append(grid, grid[-1] + step)
    if scan_end_s and data_end < scan_end_s:
        missing = (scan_end_s - data_end) / scan_end_s
        if missing > s.max_extrapolation_fraction:
            raise BloodDataError(
                f"blood curve ends at {data_end:.0f} s, the scan at {scan_end_s:.0f} s "
                f"({missing:.0%} of the scan missing, more than max_extrapolation_fraction "
                f"{s.max_extrapolation_fraction:.0%})", file=", ".join(sources), field="time")

    def on_grid(t, y, what):
        t0 = np.concatenate([[0.0], t]) if t[0] > 0 else t
        y0 = np.concatenate([[0.0], y]) if t[0] > 0 else y
        return _tail_extend(grid, t0, y0, notes, what, float(t[-1]))

    for what, tt in (("whole blood", wb_t), ("plasma", pl_t)):
        if tt.size > 2:
            gaps = np.diff(tt)
            big = np.argmax(gaps)
            if gaps[big] > max(900.0, 0.3 * (tt[-1] - tt[0])):
                notes.append(f"{what}: gap of {gaps[big]:.0f} s between samples at {tt[big]:.0f} s "
                             f"and {tt[big + 1]:.0f} s (linear interpolation across it)")

    ratio_g = None
    if wb_t.size >= 2 and pair_t.size >= 1:
        wb_g = on_grid(wb_t, wb_y, "whole blood")
        if s.plasma_to_blood == "constant" or pair_t.size < 2:
            ratio_g = np.full_like(grid, float(np.median(pair_r)))
        elif s.plasma_to_blood == "linear":
            b1, b0 = np.polyfit(pair_t, pair_r, 1)
            ratio_g = np.clip(b0 + b1 * grid, 0.05, None)
        else:
            ratio_g = np.interp(grid, pair_t, pair_r)
        pl_g = wb_g * ratio_g
    elif pl_t.size >= 2:
        pl_g = on_grid(pl_t, pl_y, "plasma")
        if wb_t.size >= 2:
            wb_g = on_grid(wb_t, wb_y, "whole blood")
            notes.append("no paired plasma/whole-blood samples: plasma interpolated directly")
        else:
            wb_g = pl_g.copy()
            notes.append("no whole blood: the plasma curve stands in for whole blood (vB term)")
    else:
        raise BloodDataError("plasma needs either >= 2 plasma samples or whole blood with at least "
                             "one paired plasma sample", file=", ".join(sources),
                             field="plasma_radioactivity")

    # -- parent fraction
    pf_t = np.concatenate([t["time_s"].to_numpy()[np.isfinite(t["parent_fraction"].to_numpy())] for t in cleaned])
    pf_y = np.concatenate([t["parent_fraction"].to_numpy()[np.isfinite(t["parent_fraction"].to_numpy())] for t in cleaned])
    o = np.argsort(pf_t, kind="stable")
    pf_t, pf_y = pf_t[o], pf_y[o]
    model = s.parent_fraction_model
    params: dict[str, float] = {}
    calls = [gliaflow_call(STEP_PLASMA, "gliaflow.pipeline.blood.input.plasma_input_from_tables")]
    if model == "none":
        if pf_t.size:
            notes.append("parent-fraction samples ignored (parent_fraction_model 'none': the "
                         "plasma is taken as the parent input)")
        pf_g = np.ones_like(grid)
    elif pf_t.size == 0:
        raise BloodDataError(f"parent_fraction_model is {model!r} but no recording has "
                             "metabolite_parent_fraction values (use 'none' for an already "
                             "metabolite-corrected input)", file=", ".join(sources),
                             field="metabolite_parent_fraction")
    elif model == "raw":
        pf_g = parent_fraction_curve(grid, "raw", samples=(pf_t, pf_y))
    else:
        params = fit_parent_fraction(pf_t, pf_y, model, source=", ".join(sources))
        pf_g = parent_fraction_curve(grid, model, params)
        calls += [gliaflow_call(STEP_PLASMA, f"gliaflow.pipeline.blood.input.fit_parent_fraction"
                                f"(model='{model}')"),
                  library_call(STEP_PLASMA, "SciPy", "scipy.optimize.curve_fit",
                               count=len(PF_MODELS[model][4]))]  # one fit per start
    parent = pl_g * pf_g

    pi = PlasmaInput(t_s=grid, parent_bqml=parent, whole_blood_bqml=wb_g, plasma_total_bqml=pl_g,
                     parent_fraction=pf_g, parent_fraction_model=model,
                     parent_fraction_params=params, plasma_to_blood=s.plasma_to_blood,
                     dispersion_tau_s=s.dispersion_tau_s, notes=notes, provenance=calls)
    return pi


def plasma_input_from_files(tsv_paths: Sequence[str | Path], settings: BloodSettings | None = None,
                            scan_end_s: float | None = None) -> PlasmaInput:
    """Read BIDS blood TSV/JSON pairs (``*_recording-<label>_blood.tsv`` with a sidecar of the same
    name ending ``.json``) and build the plasma input (:func:`plasma_input_from_tables`)."""
    from gliaflow.pipeline.io.metadata import BloodRecording

    tables, labels, sources = [], [], []
    for p in tsv_paths:
        p = Path(p)
        js = p.with_name(p.name[: -len(".tsv")] + ".json") if p.name.endswith(".tsv") else p.with_suffix(".json")
        m = re.search(r"recording-([A-Za-z0-9]+)", p.name)
        label = m.group(1) if m else p.stem
        rec = BloodRecording.from_files(p, js, label=label)
        tables.append(rec.table())
        labels.append(label)
        sources.append(str(p))
    return plasma_input_from_tables(tables, settings, scan_end_s=scan_end_s, labels=labels,
                                    sources=sources)


# --------------------------------------------------------------------------- delay
def estimate_delay(plasma: PlasmaInput, frame_start_s, frame_end_s, tac_bqml,
                   delay_range_s: tuple[float, float] = (-30.0, 30.0), fit_end_s: float = 600.0,
                   step_s: float | None = None) -> tuple[float, dict[str, float]]:
    """Blood delay that best explains an (early) whole-brain TAC with a 1TCM + vB.

    For each delay on a grid (``step_s``, default the input grid step) and each k2 on a log grid
    (0.005..2 /min), ``K1`` and ``vB`` follow from non-negative least squares; the delay with the
    smallest residual wins.

    Parameters
    ----------
    plasma : PlasmaInput
        Input (s, Bq/mL) before the delay is applied.
    frame_start_s, frame_end_s : array_like
        Frames (s); those ending after ``fit_end_s`` are not used.
    tac_bqml : array_like
        Whole-brain TAC (frame means, Bq/mL).
    delay_range_s : (float, float)
        Delays searched (s; positive moves the blood curve later).

    Returns
    -------
    delay_s : float
    info : dict
        ``K1`` (mL/cm3/min), ``k2`` (1/min), ``vB``, ``ssr`` of the best fit, ``at_bound`` (1.0
        when the delay is at an end of the range), ``nnls_solves`` (scipy.optimize.nnls calls).
    """
    from gliaflow.pipeline.numerics import frame_mean_matrix

    fs = np.asarray(frame_start_s, float)
    fe = np.asarray(frame_end_s, float)
    y = np.asarray(tac_bqml, float)
    use = (fe <= fit_end_s + 1e-6) & np.isfinite(y)
    if use.sum() < 4:
        raise BloodDataError(f"delay estimation needs >= 4 frames ending before {fit_end_s:.0f} s",
                             field="delay")
    fs, fe, y = fs[use], fe[use], y[use]
    t_end = fe[-1]
    nkeep = int(np.searchsorted(plasma.t_s, t_end + abs(delay_range_s[0]) + 2 * plasma.dt_s)) + 1
    t = plasma.t_s[:nkeep]
    M = frame_mean_matrix(t, fs, fe)
    step = step_s or plasma.dt_s
    delays = np.arange(delay_range_s[0], delay_range_s[1] + step * 0.5, step)
    k2s = np.geomspace(0.005, 2.0, 40)
    best = (np.inf, 0.0, 0.0, 0.0, 0.0)
    for d in delays:
        cp = shift_curve(plasma.t_s, plasma.parent_bqml, d)[:nkeep]
        cb = shift_curve(plasma.t_s, plasma.whole_blood_bqml, d)[:nkeep]
        bfm = M @ cb
        for k2 in k2s:
            X = np.column_stack([M @ exp_conv(cp, plasma.dt_s, k2), bfm])
            coef, rn = nnls(X, y)
            if rn * rn < best[0]:
                best = (rn * rn, float(d), float(coef[0]), float(k2), float(coef[1]))
    ssr, d, a, k2, vb = best
    at_bound = float(np.isclose(d, delays[0]) or np.isclose(d, delays[-1]))
    vb = min(vb, 1.0)
    k1 = a / (1 - vb) if vb < 1 else math.nan
    return d, {"K1": k1, "k2": k2, "vB": vb, "ssr": ssr, "at_bound": at_bound,
               "nnls_solves": float(len(delays) * len(k2s))}


def apply_delay(plasma: PlasmaInput, settings: BloodSettings, frame_start_s=None, frame_end_s=None,
                tac_bqml=None) -> tuple[PlasmaInput, dict[str, float]]:
    """Apply the configured delay to an input from :func:`plasma_input_from_tables`.

    ``delay == "fit"``: estimated against ``tac_bqml`` (a whole-brain TAC, Bq/mL, with its frames
    in s) by :func:`estimate_delay`; ``"fixed"``: ``settings.delay_s`` (s).

    Returns
    -------
    plasma : PlasmaInput
        Shifted input (``delay_s`` records the total shift; a fitted delay adds its records to
        ``provenance``).
    info : dict
        Fit information (empty for a fixed delay).

    Raises
    ------
    BloodDataError
        ``fit`` without a TAC.
    """
    if settings.delay != "fit":
        return (plasma.shifted(settings.delay_s) if settings.delay_s else plasma), {}
    if tac_bqml is None or frame_start_s is None or frame_end_s is None:
        raise BloodDataError("delay 'fit' needs a whole-brain TAC and its frames", field="delay")
    d, info = estimate_delay(plasma, frame_start_s, frame_end_s, tac_bqml, settings.delay_range_s,
                             60.0 * settings.delay_fit_end_min)
    calls = [gliaflow_call(STEP_DELAY, "gliaflow.pipeline.blood.input.estimate_delay"),
             library_call(STEP_DELAY, "SciPy", "scipy.optimize.nnls", count=int(info.pop("nnls_solves")))]
    shifted = plasma.shifted(d)
    return shifted.model_copy(update={"provenance": plasma.provenance + calls}), info
