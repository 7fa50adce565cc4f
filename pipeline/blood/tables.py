"""Blood recordings as tables, and the plasma input they become.

Internal units: time in seconds from injection, concentrations in Bq/mL, fractions 0..1. A
recording is a table with the columns of :meth:`gliaflow.pipeline.io.metadata.BloodRecording.table`
(``time_s``, ``plasma_bqml``, ``whole_blood_bqml``, ``parent_fraction``; NaN where absent);
:func:`clean_blood_table` checks one and applies the documented fixes. :class:`PlasmaInput` holds
the curves on a uniform grid from t = 0 (built by
:func:`gliaflow.pipeline.blood.input.plasma_input_from_tables`); :func:`shift_curve` moves a curve
in time on its grid.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.provenance import ToolCall

__all__ = ["PlasmaInput", "clean_blood_table", "shift_curve", "BLOOD_COLUMNS"]

#: columns of a recording table (s, Bq/mL, Bq/mL, 0..1)
BLOOD_COLUMNS = ("time_s", "plasma_bqml", "whole_blood_bqml", "parent_fraction")


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
        the end (use :func:`gliaflow.pipeline.blood.input.plasma_input_from_tables` for
        checked, extrapolated input).
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
                        for c in BLOOD_COLUMNS}, index=df.index).astype(float)
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
