"""Regional time-activity curves (TACs) from a 4D PET and a label image.

Frames are read one at a time from the 4D NIfTI (nibabel array proxy), so memory stays at one
frame plus the label image. Concentrations are in Bq/mL (the PET is converted with
``units_to_bqml`` once, at the edge); times are seconds from injection.

The TSV follows PETPrep: ``<prefix>_seg-<atlas>[_desc-<desc>]_tacs.tsv`` with columns
``frame_start``, ``frame_end`` (s) and one column per region (Bq/mL), plus a JSON sidecar
with units and sources.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from gliaflow.pipeline.io.derivatives import atomic_write_json, write_tsv
from gliaflow.pipeline._utils import load_image
from gliaflow.pipeline.errors import ImageError

__all__ = [
    "iter_frames",
    "region_index",
    "regional_tacs",
    "compact_labels",
    "write_tacs",
    "tac_sanity",
]


def iter_frames(pet_4d, units_to_bqml: float = 1.0) -> Iterator[np.ndarray]:
    """Yield the frames of a 4D PET one at a time as float32 arrays in Bq/mL.

    Parameters
    ----------
    pet_4d : path or nibabel image or numpy array (X, Y, Z, T)
        Dynamic PET. A 3D image is treated as a single frame.
    units_to_bqml : float
        Factor converting stored values to Bq/mL.
    """
    if isinstance(pet_4d, np.ndarray):
        arr = pet_4d if pet_4d.ndim == 4 else pet_4d[..., None]
        for t in range(arr.shape[3]):
            yield np.asarray(arr[..., t], dtype=np.float32) * np.float32(units_to_bqml)
        return
    img = load_image(pet_4d, "PET")
    shape = img.shape
    if len(shape) == 3:
        yield np.asarray(img.dataobj, dtype=np.float32) * np.float32(units_to_bqml)
        return
    for t in range(shape[3]):
        yield np.asarray(img.dataobj[..., t], dtype=np.float32) * np.float32(units_to_bqml)


def region_index(labels_table: pd.DataFrame) -> list[tuple[int, str]]:
    """(index, name) pairs from a labels table with columns ``index``, ``name``."""
    missing = {"index", "name"} - set(labels_table.columns)
    if missing:
        raise ImageError(f"labels table lacks column(s) {sorted(missing)}", field=",".join(missing))
    return [(int(i), str(n)) for i, n in zip(labels_table["index"], labels_table["name"])]


def regional_tacs(
    pet_4d,
    label_img,
    labels_table: pd.DataFrame,
    frame_start_s: Sequence[float],
    frame_end_s: Sequence[float],
    masks: Mapping[str, Any] | None = None,
    units_to_bqml: float = 1.0,
    min_voxels: int = 1,
) -> pd.DataFrame:
    """Mean activity per region and frame.

    Parameters
    ----------
    pet_4d : path, nibabel image or array (X, Y, Z, T)
        Dynamic PET, read frame by frame.
    label_img : path, nibabel image or integer array (X, Y, Z)
        Region labels on the PET grid (0 = background).
    labels_table : DataFrame
        Columns ``index`` (label value) and ``name`` (column name in the output).
    frame_start_s, frame_end_s : sequence of float
        Frame times (s from injection), one per frame.
    masks : mapping name -> boolean image/array, optional
        Extra (possibly overlapping) regions on the PET grid, e.g. reference regions.
    units_to_bqml : float
        Factor converting PET values to Bq/mL.
    min_voxels : int
        Regions with fewer voxels give NaN.

    Returns
    -------
    DataFrame
        ``frame_start``, ``frame_end`` (s) and one column per region (mean, Bq/mL).

    Raises
    ------
    ImageError
        Label and PET grids differ, frame count mismatches frame times, or a frame holds NaNs.
    """
    pet_img = pet_4d if isinstance(pet_4d, np.ndarray) else load_image(pet_4d, "PET")
    shape = pet_img.shape
    n_frames = shape[3] if len(shape) == 4 else 1
    fs = np.asarray(frame_start_s, float)
    fe = np.asarray(frame_end_s, float)
    src = str(pet_4d) if isinstance(pet_4d, (str, Path)) else None
    if fs.shape != (n_frames,) or fe.shape != (n_frames,):
        raise ImageError(f"PET has {n_frames} frame(s) but {fs.size} start / {fe.size} end times",
                         file=src, field="FrameTimesStart")
    if np.any(fe <= fs):
        raise ImageError("frame end must be after frame start", file=src, field="FrameDuration")

    lab = label_img if isinstance(label_img, np.ndarray) else np.asarray(
        load_image(label_img, "label image").dataobj)
    lab = np.asarray(lab)
    if lab.shape != tuple(shape[:3]):
        raise ImageError(f"label image shape {lab.shape} differs from PET grid {tuple(shape[:3])}",
                         file=src)
    _check_same_grid(pet_img, label_img, src)
    lab = np.rint(lab).astype(np.int64)

    regions = region_index(labels_table)
    names = [n for _, n in regions]
    extra: list[tuple[str, np.ndarray]] = []
    for name, m in (masks or {}).items():
        arr = m if isinstance(m, np.ndarray) else np.asarray(load_image(m, f"mask {name}").dataobj)
        if arr.shape != lab.shape:
            raise ImageError(f"mask {name!r} shape {arr.shape} differs from PET grid {lab.shape}")
        extra.append((name, np.asarray(arr) > 0.5))
    dup = {n for n in names + [e[0] for e in extra] if (names + [e[0] for e in extra]).count(n) > 1}
    if dup:
        raise ImageError(f"duplicate region names {sorted(dup)}", field="name")

    compact = compact_labels(lab, [i for i, _ in regions])
    counts = np.bincount(compact, minlength=len(regions) + 1)[: len(regions)].astype(float)
    extra_idx = [np.flatnonzero(m.ravel()) for _, m in extra]

    out = np.full((n_frames, len(regions) + len(extra)), np.nan)
    for t, frame in enumerate(iter_frames(pet_4d, units_to_bqml)):
        f = frame.ravel()
        if not np.all(np.isfinite(f)):
            raise ImageError(f"frame {t} contains NaN or infinite values", file=src)
        sums = np.bincount(compact, weights=f, minlength=len(regions) + 1)[: len(regions)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[t, : len(regions)] = np.where(counts >= min_voxels, sums / counts, np.nan)
        for k, idx in enumerate(extra_idx):
            out[t, len(regions) + k] = f[idx].mean() if idx.size >= min_voxels else np.nan
    df = pd.DataFrame(out, columns=names + [e[0] for e in extra])
    df.insert(0, "frame_end", fe)
    df.insert(0, "frame_start", fs)
    return df


def compact_labels(lab: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Map label values to 0..R-1 in the order of ``indices`` (others -> R), flattened."""
    flat = np.asarray(lab).ravel().astype(np.int64)
    keys = np.asarray(list(indices), dtype=np.int64)
    if keys.size == 0:
        return np.zeros(flat.shape, np.int64)
    sorter = np.argsort(keys)
    p = np.clip(np.searchsorted(keys, flat, sorter=sorter), 0, keys.size - 1)
    hit = keys[sorter[p]] == flat
    return np.where(hit, sorter[p], keys.size)


def _check_same_grid(pet_img, label_img, src) -> None:
    """Raise when both images carry affines and they differ by more than 1e-3 mm."""
    if isinstance(pet_img, np.ndarray) or isinstance(label_img, np.ndarray):
        return
    lab = load_image(label_img, "label image")
    if not np.allclose(pet_img.affine, lab.affine, atol=1e-3):
        raise ImageError("label image and PET are on different grids (affines differ); resample "
                         "the labels to the PET grid first (atlas.labels_to_pet)", file=src)


def write_tacs(
    tacs: pd.DataFrame,
    path: str | Path,
    sources: Sequence[str | Path] = (),
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write TACs as a BIDS TSV plus a JSON sidecar (atomic writes).

    Parameters
    ----------
    tacs : DataFrame
        From :func:`regional_tacs` or a PVC function: ``frame_start``, ``frame_end`` (s), regions
        (Bq/mL).
    path : path
        The TSV path, e.g. ``sub-01_seg-harvardoxford_desc-pvcgtm_tacs.tsv``.
    sources : paths
        Input files (recorded in ``Sources``).
    description : str, optional
        Free text written as ``Description``.
    extra : dict, optional
        More sidecar keys (e.g. PVC method and PSF FWHM).

    Returns
    -------
    (tsv_path, json_path)
    """
    if list(tacs.columns[:2]) != ["frame_start", "frame_end"]:
        raise ValueError("TAC table must start with columns frame_start, frame_end")
    path = Path(path)
    write_tsv(tacs, path)
    meta: dict[str, Any] = {
        "frame_start": {"Description": "Frame start time from injection", "Units": "s"},
        "frame_end": {"Description": "Frame end time from injection", "Units": "s"},
    }
    for col in tacs.columns[2:]:
        meta[str(col)] = {"Description": f"Mean activity concentration in {col}", "Units": "Bq/mL"}
    meta["Units"] = "Bq/mL"
    meta["Sources"] = [str(s) for s in sources]
    if description:
        meta["Description"] = description
    if extra:
        meta.update(extra)
    json_path = path.with_name(path.name[: -len(".tsv")] + ".json") if path.name.endswith(
        ".tsv") else path.with_suffix(".json")
    atomic_write_json(json_path, meta)
    return path, json_path


def tac_sanity(tacs: pd.DataFrame, negative_tolerance_bqml: float = 0.0,
               negative_fraction_of_peak: float = 0.05) -> dict[str, Any]:
    """Small QC record for a TAC table.

    Parameters
    ----------
    tacs : DataFrame
        ``frame_start``, ``frame_end`` (s), then region columns (Bq/mL).
    negative_tolerance_bqml : float
        Values below ``-tolerance`` count as negative.
    negative_fraction_of_peak : float
        ...and only when they are also below ``-fraction x`` the region's peak: noise around zero
        before the bolus arrives is expected in short early frames, a deeply negative value is not.

    Returns
    -------
    dict
        ``n_frames``, ``n_regions``; ``negative_values`` (count over all regions and frames);
        ``regions_with_negatives`` (names); ``nan_regions`` (all-NaN columns); ``peak_time_s``
        (frame mid-time of the maximum, per region); ``flags`` (list of strings).
    """
    regions = [c for c in tacs.columns if c not in ("frame_start", "frame_end")]
    vals = tacs[regions].to_numpy(float)
    mid = 0.5 * (tacs["frame_start"].to_numpy(float) + tacs["frame_end"].to_numpy(float))
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=0)
    limit = np.maximum(negative_tolerance_bqml, negative_fraction_of_peak * np.clip(peak, 0, None))
    neg = vals < -limit
    nan_cols = [r for r, c in zip(regions, np.all(~np.isfinite(vals), axis=0)) if c]
    peaks = {}
    for k, r in enumerate(regions):
        col = vals[:, k]
        peaks[r] = float(mid[int(np.nanargmax(col))]) if np.any(np.isfinite(col)) else None
    flags = []
    if neg.any():
        flags.append(f"{int(neg.sum())} negative TAC value(s)")
    if nan_cols:
        flags.append(f"{len(nan_cols)} region(s) without voxels")
    if len(mid) > 1:
        last_peaks = [r for r, p in peaks.items() if p is not None and p >= mid[-1]]
        if last_peaks and len(last_peaks) == len([p for p in peaks.values() if p is not None]):
            flags.append("every region peaks in the last frame (check frame order/decay correction)")
    return {
        "n_frames": int(vals.shape[0]),
        "n_regions": len(regions),
        "negative_values": int(neg.sum()),
        "regions_with_negatives": [r for r, c in zip(regions, neg.any(axis=0)) if c],
        "nan_regions": nan_cols,
        "peak_time_s": peaks,
        "flags": flags,
    }
