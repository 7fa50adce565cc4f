"""Fit every configured model to a regional TAC table: one row per region, one column per parameter.

Input table (BIDS derivative form): ``frame_start``, ``frame_end`` (s from injection) and one
column per region (Bq/mL, decay corrected). Output columns are ``<model>_<parameter>`` (and
``_se``, ``_wssr``, ``_aic``, ``_converged``, ``_reason``) unless a single model is fitted with
``prefix=False``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from gliaflow.pipeline.blood.tables import PlasmaInput
from gliaflow.pipeline.config import KineticsSettings
from gliaflow.pipeline.errors import ModelError
from gliaflow.pipeline.kinetics.base import FitResult, Frames, frame_weights
from gliaflow.pipeline.kinetics.compartment import TCMModel, fit_tcm
from gliaflow.pipeline.kinetics.graphical import fit_logan, fit_ma1
from gliaflow.pipeline.kinetics.names import PLASMA_MODELS, REFERENCE_MODELS
from gliaflow.pipeline.kinetics.reftissue import fit_mrtm, fit_mrtm2, fit_srtm
from gliaflow.pipeline.kinetics.suv import fit_suv, fit_suvr
from gliaflow.pipeline.provenance import STEP_KINETICS, ToolCall, gliaflow_call, merge_calls

__all__ = ["split_tac_table", "table_weights", "fit_regional_results", "fit_regional", "results_table",
           "results_provenance", "PLASMA_MODELS", "REFERENCE_MODELS", "MODEL_INTERFACES"]

# model -> the gliaflow function that fits it (the interface of its provenance record)
_K = "gliaflow.pipeline.kinetics."
MODEL_INTERFACES = {
    "suv": _K + "suv.fit_suv", "suvr": _K + "suv.fit_suvr",
    "1tcm": _K + "compartment.fit_tcm(n_tissue=1)", "2tcm": _K + "compartment.fit_tcm(n_tissue=2)",
    "logan": _K + "graphical.fit_logan", "ma1": _K + "graphical.fit_ma1",
    "srtm": _K + "reftissue.fit_srtm", "mrtm2": _K + "reftissue.fit_mrtm2",
    "mrtm": _K + "reftissue.fit_mrtm",
}


def split_tac_table(tacs: pd.DataFrame, source: str = "TAC table") -> tuple[Frames, pd.DataFrame]:
    """Frames and region columns of a TAC table; zero-duration (padding) frames are dropped.

    Accepts ``frame_start``/``frame_end`` (s) or ``frame_start_s`` with ``frame_dur_s``; a
    ``weights`` column is not a region (read it with :func:`table_weights`).

    Raises
    ------
    ModelError
        Missing frame columns, bad timing, no region column, non-numeric values.
    """
    cols = list(tacs.columns)
    if "frame_start" in cols and "frame_end" in cols:
        fs, fe = tacs["frame_start"].to_numpy(float), tacs["frame_end"].to_numpy(float)
        drop = {"frame_start", "frame_end", "frame_mid", "frame_duration", "weights"}
    elif "frame_start_s" in cols and "frame_dur_s" in cols:
        fs = tacs["frame_start_s"].to_numpy(float)
        fe = fs + tacs["frame_dur_s"].to_numpy(float)
        drop = {"frame_start_s", "frame_dur_s", "frame_mid_s", "weights"}
    else:
        raise ModelError("needs 'frame_start' and 'frame_end' columns (s)", file=source,
                         field="frame_start")
    keep = fe > fs
    regions = [c for c in cols if c not in drop]
    if not regions:
        raise ModelError("no region columns", file=source)
    vals = tacs.loc[keep, regions].apply(pd.to_numeric, errors="coerce")
    if len(vals.columns) == 0 or vals.isna().all().all():
        raise ModelError("region columns hold no numbers", file=source)
    frames = Frames.from_arrays(fs[keep], fe[keep], source=source)
    return frames, vals.reset_index(drop=True)


def table_weights(tacs: pd.DataFrame) -> np.ndarray | None:
    """The ``weights`` column of a TAC table for the frames kept by :func:`split_tac_table`
    (None when absent)."""
    if "weights" not in tacs.columns:
        return None
    if "frame_end" in tacs.columns:
        keep = tacs["frame_end"].to_numpy(float) > tacs["frame_start"].to_numpy(float)
    else:
        keep = tacs["frame_dur_s"].to_numpy(float) > 0
    return pd.to_numeric(tacs["weights"], errors="coerce").to_numpy(float)[keep]


def _k2prime(frames, tacs: pd.DataFrame, ref: np.ndarray, s: KineticsSettings, w
             ) -> tuple[float, str, list[ToolCall]]:
    """k2' (1/min) for MRTM2: given, or the median of MRTM fits; with how it was obtained and the
    records of the fits that ran."""
    if s.k2prime_per_min:
        return s.k2prime_per_min, "given", []
    calls: list[ToolCall] = []
    names = [s.k2prime_region] if s.k2prime_region else [c for c in tacs.columns if c != s.reference_region]
    vals = []
    for n in names:
        if n not in tacs.columns:
            raise ModelError(f"k2prime_region {n!r} is not a column of the TAC table", field="k2prime_region")
        r = fit_mrtm(frames, tacs[n].to_numpy(float), ref, weights=w)
        calls += [gliaflow_call(STEP_KINETICS, MODEL_INTERFACES["mrtm"])] + r.provenance
        if r.converged and r.params["k2prime"] > 0:
            vals.append(r.params["k2prime"])
    if not vals:
        return float("nan"), "MRTM failed for every region", calls
    return float(np.median(vals)), f"MRTM on {', '.join(names)}", calls


def fit_regional_results(tacs: pd.DataFrame, plasma: PlasmaInput | None = None,
                         settings: KineticsSettings | None = None,
                         models: Iterable[str] | None = None, injected_bq: float | None = None,
                         body_weight_kg: float | None = None, source: str = "TAC table",
                         weights=None) -> dict[str, dict[str, FitResult]]:
    """Fit models to every region of a TAC table.

    Parameters
    ----------
    tacs : DataFrame
        ``frame_start``, ``frame_end`` (s) and one column per region (Bq/mL).
    plasma : PlasmaInput, optional
        Parent plasma input (delay already applied); required for 1TCM/2TCM/Logan/MA1.
    settings : KineticsSettings
        Models, windows, t*, weights, vB, starts, reference region.
    models : list of str, optional
        Overrides ``settings.models``.
    injected_bq, body_weight_kg : float, optional
        For SUV (Bq, kg); SUV is NaN with a reason when missing.
    weights : array_like, shape (f,), optional
        Frame weights used instead of ``settings.weights`` (e.g. supplied with the TACs), for
        the frames left after dropping zero-duration ones.

    Returns
    -------
    dict
        model -> region -> FitResult.

    Raises
    ------
    ModelError
        A plasma model without a plasma input, or a reference model whose reference region is
        not a column.
    """
    s = settings or KineticsSettings()
    models = list(models or s.models)
    frames, vals = split_tac_table(tacs, source)
    regions = list(vals.columns)
    need_ref = [m for m in models if m in REFERENCE_MODELS]
    if need_ref and s.reference_region not in regions:
        raise ModelError(f"reference region {s.reference_region!r} (needed by {', '.join(need_ref)}) "
                         f"is not a column; columns: {', '.join(regions)}", file=source,
                         field="reference_region")
    need_pl = [m for m in models if m in PLASMA_MODELS]
    if need_pl and plasma is None:
        raise ModelError(f"models {', '.join(need_pl)} need an arterial plasma input (--blood)",
                         file=source, field="models")
    ref = vals[s.reference_region].to_numpy(float) if need_ref else None
    out: dict[str, dict[str, FitResult]] = {m: {} for m in models}
    tcm_models: dict[int, TCMModel] = {}
    vb_graph = s.vb if (s.graphical_blood_correction and s.vb) else None
    k2p = None
    fit_end_s = 60.0 * s.fit_end_min if s.fit_end_min else None
    for reg in regions:
        y = vals[reg].to_numpy(float)
        w = (np.asarray(weights, float) if weights is not None
             else frame_weights(frames, s.weights, tac=y, half_life_s=s.half_life_s))
        for m in models:
            if not np.any(np.isfinite(y)):
                out[m][reg] = FitResult.failure(m, [], "TAC is empty (all n/a)")
                continue
            if m == "suv":
                r = fit_suv(frames, y, s.suvr_window_min, injected_bq, body_weight_kg)
            elif m == "suvr":
                r = fit_suvr(frames, y, ref, s.suvr_window_min)
            elif m in ("1tcm", "2tcm"):
                nt = 1 if m == "1tcm" else 2
                if nt not in tcm_models:
                    tcm_models[nt] = TCMModel(plasma, frames, nt)
                r = fit_tcm(frames, y, plasma, nt, w, vb=s.vb, fit_delay=s.fit_delay,
                            n_starts=s.n_starts, fit_end_s=fit_end_s, model=tcm_models[nt],
                            max_vt_rel_se=s.max_vt_rel_se)
            elif m == "logan":
                r = fit_logan(frames, y, plasma, s.tstar_min, s.tstar_frames, w, vb=vb_graph)
            elif m == "ma1":
                r = fit_ma1(frames, y, plasma, s.tstar_min, s.tstar_frames, w, vb=vb_graph)
            elif m == "srtm":
                r = fit_srtm(frames, y, ref, w)
            elif m == "mrtm2":
                k2p_calls: list[ToolCall] = []
                if k2p is None:
                    *k2p, k2p_calls = _k2prime(frames, vals, ref, s, w)
                r = fit_mrtm2(frames, y, ref, k2p[0], weights=w)
                r.warnings.append(f"k2' {k2p[0]:.4g}/min ({k2p[1]})")
                r.provenance = k2p_calls + r.provenance
            else:
                raise ModelError(f"unknown model {m!r}", field="models")
            r.provenance.insert(0, gliaflow_call(STEP_KINETICS, MODEL_INTERFACES[m]))
            out[m][reg] = r
    return out


def results_provenance(results: dict[str, dict[str, FitResult]]) -> list[ToolCall]:
    """What the fits of :func:`fit_regional_results` ran (gliaflow's fitting functions and the
    library routines they called), repeated calls folded into counts."""
    return merge_calls(c for per_region in results.values() for r in per_region.values()
                       for c in r.provenance)


def results_table(results: dict[str, dict[str, FitResult]], prefix: bool = True) -> pd.DataFrame:
    """One row per region, one column per (model, parameter) from :func:`fit_regional_results`."""
    rows: dict[str, dict] = {}
    for m, per_region in results.items():
        for reg, r in per_region.items():
            rows.setdefault(reg, {"region": reg}).update(r.row(m if prefix else None))
    return pd.DataFrame(list(rows.values()))


def curves_table(results: dict[str, dict[str, FitResult]], tacs: pd.DataFrame) -> pd.DataFrame:
    """Measured and fitted frame values in long form, for plots and residual checks.

    Columns: ``model``, ``region``, ``frame_start``, ``frame_end`` (s), ``measured``, ``fitted``
    (Bq/mL; ``fitted`` is NaN for frames a model does not use, e.g. before t* or after fit end).
    Models without a curve (graphical methods, SUV) are left out.
    """
    frames, _ = split_tac_table(tacs)
    parts = []
    for m, per_region in results.items():
        for reg, r in per_region.items():
            if r.fitted is None or reg not in tacs.columns:
                continue
            parts.append(pd.DataFrame({
                "model": m, "region": reg, "frame_start": frames.start_s, "frame_end": frames.end_s,
                "measured": pd.to_numeric(tacs[reg], errors="coerce").to_numpy()[:frames.n],
                "fitted": np.asarray(r.fitted, dtype=float)}))
    cols = ["model", "region", "frame_start", "frame_end", "measured", "fitted"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def fit_regional(tacs: pd.DataFrame, plasma: PlasmaInput | None = None,
                 settings: KineticsSettings | None = None, models: Iterable[str] | None = None,
                 injected_bq: float | None = None, body_weight_kg: float | None = None,
                 prefix: bool = True, source: str = "TAC table") -> pd.DataFrame:
    """:func:`fit_regional_results` as a table (see :func:`results_table`)."""
    return results_table(fit_regional_results(tacs, plasma, settings, models, injected_bq,
                                              body_weight_kg, source), prefix=prefix)
