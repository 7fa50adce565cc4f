"""One- and two-tissue compartment models with an arterial plasma input (regional fits).

Units: times s, concentrations Bq/mL, K1 mL/cm3/min, k2..k4 1/min, VT mL/cm3, vB fraction,
delay s. Model curves are frame means of the continuous model
(:func:`gliaflow.pipeline.numerics.exp_conv` on the input grid, averaged over each frame),
so long frames are handled exactly.

Every fit carries a quality verdict (:attr:`FitResult.flags`, see :func:`quality_flags`): a rate
constant, the delay or the upper vB limit reached, SE(VT)/VT above a limit, or non-convergence
mark the fit untrustworthy, and its metrics are left out of the tidy metrics table.
Bounds and the VT definition follow kinfitr's ``twotcm`` (lower bounds 1e-4 for K1..k4, k4 at
most 0.5/min, VT = K1/k2 (1 + k3/k4)); K1, k2 and k3 get wider upper bounds (1.5, 2.0, 1.0)
so that plausible fits of other tracers are not pinned to an edge, and vB may reach 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
from scipy.optimize import least_squares

from gliaflow.pipeline.blood.tables import PlasmaInput, shift_curve
from gliaflow.pipeline.kinetics.base import FitResult, FrameAverager, Frames, aic
from gliaflow.pipeline.kinetics.forward import tcm_rates
from gliaflow.pipeline.numerics import multi_exp_conv
from gliaflow.pipeline.provenance import STEP_KINETICS, library_call

__all__ = ["fit_tcm", "TCMModel", "PARAM_UNITS", "BOUNDS", "quality_flags"]

PARAM_UNITS = {"K1": "mL/cm3/min", "k2": "1/min", "k3": "1/min", "k4": "1/min", "vB": "fraction",
               "delay_s": "s", "VT": "mL/cm3", "VND": "mL/cm3", "BPND": "unitless"}

#: bounds (lower, upper) of each parameter (units as in PARAM_UNITS)
BOUNDS = {"K1": (1e-4, 1.5), "k2": (1e-4, 2.0), "k3": (1e-4, 1.0), "k4": (1e-4, 0.5),
          "vB": (0.0, 0.3), "delay_s": (-30.0, 30.0)}
#: kinfitr's twotcm starting point (K1, k2, k3, k4, vB): always among the starts tried
_KINFITR_START_2 = (0.1, 0.1, 0.1, 0.1)
_KINFITR_START_VB = 0.05
#: a parameter within this fraction of its bound is "at the bound" (relative to the bound for a
#: positive lower bound, to the bound range otherwise)
_BOUND_TOL = 0.01


class TCMModel:
    """Frame-mean model curves of a 1TCM/2TCM on a fixed input and frame set (callable).

    Parameters
    ----------
    plasma : PlasmaInput
        Parent plasma and whole blood on a uniform grid (s, Bq/mL).
    frames : Frames
        Frame timing (s); must end within the input grid.
    n_tissue : {1, 2}
    """

    def __init__(self, plasma: PlasmaInput, frames: Frames, n_tissue: int = 2):
        n = int(np.searchsorted(plasma.t_s, frames.end_s[-1])) + 2
        n = min(n, plasma.t_s.size)
        self.t = plasma.t_s[:n]
        self.dt = plasma.dt_s
        self.cp_full = plasma.parent_bqml
        self.cb_full = plasma.whole_blood_bqml
        self.cp = plasma.parent_bqml[:n]
        self.cb = plasma.whole_blood_bqml[:n]
        self.M = FrameAverager(self.t, frames.start_s, frames.end_s)
        self.cb_fm = self.M(self.cb)
        self.n_tissue = n_tissue

    def curve(self, K1, k2, k3=0.0, k4=0.0, vB=0.0, delay_s=0.0) -> np.ndarray:
        """Frame means (Bq/mL) for the given parameters (units as in :data:`PARAM_UNITS`)."""
        if delay_s:
            cp = shift_curve(self.t, self.cp, delay_s)
            cb_fm = self.M(shift_curve(self.t, self.cb, delay_s))
        else:
            cp, cb_fm = self.cp, self.cb_fm
        amps, rates = tcm_rates(K1, k2, k3 if self.n_tissue == 2 else 0.0, k4)
        ct = multi_exp_conv(cp, self.dt, amps, rates)
        return (1.0 - vB) * self.M(ct) + vB * cb_fm


def _vt(p: dict[str, float], n_tissue: int) -> float:
    if n_tissue == 1:
        return p["K1"] / p["k2"]
    return p["K1"] / p["k2"] * (1.0 + p["k3"] / p["k4"])


def _vt_grad(p: dict[str, float], n_tissue: int) -> dict[str, float]:
    K1, k2 = p["K1"], p["k2"]
    if n_tissue == 1:
        return {"K1": 1 / k2, "k2": -K1 / k2 ** 2}
    k3, k4 = p["k3"], p["k4"]
    vt = _vt(p, 2)
    return {"K1": vt / K1, "k2": -vt / k2, "k3": K1 / (k2 * k4), "k4": -K1 * k3 / (k2 * k4 ** 2)}


def _pick_starts(resid, n_tissue: int, fit_vb: bool, fit_delay: bool, lo, hi, n: int) -> list[np.ndarray]:
    """``n`` starting points of the local optimiser: kinfitr's ``twotcm`` start (K1 = k2 = k3 =
    k4 = 0.1, vB 0.05) and the ``n - 1`` best points of a coarse log grid of (K1, k2[, k3, k4],
    vB) by residual (one model evaluation each), so that the best of several basins is found."""
    K1s, k2s = (0.03, 0.1, 0.3), (0.03, 0.1, 0.3, 1.0)
    k3s, k4s = (0.01, 0.05, 0.2), (0.01, 0.05, 0.2)
    kin = ([(a, b, c, d) for a in K1s for b in k2s for c in k3s for d in k4s] if n_tissue == 2
           else [(a, b) for a in K1s for b in np.geomspace(0.01, 1.0, 8)])
    vbs = (0.02, 0.05, 0.1) if fit_vb else ()
    grid = [g + ((v,) if fit_vb else ()) + ((0.0,) if fit_delay else ())
            for g in kin for v in (vbs or (None,))]
    first = (_KINFITR_START_2[:n_tissue * 2] + ((_KINFITR_START_VB,) if fit_vb else ())
             + ((0.0,) if fit_delay else ()))
    cands = []
    for g in grid:
        x0 = np.clip(np.array(g, float), lo + 1e-9, hi - 1e-9)
        r = resid(x0)
        c = float(r @ r)
        if np.isfinite(c):
            cands.append((c, x0))
    cands.sort(key=lambda z: z[0])
    return [np.clip(np.array(first, float), lo + 1e-9, hi - 1e-9)] + [x for _, x in cands[:n - 1]]


def _at_bound(name: str, x: float) -> str | None:
    """``"lower"``/``"upper"`` when ``x`` is within :data:`_BOUND_TOL` of a bound of ``name``."""
    lo, hi = BOUNDS[name]
    span = hi - lo
    if (x <= lo * (1 + _BOUND_TOL) + 1e-12) if lo > 0 else (x <= lo + _BOUND_TOL * span):
        return "lower"
    if x >= hi - _BOUND_TOL * (hi if lo >= 0 else span):
        return "upper"
    return None


def quality_flags(params: dict[str, float], se_vt: float, free: list[str],
                  max_vt_rel_se: float | None = 0.25) -> list[str]:
    """Why a converged 1TCM/2TCM fit is not to be trusted (empty list: trusted).

    Parameters
    ----------
    params : dict
        Fitted parameters (units as in :data:`PARAM_UNITS`), including ``VT`` (mL/cm3).
    se_vt : float
        Standard error of VT (mL/cm3; delta method on the fit covariance), NaN when unknown.
    free : list of str
        The parameters that were fitted (fixed ones cannot sit at a bound).
    max_vt_rel_se : float or None
        Largest SE(VT)/VT of a trusted fit (fraction); None disables the check.

    Returns
    -------
    list of str
        ``"<param>_at_bound"`` for a rate constant or the delay within 1 % of a bound (and vB at
        its upper limit; vB = 0 is the physical limit, reported as a warning only),
        ``"vt_not_positive"``, ``"se_vt_<N>pct"`` when SE(VT)/VT > ``max_vt_rel_se``,
        ``"se_vt_unknown"`` when the SE could not be computed.
    """
    flags = []
    for k in free:
        side = _at_bound(k, params[k])
        if side is None or (k == "vB" and side == "lower"):
            continue
        flags.append("delay_at_bound" if k == "delay_s" else f"{k}_at_bound")
    vt = params["VT"]
    if not vt > 0:
        flags.append("vt_not_positive")
    elif max_vt_rel_se is not None:
        if not np.isfinite(se_vt):
            flags.append("se_vt_unknown")
        elif se_vt / vt > max_vt_rel_se:
            flags.append(f"se_vt_{min(round(100 * se_vt / vt), 9999)}pct")
    return flags


def fit_tcm(frames: Frames, tac_bqml, plasma: PlasmaInput, n_tissue: Literal[1, 2] = 2,
            weights=None, vb: float | None = 0.05, fit_delay: bool = False, n_starts: int = 4,
            fit_end_s: float | None = None, model: TCMModel | None = None,
            max_vt_rel_se: float | None = 0.25) -> FitResult:
    """Fit a 1TCM or 2TCM (+ blood volume, optional delay) by bounded weighted least squares.

    Parameters
    ----------
    frames : Frames
        Frame timing (s).
    tac_bqml : array_like, shape (f,)
        Regional frame-mean concentrations (Bq/mL, decay corrected).
    plasma : PlasmaInput
        Parent plasma input and whole blood (Bq/mL on a uniform grid, s).
    n_tissue : {1, 2}
        1TCM (K1, k2) or 2TCM (K1, k2, k3, k4).
    weights : array_like, optional
        Frame weights (default uniform).
    vb : float or None
        Fixed blood volume fraction, or None to fit it (bounded 0..0.3).
    fit_delay : bool
        Also fit a delay (s, bounded +-30 s) of the input relative to the TAC.
    n_starts : int
        Number of starting points tried: kinfitr's start and the best points of a coarse grid
        (the best weighted SSR wins).
    fit_end_s : float, optional
        Use only frames ending at or before this time (s).
    model : TCMModel, optional
        A precomputed model for these frames and input (reused across regions for speed).
    max_vt_rel_se : float or None
        Largest SE(VT)/VT of a trusted fit (``KineticsSettings.max_vt_rel_se``); None: no check.

    Returns
    -------
    FitResult
        Parameters K1, k2, (k3, k4), vB, (delay_s), VT (and VND, BPND for the 2TCM), their
        standard errors (from the Jacobian; VT by the delta method), the fitted frame means, WSSR
        and AIC. NaN with a reason when the fit fails. ``flags`` holds the quality verdict
        (:func:`quality_flags`; ``["not_converged"]`` for a failed fit).
    """
    name = "2tcm" if n_tissue == 2 else "1tcm"
    kin = ["K1", "k2", "k3", "k4"] if n_tissue == 2 else ["K1", "k2"]
    free = kin + (["vB"] if vb is None else []) + (["delay_s"] if fit_delay else [])
    derived = ["VT"] + (["VND", "BPND"] if n_tissue == 2 else [])
    all_names = free + (["vB"] if vb is not None else []) + derived
    y = np.asarray(tac_bqml, dtype=float)
    w = np.ones(frames.n) if weights is None else np.asarray(weights, dtype=float)
    use = np.isfinite(y) & (w > 0)
    if fit_end_s is not None:
        use &= frames.end_s <= fit_end_s + 1e-6
    if use.sum() <= len(free):
        return _failure(name, all_names, f"too few frames ({int(use.sum())}) for "
                        f"{len(free)} parameters")
    if not np.any(y[use] > 0):
        return _failure(name, all_names, "TAC is zero or negative everywhere")
    if plasma.t_s[-1] < frames.end_s[use][-1]:
        return _failure(name, all_names, "plasma input ends before the last frame")
    m = model if model is not None else TCMModel(plasma, frames, n_tissue)
    sw = np.sqrt(w[use])
    scale = float(np.nanmax(np.abs(y[use])))
    yu = y[use] / scale

    def unpack(x):
        p = dict(zip(free, x))
        if vb is not None:
            p["vB"] = vb
        return p

    def resid(x):
        p = unpack(x)
        c = m.curve(p["K1"], p["k2"], p.get("k3", 0.0), p.get("k4", 0.0), p["vB"], p.get("delay_s", 0.0))
        return sw * (c[use] / scale - yu)

    lo = np.array([BOUNDS[n][0] for n in free])
    hi = np.array([BOUNDS[n][1] for n in free])
    starts = _pick_starts(resid, n_tissue, vb is None, fit_delay, lo, hi, max(1, n_starts))
    best = None
    last_msg = ""
    calls = [library_call(STEP_KINETICS, "SciPy", "scipy.optimize.least_squares(method='trf')",
                          count=len(starts))]
    for x0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac",
                                  max_nfev=400 * len(free), ftol=1e-10, xtol=1e-10)
        except (ValueError, FloatingPointError) as exc:
            last_msg = str(exc)
            continue
        if not np.all(np.isfinite(r.fun)):
            last_msg = "non-finite residuals"
            continue
        if r.status <= 0:
            last_msg = r.message
            continue
        if best is None or r.cost < best.cost:
            best = r
    if best is None:
        fail = _failure(name, all_names, f"optimiser did not converge: {last_msg}")
        fail.provenance = calls
        return fail
    p = unpack(best.x)
    res_w = best.fun * scale  # weighted residuals in Bq/mL
    wssr = float(res_w @ res_w)
    n_used, n_par = int(use.sum()), len(free)
    # standard errors from the Jacobian (in scaled units)
    se = {k: math.nan for k in all_names}
    J = best.jac * scale
    dof = n_used - n_par
    if dof > 0:
        try:
            cov = np.linalg.pinv(J.T @ J) * (wssr / dof)
            d = np.sqrt(np.clip(np.diag(cov), 0, None))
            se.update({k: float(v) for k, v in zip(free, d)})
            g = _vt_grad(p, n_tissue)
            gv = np.array([g.get(k, 0.0) for k in free])
            se["VT"] = float(np.sqrt(max(gv @ cov @ gv, 0.0)))
        except np.linalg.LinAlgError:
            pass
    params = {k: float(p[k]) for k in free}
    params["vB"] = float(p["vB"])
    params["VT"] = float(_vt(p, n_tissue))
    if n_tissue == 2:
        params["VND"] = float(p["K1"] / p["k2"])
        params["BPND"] = float(p["k3"] / p["k4"])
    fitted = np.full(frames.n, np.nan)
    fitted[:] = m.curve(p["K1"], p["k2"], p.get("k3", 0.0), p.get("k4", 0.0), p["vB"], p.get("delay_s", 0.0))
    warn = [f"{k} at bound" for k in free if _at_bound(k, params[k])]
    if not np.isfinite(params["VT"]):
        fail = _failure(name, all_names, "VT not finite (k2 or k4 at 0)")
        fail.provenance = calls
        return fail
    return FitResult(model=name, params=params, se=se, fitted=fitted.tolist(), wssr=wssr,
                     aic=aic(wssr, n_used, n_par), n_frames=n_used, n_params=n_par, converged=True,
                     warnings=warn, flags=quality_flags(params, se["VT"], free, max_vt_rel_se),
                     provenance=calls)


def _failure(name: str, names: list[str], reason: str) -> FitResult:
    """A failed compartment fit: NaN parameters, the reason, and the ``not_converged`` flag."""
    fail = FitResult.failure(name, names, reason)
    fail.flags = ["not_converged"]
    return fail
