"""Forward models of tracer kinetics: plasma input shapes, compartment impulse responses,
exact convolution on a uniform grid, and frame averaging.

Conventions (used across gliaflow.pipeline.kinetics and pipeline.simulate):

* times in seconds (s) from injection;
* concentrations in Bq/mL;
* rate constants in 1/min, K1 in mL/cm3/min (the units users read in tables); they are converted
  to 1/s inside these functions;
* ``vb`` is the fractional blood volume (0..1) that adds ``vb * whole_blood`` to the tissue curve.

The convolution of an input sampled on a uniform grid with an exponential is computed exactly for
an input that is piecewise-linear between samples (a first-order recursion run by
:func:`scipy.signal.lfilter`), so it is both fast and free of the lag of a rectangle rule.
"""
from __future__ import annotations


import numpy as np
from gliaflow.pipeline.numerics import exp_conv

__all__ = [
    "feng_input",
    "tcm_rates",
    "tcm_tissue",
    "frame_mean",
    "tcm_tac",
]

_PER_MIN = 1.0 / 60.0  # 1/min -> 1/s


def feng_input(t_s, a1: float, a2: float, a3: float, l1: float, l2: float, l3: float,
               t0_s: float = 0.0) -> np.ndarray:
    """Feng et al. (1993) plasma input model.

    ``Cp(t) = (a1*tau - a2 - a3) exp(-l1 tau) + a2 exp(-l2 tau) + a3 exp(-l3 tau)`` with
    ``tau = (t - t0) / 60`` in minutes, zero before ``t0``.

    Parameters
    ----------
    t_s : array_like
        Times (s).
    a1 : float
        Bq/mL/min (slope of the bolus rise).
    a2, a3 : float
        Bq/mL.
    l1, l2, l3 : float
        Decay rates (1/min), positive.
    t0_s : float
        Arrival time of the bolus (s).

    Returns
    -------
    numpy.ndarray
        Plasma concentration (Bq/mL), same shape as ``t_s``.
    """
    t = np.asarray(t_s, dtype=float)
    tau = np.clip((t - t0_s) / 60.0, 0.0, None)
    cp = (a1 * tau - a2 - a3) * np.exp(-l1 * tau) + a2 * np.exp(-l2 * tau) + a3 * np.exp(-l3 * tau)
    return np.where(t > t0_s, cp, 0.0)


def tcm_rates(K1: float, k2: float, k3: float = 0.0, k4: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and rates of a 1- or 2-tissue compartment impulse response.

    The impulse response is ``sum_i amp_i * exp(-rate_i * t)``.

    Parameters
    ----------
    K1 : float
        mL/cm3/min.
    k2, k3, k4 : float
        1/min. ``k3 == 0`` gives the one-tissue model.

    Returns
    -------
    amps : ndarray
        Amplitudes (mL/cm3/min).
    rates : ndarray
        Rates (1/min), non-negative.
    """
    if k3 <= 0.0:
        return np.array([K1]), np.array([k2])
    s = k2 + k3 + k4
    disc = np.sqrt(max(s * s - 4.0 * k2 * k4, 0.0))
    a1 = (s - disc) / 2.0
    a2 = (s + disc) / 2.0
    if a2 - a1 < 1e-12:  # degenerate: fall back to a tiny split
        a2 = a1 + 1e-9
    amp1 = K1 * (k3 + k4 - a1) / (a2 - a1)
    amp2 = K1 * (a2 - k3 - k4) / (a2 - a1)
    return np.array([amp1, amp2]), np.array([a1, a2])


def tcm_tissue(cp: np.ndarray, dt_s: float, K1: float, k2: float, k3: float = 0.0,
               k4: float = 0.0) -> np.ndarray:
    """Tissue concentration (Bq/mL) of a 1TCM/2TCM driven by plasma ``cp`` on a uniform grid.

    Parameters as in :func:`tcm_rates`; ``cp`` in Bq/mL sampled every ``dt_s`` seconds from t=0.
    """
    amps, rates = tcm_rates(K1, k2, k3, k4)
    out = np.zeros_like(np.asarray(cp, dtype=float))
    for a, r in zip(amps, rates):
        out += a * exp_conv(cp, dt_s, r)
    return out


def frame_mean(t_grid_s: np.ndarray, curve: np.ndarray, frame_start_s, frame_end_s) -> np.ndarray:
    """Mean of ``curve`` over each frame ``[start, end]`` (trapezoidal integral / duration).

    Parameters
    ----------
    t_grid_s : ndarray, shape (n,)
        Increasing sample times (s).
    curve : ndarray, shape (n,) or (n, m)
        Values at ``t_grid_s``.
    frame_start_s, frame_end_s : array_like, shape (f,)
        Frame boundaries (s), inside the grid.

    Returns
    -------
    ndarray, shape (f,) or (f, m)
    """
    t = np.asarray(t_grid_s, dtype=float)
    y = np.asarray(curve, dtype=float)
    fs = np.asarray(frame_start_s, dtype=float)
    fe = np.asarray(frame_end_s, dtype=float)
    cum = np.concatenate([np.zeros((1,) + y.shape[1:]), np.cumsum(
        0.5 * (y[1:] + y[:-1]) * np.diff(t).reshape((-1,) + (1,) * (y.ndim - 1)), axis=0)])
    if y.ndim == 1:
        c_end = np.interp(fe, t, cum)
        c_start = np.interp(fs, t, cum)
        return (c_end - c_start) / (fe - fs)
    res = np.empty((fs.size, y.shape[1]))
    for j in range(y.shape[1]):
        res[:, j] = (np.interp(fe, t, cum[:, j]) - np.interp(fs, t, cum[:, j])) / (fe - fs)
    return res


def tcm_tac(frame_start_s, frame_end_s, t_grid_s: np.ndarray, cp_parent_bqml: np.ndarray,
            cb_whole_bqml: np.ndarray | None, K1: float, k2: float, k3: float = 0.0,
            k4: float = 0.0, vb: float = 0.0) -> np.ndarray:
    """Frame-mean PET concentration (Bq/mL) of a 1TCM/2TCM region.

    ``C_pet = (1 - vb) * C_tissue + vb * C_whole_blood``, averaged over each frame.

    Parameters
    ----------
    frame_start_s, frame_end_s : array_like
        Frame boundaries (s).
    t_grid_s : ndarray
        Uniform grid starting at 0 (s) on which the inputs are sampled.
    cp_parent_bqml : ndarray
        Metabolite-corrected parent plasma input (Bq/mL) on the grid.
    cb_whole_bqml : ndarray or None
        Whole-blood activity (Bq/mL) on the grid; required when ``vb > 0``.
    K1, k2, k3, k4 : float
        Rate constants (K1 mL/cm3/min; k2..k4 1/min).
    vb : float
        Blood volume fraction (0..1).
    """
    t = np.asarray(t_grid_s, dtype=float)
    dt = float(t[1] - t[0])
    ct = tcm_tissue(cp_parent_bqml, dt, K1, k2, k3, k4)
    if vb > 0:
        if cb_whole_bqml is None:
            raise ValueError("whole-blood curve needed when vb > 0")
        ct = (1.0 - vb) * ct + vb * np.asarray(cb_whole_bqml, dtype=float)
    return frame_mean(t, ct, frame_start_s, frame_end_s)


