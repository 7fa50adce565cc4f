"""Arterial input function: from BIDS blood recordings to a metabolite-corrected plasma input.

Internal units: time in seconds from injection, concentrations in Bq/mL, fractions 0..1. The
inputs are tables with the columns of :meth:`gliaflow.pipeline.io.metadata.BloodRecording.table`
(``time_s``, ``plasma_bqml``, ``whole_blood_bqml``, ``parent_fraction``; NaN where absent).
The package's modules: :mod:`.tables` (the tables and :class:`PlasmaInput`),
:mod:`.parent_fraction` (models), this module (assembly), :mod:`.delay` (blood delay).

Processing (:func:`plasma_input_from_tables`):

1. each table is checked (:func:`~gliaflow.pipeline.blood.tables.clean_blood_table`): rows out
   of time order are sorted; duplicate times within one recording are averaged; negative
   concentrations down to ``negative_tolerance`` x the recording's peak are noise and set to 0,
   larger ones are an error;
   a parent fraction above 1 (or below 0) by more than 0.05 is an error, smaller excursions are
   clipped to 0..1;
2. continuous (autosampler) recordings are optionally dispersion corrected
   (``c + tau dc/dt``) and provide the whole-blood curve over their time span; discrete (manual)
   samples provide it afterwards;
3. total plasma = whole blood x plasma-to-whole-blood ratio, with the ratio from the samples that
   have both (``interpolate``: linear in time, constant beyond the samples; ``constant``: the
   median; ``linear``: a straight line in time). With no whole blood at all, the plasma samples are
   used directly and also stand in for whole blood (noted);
4. parent fraction (:mod:`gliaflow.pipeline.blood.parent_fraction`): ``hill``,
   ``exponential``, ``power`` model fitted to the samples, ``raw`` linear interpolation, or
   ``none`` (the plasma is already the parent input, fraction 1);
5. everything is interpolated linearly onto a uniform grid from 0 s (0 activity at injection
   when the first sample is later) to the scan end; a curve ending before the scan end is
   extended with a mono-exponential fitted to its last third when the missing part is at most
   ``max_extrapolation_fraction`` of the scan, and is an error otherwise;
6. delay (:func:`gliaflow.pipeline.blood.delay.apply_delay`, separately, since fitting needs a
   TAC): fixed ``delay_s``, or fitted (:func:`~gliaflow.pipeline.blood.delay.estimate_delay`)
   against a whole-brain TAC (the ``delay_region`` column of the TAC table) with a 1TCM + vB on
   the first ``delay_fit_end_min`` minutes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from gliaflow.pipeline.blood.parent_fraction import PF_MODELS, fit_parent_fraction, parent_fraction_curve
from gliaflow.pipeline.blood.tables import PlasmaInput, clean_blood_table
from gliaflow.pipeline.config import BloodSettings
from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.provenance import STEP_PLASMA, ToolCall, gliaflow_call, library_call

__all__ = [
    "dispersion_correct",
    "plasma_input_from_tables",
    "plasma_input_from_files",
    "plasma_input_from_recordings",
    "read_blood_recordings",
    "blood_settings_from_sidecars",
]


def _is_continuous(label: str, t: np.ndarray) -> bool:
    if re.search(r"auto|contin|twilite|pump", label, re.I):
        return True
    if re.search(r"manual|discrete", label, re.I):
        return False
    return t.size >= 30 and float(np.median(np.diff(t))) <= 5.0



def dispersion_correct(t_s, c, tau_s: float) -> np.ndarray:
    """Correct a continuously sampled curve for the dispersion of the sampling line.

    ``c_true = c + tau dc/dt`` (single-exponential dispersion kernel with time constant ``tau``,
    s); the derivative is taken on a 3-sample running mean to limit noise amplification.
    Negative results are set to 0.
    """
    t = np.asarray(t_s, dtype=float)
    y = np.asarray(c, dtype=float)
    if tau_s is None or tau_s <= 0 or y.size < 3:
        return y.copy()
    sm = np.convolve(np.pad(y, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return np.maximum(y + tau_s * np.gradient(sm, t), 0.0)


def _tail_extend(grid: np.ndarray, t: np.ndarray, y: np.ndarray, notes: list[str], what: str,
                 t_end_data: float) -> np.ndarray:
    """Values on ``grid`` beyond ``t_end_data`` from a mono-exponential fit to the last third."""
    out = np.interp(grid, t, y)
    beyond = grid > t_end_data
    if not beyond.any():
        return out
    sel = (t >= t[0] + (t_end_data - t[0]) * 2 / 3) & (y > 0)
    if sel.sum() >= 3:
        slope, icpt = np.polyfit(t[sel], np.log(y[sel]), 1)
        slope = min(slope, 0.0)
        out[beyond] = np.exp(icpt + slope * grid[beyond])
        notes.append(f"{what} extrapolated from {t_end_data:.0f} s to {grid[-1]:.0f} s "
                     f"(mono-exponential, rate {abs(slope) * 60:.3g}/min)")
    else:
        notes.append(f"{what} held constant from {t_end_data:.0f} s to {grid[-1]:.0f} s")
    return out


def _on_grid(grid: np.ndarray, t: np.ndarray, y: np.ndarray, what: str, notes: list[str]) -> np.ndarray:
    """Samples (s, Bq/mL) on ``grid``: 0 at injection when they start later, extended beyond
    their end (:func:`_tail_extend`)."""
    t0 = np.concatenate([[0.0], t]) if t[0] > 0 else t
    y0 = np.concatenate([[0.0], y]) if t[0] > 0 else y
    return _tail_extend(grid, t0, y0, notes, what, float(t[-1]))


def _pooled(cleaned: Sequence[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite values of ``column`` from every recording, with their times (s), time-sorted."""
    t = np.concatenate([tab["time_s"].to_numpy()[np.isfinite(tab[column].to_numpy())] for tab in cleaned])
    y = np.concatenate([tab[column].to_numpy()[np.isfinite(tab[column].to_numpy())] for tab in cleaned])
    o = np.argsort(t, kind="stable")
    return t[o], y[o]


def _whole_blood_samples(cleaned: Sequence[pd.DataFrame], is_cont: Sequence[bool],
                         sources: Sequence[str], tau_s: float | None,
                         notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Whole blood (s, Bq/mL): continuous recordings (dispersion corrected with ``tau_s``) over
    their span, then discrete samples after it; equal times averaged."""
    wb_t, wb_y, cont_end = [], [], -np.inf
    for tab, cont, src in zip(cleaned, is_cont, sources):
        v = tab["whole_blood_bqml"].to_numpy()
        ok = np.isfinite(v)
        if cont and ok.sum() >= 3:
            tt = tab["time_s"].to_numpy()[ok]
            yy = v[ok]
            if tau_s:
                yy = dispersion_correct(tt, yy, tau_s)
                notes.append(f"{src}: dispersion corrected (tau {tau_s:g} s)")
            wb_t.append(tt)
            wb_y.append(yy)
            cont_end = max(cont_end, tt[-1])
    for tab, cont in zip(cleaned, is_cont):
        v = tab["whole_blood_bqml"].to_numpy()
        tt = tab["time_s"].to_numpy()
        ok = np.isfinite(v) & (tt > cont_end) if not cont else np.zeros_like(v, bool)
        wb_t.append(tt[ok])
        wb_y.append(v[ok])
    wb_t = np.concatenate(wb_t) if wb_t else np.empty(0)
    wb_y = np.concatenate(wb_y) if wb_y else np.empty(0)
    order = np.argsort(wb_t, kind="stable")
    wb_t, wb_y = wb_t[order], wb_y[order]
    if wb_t.size:
        wb = pd.DataFrame({"t": wb_t, "y": wb_y}).groupby("t", as_index=False).mean()
        wb_t, wb_y = wb["t"].to_numpy(), wb["y"].to_numpy()
    return wb_t, wb_y


def _ratio_samples(cleaned: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """Plasma-to-whole-blood ratios (unitless) of the samples that have both, with their times
    (s), time-sorted."""
    pair_t, pair_r = [], []
    for tab in cleaned:
        p, w = tab["plasma_bqml"].to_numpy(), tab["whole_blood_bqml"].to_numpy()
        ok = np.isfinite(p) & np.isfinite(w) & (w > 0) & (p > 0)
        pair_t.append(tab["time_s"].to_numpy()[ok])
        pair_r.append(p[ok] / w[ok])
    pair_t, pair_r = np.concatenate(pair_t), np.concatenate(pair_r)
    o = np.argsort(pair_t, kind="stable")
    return pair_t[o], pair_r[o]


def _input_grid(data_end: float, scan_end_s: float | None, s: BloodSettings,
                sources: Sequence[str]) -> np.ndarray:
    """Uniform grid (s) from 0 to max(data end, scan end), step ``s.grid_step_s``.

    Raises
    ------
    BloodDataError
        The samples end before the scan by more than ``s.max_extrapolation_fraction`` of it.
    """
    end = max(data_end, float(scan_end_s or 0.0))
    step = s.grid_step_s
    grid = np.arange(0.0, end + step * 0.5, step)
    if grid[-1] < end - 1e-9:
        grid = np.append(grid, grid[-1] + step)
    if scan_end_s and data_end < scan_end_s:
        missing = (scan_end_s - data_end) / scan_end_s
        if missing > s.max_extrapolation_fraction:
            raise BloodDataError(
                f"blood curve ends at {data_end:.0f} s, the scan at {scan_end_s:.0f} s "
                f"({missing:.0%} of the scan missing, more than max_extrapolation_fraction "
                f"{s.max_extrapolation_fraction:.0%})", file=", ".join(sources), field="time")
    return grid


def _note_gaps(curves: Sequence[tuple[str, np.ndarray]], notes: list[str]) -> None:
    """Note the largest gap between samples (s) of each curve when it exceeds 15 min and 30 % of
    the curve's span (it is bridged by linear interpolation)."""
    for what, tt in curves:
        if tt.size > 2:
            gaps = np.diff(tt)
            big = np.argmax(gaps)
            if gaps[big] > max(900.0, 0.3 * (tt[-1] - tt[0])):
                notes.append(f"{what}: gap of {gaps[big]:.0f} s between samples at {tt[big]:.0f} s "
                             f"and {tt[big + 1]:.0f} s (linear interpolation across it)")


def _plasma_and_blood_on_grid(grid: np.ndarray, wb: tuple[np.ndarray, np.ndarray],
                              pl: tuple[np.ndarray, np.ndarray], pairs: tuple[np.ndarray, np.ndarray],
                              ratio_model: str, sources: Sequence[str],
                              notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Total plasma and whole blood (Bq/mL) on ``grid``.

    With whole blood and at least one paired sample: plasma = whole blood x the ratio
    (``ratio_model``: ``constant`` median, ``linear`` in time, else ``interpolate``); otherwise
    the plasma samples interpolated directly (standing in for whole blood when there is none).
    """
    (wb_t, wb_y), (pl_t, pl_y), (pair_t, pair_r) = wb, pl, pairs
    if wb_t.size >= 2 and pair_t.size >= 1:
        wb_g = _on_grid(grid, wb_t, wb_y, "whole blood", notes)
        if ratio_model == "constant" or pair_t.size < 2:
            ratio_g = np.full_like(grid, float(np.median(pair_r)))
        elif ratio_model == "linear":
            b1, b0 = np.polyfit(pair_t, pair_r, 1)
            ratio_g = np.clip(b0 + b1 * grid, 0.05, None)
        else:
            ratio_g = np.interp(grid, pair_t, pair_r)
        return wb_g * ratio_g, wb_g
    if pl_t.size >= 2:
        pl_g = _on_grid(grid, pl_t, pl_y, "plasma", notes)
        if wb_t.size >= 2:
            wb_g = _on_grid(grid, wb_t, wb_y, "whole blood", notes)
            notes.append("no paired plasma/whole-blood samples: plasma interpolated directly")
        else:
            wb_g = pl_g.copy()
            notes.append("no whole blood: the plasma curve stands in for whole blood (vB term)")
        return pl_g, wb_g
    raise BloodDataError("plasma needs either >= 2 plasma samples or whole blood with at least "
                         "one paired plasma sample", file=", ".join(sources),
                         field="plasma_radioactivity")


def _parent_fraction_on_grid(grid: np.ndarray, pf_t: np.ndarray, pf_y: np.ndarray, model: str,
                             sources: Sequence[str],
                             notes: list[str], calls: list[ToolCall]) -> tuple[np.ndarray, dict[str, float]]:
    """Parent fraction (0..1) on ``grid`` from the samples (s, fraction) with ``model``, and the
    fitted parameters (empty for ``raw`` and ``none``). A fitted model adds its records to
    ``calls``."""
    if model == "none":
        if pf_t.size:
            notes.append("parent-fraction samples ignored (parent_fraction_model 'none': the "
                         "plasma is taken as the parent input)")
        return np.ones_like(grid), {}
    if pf_t.size == 0:
        raise BloodDataError(f"parent_fraction_model is {model!r} but no recording has "
                             "metabolite_parent_fraction values (use 'none' for an already "
                             "metabolite-corrected input)", file=", ".join(sources),
                             field="metabolite_parent_fraction")
    if model == "raw":
        return parent_fraction_curve(grid, "raw", samples=(pf_t, pf_y)), {}
    params = fit_parent_fraction(pf_t, pf_y, model, source=", ".join(sources))
    calls += [gliaflow_call(STEP_PLASMA, "gliaflow.pipeline.blood.parent_fraction.fit_parent_fraction"
                            f"(model='{model}')"),
              library_call(STEP_PLASMA, "SciPy", "scipy.optimize.curve_fit",
                           count=len(PF_MODELS[model][4]))]  # one fit per start
    return parent_fraction_curve(grid, model, params), params


def plasma_input_from_tables(tables: Sequence[pd.DataFrame], settings: BloodSettings | None = None,
                             scan_end_s: float | None = None, labels: Sequence[str] | None = None,
                             sources: Sequence[str] | None = None,
                             continuous: Sequence[bool] | None = None) -> PlasmaInput:
    """Build the metabolite-corrected plasma input from one or more blood recordings.

    Parameters
    ----------
    tables : list of DataFrame
        One per recording, columns as in :meth:`BloodRecording.table` (s, Bq/mL, fraction).
    settings : BloodSettings
        Parent-fraction model, ratio model, dispersion, grid step, tolerances. No delay is applied
        here (fitting it needs a TAC): use :func:`gliaflow.pipeline.blood.delay.apply_delay`
        (fit or fixed) or :meth:`PlasmaInput.shifted`.
    scan_end_s : float, optional
        End of the last PET frame (s): the grid runs to max(scan end, last sample).
    labels : list of str, optional
        Recording labels (``autosampler``, ``manual``...) used to tell continuous from discrete.
    sources : list of str, optional
        File names for messages.
    continuous : list of bool, optional
        Override the continuous/discrete classification.

    Returns
    -------
    PlasmaInput

    Raises
    ------
    BloodDataError
        Unusable data, naming the file and column.
    """
    s = settings or BloodSettings()
    if not tables:
        raise BloodDataError("no blood recordings given")
    n = len(tables)
    sources = list(sources) if sources is not None else [f"blood recording {i + 1}" for i in range(n)]
    labels = list(labels) if labels is not None else [""] * n
    notes: list[str] = []
    cleaned = []
    for df, src in zip(tables, sources):
        tab, nn = clean_blood_table(df, src, s.negative_tolerance)
        cleaned.append(tab)
        notes += nn
    is_cont = list(continuous) if continuous is not None else [
        _is_continuous(lab, tab["time_s"].to_numpy()) for lab, tab in zip(labels, cleaned)]

    wb_t, wb_y = _whole_blood_samples(cleaned, is_cont, sources, s.dispersion_tau_s, notes)
    pl_t, pl_y = _pooled(cleaned, "plasma_bqml")
    pairs = _ratio_samples(cleaned)
    if wb_t.size == 0 and pl_t.size == 0:
        raise BloodDataError("no plasma or whole-blood concentrations in any recording",
                             file=", ".join(sources), field="plasma_radioactivity")
    data_end = max(float(wb_t[-1]) if wb_t.size else 0.0, float(pl_t[-1]) if pl_t.size else 0.0)
    grid = _input_grid(data_end, scan_end_s, s, sources)
    _note_gaps((("whole blood", wb_t), ("plasma", pl_t)), notes)
    pl_g, wb_g = _plasma_and_blood_on_grid(grid, (wb_t, wb_y), (pl_t, pl_y), pairs,
                                           s.plasma_to_blood, sources, notes)
    pf_t, pf_y = _pooled(cleaned, "parent_fraction")
    calls = [gliaflow_call(STEP_PLASMA, "gliaflow.pipeline.blood.input.plasma_input_from_tables")]
    pf_g, params = _parent_fraction_on_grid(grid, pf_t, pf_y, s.parent_fraction_model, sources, notes,
                                            calls)
    return PlasmaInput(t_s=grid, parent_bqml=pl_g * pf_g, whole_blood_bqml=wb_g,
                       plasma_total_bqml=pl_g, parent_fraction=pf_g,
                       parent_fraction_model=s.parent_fraction_model,
                       parent_fraction_params=params, plasma_to_blood=s.plasma_to_blood,
                       dispersion_tau_s=s.dispersion_tau_s, notes=notes, provenance=calls)


def read_blood_recordings(tsv_paths: Sequence[str | Path]) -> list:
    """Read BIDS blood TSV/JSON pairs (``*_recording-<label>_blood.tsv`` with a sidecar of the same
    name ending ``.json``) as :class:`~gliaflow.pipeline.io.metadata.BloodRecording` objects.

    Times are taken as seconds from injection (no PET sidecar is read, so ``InjectionStart`` is 0).

    Raises
    ------
    BloodDataError
        Unreadable table or sidecar, unknown units, naming the file and column.
    """
    from gliaflow.pipeline.io.metadata import BloodRecording

    recordings = []
    for p in tsv_paths:
        p = Path(p)
        js = p.with_name(p.name[: -len(".tsv")] + ".json") if p.name.endswith(".tsv") else p.with_suffix(".json")
        m = re.search(r"recording-([A-Za-z0-9]+)", p.name)
        recordings.append(BloodRecording.from_files(p, js, label=m.group(1) if m else p.stem))
    return recordings


def blood_settings_from_sidecars(settings: BloodSettings, recordings: Sequence) -> BloodSettings:
    """Blood settings for a set of recordings: when ``settings`` leave the dispersion constant unset,
    take it from a recording whose sidecar says its curve is not dispersion corrected (BIDS
    ``DispersionCorrected: false`` with ``DispersionConstant`` in s).

    Parameters
    ----------
    settings : BloodSettings
        The configured settings (returned unchanged when ``dispersion_tau_s`` is set).
    recordings : list of BloodRecording
        Their ``meta`` holds the (inherited) JSON sidecar.

    Returns
    -------
    BloodSettings
    """
    if settings.dispersion_tau_s is not None:
        return settings
    for r in recordings:
        meta = r.meta or {}
        tau = meta.get("DispersionConstant")
        if meta.get("DispersionCorrected") is False and isinstance(tau, (int, float)) and tau > 0:
            return settings.model_copy(update={"dispersion_tau_s": float(tau)})
    return settings


def plasma_input_from_recordings(recordings: Sequence, settings: BloodSettings | None = None,
                                 scan_end_s: float | None = None) -> PlasmaInput:
    """The plasma input (:func:`plasma_input_from_tables`, no delay) from
    :class:`~gliaflow.pipeline.io.metadata.BloodRecording` objects (times in s from injection,
    Bq/mL); the recording labels tell continuous from discrete data."""
    return plasma_input_from_tables([r.table() for r in recordings], settings, scan_end_s=scan_end_s,
                                    labels=[r.label for r in recordings],
                                    sources=[str(r.tsv) for r in recordings])


def plasma_input_from_files(tsv_paths: Sequence[str | Path], settings: BloodSettings | None = None,
                            scan_end_s: float | None = None) -> PlasmaInput:
    """Read BIDS blood TSV/JSON pairs (:func:`read_blood_recordings`) and build the plasma input
    (:func:`plasma_input_from_tables`)."""
    return plasma_input_from_recordings(read_blood_recordings(tsv_paths), settings, scan_end_s)
