"""Graphical (linearised) analyses with a plasma input: Logan plot and MA1 (Ichise 2002).

Vectorised over TACs: every function accepts ``tacs`` of shape (f,) or (V, f) (voxels x frames)
and works with a few matrix products, so the same code serves regional fits and voxelwise maps.

Units: times s, concentrations Bq/mL, VT mL/cm3. Integrals of the TAC are taken to each frame's
mid-time with the TAC constant within a frame (its frame mean) and linear across gaps
(:meth:`Frames.integral_matrix_mid`); plasma integrals are exact on the input grid.
"""
from __future__ import annotations

import math

import numpy as np

from gliaflow.pipeline.blood.tables import PlasmaInput
from gliaflow.pipeline.kinetics.base import FitResult, Frames, aic
from gliaflow.pipeline.numerics import weighted_sum

__all__ = ["GraphicalDesign", "blood_corrected", "plasma_integral_mid", "tstar_mask", "logan_vt", "ma1_vt", "fit_logan", "fit_ma1"]


def plasma_integral_mid(plasma: PlasmaInput, frames: Frames) -> tuple[np.ndarray, np.ndarray]:
    """Integral of the parent plasma from 0 to each frame mid (Bq/mL*s) and the plasma at the mid
    (Bq/mL)."""
    t = plasma.t_s
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (plasma.parent_bqml[1:] + plasma.parent_bqml[:-1]))
                          * plasma.dt_s])
    mid = frames.mid_s
    return np.interp(mid, t, cum), np.interp(mid, t, plasma.parent_bqml)


def tstar_mask(frames: Frames, tstar_min: float | None = None, tstar_frames: int | None = None) -> np.ndarray:
    """Frames in the linear phase: mid-time >= ``tstar_min`` (minutes), or the last
    ``tstar_frames`` frames when that is given (it takes precedence)."""
    if tstar_frames is not None:
        m = np.zeros(frames.n, bool)
        m[max(frames.n - int(tstar_frames), 0):] = True
        return m
    return frames.mid_s >= 60.0 * float(tstar_min or 0.0)


def blood_corrected(tacs, frames: Frames, plasma: PlasmaInput, vb: float | None):
    """Remove the blood-volume contribution: ``(C - vB * Cb) / (1 - vB)`` with ``Cb`` the
    whole-blood frame means (Bq/mL). ``vb`` None or 0 returns ``tacs`` unchanged."""
    if not vb:
        return tacs
    from gliaflow.pipeline.kinetics.base import FrameAverager

    cb = FrameAverager(plasma.t_s, frames.start_s, frames.end_s)(plasma.whole_blood_bqml)
    return (np.asarray(tacs) - vb * cb.astype(np.asarray(tacs).dtype)) / (1.0 - vb)


def _as2d(tacs) -> tuple[np.ndarray, bool]:
    y = np.asarray(tacs)
    if y.dtype.kind != "f":
        y = y.astype(float)
    return (y[None, :], True) if y.ndim == 1 else (y, False)


class GraphicalDesign:
    """Per-scan constants of Logan/MA1 regressions (computed once, reused for every voxel block).

    Attributes
    ----------
    sl : slice or ndarray
        Frames used (the linear phase).
    L : ndarray, shape (k, f)
        TAC integral to each used frame's mid-time (s), see :meth:`Frames.integral_matrix_mid`.
    ip : ndarray, shape (k,)
        Plasma integral to each used frame's mid-time (Bq/mL*s).
    w : ndarray, shape (k,)
        Frame weights of the used frames.
    """

    def __init__(self, frames: Frames, plasma: PlasmaInput, use: np.ndarray, weights=None,
                 dtype=np.float64):
        idx = np.flatnonzero(use)
        contiguous = idx.size > 0 and np.all(np.diff(idx) == 1)
        self.sl = slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx
        self.L = np.ascontiguousarray(frames.integral_matrix_mid()[use].astype(dtype))
        ip, _ = plasma_integral_mid(plasma, frames)
        self.ip = ip[use].astype(dtype)
        self.w = (np.ones(idx.size) if weights is None else np.asarray(weights, float)[use]).astype(dtype)
        self.dtype = dtype
        # row k of L differs from row k-1 in a few entries: integrate incrementally
        Lf = frames.integral_matrix_mid()[use]
        self._steps = []
        prev = np.zeros(frames.n)
        for row in Lf:
            dlt = row - prev
            nz = np.flatnonzero(np.abs(dlt) > 0)
            self._steps.append((nz, dlt[nz].astype(dtype)))
            prev = row

    def integrals(self, Y: np.ndarray) -> np.ndarray:
        """``L @ Y`` for a frames-first array ``Y`` (f, V): TAC integrals to the used mid-times
        (Bq/mL*s), computed incrementally (a few row operations per frame)."""
        out = np.empty((len(self._steps), Y.shape[1]), dtype=Y.dtype)
        acc = np.zeros(Y.shape[1], dtype=Y.dtype)
        for k, (nz, coef) in enumerate(self._steps):
            for j, cj in zip(nz, coef):
                acc += cj * Y[j]
            out[k] = acc
        return out


def _frames_major(tacs, dtype, frames_major: bool) -> tuple[np.ndarray, bool]:
    """TACs as a (f, V) array in ``dtype`` (frames first, so per-frame rows are contiguous)."""
    y = np.asarray(tacs)
    if y.ndim == 1:
        return y.astype(dtype)[:, None], True
    if frames_major:
        return y.astype(dtype, copy=False), False
    return transpose_blocked(y, dtype), False


def transpose_blocked(y: np.ndarray, dtype=None, block: int = 4096) -> np.ndarray:
    """Contiguous transpose of a tall (V, f) array, copied in cache-sized blocks (several times
    faster than ``ascontiguousarray(y.T)`` for small f)."""
    V, f = y.shape
    out = np.empty((f, V), dtype=dtype or y.dtype)
    for a in range(0, V, block):
        out[:, a:a + block] = y[a:a + block].T
    return out


def logan_vt(tacs, frames: Frames | None = None, plasma: PlasmaInput | None = None,
             use: np.ndarray | None = None, weights=None, dtype=np.float64,
             design: GraphicalDesign | None = None, with_r2: bool = True,
             frames_major: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logan VT of many TACs at once.

    ``int C_T / C_T = VT int C_p / C_T + b`` over the frames in ``use``. The weighted sums are
    formed as vector-matrix products over a frames-first array, so the cost per voxel is a few
    multiply-adds per frame and no Python loop.

    Parameters
    ----------
    tacs : ndarray, shape (f,), (V, f), or (f, V) with ``frames_major``
        Frame-mean concentrations (Bq/mL).
    frames : Frames
    plasma : PlasmaInput
    use : ndarray of bool, shape (f,)
        Frames in the linear phase (:func:`tstar_mask`); at least 3.
    weights : ndarray, shape (f,), optional
        Frame weights (default uniform).
    dtype : numpy dtype
        Working precision (float32 halves memory for maps).
    design : GraphicalDesign, optional
        Precomputed constants (replaces frames, plasma, use, weights).
    with_r2 : bool
        Also compute the coefficient of determination (else NaN).
    frames_major : bool
        ``tacs`` is (f, V).

    Returns
    -------
    vt : ndarray, shape (V,) or ()
        NaN where a TAC is not positive on the frames used.
    intercept : ndarray
    r2 : ndarray
        Coefficient of determination of each line.
    """
    d = design or GraphicalDesign(frames, plasma, use, weights, dtype)
    Y, squeeze = _frames_major(tacs, d.dtype, frames_major)
    c = Y[d.sl]                                                   # (k, V)
    it = d.integrals(Y)                                                 # (k, V)
    w, ip = d.w, d.ip
    wip = w * ip
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = 1.0 / c                    # x = ip * inv, y = it * inv
        S = float(w.sum())
        Sx = weighted_sum(wip, inv)
        it *= inv                        # it is now the Logan ordinate y
        Sy = weighted_sum(w, it)
        if with_r2:
            Syy = weighted_sum(w, it * it)
        it *= inv
        Sxy = weighted_sum(wip, it)
        inv *= inv
        Sxx = weighted_sum(wip * ip, inv)
        den = S * Sxx - Sx * Sx
        num = S * Sxy - Sx * Sy
        vt = num / den
        icpt = (Sy - vt * Sx) / S
        r2 = num * num / (den * (S * Syy - Sy * Sy)) if with_r2 else np.full_like(vt, np.nan)
        bad = ~(np.isfinite(vt) & (np.min(c, axis=0) > 0))
    vt = np.where(bad, np.nan, vt)
    icpt = np.where(bad, np.nan, icpt)
    if squeeze:
        return vt[0], icpt[0], r2[0]
    return vt, icpt, r2


def ma1_vt(tacs, frames: Frames | None = None, plasma: PlasmaInput | None = None,
           use: np.ndarray | None = None, weights=None, dtype=np.float64,
           design: GraphicalDesign | None = None,
           frames_major: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MA1 VT of many TACs at once (Ichise et al. 2002).

    ``C_T(t) = g1 int C_p + g2 int C_T`` over the frames in ``use``; ``VT = -g1 / g2``; the 2x2
    normal equations are solved in closed form for every voxel.

    Parameters and shapes as in :func:`logan_vt`.

    Returns
    -------
    vt : ndarray
        NaN where the regression is singular or ``g2 >= 0``.
    g1, g2 : ndarray
        Regression coefficients (1/s).
    """
    d = design or GraphicalDesign(frames, plasma, use, weights, dtype)
    Y, squeeze = _frames_major(tacs, d.dtype, frames_major)
    c = Y[d.sl]                                                   # (k, V)
    x2 = d.integrals(Y)                                                 # (k, V)
    wx1 = d.w * d.ip
    s11 = float(wx1 @ d.ip)
    s12 = weighted_sum(wx1, x2)
    b1 = weighted_sum(wx1, c)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b2 = weighted_sum(d.w, x2 * c)
        x2 *= x2
        s22 = weighted_sum(d.w, x2)
        det = s11 * s22 - s12 * s12
        g1 = (s22 * b1 - s12 * b2) / det
        g2 = (s11 * b2 - s12 * b1) / det
        vt = -g1 / g2
        bad = ~(np.isfinite(vt) & (g2 < 0) & (det > 0))
    vt = np.where(bad, np.nan, vt)
    if squeeze:
        return vt[0], g1[0], g2[0]
    return vt, g1, g2


def _few_frames(name, use):
    if use.sum() < 3:
        return FitResult.failure(name, ["VT", "intercept"], f"only {int(use.sum())} frames after t* "
                                 "(need >= 3)")
    return None


def fit_logan(frames: Frames, tac_bqml, plasma: PlasmaInput, tstar_min: float | None = 30.0,
              tstar_frames: int | None = None, weights=None, vb: float | None = None) -> FitResult:
    """Regional Logan plot (VT mL/cm3, intercept in s, SE of VT from the regression, fitted
    values are the Logan ordinate ``int C_T / C_T`` in s on the frames used).

    ``tstar_min`` (minutes) or ``tstar_frames`` (number of last frames) selects the linear phase;
    ``vb`` (fraction), when given, removes the blood contribution first (:func:`blood_corrected`).
    """
    use = tstar_mask(frames, tstar_min, tstar_frames)
    f = _few_frames("logan", use)
    if f:
        return f
    y = np.asarray(blood_corrected(np.asarray(tac_bqml, float), frames, plasma, vb), float)
    vt, icpt, r2 = logan_vt(y, frames, plasma, use, weights)
    if not np.isfinite(vt):
        return FitResult.failure("logan", ["VT", "intercept"], "TAC not positive after t* or "
                                 "degenerate regression")
    L = frames.integral_matrix_mid()[use]
    ip, _ = plasma_integral_mid(plasma, frames)
    x = ip[use] / y[use]
    yy = (L @ y) / y[use]
    w = np.ones(x.size) if weights is None else np.asarray(weights, float)[use]
    res = yy - (vt * x + icpt)
    wssr = float(np.sum(w * res ** 2))
    n = x.size
    sxx = float(np.sum(w * (x - np.average(x, weights=w)) ** 2))
    se = math.sqrt(wssr / (n - 2) / sxx) if n > 2 and sxx > 0 else math.nan
    fitted = np.full(frames.n, np.nan)
    fitted[use] = vt * x + icpt
    return FitResult(model="logan", params={"VT": float(vt), "intercept": float(icpt), "r2": float(r2)},
                     se={"VT": se}, fitted=fitted.tolist(), wssr=wssr, aic=aic(wssr, n, 2),
                     n_frames=n, n_params=2)


def fit_ma1(frames: Frames, tac_bqml, plasma: PlasmaInput, tstar_min: float | None = 30.0,
            tstar_frames: int | None = None, weights=None, vb: float | None = None) -> FitResult:
    """Regional MA1 (VT mL/cm3; fitted curve = the TAC predicted on the frames used, Bq/mL; SE of
    VT by the delta method). Options as in :func:`fit_logan`."""
    use = tstar_mask(frames, tstar_min, tstar_frames)
    f = _few_frames("ma1", use)
    if f:
        return f
    y = np.asarray(blood_corrected(np.asarray(tac_bqml, float), frames, plasma, vb), float)
    vt, g1, g2 = ma1_vt(y, frames, plasma, use, weights)
    if not np.isfinite(vt):
        return FitResult.failure("ma1", ["VT", "intercept"], "MA1 regression singular or "
                                 "int C_T coefficient not negative")
    L = frames.integral_matrix_mid()[use]
    ip, _ = plasma_integral_mid(plasma, frames)
    X = np.column_stack([ip[use], L @ y])
    w = np.ones(X.shape[0]) if weights is None else np.asarray(weights, float)[use]
    pred = X @ np.array([g1, g2])
    res = y[use] - pred
    wssr = float(np.sum(w * res ** 2))
    n = X.shape[0]
    se = math.nan
    if n > 2:
        try:
            cov = np.linalg.inv(X.T @ (X * w[:, None])) * wssr / (n - 2)
            g = np.array([-1.0 / g2, g1 / g2 ** 2])
            se = float(np.sqrt(max(g @ cov @ g, 0.0)))
        except np.linalg.LinAlgError:
            pass
    fitted = np.full(frames.n, np.nan)
    fitted[use] = pred
    return FitResult(model="ma1", params={"VT": float(vt), "gamma1": float(g1), "gamma2": float(g2)},
                     se={"VT": se}, fitted=fitted.tolist(), wssr=wssr, aic=aic(wssr, n, 2),
                     n_frames=n, n_params=2)
