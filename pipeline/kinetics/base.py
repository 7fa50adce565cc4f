"""Common pieces of every kinetic model: the fit result, frame bookkeeping and weights.

Units: times in seconds from injection, concentrations in Bq/mL, rate constants in 1/min,
K1 in mL/cm3/min, distribution volumes in mL/cm3.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gliaflow.pipeline.errors import ModelError
from gliaflow.pipeline.provenance import ToolCall

__all__ = [
    "FitResult",
    "Frames",
    "frame_weights",
    "FrameAverager",
    "aic",
    "C11_HALF_LIFE_S",
]

C11_HALF_LIFE_S = 20.364 * 60.0  # carbon-11 half-life (s)


class FitResult(BaseModel):
    """Result of one model fitted to one TAC.

    Attributes
    ----------
    model : str
        Model name (``"2tcm"``, ``"logan"``...).
    params : dict[str, float]
        Parameter values (units in :data:`PARAM_UNITS` of each model module; VT mL/cm3, rates 1/min).
        All NaN when the fit failed.
    se : dict[str, float]
        Standard errors where defined (NaN where not identifiable).
    fitted : list[float] or None
        Model curve at the frames (frame means, Bq/mL); NaN for frames not used.
    wssr : float
        Weighted sum of squared residuals over the frames used ((Bq/mL)^2 x weight).
    aic : float
        Akaike information criterion ``n ln(WSSR/n) + 2p``.
    n_frames : int
        Frames used in the fit.
    n_params : int
        Fitted parameters.
    converged : bool
        False when the fit failed; the parameters are then NaN and ``reason`` says why.
    reason : str
        Why the fit failed ("" on success).
    warnings : list[str]
        Non-fatal remarks (parameter at a bound, few frames, ...).
    flags : list[str] or None
        Quality verdict of models that have one (1TCM/2TCM): the reasons the fit is not to be
        trusted (``"k4_at_bound"``, ``"se_vt_42pct"``, ``"delay_at_bound"``,
        ``"not_converged"``); empty when the fit passed every check, None for models without a
        verdict. A flagged fit's metric is left out of the tidy metrics (NaN, written ``n/a``).
    provenance : list[ToolCall]
        Library routines the fit called and gliaflow's own fitting function (recorded by the
        code that made the call; see :mod:`gliaflow.pipeline.provenance`).
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    params: dict[str, float]
    se: dict[str, float] = Field(default_factory=dict)
    fitted: list[float] | None = None
    wssr: float = math.nan
    aic: float = math.nan
    n_frames: int = 0
    n_params: int = 0
    converged: bool = True
    reason: str = ""
    warnings: list[str] = Field(default_factory=list)
    flags: list[str] | None = None
    provenance: list[ToolCall] = Field(default_factory=list)

    @classmethod
    def failure(cls, model: str, names: list[str], reason: str) -> "FitResult":
        """A failed fit: every parameter NaN, ``converged`` False, ``reason`` set."""
        return cls(model=model, params={n: math.nan for n in names},
                   se={n: math.nan for n in names}, converged=False, reason=reason)

    @property
    def trusted(self) -> bool:
        """True when the fit converged and its quality verdict (if any) raised no flag."""
        return self.converged and not self.flags

    def row(self, prefix: str | None = None) -> dict[str, Any]:
        """Flat dict for a table: parameters, ``<p>_se``, ``wssr``, ``aic``, ``converged``, ``reason``,
        ``warnings`` and, for models with a quality verdict, ``flag`` (reasons joined by ``;``,
        empty when trusted).

        With ``prefix`` every key becomes ``<prefix>_<key>``.
        """
        out: dict[str, Any] = dict(self.params)
        for k, v in self.se.items():
            out[f"{k}_se"] = v
        out.update(wssr=self.wssr, aic=self.aic, converged=self.converged, reason=self.reason,
                   warnings="; ".join(self.warnings))
        if self.flags is not None:
            out["flag"] = ";".join(self.flags)
        if prefix:
            out = {f"{prefix}_{k}": v for k, v in out.items()}
        return out


class Frames(BaseModel):
    """Frame timing of a dynamic scan (s from injection).

    Zero-duration frames (padding rows) must be removed by the caller; frames must not overlap
    and must be in time order.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    start_s: np.ndarray
    end_s: np.ndarray

    @classmethod
    def from_arrays(cls, start_s, end_s, source: str | None = None) -> "Frames":
        """Validate and build. Raises :class:`ModelError` naming ``source`` on bad timing."""
        fs = np.asarray(start_s, dtype=float).ravel()
        fe = np.asarray(end_s, dtype=float).ravel()
        if fs.size != fe.size or fs.size == 0:
            raise ModelError("frame_start and frame_end must be non-empty and of equal length",
                             file=source, field="frame_start")
        if not (np.all(np.isfinite(fs)) and np.all(np.isfinite(fe))):
            raise ModelError("frame times must be finite", file=source, field="frame_start")
        if np.any(fe <= fs):
            raise ModelError("every frame must end after it starts", file=source, field="frame_end")
        if np.any(fs < 0):
            raise ModelError("frames must start at or after injection (t >= 0 s)", file=source,
                             field="frame_start")
        if np.any(fs[1:] < fe[:-1] - 1e-6):
            raise ModelError("frames overlap or are out of order", file=source, field="frame_start")
        return cls(start_s=fs, end_s=fe)

    @property
    def n(self) -> int:
        return int(self.start_s.size)

    @property
    def mid_s(self) -> np.ndarray:
        return 0.5 * (self.start_s + self.end_s)

    @property
    def duration_s(self) -> np.ndarray:
        return self.end_s - self.start_s

    def integral_matrix_mid(self) -> np.ndarray:
        """Matrix ``L`` (f x f) with ``L @ frame_means`` = integral of the TAC from 0 to each frame
        mid-time (Bq/mL x s).

        The TAC is taken as constant within a frame (its frame mean), linear across gaps
        between frames, and rising linearly from 0 at t = 0 to the first frame.
        """
        f = self.n
        L = np.zeros((f, f))
        dur = self.duration_s
        for k in range(f):
            L[k, :k] += dur[:k]
            L[k, k] += dur[k] / 2.0
        # gaps (including the one before the first frame, with 0 activity at t = 0)
        gap0 = self.start_s[0]
        L[:, 0] += gap0 / 2.0
        for j in range(1, f):
            g = self.start_s[j] - self.end_s[j - 1]
            if g > 0:
                L[j:, j - 1] += g / 2.0
                L[j:, j] += g / 2.0
        return L


class FrameAverager:
    """Fast frame means of curves on a uniform grid (same result as ``forward.frame_mean``).

    Parameters
    ----------
    t_grid_s : ndarray
        Uniform grid from 0 (s).
    frame_start_s, frame_end_s : array_like
        Frame boundaries (s).

    Calling the object on a curve of shape (n,) or (n, m) on the grid returns its frame means,
    shape (f,) or (f, m), via one cumulative sum and a gather.
    """

    def __init__(self, t_grid_s, frame_start_s, frame_end_s):
        t = np.asarray(t_grid_s, dtype=float)
        self.n = t.size
        self.dt = float(t[1] - t[0])
        b = np.concatenate([np.asarray(frame_start_s, float), np.asarray(frame_end_s, float)])
        x = np.clip((b - t[0]) / self.dt, 0, self.n - 1)
        k = np.minimum(np.floor(x).astype(int), self.n - 2)
        self.k = k
        self.a = x - k
        self.nf = b.size // 2
        self.dur = np.asarray(frame_end_s, float) - np.asarray(frame_start_s, float)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=float)[: self.n]
        cum = np.empty_like(y)
        cum[0] = 0.0
        np.cumsum(0.5 * (y[1:] + y[:-1]), axis=0, out=cum[1:])
        cum *= self.dt
        a = self.a if y.ndim == 1 else self.a[:, None]
        cb = (1 - a) * cum[self.k] + a * cum[self.k + 1]
        d = self.dur if y.ndim == 1 else self.dur[:, None]
        return (cb[self.nf:] - cb[: self.nf]) / d


def frame_weights(frames: Frames, scheme: Literal["uniform", "duration", "counts"] = "duration",
                  tac: np.ndarray | None = None, half_life_s: float = C11_HALF_LIFE_S) -> np.ndarray:
    """Frame weights for weighted least squares, normalised to a maximum of 1.

    Parameters
    ----------
    frames : Frames
        Frame timing (s).
    scheme : {"uniform", "duration", "counts"}
        ``uniform``: all 1; ``duration``: proportional to frame duration; ``counts``: inverse of the
        Poisson variance of a decay-corrected concentration,
        ``w = duration * exp(-ln2 t_mid / half_life) / C`` (C: the TAC, Bq/mL, floored at 1% of its
        maximum so empty early frames do not dominate).
    tac : ndarray, shape (f,) or (f, m), optional
        Decay-corrected TAC(s) (Bq/mL); required for ``counts``.
    half_life_s : float
        Radionuclide half-life (s); default carbon-11.

    Returns
    -------
    ndarray, shape (f,) or (f, m)
    """
    dur = frames.duration_s
    if scheme == "uniform":
        w = np.ones(frames.n)
    elif scheme == "duration":
        w = dur.copy()
    elif scheme == "counts":
        if tac is None:
            raise ModelError("counts-based weights need the TAC", field="weights")
        c = np.asarray(tac, dtype=float)
        decay = np.exp(-np.log(2) * frames.mid_s / half_life_s)
        cmax = np.nanmax(np.abs(c), axis=0)
        floor = np.where(cmax > 0, 0.01 * cmax, 1.0)
        cc = np.maximum(c, floor)
        shape = (-1,) + (1,) * (c.ndim - 1)
        w = (dur * decay).reshape(shape) / cc
    else:
        raise ModelError(f"unknown weighting scheme {scheme!r}", field="weights")
    m = np.nanmax(w, axis=0)
    return w / np.where(m > 0, m, 1.0)


def aic(wssr: float, n: int, p: int) -> float:
    """Akaike information criterion for weighted least squares: ``n ln(WSSR/n) + 2p``."""
    if not (n > 0 and wssr > 0 and np.isfinite(wssr)):
        return math.nan
    return float(n * math.log(wssr / n) + 2 * p)
