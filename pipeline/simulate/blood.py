"""Phantom blood: a [11C]PBR28-like arterial input, parent fraction, whole blood, and samples.

Units: time in seconds from injection start; concentrations in Bq/mL (decay-corrected to
injection); rates in 1/min.

Shape (after Collste et al. 2016 / the kinfitr PBR28 data): the bolus arrives ~15-25 s after
injection, the parent plasma peaks at ~1 min (~100 kBq/mL for ~400 MBq), falls to a few kBq/mL by
10 min and ~0.5-1 kBq/mL at 60-90 min. The parent fraction follows a Hill-type decrease
``pf(t) = 1 - (1 - pf_inf) * t^h / (t^h + t50^h)`` (t in min after arrival) to ~20-30 % at
90 min; total plasma = parent / pf; whole blood = total plasma / r(t) with the plasma-to-whole-
blood ratio ``r(t) = r0 + (r_inf - r0) (1 - exp(-t / 8 min))`` going from ~1.05 to ~1.4.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gliaflow.pipeline.kinetics.forward import feng_input

__all__ = [
    "HALF_LIFE_C11_S",
    "FRAME_DURATIONS_S",
    "frame_timing",
    "InputParams",
    "random_input",
    "blood_curves",
    "autosampler_samples",
    "manual_samples",
    "MANUAL_TIMES_S",
]

#: Carbon-11 half-life (s).
HALF_LIFE_C11_S = 20.4 * 60.0

#: 37 frames, ~93 min: 8x10 s, 5x20 s, 4x30 s, 4x60 s, 4x180 s, 12x360 s (the HRRT PBR28 protocol).
FRAME_DURATIONS_S = [10.0] * 8 + [20.0] * 5 + [30.0] * 4 + [60.0] * 4 + [180.0] * 4 + [360.0] * 12

#: Manual arterial sampling times (s).
MANUAL_TIMES_S = [120, 240, 360, 480, 600, 900, 1200, 1800, 2400, 3000, 3600, 4200, 4800, 5400]
#: Manual samples without an HPLC parent-fraction measurement (written as n/a).
_NO_HPLC_S = (480, 900)


def frame_timing(durations_s=None) -> tuple[np.ndarray, np.ndarray]:
    """Frame start and end times (s from injection), contiguous from 0."""
    d = np.asarray(FRAME_DURATIONS_S if durations_s is None else durations_s, dtype=float)
    end = np.cumsum(d)
    return end - d, end


class InputParams(dict):
    """Parameters of one subject's input (a dict, JSON-able)."""


def random_input(rng: np.random.Generator, dose_mbq: float) -> InputParams:
    """Draw a subject's input-function parameters.

    Feng amplitudes are given per injected 400 MBq and scaled by ``dose_mbq``; ``a1`` in
    Bq/mL/min, ``a2``/``a3`` in Bq/mL, ``l1..l3`` in 1/min, ``t0_s`` in s.
    """
    s = dose_mbq / 400.0
    j = lambda sd: float(np.exp(rng.normal(0.0, sd)))  # noqa: E731
    return InputParams(
        a1=1.05e6 * s * j(0.15), a2=22e3 * s * j(0.15), a3=1.4e3 * s * j(0.2),
        l1=4.0 * j(0.1), l2=0.45 * j(0.1), l3=0.012 * j(0.2),
        t0_s=float(rng.uniform(15.0, 25.0)),
        pf_inf=float(rng.uniform(0.17, 0.24)), pf_t50_min=float(rng.uniform(7.0, 10.0)),
        pf_hill=float(rng.uniform(1.8, 2.2)),
        r0=float(rng.uniform(1.0, 1.1)), r_inf=float(rng.uniform(1.3, 1.45)),
        dispersion_tau_s=2.6,
    )


def blood_curves(p: InputParams, t_s: np.ndarray) -> dict[str, np.ndarray]:
    """True blood curves on ``t_s`` (s): ``parent`` (metabolite-corrected plasma), ``plasma``
    (total plasma), ``whole_blood`` (Bq/mL) and ``parent_fraction`` (0..1)."""
    t = np.asarray(t_s, float)
    parent = np.clip(feng_input(t, p["a1"], p["a2"], p["a3"], p["l1"], p["l2"], p["l3"], p["t0_s"]), 0, None)
    tau = np.clip((t - p["t0_s"]) / 60.0, 0.0, None)
    h = p["pf_hill"]
    pf = 1.0 - (1.0 - p["pf_inf"]) * tau ** h / (tau ** h + p["pf_t50_min"] ** h)
    plasma = parent / pf
    ratio = p["r0"] + (p["r_inf"] - p["r0"]) * (1.0 - np.exp(-tau / 8.0))
    whole = plasma / ratio
    return {"parent": parent, "plasma": plasma, "whole_blood": whole, "parent_fraction": pf}


def _disperse(t: np.ndarray, y: np.ndarray, tau_s: float) -> np.ndarray:
    """Convolve with ``exp(-t/tau)/tau`` (catheter dispersion) on a uniform grid."""
    from scipy.signal import lfilter

    dt = float(t[1] - t[0])
    a = np.exp(-dt / tau_s)
    return lfilter([1.0 - a], [1.0, -a], y)


def autosampler_samples(rng: np.random.Generator, p: InputParams, t_grid_s: np.ndarray,
                        curves: dict[str, np.ndarray], duration_s: float = 600.0) -> pd.DataFrame:
    """Continuous whole-blood samples (1 s steps, first ``duration_s`` s), dispersed by the
    catheter (``dispersion_tau_s``, not corrected) with counting noise. Bq/mL."""
    keep = t_grid_s <= duration_s
    t = t_grid_s[keep]
    wb = _disperse(t, curves["whole_blood"][keep], p["dispersion_tau_s"])
    sd = np.sqrt(0.02 ** 2 * wb ** 2 + 5.0 * np.abs(wb)) + 5.0  # ~2 % at the peak, ~4 % late
    return pd.DataFrame({"time": t, "whole_blood_radioactivity": wb + rng.normal(0, 1, t.size) * sd})


def manual_samples(rng: np.random.Generator, t_grid_s: np.ndarray, curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """Discrete samples: total plasma and whole blood (Bq/mL, 3 % noise), parent fraction
    (absolute noise 0.015; NaN where no HPLC was run)."""
    t = np.asarray(MANUAL_TIMES_S, float)
    pl = np.interp(t, t_grid_s, curves["plasma"]) * (1 + rng.normal(0, 0.03, t.size))
    wb = np.interp(t, t_grid_s, curves["whole_blood"]) * (1 + rng.normal(0, 0.03, t.size))
    pf = np.clip(np.interp(t, t_grid_s, curves["parent_fraction"]) + rng.normal(0, 0.015, t.size), 0.01, 1)
    pf[np.isin(t, _NO_HPLC_S)] = np.nan
    return pd.DataFrame({"time": t, "plasma_radioactivity": pl, "whole_blood_radioactivity": wb,
                         "metabolite_parent_fraction": pf})
