"""Reference-tissue models: SRTM (basis functions, Gunn et al. 1997) and MRTM / MRTM2
(Ichise et al. 2003).

Units: times s, concentrations Bq/mL, R1 unitless, k2 and k2' in 1/min, BPND unitless.
For TSPO tracers there is no true reference region; with a pseudo-reference (whole brain,
cerebellum, occipital cortex) BPND is a ratio of distribution volumes minus one (DVR - 1).
"""
from __future__ import annotations

import math

import numpy as np

from gliaflow.pipeline.kinetics.base import FitResult, FrameAverager, Frames, aic
from gliaflow.pipeline.numerics import exp_conv
from gliaflow.pipeline.provenance import STEP_KINETICS, library_call

__all__ = ["reference_on_grid", "fit_srtm", "fit_mrtm", "fit_mrtm2"]


def reference_on_grid(frames: Frames, ref_tac_bqml, step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Reference TAC (Bq/mL) interpolated linearly through its frame mid-times onto a uniform grid
    from 0 (value 0 at t = 0) to the end of the last frame; returns (t_s, values)."""
    t = np.arange(0.0, frames.end_s[-1] + step_s, step_s)
    mid = np.concatenate([[0.0], frames.mid_s])
    y = np.concatenate([[0.0], np.asarray(ref_tac_bqml, float)])
    return t, np.interp(t, mid, y)


def fit_srtm(frames: Frames, tac_bqml, ref_tac_bqml, weights=None, n_basis: int = 200,
             theta_range_per_min: tuple[float, float] = (0.01, 2.0)) -> FitResult:
    """SRTM by basis functions.

    ``C_T = R1 C_R + (k2 - R1 k2a) C_R (x) exp(-k2a t)``, ``k2a = k2 / (1 + BPND)``; for each
    ``k2a`` on a log grid the two linear coefficients follow from weighted least squares and the
    best grid point wins. Standard errors come from the Jacobian of the three-parameter model
    at the solution (numerical).

    Returns
    -------
    FitResult
        ``R1``, ``k2`` (1/min), ``BPND``, ``k2a`` (1/min); NaN with a reason when the best
        solution lies at an end of the basis grid or R1 is not positive.
    """
    names = ["R1", "k2", "BPND", "k2a"]
    y = np.asarray(tac_bqml, float)
    cr = np.asarray(ref_tac_bqml, float)
    w = np.ones(frames.n) if weights is None else np.asarray(weights, float)
    use = np.isfinite(y) & np.isfinite(cr) & (w > 0)
    if use.sum() < 4:
        return FitResult.failure("srtm", names, "fewer than 4 usable frames")
    t, crg = reference_on_grid(frames, np.where(np.isfinite(cr), cr, 0.0))
    avg = FrameAverager(t, frames.start_s, frames.end_s)
    thetas = np.geomspace(*theta_range_per_min, n_basis)
    sw = np.sqrt(w[use])
    yu = y[use] * sw
    best = (np.inf, None, None)
    for th in thetas:
        b = avg(exp_conv(crg, t[1] - t[0], th))
        X = np.column_stack([cr, b])[use] * sw[:, None]
        coef, *_ = np.linalg.lstsq(X, yu, rcond=None)
        r = yu - X @ coef
        ss = float(r @ r)
        if ss < best[0] and coef[0] > 0:
            best = (ss, th, coef)
    if best[1] is None:
        fail = FitResult.failure("srtm", names, "no basis function gave a positive R1")
        fail.provenance = [_lstsq(len(thetas))]
        return fail
    ss, th, (r1, t2) = best
    k2 = t2 + r1 * th
    bp = k2 / th - 1.0

    def model(p):
        R1, K2, BP = p
        k2a = K2 / (1 + BP)
        return R1 * cr + (K2 - R1 * k2a) * avg(exp_conv(crg, t[1] - t[0], k2a))

    p = np.array([r1, k2, bp])
    f0 = model(p)
    J = np.empty((frames.n, 3))
    for j in range(3):
        h = 1e-6 * max(abs(p[j]), 1e-3)
        pp = p.copy()
        pp[j] += h
        J[:, j] = (model(pp) - f0) / h
    se = {k: math.nan for k in names}
    n = int(use.sum())
    if n > 3:
        Jw = J[use] * sw[:, None]
        try:
            cov = np.linalg.pinv(Jw.T @ Jw) * ss / (n - 3)
            se.update(dict(zip(["R1", "k2", "BPND"], np.sqrt(np.clip(np.diag(cov), 0, None)).tolist())))
        except np.linalg.LinAlgError:
            pass
    res = FitResult(model="srtm", params={"R1": float(r1), "k2": float(k2), "BPND": float(bp),
                                          "k2a": float(th)},
                    se=se, fitted=f0.tolist(), wssr=ss, aic=aic(ss, n, 3), n_frames=n, n_params=3,
                    provenance=[_lstsq(len(thetas))])
    if th in (thetas[0], thetas[-1]):
        res.warnings.append("k2a at an end of the basis grid")
    return res


def _lstsq(count: int = 1):
    """Record of ``count`` weighted linear least-squares solves (numpy.linalg.lstsq)."""
    return library_call(STEP_KINETICS, "NumPy", "numpy.linalg.lstsq", count=count)


def _ref_regressors(frames: Frames, tac, ref):
    L = frames.integral_matrix_mid()
    return L @ np.asarray(ref, float), L @ np.asarray(tac, float)


def fit_mrtm(frames: Frames, tac_bqml, ref_tac_bqml, tstar_min: float = 0.0, weights=None) -> FitResult:
    """MRTM (three parameters): ``C_T = g1 int C_R + g2 int C_T + g3 C_R`` over frames with mid-time
    >= ``tstar_min`` (minutes). ``BPND = -(g1/g2 + 1)``, ``k2' = g1/g3`` (1/min);
    R1 is not reported."""
    names = ["BPND", "k2prime"]
    y = np.asarray(tac_bqml, float)
    cr = np.asarray(ref_tac_bqml, float)
    icr, ict = _ref_regressors(frames, y, cr)
    use = frames.mid_s >= 60 * tstar_min
    w = np.ones(frames.n) if weights is None else np.asarray(weights, float)
    use &= np.isfinite(y) & (w > 0)
    if use.sum() < 4:
        return FitResult.failure("mrtm", names, "fewer than 4 frames after t*")
    X = np.column_stack([icr, ict, cr])[use]
    sw = np.sqrt(w[use])
    g, *_ = np.linalg.lstsq(X * sw[:, None], y[use] * sw, rcond=None)
    g1, g2, g3 = g
    if not (g2 < 0 and g3 != 0):
        fail = FitResult.failure("mrtm", names, "int C_T coefficient not negative")
        fail.provenance = [_lstsq()]
        return fail
    pred = X @ g
    wssr = float(np.sum(w[use] * (y[use] - pred) ** 2))
    fitted = np.full(frames.n, np.nan)
    fitted[use] = pred
    return FitResult(model="mrtm", params={"BPND": float(-(g1 / g2 + 1)),
                                           "k2prime": float(g1 / g3 * 60.0)},
                     fitted=fitted.tolist(), wssr=wssr, aic=aic(wssr, int(use.sum()), 3),
                     n_frames=int(use.sum()), n_params=3, provenance=[_lstsq()])


def fit_mrtm2(frames: Frames, tac_bqml, ref_tac_bqml, k2prime_per_min: float, tstar_min: float = 0.0,
              weights=None) -> FitResult:
    """MRTM2: ``C_T = g1 (int C_R + C_R / k2') + g2 int C_T`` with ``k2'`` fixed (1/min),
    ``BPND = -(g1/g2 + 1)``, ``k2 = -g1 ... `` not reported; SE of BPND by the delta method."""
    names = ["BPND", "k2prime"]
    if not (k2prime_per_min and k2prime_per_min > 0 and np.isfinite(k2prime_per_min)):
        return FitResult.failure("mrtm2", names, "k2' (reference efflux rate) not available")
    y = np.asarray(tac_bqml, float)
    cr = np.asarray(ref_tac_bqml, float)
    icr, ict = _ref_regressors(frames, y, cr)
    k2p_s = k2prime_per_min / 60.0
    use = frames.mid_s >= 60 * tstar_min
    w = np.ones(frames.n) if weights is None else np.asarray(weights, float)
    use &= np.isfinite(y) & (w > 0)
    if use.sum() < 3:
        return FitResult.failure("mrtm2", names, "fewer than 3 frames after t*")
    X = np.column_stack([icr + cr / k2p_s, ict])[use]
    sw = np.sqrt(w[use])
    Xw = X * sw[:, None]
    g, *_ = np.linalg.lstsq(Xw, y[use] * sw, rcond=None)
    g1, g2 = g
    if not g2 < 0:
        fail = FitResult.failure("mrtm2", names, "int C_T coefficient not negative")
        fail.provenance = [_lstsq()]
        return fail
    pred = X @ g
    wssr = float(np.sum(w[use] * (y[use] - pred) ** 2))
    n = int(use.sum())
    se = {"BPND": math.nan}
    if n > 2:
        cov = np.linalg.pinv(Xw.T @ Xw) * wssr / (n - 2)
        gr = np.array([-1 / g2, g1 / g2 ** 2])
        se["BPND"] = float(np.sqrt(max(gr @ cov @ gr, 0.0)))
    fitted = np.full(frames.n, np.nan)
    fitted[use] = pred
    return FitResult(model="mrtm2", params={"BPND": float(-(g1 / g2 + 1)),
                                            "k2prime": float(k2prime_per_min)},
                     se=se, fitted=fitted.tolist(), wssr=wssr, aic=aic(wssr, n, 2), n_frames=n,
                     n_params=2, provenance=[_lstsq()])
