"""Parent fraction of plasma radioactivity: models fitted to metabolite samples, and the curve.

Models (t in minutes; each equals 1 at t = 0): ``hill`` ``1 - a t^b / (c^b + t^b)``,
``exponential`` ``a e^{-bt} + (1-a) e^{-ct}``, ``power`` ``(1 + (a t)^b)^{-c}``; ``raw`` linear
interpolation of the samples; ``none`` 1 everywhere (the plasma is already the parent input).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import curve_fit

from gliaflow.pipeline.errors import BloodDataError

__all__ = ["PF_MODELS", "fit_parent_fraction", "parent_fraction_curve"]


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
