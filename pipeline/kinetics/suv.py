"""Static uptake measures: SUV and SUVR over a time window (regional or voxelwise).

Units: times s (windows given in minutes, as users write them), concentrations Bq/mL, injected
dose Bq, body weight kg; SUV in g/mL (tissue density 1 g/mL assumed), SUVR unitless.
"""
from __future__ import annotations

import numpy as np

from gliaflow.pipeline.errors import ModelError
from gliaflow.pipeline.kinetics.base import FitResult, Frames

__all__ = ["window_weights", "window_mean", "suv", "suvr", "fit_suv", "fit_suvr"]


def window_weights(frames: Frames, window_min: tuple[float, float]) -> np.ndarray:
    """Weights (f,) summing to 1 that average frame means over ``window_min`` (minutes).

    Each frame counts by its overlap with the window (partial frames count in proportion), so
    the result is the time-average of the (piecewise-constant) TAC over the covered window.

    Raises
    ------
    ModelError
        When no frame overlaps the window.
    """
    a, b = 60.0 * window_min[0], 60.0 * window_min[1]
    ov = np.clip(np.minimum(frames.end_s, b) - np.maximum(frames.start_s, a), 0.0, None)
    tot = ov.sum()
    if tot <= 0:
        raise ModelError(f"no frame overlaps the window {window_min[0]:g}-{window_min[1]:g} min "
                         f"(scan {frames.start_s[0] / 60:.1f}-{frames.end_s[-1] / 60:.1f} min)",
                         field="suvr_window_min")
    return ov / tot


def window_mean(tacs, frames: Frames, window_min: tuple[float, float]) -> np.ndarray:
    """Time-average (Bq/mL) of TAC(s) (shape (f,) or (V, f)) over ``window_min`` (minutes)."""
    return np.asarray(tacs) @ window_weights(frames, window_min).astype(np.asarray(tacs).dtype)


def suv(tacs, frames: Frames, window_min: tuple[float, float], injected_bq: float,
        body_weight_kg: float) -> np.ndarray:
    """SUV (g/mL) = window mean (Bq/mL) / (injected dose (Bq) / body weight (g)).

    Raises
    ------
    ModelError
        When the dose or weight is missing or not positive.
    """
    if not (injected_bq and injected_bq > 0):
        raise ModelError("SUV needs a positive injected dose (Bq)", field="InjectedRadioactivity")
    if not (body_weight_kg and body_weight_kg > 0):
        raise ModelError("SUV needs a positive body weight (kg)", field="weight")
    return window_mean(tacs, frames, window_min) / (injected_bq / (body_weight_kg * 1000.0))


def suvr(tacs, ref_tac, frames: Frames, window_min: tuple[float, float]) -> np.ndarray:
    """SUVR = window mean of the target(s) / window mean of the reference TAC (unitless).

    ``tacs`` (f,) or (V, f); ``ref_tac`` (f,). NaN where the reference mean is not positive.
    """
    w = window_weights(frames, window_min)
    ref = float(np.asarray(ref_tac, float) @ w)
    if not ref > 0:
        return np.full(np.shape(tacs)[:-1], np.nan) if np.ndim(tacs) > 1 else np.float64(np.nan)
    return (np.asarray(tacs) @ w.astype(np.asarray(tacs).dtype)) / ref


def fit_suv(frames: Frames, tac_bqml, window_min=(60.0, 90.0), injected_bq: float | None = None,
            body_weight_kg: float | None = None) -> FitResult:
    """Regional SUV as a :class:`FitResult` (parameter ``SUV`` g/mL, ``mean_bqml``)."""
    try:
        w = window_weights(frames, window_min)
    except ModelError as exc:
        return FitResult.failure("suv", ["SUV", "mean_bqml"], exc.message)
    m = float(np.asarray(tac_bqml, float) @ w)
    if not (injected_bq and injected_bq > 0 and body_weight_kg and body_weight_kg > 0):
        return FitResult(model="suv", params={"SUV": np.nan, "mean_bqml": m}, converged=False,
                         reason="injected dose or body weight missing")
    return FitResult(model="suv", params={"SUV": m / (injected_bq / (body_weight_kg * 1000.0)),
                                          "mean_bqml": m}, n_frames=int((w > 0).sum()))


def fit_suvr(frames: Frames, tac_bqml, ref_tac_bqml, window_min=(60.0, 90.0)) -> FitResult:
    """Regional SUVR against a reference TAC over ``window_min`` (parameter ``SUVR``)."""
    try:
        w = window_weights(frames, window_min)
    except ModelError as exc:
        return FitResult.failure("suvr", ["SUVR"], exc.message)
    ref = float(np.asarray(ref_tac_bqml, float) @ w)
    if not ref > 0:
        return FitResult.failure("suvr", ["SUVR"], "reference region mean is not positive")
    return FitResult(model="suvr", params={"SUVR": float(np.asarray(tac_bqml, float) @ w) / ref},
                     n_frames=int((w > 0).sum()))
