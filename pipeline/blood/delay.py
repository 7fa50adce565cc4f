"""Blood delay: the time between the arterial sampling site and the brain.

:func:`apply_delay` applies the configured delay to a plasma input: fixed (``delay_s``), or
fitted (:func:`estimate_delay`) against a whole-brain TAC with a 1TCM + vB on the first
``delay_fit_end_min`` minutes. Times in s, concentrations in Bq/mL.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls

from gliaflow.pipeline.blood.tables import PlasmaInput, shift_curve
from gliaflow.pipeline.config import BloodSettings
from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.numerics import exp_conv
from gliaflow.pipeline.provenance import STEP_DELAY, gliaflow_call, library_call

__all__ = ["estimate_delay", "apply_delay"]


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
    calls = [gliaflow_call(STEP_DELAY, "gliaflow.pipeline.blood.delay.estimate_delay"),
             library_call(STEP_DELAY, "SciPy", "scipy.optimize.nnls", count=int(info.pop("nnls_solves")))]
    shifted = plasma.shifted(d)
    return shifted.model_copy(update={"provenance": plasma.provenance + calls}), info
