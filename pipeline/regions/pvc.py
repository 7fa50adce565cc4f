"""Partial-volume correction (PVC) of regional TACs: region-based GTM and RBV.

Both assume the PET is the true activity, piecewise constant over a partition of the field of
view into regions, blurred by an isotropic Gaussian point-spread function (PSF) of known FWHM
(mm). All images are on the PET grid; voxel sizes come from the PET affine (mm).

* GTM (Rousset et al., J Nucl Med 1998): with ``w_j`` the blurred indicator of region j, the
  geometric transfer matrix ``G[i, j]`` is the mean of ``w_j`` over region i; observed regional
  means ``t = G c``; the corrected means ``c`` are solved for all frames at once.
* RBV (Thomas et al., Eur J Nucl Med Mol Imaging 2011): voxelwise
  ``pet * S / blur(S)`` with ``S = sum_j c_j 1_j`` the GTM synthetic image, per frame.

Concentrations are Bq/mL; times are seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from gliaflow.pipeline.config import TACSettings
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline._utils import load_image
from gliaflow.pipeline.provenance import STEP_PVC, gliaflow_call, library_call
from gliaflow.pipeline.regions.tacs import compact_labels, iter_frames, region_index

__all__ = [
    "FWHM_TO_SIGMA",
    "PSF_SIDECAR_KEYS",
    "resolve_psf_fwhm",
    "voxel_sizes_mm",
    "gtm_matrix",
    "gtm_pvc",
    "rbv_frames",
]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# Sidecar keys that may carry the scanner resolution (FWHM, mm); BIDS has no standard key.
PSF_SIDECAR_KEYS = ("PSFFWHM", "PSF_FWHM", "SpatialResolutionFWHM", "ScannerResolutionFWHM",
                    "ImageResolutionFWHM")


def resolve_psf_fwhm(settings: TACSettings, sidecar: Mapping[str, Any] | None = None
                     ) -> tuple[float, str]:
    """The PSF FWHM (mm) to use and where it came from.

    Order: ``settings.psf_fwhm_mm``; a sidecar key in :data:`PSF_SIDECAR_KEYS` (a number, or a
    list of 1 or 3 numbers whose mean is used); ``settings.default_psf_fwhm_mm``.

    Returns
    -------
    (fwhm_mm, source) with source one of ``'config'``, ``'sidecar:<key>'``, ``'default'``.
    """
    if settings.psf_fwhm_mm is not None:
        return float(settings.psf_fwhm_mm), "config"
    for key in PSF_SIDECAR_KEYS:
        if sidecar is not None and key in sidecar and sidecar[key] is not None:
            try:
                val = np.atleast_1d(np.asarray(sidecar[key], dtype=float))
            except (TypeError, ValueError):
                val = np.array([np.nan])
            if val.size in (1, 3) and np.all(np.isfinite(val)) and np.all(val > 0):
                return float(val.mean()), f"sidecar:{key}"
            raise ImageError(f"PSF FWHM must be 1 or 3 positive numbers (mm), got {sidecar[key]!r}",
                             field=key)
    return float(settings.default_psf_fwhm_mm), "default"


def voxel_sizes_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) from a 4x4 affine (column norms; valid for oblique grids)."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def _sigma_vox(fwhm_mm: float | Sequence[float], vox_mm: np.ndarray) -> np.ndarray:
    fwhm = np.broadcast_to(np.asarray(fwhm_mm, float), (3,))
    return fwhm * FWHM_TO_SIGMA / np.asarray(vox_mm, float)


def _load_labels(label_img) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(label_img, np.ndarray):
        return np.rint(label_img).astype(np.int64), None
    img = load_image(label_img, "label image")
    return np.rint(np.asarray(img.dataobj)).astype(np.int64), img.affine


def gtm_matrix(
    labels: np.ndarray,
    indices: Sequence[int],
    fwhm_mm: float | Sequence[float],
    voxel_size_mm: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Geometric transfer matrix of a label image.

    Parameters
    ----------
    labels : integer array (X, Y, Z)
        Partition on the PET grid.
    indices : sequence of int
        Label values of the regions, in matrix order (voxels with other values are ignored).
    fwhm_mm : float or 3 floats
        PSF FWHM (mm).
    voxel_size_mm : 3 floats
        Voxel sizes (mm).

    Returns
    -------
    (G, counts)
        ``G[i, j]``: mean over region i of the blurred indicator of region j (dimensionless);
        ``counts``: voxels per region.
    """
    sigma = _sigma_vox(fwhm_mm, np.asarray(voxel_size_mm, float))
    compact = compact_labels(labels, indices).reshape(labels.shape)
    r = len(indices)
    counts = np.bincount(compact.ravel(), minlength=r + 1)[:r].astype(float)
    g = np.zeros((r, r))
    margin = np.ceil(4 * sigma).astype(int) + 1
    objs = ndimage.find_objects(np.where(compact < r, compact + 1, 0).astype(np.int32), max_label=r)
    for j, sl in enumerate(objs):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                    for s, m, n in zip(sl, margin, labels.shape))
        sub = compact[box]
        ind = (sub == j).astype(np.float32)
        blurred = ndimage.gaussian_filter(ind, sigma, mode="constant", truncate=4.0)
        g[:, j] = np.bincount(sub.ravel(), weights=blurred.ravel(), minlength=r + 1)[:r]
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(counts[:, None] > 0, g / counts[:, None], 0.0)
    return g, counts


def gtm_pvc(
    pet_4d,
    label_img,
    labels_table: pd.DataFrame,
    fwhm_mm: float,
    frame_start_s: Sequence[float],
    frame_end_s: Sequence[float],
    masks: Mapping[str, Any] | None = None,
    voxel_size_mm: Sequence[float] | None = None,
    include_background: bool = True,
    units_to_bqml: float = 1.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Region-based GTM partial-volume correction of regional TACs.

    Parameters
    ----------
    pet_4d : path, nibabel image or array (X, Y, Z, T)
        Dynamic PET (read frame by frame).
    label_img : path, nibabel image or integer array (X, Y, Z)
        Partition on the PET grid. For a sound GTM it should cover every tissue with activity
        (atlas regions plus e.g. white matter and CSF as extra labels).
    labels_table : DataFrame
        Columns ``index``, ``name``: the regions reported (and used in the GTM).
    fwhm_mm : float
        PSF FWHM (mm), see :func:`resolve_psf_fwhm`.
    frame_start_s, frame_end_s : sequence of float
        Frame times (s).
    masks : mapping name -> boolean image/array, optional
        Extra (overlapping) regions such as reference regions. Their corrected value is the
        overlap-weighted mean of the corrected values of the GTM regions they overlap.
    voxel_size_mm : 3 floats, optional
        Needed when images are plain arrays; otherwise read from the PET affine.
    include_background : bool
        Treat voxels labelled 0 (or with a label not in the table) as one more GTM region, so
        activity outside the labelled regions is modelled (not reported).
    units_to_bqml : float
        Factor converting PET values to Bq/mL.

    Returns
    -------
    (tacs, info)
        ``tacs``: ``frame_start``, ``frame_end`` (s) and one corrected column per region and mask
        (Bq/mL). ``info``: ``fwhm_mm``, ``condition_number``, ``n_regions``,
        ``empty_regions``, ``gtm_diagonal`` (per region: fraction of its signal that stays),
        ``provenance`` (records of what ran: this function, the PSF blurs of the region
        indicators with scipy.ndimage.gaussian_filter, the numpy.linalg.solve of the GTM).
    """
    if not (np.isfinite(fwhm_mm) and fwhm_mm > 0):
        raise ImageError(f"PSF FWHM must be a positive number of mm, got {fwhm_mm!r}",
                         field="psf_fwhm_mm")
    pet_img = pet_4d if isinstance(pet_4d, np.ndarray) else load_image(pet_4d, "PET")
    shape = pet_img.shape
    n_frames = shape[3] if len(shape) == 4 else 1
    src = str(pet_4d) if isinstance(pet_4d, (str, Path)) else None
    labels, lab_aff = _load_labels(label_img)
    if labels.shape != tuple(shape[:3]):
        raise ImageError(f"label image shape {labels.shape} differs from PET grid "
                         f"{tuple(shape[:3])}", file=src)
    if voxel_size_mm is None:
        aff = lab_aff if isinstance(pet_img, np.ndarray) else pet_img.affine
        if aff is None:
            raise ImageError("voxel_size_mm is needed when images are plain arrays")
        voxel_size_mm = voxel_sizes_mm(aff)
    fs = np.asarray(frame_start_s, float)
    fe = np.asarray(frame_end_s, float)
    if fs.shape != (n_frames,) or fe.shape != (n_frames,):
        raise ImageError(f"PET has {n_frames} frame(s) but {fs.size} start / {fe.size} end times",
                         file=src, field="FrameTimesStart")

    regions = region_index(labels_table)
    indices = [i for i, _ in regions]
    names = [n for _, n in regions]
    work = labels.copy()
    gtm_indices = list(indices)
    bg_value = None
    if include_background:
        bg_value = int(min(min(indices, default=0), 0) - 1)
        known = np.isin(work, indices)
        work[~known] = bg_value
        gtm_indices.append(bg_value)
    g, counts = gtm_matrix(work, gtm_indices, fwhm_mm, voxel_size_mm)
    present = counts > 0
    gp = g[np.ix_(present, present)]
    cond = float(np.linalg.cond(gp)) if gp.size else float("nan")

    # Observed regional means per frame (R x F), streamed.
    compact = compact_labels(work, gtm_indices)
    r = len(gtm_indices)
    obs = np.zeros((r, n_frames))
    for t, frame in enumerate(iter_frames(pet_4d, units_to_bqml)):
        f = frame.ravel()
        if not np.all(np.isfinite(f)):
            raise ImageError(f"frame {t} contains NaN or infinite values", file=src)
        obs[:, t] = np.bincount(compact, weights=f, minlength=r + 1)[:r]
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = obs / counts[:, None]
    corr = np.full((r, n_frames), np.nan)
    if gp.size:
        corr[present] = np.linalg.solve(gp, obs[present])

    cols = {n: corr[k] for k, n in enumerate(names)}
    for name, m in (masks or {}).items():
        arr = m if isinstance(m, np.ndarray) else np.asarray(load_image(m, f"mask {name}").dataobj)
        if arr.shape != labels.shape:
            raise ImageError(f"mask {name!r} shape {arr.shape} differs from PET grid {labels.shape}")
        overlap = np.bincount(compact[np.asarray(arr).ravel() > 0.5], minlength=r + 1)[:r]
        if bg_value is not None:
            overlap[-1] = 0  # the background region is not tissue
        overlap = overlap * present
        if overlap.sum() == 0:
            cols[name] = np.full(n_frames, np.nan)
        else:
            cols[name] = (overlap[:, None] * np.nan_to_num(corr)).sum(0) / overlap.sum()
    df = pd.DataFrame(cols)
    df.insert(0, "frame_end", fe)
    df.insert(0, "frame_start", fs)
    info = {
        "method": "gtm",
        "fwhm_mm": float(fwhm_mm),
        "condition_number": cond,
        "n_regions": int(present[: len(indices)].sum()),
        "empty_regions": [n for n, p in zip(names, present[: len(indices)]) if not p],
        "gtm_diagonal": {n: float(g[k, k]) for k, n in enumerate(names) if present[k]},
        "provenance": [gliaflow_call(STEP_PVC, "gliaflow.pipeline.regions.pvc.gtm_pvc")]
        + ([library_call(STEP_PVC, "SciPy", "scipy.ndimage.gaussian_filter", count=int(present.sum())),
            library_call(STEP_PVC, "NumPy", "numpy.linalg.solve")] if gp.size else []),
    }
    return df, info


def rbv_frames(
    pet_4d,
    label_img,
    gtm_values: np.ndarray,
    indices: Sequence[int],
    fwhm_mm: float,
    voxel_size_mm: Sequence[float] | None = None,
    units_to_bqml: float = 1.0,
    eps: float = 1e-6,
):
    """Region-based voxelwise (RBV) correction, yielding one corrected frame (Bq/mL) at a time.

    Parameters
    ----------
    pet_4d : path, nibabel image or array (X, Y, Z, T)
        Dynamic PET.
    label_img : integer image/array on the PET grid
        The GTM partition (labels not in ``indices`` are treated as zero activity).
    gtm_values : array (R, T)
        GTM-corrected region values (Bq/mL) in the order of ``indices``.
    indices : sequence of int
        Label values matching the rows of ``gtm_values``.
    fwhm_mm : float
        PSF FWHM (mm).
    """
    labels, lab_aff = _load_labels(label_img)
    if voxel_size_mm is None:
        aff = lab_aff if isinstance(pet_4d, np.ndarray) else load_image(pet_4d, "PET").affine
        voxel_size_mm = voxel_sizes_mm(aff)
    sigma = _sigma_vox(fwhm_mm, np.asarray(voxel_size_mm, float))
    compact = compact_labels(labels, indices).reshape(labels.shape)
    vals = np.asarray(gtm_values, float)
    for t, frame in enumerate(iter_frames(pet_4d, units_to_bqml)):
        lut = np.append(np.nan_to_num(vals[:, t]), 0.0).astype(np.float32)
        synth = lut[compact]
        blurred = ndimage.gaussian_filter(synth, sigma, mode="constant", truncate=4.0)
        ratio = np.where(np.abs(blurred) > eps * max(np.abs(lut).max(), eps),
                         synth / np.where(blurred == 0, 1, blurred), 0.0)
        yield (frame * ratio).astype(np.float32)
