"""A session's regional TACs, without and with partial-volume correction.

Joins :mod:`gliaflow.pipeline.regions.tacs` (extraction) and :mod:`gliaflow.pipeline.regions.pvc`
(GTM, RBV) for the labels_tacs stage; both lower modules stay independent of each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gliaflow.pipeline.provenance import STEP_PVC, STEP_TACS, gliaflow_call, library_call
from gliaflow.pipeline.regions.pvc import gtm_pvc, rbv_frames
from gliaflow.pipeline.regions.tacs import regional_tacs, tac_sanity, write_tacs

__all__ = ["session_tacs"]


def session_tacs(
    pet_4d,
    labels,
    frame_start_s: Sequence[float],
    frame_end_s: Sequence[float],
    pvc: str,
    fwhm_mm: float,
    out_tsv: str | Path,
    out_tsv_pvc: str | Path | None = None,
    units_to_bqml: float = 1.0,
    sources: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Regional TACs of one session without and (unless ``pvc == 'none'``) with PVC, written as
    BIDS TSV + JSON.

    Parameters
    ----------
    pet_4d : path or nibabel image
        Realigned dynamic PET (stored units; ``units_to_bqml`` converts to Bq/mL).
    labels : atlas.SessionLabels
        From :func:`gliaflow.pipeline.regions.atlas.session_labels` (PET-grid labels, GTM partition,
        reference masks).
    frame_start_s, frame_end_s : sequence of float
        Frame times (s).
    pvc : {'none', 'gtm', 'rbv'}
        Correction (TACSettings.pvc).
    fwhm_mm : float
        PSF FWHM (mm), see :func:`gliaflow.pipeline.regions.pvc.resolve_psf_fwhm`.
    out_tsv, out_tsv_pvc : path
        ``..._seg-<atlas>_tacs.tsv`` and ``..._seg-<atlas>_desc-pvc<method>_tacs.tsv``.

    Returns
    -------
    dict
        ``tacs`` / ``tacs_pvc`` (DataFrames), ``paths``, ``qc`` (:func:`tac_sanity` per table and
        the GTM information), ``provenance`` (ToolCall records of the extraction and the PVC).
    """
    raw = regional_tacs(pet_4d, labels.labels_pet, labels.table, frame_start_s, frame_end_s,
                        masks=labels.refs_pet, units_to_bqml=units_to_bqml)
    paths = {"tacs": write_tacs(raw, out_tsv, sources, extra={"PartialVolumeCorrection": "none"})[0]}
    calls = [gliaflow_call(STEP_TACS, "gliaflow.pipeline.regions.tacs.regional_tacs")]
    out: dict[str, Any] = {"tacs": raw, "paths": paths, "qc": {"tacs": tac_sanity(raw)},
                           "provenance": calls}
    if pvc == "none":
        return out
    if out_tsv_pvc is None:
        raise ValueError("out_tsv_pvc is needed when pvc is not 'none'")
    corr, info = gtm_pvc(pet_4d, labels.partition_pet, labels.partition_table, fwhm_mm,
                         frame_start_s, frame_end_s, masks=labels.refs_pet,
                         units_to_bqml=units_to_bqml)
    calls += info.pop("provenance")
    if pvc == "rbv":
        ptab = labels.partition_table
        vals = corr[list(ptab["name"])].to_numpy().T
        frames = list(rbv_frames(pet_4d, labels.partition_pet, vals, ptab["index"].tolist(),
                                 fwhm_mm, units_to_bqml=units_to_bqml))
        # rbv_frames blurs one synthetic image per frame
        calls += [gliaflow_call(STEP_PVC, "gliaflow.pipeline.regions.pvc.rbv_frames"),
                  library_call(STEP_PVC, "SciPy", "scipy.ndimage.gaussian_filter", count=len(frames)),
                  gliaflow_call(STEP_TACS, "gliaflow.pipeline.regions.tacs.regional_tacs")]
        corr = regional_tacs(np.stack(frames, axis=-1), np.asarray(labels.labels_pet.dataobj),
                             labels.table, frame_start_s, frame_end_s,
                             masks={k: np.asarray(v.dataobj) for k, v in labels.refs_pet.items()})
        info = {**info, "method": "rbv"}
    keep = ["frame_start", "frame_end"] + list(labels.table["name"]) + list(labels.refs_pet)
    corr = corr[keep]
    extra = {"PartialVolumeCorrection": info["method"].upper(), "PSFFWHM": fwhm_mm,
             "PSFFWHMUnits": "mm", "GTMConditionNumber": info["condition_number"]}
    paths["tacs_pvc"] = write_tacs(corr, out_tsv_pvc, sources, extra=extra)[0]
    out["tacs_pvc"] = corr
    out["qc"]["tacs_pvc"] = tac_sanity(corr)
    out["qc"]["pvc"] = {k: v for k, v in info.items() if k != "gtm_diagonal"}
    return out

