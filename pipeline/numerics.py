"""Numerical kernels shared by the blood and kinetics packages (the lowest science layer).

Time-activity curves live on a uniform grid starting at t = 0 with step ``dt_s`` (s); rates are
in 1/min. Nothing here knows about models, settings or files:

* :func:`exp_conv` / :func:`multi_exp_conv`: exact convolution of a piecewise-linear input with
  one or several decaying exponentials (an IIR filter, one pass);
* :func:`frame_mean_matrix`: the linear map from a curve on the grid to its frame means;
* :func:`weighted_sum`: ``w @ M`` for a short weight vector and a wide matrix.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

__all__ = ["exp_conv", "exp_conv_coeffs", "multi_exp_conv", "frame_mean_matrix", "weighted_sum"]


def exp_conv(cp: np.ndarray, dt_s: float, rate_per_min: float) -> np.ndarray:
    """Exact ``integral_0^t cp(s) exp(-rate (t - s)) ds`` for a piecewise-linear ``cp``.

    Parameters
    ----------
    cp : ndarray, shape (n,) or (n, m)
        Input on a uniform grid starting at t = 0 (Bq/mL). Columns are independent inputs.
    dt_s : float
        Grid step (s).
    rate_per_min : float
        Decay rate (1/min), >= 0.

    Returns
    -------
    ndarray
        The convolution on the same grid, in Bq/mL * min (multiply by an amplitude in 1/min to
        get Bq/mL).
    """
    c1, c0, a1 = _iir_coeffs(dt_s, rate_per_min)
    return lfilter([c1, c0], [1.0, a1], np.asarray(cp, dtype=float), axis=0)


def _iir_coeffs(dt_s: float, rate_per_min: float) -> tuple[float, float, float]:
    h = dt_s / 60.0
    b = float(rate_per_min)
    bh = b * h
    if bh < 1e-6:
        i0 = h * (1 - bh / 2)
        i1 = h * h * (0.5 - bh / 3)
    else:
        e = math.exp(-bh)
        i0 = (1 - e) / b
        i1 = (1 - e - bh * e) / (b * b)
    return i0 - i1 / h, i1 / h, -math.exp(-bh)


def exp_conv_coeffs(dt_s: float, rate_per_min: float) -> tuple[np.ndarray, np.ndarray]:
    """IIR filter ``(b, a)`` such that ``lfilter(b, a, cp)`` equals :func:`exp_conv` (Bq/mL*min).

    Parameters as in :func:`exp_conv` (grid step s, rate 1/min).
    """
    c1, c0, a1 = _iir_coeffs(dt_s, rate_per_min)
    return np.array([c1, c0]), np.array([1.0, a1])


def _pmul(p: list[float], q: list[float]) -> list[float]:
    out = [0.0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def multi_exp_conv(cp: np.ndarray, dt_s: float, amps, rates_per_min) -> np.ndarray:
    """``sum_i amps[i] * exp_conv(cp, dt_s, rates[i])`` in a single IIR filter pass.

    The first-order filters of :func:`exp_conv` are combined into one filter of order
    ``len(rates)``, so a 2TCM tissue curve costs one ``lfilter`` call. Units as in
    :func:`exp_conv` times the amplitude units (amplitudes in 1/min give Bq/mL).
    """
    num = [0.0]
    den = [1.0]
    for amp, rate in zip(amps, rates_per_min):
        c1, c0, a1 = _iir_coeffs(dt_s, rate)
        ak = [1.0, a1]
        t1 = _pmul(num, ak)
        t2 = _pmul([float(amp) * c1, float(amp) * c0], den)
        n = max(len(t1), len(t2))
        num = [(t1[i] if i < len(t1) else 0.0) + (t2[i] if i < len(t2) else 0.0) for i in range(n)]
        den = _pmul(den, ak)
    return lfilter(np.array(num), np.array(den), np.asarray(cp, dtype=float), axis=0)


def frame_mean_matrix(t_grid_s: np.ndarray, frame_start_s, frame_end_s) -> np.ndarray:
    """Matrix ``M`` (f x n) with ``M @ curve`` equal to
    :func:`gliaflow.pipeline.kinetics.forward.frame_mean` of a curve on the uniform grid.

    Parameters
    ----------
    t_grid_s : ndarray, shape (n,)
        Uniform grid starting at 0 (s).
    frame_start_s, frame_end_s : array_like, shape (f,)
        Frame boundaries (s) inside the grid.
    """
    t = np.asarray(t_grid_s, dtype=float)
    n = t.size
    dt = float(t[1] - t[0])
    fs = np.asarray(frame_start_s, dtype=float)
    fe = np.asarray(frame_end_s, dtype=float)
    idx = np.arange(n)

    def cum_row(b: float) -> np.ndarray:
        # coefficient vector of the trapezoidal cumulative integral at time b (linear in cum)
        x = np.clip((b - t[0]) / dt, 0, n - 1)
        k = int(min(np.floor(x), n - 2))
        a = x - k

        def c(kk: int) -> np.ndarray:
            v = np.where(idx < kk, dt, 0.0)
            if kk > 0:
                v[0] = dt / 2
                v[kk] = dt / 2
            return v

        return (1 - a) * c(k) + a * c(k + 1)

    M = np.empty((fs.size, n))
    for i in range(fs.size):
        M[i] = (cum_row(fe[i]) - cum_row(fs[i])) / (fe[i] - fs[i])
    return M


def weighted_sum(w: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``w @ M`` for a small vector ``w`` (k,) and a wide ``M`` (k, V) (einsum: no BLAS gemv)."""
    return np.einsum("k,kv->v", w, M)
