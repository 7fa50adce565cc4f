"""Model curves for the report, rebuilt from the regional parameter table of the kinetics stage.

The kinetics stage writes one row per region with ``<model>_<parameter>`` columns (K1 mL/cm3/min,
k2..k4 1/min, vB fraction, VT mL/cm3, Logan ``intercept``...) and the plasma input it used
(``time_s`` on a uniform grid from 0, ``parent_bqml``, ``whole_blood_bqml``). From these the
report recomputes the compartment-model TACs (frame means, Bq/mL) with the same forward model the
fits used (:func:`gliaflow.pipeline.kinetics.forward.tcm_tac`) and the Logan plot.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gliaflow.pipeline.kinetics.forward import tcm_tac

__all__ = ["plasma_grid", "tcm_curves", "logan_points", "parameter_summary"]


def plasma_grid(plasma: pd.DataFrame, step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Parent plasma and whole blood (Bq/mL) on a uniform grid from 0 s.

    The plasma table's own grid is used when it is uniform and starts at 0; otherwise the curves
    are linearly interpolated onto ``step_s`` spacing (0 before the first sample).
    """
    t = plasma["time_s"].to_numpy(float)
    cp = plasma["parent_bqml"].to_numpy(float)
    cb = plasma["whole_blood_bqml"].to_numpy(float) if "whole_blood_bqml" in plasma else None
    dt = np.diff(t)
    if t.size > 2 and t[0] == 0 and np.allclose(dt, dt[0], rtol=1e-6):
        return t, np.nan_to_num(cp), None if cb is None else np.nan_to_num(cb)
    grid = np.arange(0.0, t[-1] + step_s / 2, step_s)
    cpg = np.interp(grid, t, np.nan_to_num(cp), left=0.0)
    cbg = None if cb is None else np.interp(grid, t, np.nan_to_num(cb), left=0.0)
    return grid, cpg, cbg


def _ok(row: pd.Series, model: str) -> bool:
    conv = row.get(f"{model}_converged", True)
    if isinstance(conv, str):
        conv = conv.strip().lower() in ("true", "1", "yes")
    return bool(conv) and bool(np.isfinite(pd.to_numeric(row.get(f"{model}_K1"), errors="coerce")))


def tcm_curves(params: pd.DataFrame, tacs: pd.DataFrame, plasma: pd.DataFrame,
               models: tuple[str, ...] = ("1tcm", "2tcm")) -> pd.DataFrame:
    """Fitted 1TCM/2TCM TACs of every region with converged parameters.

    Parameters
    ----------
    params : DataFrame
        ``region`` and ``<model>_K1``, ``_k2``, ``_k3``, ``_k4``, ``_vB``, optional ``_delay_s`` (s)
        and ``_converged`` columns.
    tacs : DataFrame
        ``frame_start``, ``frame_end`` (s) and one column per region (Bq/mL).
    plasma : DataFrame
        ``time_s``, ``parent_bqml``, ``whole_blood_bqml`` (Bq/mL).

    Returns
    -------
    DataFrame with columns model, region, frame_start, frame_end, measured, fitted (Bq/mL).
    """
    t, cp, cb = plasma_grid(plasma)
    fs, fe = tacs["frame_start"].to_numpy(float), tacs["frame_end"].to_numpy(float)
    keep = fe > fs
    fs, fe = fs[keep], fe[keep]
    rows = []
    for _, row in params.iterrows():
        region = str(row["region"])
        if region not in tacs.columns:
            continue
        measured = pd.to_numeric(tacs[region], errors="coerce").to_numpy(float)[keep]
        for m in models:
            if not _ok(row, m):
                continue

            def g(name: str, default: float = 0.0) -> float:
                v = pd.to_numeric(row.get(f"{m}_{name}", default), errors="coerce")
                return float(v) if np.isfinite(v) else default

            delay = g("delay_s")
            cpm = np.interp(t - delay, t, cp, left=0.0) if delay else cp
            cbm = None if cb is None else (np.interp(t - delay, t, cb, left=0.0) if delay else cb)
            vb = g("vB")
            fitted = tcm_tac(fs, fe, t, cpm, cbm if vb > 0 else None, g("K1"), g("k2"), g("k3"),
                             g("k4"), vb)
            rows.append(pd.DataFrame({"model": m, "region": region, "frame_start": fs, "frame_end": fe,
                                      "measured": measured, "fitted": fitted}))
    if not rows:
        return pd.DataFrame(columns=["model", "region", "frame_start", "frame_end", "measured", "fitted"])
    return pd.concat(rows, ignore_index=True)


def logan_points(params: pd.DataFrame, tacs: pd.DataFrame, plasma: pd.DataFrame, tstar_min: float
                 ) -> pd.DataFrame:
    """Logan plot coordinates per region: x = int_0^t Cp / C_T(t), y = int_0^t C_T / C_T(t) (min),
    at frame mid-times, the fitted line ``VT x + intercept`` and whether the frame is after t*.

    Integrals: the plasma by the trapezoid rule on its grid, the TAC by the trapezoid rule through
    (0, 0) and the frame mid-points (an approximation of the stage's frame integral, for display).
    """
    t, cp, _ = plasma_grid(plasma)
    cum_p = np.concatenate([[0.0], np.cumsum(0.5 * (cp[1:] + cp[:-1]) * np.diff(t))]) / 60.0
    fs, fe = tacs["frame_start"].to_numpy(float), tacs["frame_end"].to_numpy(float)
    keep = fe > fs
    mid = ((fs + fe) / 2)[keep]
    ip = np.interp(mid, t, cum_p)
    rows = []
    for _, row in params.iterrows():
        region = str(row["region"])
        vt = pd.to_numeric(row.get("logan_VT"), errors="coerce")
        icpt = pd.to_numeric(row.get("logan_intercept"), errors="coerce")
        if region not in tacs.columns or not np.isfinite(vt) or not np.isfinite(icpt):
            continue
        ct = pd.to_numeric(tacs[region], errors="coerce").to_numpy(float)[keep]
        tt = np.concatenate([[0.0], mid])
        cc = np.concatenate([[0.0], ct])
        ict = np.cumsum(0.5 * (cc[1:] + cc[:-1]) * np.diff(tt)) / 60.0
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = ip / ct, ict / ct
        rows.append(pd.DataFrame({"region": region, "t_min": mid / 60, "x": x, "y": y,
                                  "line": vt * x + icpt, "used": mid / 60 >= tstar_min}))
    if not rows:
        return pd.DataFrame(columns=["region", "t_min", "x", "y", "line", "used"])
    return pd.concat(rows, ignore_index=True)


def parameter_summary(params: pd.DataFrame) -> pd.DataFrame:
    """Compact per-region table: ``<model>_VT`` (mL/cm3) for every model, and the reason of fits
    that did not converge."""
    cols = ["region"] + [c for c in params.columns if c.endswith(("_VT", "_SUVR", "_SUV", "_BPND"))
                         and not c.endswith("_se")]
    out = params[[c for c in cols if c in params.columns]].copy()
    reasons = [c for c in params.columns if c.endswith("_reason")]
    if reasons:
        notes = []
        for _, r in params.iterrows():
            n = [f"{c[:-7]}: {r[c]}" for c in reasons if isinstance(r[c], str) and r[c].strip()]
            notes.append("; ".join(n))
        if any(notes):
            out["not converged"] = notes
    return out
