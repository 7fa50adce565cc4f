"""Regional quantification of one PET session: the one path from regional TACs and arterial blood
to regional kinetic parameters.

Both the kinetics stage (:func:`gliaflow.pipeline.session.stage_kinetics`) and the
``gliaflow kinetics`` command call :func:`quantify_regional`, with settings from the same pydantic
models (:class:`~gliaflow.pipeline.config.BloodSettings`,
:class:`~gliaflow.pipeline.config.KineticsSettings`), so the same TACs and blood give the same
tables. Steps:

1. model selection (:func:`select_models`): SUV needs the injected dose and the body weight, the
   plasma-input models (1TCM, 2TCM, Logan, MA1) need blood recordings; models that cannot run
   are skipped with the reason (an error when none is left);
2. plasma input (:func:`plasma_input_for_tacs`): the blood recordings (dispersion constant from
   their sidecars when the settings leave it unset) -> metabolite-corrected plasma on a fine grid
   -> blood delay, fixed or fitted to the ``blood.delay_region`` TAC (whole brain by default);
3. regional fits of every selected model to the TACs and, when given, to the PVC TACs (same
   plasma input, same models);
4. tidy metrics (:func:`tidy_metrics`): ``suvr``, ``vt_2tcm`` ... per region (``_pvc`` suffix for
   the PVC fits), NaN where a fit did not converge.

Units: time in s, activity concentrations in Bq/mL, injected dose in Bq, body weight in kg.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from gliaflow.pipeline.blood.delay import apply_delay
from gliaflow.pipeline.blood.input import blood_settings_from_sidecars, plasma_input_from_recordings
from gliaflow.pipeline.blood.tables import PlasmaInput
from gliaflow.pipeline.config import BloodSettings, KineticsSettings
from gliaflow.pipeline.errors import ModelError
from gliaflow.pipeline.kinetics.base import FitResult
from gliaflow.pipeline.kinetics.metrics import tidy_metrics
from gliaflow.pipeline.kinetics.names import METRIC_COLUMNS, PLASMA_MODELS, PVC_SUFFIX
from gliaflow.pipeline.kinetics.regional import (curves_table, fit_regional_results,
                                                 results_provenance, results_table, split_tac_table)
from gliaflow.pipeline.provenance import ToolCall, merge_calls

__all__ = ["METRIC_COLUMNS", "tidy_metrics", "select_models", "plasma_input_for_tacs",
           "RegionalKinetics", "quantify_regional"]

_NO_BLOOD = "no arterial blood recording (BIDS *_blood.tsv; --blood for gliaflow kinetics)"
_NO_SUV = "no injected dose or body weight (PET sidecar / participants.tsv; --dose, --body-weight)"


def select_models(models: Sequence[str], has_blood: bool, injected_bq: float | None,
                  body_weight_kg: float | None) -> tuple[list[str], dict[str, str]]:
    """The models that can run with the inputs at hand.

    Parameters
    ----------
    models : list of str
        Requested models (``KineticsSettings.models``).
    has_blood : bool
        Whether arterial blood recordings are available (plasma-input models).
    injected_bq, body_weight_kg : float or None
        Injected dose (Bq) and body weight (kg), both needed by SUV.

    Returns
    -------
    models : list of str
        The requested models that can run, in the requested order.
    skipped : dict
        Model -> reason, for the others.
    """
    skipped: dict[str, str] = {}
    for m in models:
        if m in PLASMA_MODELS and not has_blood:
            skipped[m] = _NO_BLOOD
        elif m == "suv" and (injected_bq is None or body_weight_kg is None):
            skipped[m] = _NO_SUV
    return [m for m in models if m not in skipped], skipped


def plasma_input_for_tacs(recordings: Sequence, settings: BloodSettings, tacs: pd.DataFrame,
                          source: str = "TAC table") -> tuple[PlasmaInput, BloodSettings, dict[str, Any]]:
    """Metabolite-corrected plasma input with its delay, for the frames of a TAC table.

    Parameters
    ----------
    recordings : list of BloodRecording
        The session's blood recordings (times in s from injection, Bq/mL).
    settings : BloodSettings
        Configured settings; a dispersion constant left unset is taken from the sidecars
        (:func:`~gliaflow.pipeline.blood.input.blood_settings_from_sidecars`).
    tacs : DataFrame
        ``frame_start``, ``frame_end`` (s) and one column per region (Bq/mL); with
        ``delay == "fit"`` the ``settings.delay_region`` column is the TAC the delay is fitted to.
    source : str
        The TAC file, for messages.

    Returns
    -------
    plasma : PlasmaInput
        Delay applied; its grid runs to the end of the last frame (or the last sample).
    settings : BloodSettings
        The settings used (dispersion constant filled in from the sidecars).
    delay_fit : dict
        ``region`` and the fit information of
        :func:`~gliaflow.pipeline.blood.delay.estimate_delay` (empty for a fixed delay).

    Raises
    ------
    ModelError
        ``delay == "fit"`` and the delay region is not a column of the TAC table.
    BloodDataError
        Unusable blood data.
    """
    frames, vals = split_tac_table(tacs, source)
    used = blood_settings_from_sidecars(settings, recordings)
    plasma = plasma_input_from_recordings(recordings, used, scan_end_s=float(frames.end_s[-1]))
    tac, info = None, {}
    if used.delay == "fit":
        region = used.delay_region
        if region not in vals.columns:
            raise ModelError(
                f"the blood delay is fitted to the {region!r} TAC, which is not a column (columns: "
                f"{', '.join(map(str, vals.columns))}); choose another region (blood.delay_region, "
                "--delay-region) or give a fixed delay (blood.delay: fixed, --blood-delay)",
                file=source, field="blood.delay_region")
        tac = vals[region].to_numpy(float)
        info["region"] = region
    plasma, fit = apply_delay(plasma, used, frames.start_s, frames.end_s, tac)
    info.update({k: float(v) for k, v in fit.items()})
    return plasma, used, info


@dataclass
class RegionalKinetics:
    """What :func:`quantify_regional` produced.

    Attributes
    ----------
    models : list of str
        Models fitted. ``skipped`` holds the others with the reason.
    plasma : PlasmaInput or None
        Plasma input (Bq/mL on a grid in s, delay applied); None without blood.
    blood_settings : BloodSettings or None
        Blood settings used (dispersion constant from the sidecars filled in); None without blood.
    delay_fit : dict
        Delay region and fit information (empty for a fixed delay or without blood).
    results, results_pvc : dict
        Model -> region -> FitResult, without and with PVC (``results_pvc`` None without PVC TACs).
    fits, fits_pvc : DataFrame
        One row per region, ``<model>_<parameter>`` columns (:func:`results_table`).
    curves : DataFrame
        Measured and fitted frame values, long form (:func:`curves_table`), without PVC.
    metrics : DataFrame
        Tidy metrics per region (``_pvc`` columns from the PVC fits).
    qc, flags
        QC record (delay, blood notes, skipped models, fits not converged) and flags.
    provenance : list of ToolCall
        What ran: the plasma input's records (its construction and delay fit) and the fits'
        (gliaflow's fitting functions and the library routines they called), repeated calls
        folded into counts.
    """

    models: list[str]
    skipped: dict[str, str]
    plasma: PlasmaInput | None
    blood_settings: BloodSettings | None
    delay_fit: dict[str, Any]
    results: dict[str, dict[str, FitResult]]
    fits: pd.DataFrame
    curves: pd.DataFrame
    metrics: pd.DataFrame
    results_pvc: dict[str, dict[str, FitResult]] | None = None
    fits_pvc: pd.DataFrame | None = None
    qc: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    provenance: list[ToolCall] = field(default_factory=list)


def quantify_regional(tacs: pd.DataFrame, recordings: Sequence = (),
                      blood: BloodSettings | None = None, kinetics: KineticsSettings | None = None,
                      injected_bq: float | None = None, body_weight_kg: float | None = None,
                      tacs_pvc: pd.DataFrame | None = None, weights=None,
                      source: str = "TAC table", source_pvc: str = "PVC TAC table") -> RegionalKinetics:
    """Plasma input, regional model fits (without and with PVC) and tidy metrics of one session.

    Parameters
    ----------
    tacs : DataFrame
        ``frame_start``, ``frame_end`` (s from injection) and one column per region (Bq/mL,
        decay corrected).
    recordings : list of BloodRecording
        Arterial blood recordings; none: the plasma-input models are skipped.
    blood, kinetics : BloodSettings, KineticsSettings
        Settings (defaults: the models' defaults); ``kinetics.models`` are the requested models.
    injected_bq, body_weight_kg : float, optional
        Injected dose (Bq) and body weight (kg) for SUV; SUV is skipped without both.
    tacs_pvc : DataFrame, optional
        Partial-volume corrected TACs (same frames and units), fitted with the same plasma input.
    weights : array_like, optional
        Frame weights supplied with the TACs (frames left after dropping zero-duration ones),
        used instead of ``kinetics.weights``.
    source, source_pvc : str
        The TAC files, for messages.

    Returns
    -------
    RegionalKinetics

    Raises
    ------
    ModelError
        No requested model can run, the delay region or the reference region is missing.
    BloodDataError
        Unusable blood data.
    """
    bs = blood or BloodSettings()
    ks = kinetics or KineticsSettings()
    models, skipped = select_models(ks.models, bool(recordings), injected_bq, body_weight_kg)
    if not models:
        raise ModelError("no kinetic model can run: " + "; ".join(f"{m}: {why}" for m, why in skipped.items()),
                         file=source, field="kinetics.models")
    qc: dict[str, Any] = {}
    flags: list[str] = []
    if skipped:
        qc["models_skipped"] = skipped
    if any(why == _NO_BLOOD for why in skipped.values()):
        flags.append("no_blood_data")
    plasma, used, delay_fit = None, None, {}
    if recordings:
        plasma, used, delay_fit = plasma_input_for_tacs(recordings, bs, tacs, source)
        if used.dispersion_tau_s != bs.dispersion_tau_s:
            qc["blood_dispersion_tau_s"] = used.dispersion_tau_s
        qc["blood_delay_s"] = float(plasma.delay_s)
        qc["blood_delay_fit"] = delay_fit
        qc["blood_notes"] = plasma.notes

    def fit(table: pd.DataFrame, src: str) -> dict[str, dict[str, FitResult]]:
        return fit_regional_results(table, plasma, ks, models=models, injected_bq=injected_bq,
                                    body_weight_kg=body_weight_kg, source=src, weights=weights)

    results = fit(tacs, source)
    fits = results_table(results)
    metrics = tidy_metrics(fits)
    calls = (plasma.provenance if plasma is not None else []) + results_provenance(results)
    results_pvc = fits_pvc = None
    if tacs_pvc is not None:
        results_pvc = fit(tacs_pvc, source_pvc)
        fits_pvc = results_table(results_pvc)
        metrics = metrics.merge(tidy_metrics(fits_pvc, PVC_SUFFIX), on="region", how="outer")
        calls += results_provenance(results_pvc)
    qc["fits_not_converged"] = {m: int(sum(not r.converged for r in results[m].values()))
                                for m in models}
    return RegionalKinetics(models=models, skipped=skipped, plasma=plasma, blood_settings=used,
                            delay_fit=delay_fit, results=results, fits=fits,
                            curves=curves_table(results, tacs), metrics=metrics,
                            results_pvc=results_pvc, fits_pvc=fits_pvc, qc=qc, flags=flags,
                            provenance=merge_calls(calls))
