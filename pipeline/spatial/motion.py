"""Frame realignment (head-motion correction) of a dynamic PET series.

One function, :func:`realign_frames`: each frame is rigidly registered (mutual information, by
the engine named in ``MotionSettings.engine``; ANTs ``Rigid`` with Mattes MI by default) to a
reference, the duration-weighted mean of the frames starting at or after
``MotionSettings.reference_start_s``. Frames starting before ``start_time_s`` or shorter than
``min_frame_duration_s`` are too noisy to register: they take the transform of the first
registrable frame (PETPrep's rule). Frames are streamed from disk one at a time (nibabel
``dataobj``); the only full copy of the series held in memory is the float32 output.

Transforms follow :mod:`gliaflow.pipeline.spatial.transforms`: 4x4 RAS-mm *pull* matrices that map a point
of the reference (realigned) space to the same anatomical point in frame ``i``. The transform file
is an ITK text file with one ``AffineTransform_double_3_3`` (LPS) per frame, in frame order, as
PETPrep's ``_from-orig_to-petref_mode-image_desc-hmc_xfm.txt``; read it back with
:func:`gliaflow.pipeline.spatial.transforms.read_itk_text`.

Bad input
---------
* Not 3-D/4-D, frame timing inconsistent with the image, or every frame zero (or non-finite):
  :class:`~gliaflow.pipeline.errors.ImageError` naming the file and field.
* NaN/inf voxels: replaced by 0 in the output (and before registration); the frames are listed in
  ``MotionResult.nonfinite_frames`` and flagged ``nonfinite_values_replaced``.
* All-zero frames: not registered (they take the first registrable frame's transform), flagged
  ``empty_frames``.
* A single frame (3-D image or one-frame 4-D): nothing to realign; the image is copied (float32),
  the transform is the identity, flagged ``single_frame``.
* No frame registrable or no frame in the reference window: identity / fallback reference, flagged.
* ``MotionSettings.enabled = False``: no frame is registered (identity transforms, the series
  copied as float32), flagged ``motion_correction_disabled``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel

from gliaflow.pipeline.config import MotionSettings
from gliaflow.pipeline.engines import Engine, RigidLevel, get_engine
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.spatial.transforms import (
    bounding_box,
    crop_and_block,
    displacement,
    format_itk_text,
    framewise_displacement,
    mask_world_coords,
    matrix_to_params,
)

__all__ = ["MotionResult", "realign_frames"]

MOTION_COLUMNS = [
    "frame", "frame_start", "frame_end", "registered",
    "rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z",
    "framewise_displacement", "mean_displacement",
]


class MotionResult(BaseModel):
    """What :func:`realign_frames` produced.

    Attributes
    ----------
    pet, motion_tsv, xfm, reference : Path
        Realigned series (float32), per-frame motion table, ITK transform file, realigned reference
        image (``None`` when not requested).
    n_frames : int
    registered : list of bool
        Per frame: True when the frame was registered, False when it took a borrowed transform.
    reference_frames : list of int
        0-based frames averaged (duration-weighted) into the reference.
    first_registered_frame : int or None
    matrices : list of 4x4 lists
        Per-frame RAS-mm pull matrices (reference space -> frame space).
    mean_fd_mm, max_fd_mm : float
        Framewise displacement (Power, ``fd_radius_mm`` sphere), mm.
    max_displacement_mm : float
        Largest per-frame mean displacement relative to the reference over the head mask, mm.
    nonfinite_frames, empty_frames : list of int
    flags : list of str
        QC flags (see module docstring).
    seconds : float
        Wall time of the call, s.
    """

    pet: Path
    motion_tsv: Path
    xfm: Path
    reference: Path | None = None
    n_frames: int
    registered: list[bool]
    reference_frames: list[int]
    first_registered_frame: int | None
    matrices: list[list[list[float]]]
    mean_fd_mm: float
    max_fd_mm: float
    max_displacement_mm: float
    nonfinite_frames: list[int]
    empty_frames: list[int]
    flags: list[str]
    seconds: float


def _check_timing(n: int, start: Sequence[float], end: Sequence[float], path: Path) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(start, dtype=float).ravel()
    e = np.asarray(end, dtype=float).ravel()
    if s.size != n:
        raise ImageError(f"{s.size} frame start times for {n} frames", file=path, field="FrameTimesStart")
    if e.size != n:
        raise ImageError(f"{e.size} frame end times for {n} frames", file=path, field="FrameDuration")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e))):
        raise ImageError("frame times must be finite", file=path, field="FrameTimesStart")
    if np.any(e <= s):
        bad = int(np.argmax(e <= s))
        raise ImageError(f"frame {bad} ends at or before it starts ({s[bad]} s, {e[bad]} s)",
                         file=path, field="FrameDuration")
    if np.any(np.diff(s) < 0):
        raise ImageError("frame start times are not in increasing order", file=path, field="FrameTimesStart")
    return s, e


def _read_frame(img, i: int, four_d: bool) -> tuple[np.ndarray, bool]:
    """Frame ``i`` as float32 with non-finite voxels set to 0; also whether any were found."""
    data = np.array(img.dataobj[..., i] if four_d else img.dataobj[...], dtype=np.float32)
    bad = ~np.isfinite(data)
    had = bool(bad.any())
    if had:
        data[bad] = 0.0
    return data, had


def _head_mask(ref_smooth: np.ndarray) -> np.ndarray:
    """Metric mask: voxels above 10% of the robust maximum of the smoothed reference, dilated."""
    from scipy import ndimage

    pos = ref_smooth[ref_smooth > 0]
    if pos.size == 0:
        return np.zeros(ref_smooth.shape, bool)
    thr = 0.1 * np.percentile(pos, 99.5)
    mask = ndimage.binary_fill_holes(ref_smooth > thr)
    return ndimage.binary_dilation(mask, iterations=2)


def _sigmas(shrink: Sequence[int]) -> tuple[float, ...]:
    last = shrink[-1]
    return tuple(max(0.0, 0.5 * (s / last - 1.0)) for s in shrink)


def realign_frames(
    pet_path: str | Path,
    frame_start_s: Sequence[float],
    frame_end_s: Sequence[float],
    settings: MotionSettings,
    out_pet: str | Path,
    out_motion_tsv: str | Path,
    out_xfm_file: str | Path,
    out_ref: str | Path | None = None,
    work_dir: str | Path | None = None,
    engine: Engine | None = None,
) -> MotionResult:
    """Rigidly realign every frame of a dynamic PET to a high-count reference.

    Parameters
    ----------
    pet_path : path
        4-D (or single-frame 3-D) PET NIfTI, any units (activity units are not changed).
    frame_start_s, frame_end_s : sequence of float
        Frame start and end times, s from injection (BIDS ``FrameTimesStart`` and
        ``FrameTimesStart + FrameDuration``).
    settings : MotionSettings
        ``start_time_s``, ``min_frame_duration_s``, ``reference_start_s`` (s), ``smoothing_fwhm_mm``
        (mm, applied to the frames and reference before registration only), ``fd_radius_mm``,
        ``iterations``, ``shrink_factors`` and ``sampling_rate`` of the rigid registration;
        ``enabled`` (False: no frame is registered); ``engine`` names the engine when ``engine``
        is not given.
    out_pet : path
        Realigned series: float32, same shape, affine and header geometry as the input.
    out_motion_tsv : path
        Per-frame table: ``frame`` (0-based), ``frame_start``/``frame_end`` (s), ``registered``,
        ``rot_x/y/z`` (rad), ``trans_x/y/z`` (mm), ``framewise_displacement`` (mm, Power, 50 mm sphere
        by default) and ``mean_displacement`` (mm, relative to the reference, over the head mask).
    out_xfm_file : path
        ITK text file, one rigid transform per frame (see module docstring for the convention).
    out_ref : path, optional
        Realigned reference: duration-weighted mean of the realigned reference frames (float32, 3-D),
        the image to register to the T1w.
    work_dir : path, optional
        Scratch folder for the engine's files (a temporary folder by default; removed at the end).
    engine : Engine, optional
        The engine that registers and resamples (its calls are recorded in ``engine.calls``);
        default ``get_engine(settings.engine)``.

    Returns
    -------
    MotionResult

    Raises
    ------
    ImageError
        Unreadable image, wrong dimensionality, inconsistent frame timing, or all frames zero.
    """
    t_start = time.perf_counter()
    from gliaflow.pipeline.io.derivatives import atomic_write_text

    s = _Series.open(pet_path, frame_start_s, frame_end_s)
    ref, in_ref_window, nonfinite, empty, flags = s.read_frames(settings.reference_start_s)
    registrable = _registrable(s, settings, empty, flags)
    grid = _RegistrationGrid(ref, s.affine, settings)
    engine = engine or get_engine(settings.engine)
    matrices, first_reg = _realign(s, grid, ref, registrable, empty, engine, settings, work_dir)

    s.save(out_pet)
    ref_path = None if out_ref is None else s.save_reference(in_ref_window, empty, out_ref)
    table = _motion_table(s, registrable, matrices, grid.coords, settings.fd_radius_mm)
    from gliaflow.pipeline.io.derivatives import write_tsv

    write_tsv(table, out_motion_tsv, float_format="%.6g")
    atomic_write_text(out_xfm_file, format_itk_text(matrices))
    fd, disp = table["framewise_displacement"].to_numpy(), table["mean_displacement"].to_numpy()
    return MotionResult(
        pet=Path(out_pet), motion_tsv=Path(out_motion_tsv), xfm=Path(out_xfm_file), reference=ref_path,
        n_frames=s.n, registered=[bool(r) for r in registrable],
        reference_frames=[int(i) for i in np.flatnonzero(in_ref_window) if i not in empty],
        first_registered_frame=first_reg,
        matrices=[m.tolist() for m in matrices],
        mean_fd_mm=float(fd.mean()), max_fd_mm=float(fd.max()),
        max_displacement_mm=float(disp.max()),
        nonfinite_frames=nonfinite, empty_frames=empty, flags=flags,
        seconds=time.perf_counter() - t_start,
    )


class _Series:
    """The dynamic PET being realigned: its header, frame times (s) and the float32 output array
    (the only full copy of the series in memory), frames read from disk one at a time."""

    def __init__(self, img, path: Path, four_d: bool, n: int, starts: np.ndarray, ends: np.ndarray):
        self.img, self.path, self.four_d, self.n = img, path, four_d, n
        self.starts, self.ends, self.durations = starts, ends, ends - starts
        self.affine = img.affine
        self.shape3 = img.shape[:3]
        self.out = np.zeros(img.shape if four_d else img.shape[:3], np.float32, order="F")

    @classmethod
    def open(cls, pet_path, frame_start_s, frame_end_s) -> "_Series":
        """Open the image lazily and check its dimensions against the frame times."""
        import nibabel as nib

        pet_path = Path(pet_path)
        try:
            img = nib.load(str(pet_path), keep_file_open=True)
        except Exception as exc:  # nibabel raises several types
            raise ImageError(f"cannot read PET image: {exc}", file=pet_path) from exc
        shape = img.shape
        if len(shape) == 4 and shape[3] >= 1:
            four_d, n = True, shape[3]
        elif len(shape) == 3:
            four_d, n = False, 1
        else:
            raise ImageError(f"PET must be 3-D or 4-D, got shape {shape}", file=pet_path, field="dim")
        starts, ends = _check_timing(n, frame_start_s, frame_end_s, pet_path)
        return cls(img, pet_path, four_d, n, starts, ends)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` of the output array (a view)."""
        return self.out[..., i] if self.four_d else self.out

    def read_frames(self, reference_start_s: float):
        """Pass 1: read every frame once (non-finite voxels -> 0) and build the reference, the
        duration-weighted mean of the non-empty frames starting at or after
        ``reference_start_s`` (all non-empty frames when there are none).

        Returns ``(reference, in_ref_window, nonfinite_frames, empty_frames, flags)``.
        """
        n, durations = self.n, self.durations
        flags: list[str] = []
        nonfinite: list[int] = []
        empty: list[int] = []
        in_ref_window = self.starts >= reference_start_s
        if not in_ref_window.any():
            flags.append("reference_fallback_all_frames")
            in_ref_window = np.ones(n, bool)
        ref_acc = np.zeros(self.shape3, np.float64)
        ref_w = 0.0
        for i in range(n):
            data, had_nan = _read_frame(self.img, i, self.four_d)
            if had_nan:
                nonfinite.append(i)
            self.frame(i)[...] = data
            if not np.any(data):
                empty.append(i)
                continue
            if in_ref_window[i]:
                ref_acc += durations[i] * data
                ref_w += durations[i]
        if len(empty) == n:
            raise ImageError("every PET frame is zero (or non-finite)", file=self.path, field="data")
        if nonfinite:
            flags.append("nonfinite_values_replaced")
        if empty:
            flags.append("empty_frames")
        if ref_w == 0:  # every reference-window frame empty: fall back to all non-empty frames
            if "reference_fallback_all_frames" not in flags:
                flags.append("reference_fallback_all_frames")
            in_ref_window = np.ones(n, bool)
            for i in range(n):
                if i not in empty:
                    ref_acc += durations[i] * self.frame(i)
                    ref_w += durations[i]
        return (ref_acc / ref_w).astype(np.float32), in_ref_window, nonfinite, empty, flags

    def _header(self):
        hdr = self.img.header.copy()
        hdr.set_data_dtype(np.float32)
        return hdr

    def save(self, path) -> Path:
        """The realigned series: float32, the input's shape, affine and header geometry."""
        import nibabel as nib

        from gliaflow.pipeline.io.derivatives import save_nifti

        out_img = nib.Nifti1Image(self.out, self.affine, header=self._header())
        out_img.header.set_slope_inter(1.0, 0.0)
        return save_nifti(out_img, path)

    def save_reference(self, in_ref_window: np.ndarray, empty: list[int], path) -> Path:
        """The duration-weighted mean of the realigned reference frames (3-D float32)."""
        import nibabel as nib

        from gliaflow.pipeline.io.derivatives import save_nifti

        acc = np.zeros(self.shape3, np.float64)
        w = 0.0
        for i in range(self.n):
            if in_ref_window[i] and i not in empty:
                acc += self.durations[i] * self.frame(i)
                w += self.durations[i]
        rimg = nib.Nifti1Image((acc / w).astype(np.float32), self.affine, header=self._header())
        rimg.header.set_slope_inter(1.0, 0.0)
        rimg.header.set_xyzt_units(*self.img.header.get_xyzt_units())
        if self.four_d:
            rimg.header["dim"][0] = 3
            rimg.header["dim"][4] = 1
        return save_nifti(rimg, path)


def _registrable(s: _Series, settings: MotionSettings, empty: list[int], flags: list[str]) -> np.ndarray:
    """Frames that are registered: late and long enough, not empty; none when realignment is
    disabled or the series has one frame (flags record why)."""
    registrable = (s.starts >= settings.start_time_s) & (s.durations >= settings.min_frame_duration_s)
    registrable[empty] = False
    if not settings.enabled:
        flags.append("motion_correction_disabled")
        registrable[:] = False
    elif s.n == 1:
        flags.append("single_frame")
        registrable[:] = False
    elif not registrable.any():
        flags.append("no_registrable_frames")
    return registrable


class _RegistrationGrid:
    """The grid registration runs on: frames smoothed (``smoothing_fwhm_mm``), cropped to the
    head (a mask from the smoothed reference) and block-averaged by the last shrink factor; the
    resolution levels that remain; the head's world coordinates (mm) for displacement figures."""

    def __init__(self, ref: np.ndarray, affine: np.ndarray, settings: MotionSettings):
        from scipy import ndimage

        self.affine, self.settings = affine, settings
        voxel = np.linalg.norm(affine[:3, :3], axis=0)
        self.sigma_vox = settings.smoothing_fwhm_mm / 2.3548 / voxel
        shrink = [int(v) for v in settings.shrink_factors]
        self.block = shrink[-1] if all(v % shrink[-1] == 0 for v in shrink) else 1
        level_shrink = tuple(v // self.block for v in shrink)
        self.levels = [RigidLevel(shrink=v, smoothing_vox=sg, iterations=k)
                       for v, sg, k in zip(level_shrink, _sigmas(level_shrink), settings.iterations)]
        self.ref_smooth = ndimage.gaussian_filter(ref, self.sigma_vox) if settings.smoothing_fwhm_mm > 0 else ref
        mask = _head_mask(self.ref_smooth)
        self.mask = mask if mask.any() else np.ones(ref.shape, bool)
        self.coords = mask_world_coords(self.mask, affine, step=2 if self.mask.sum() > 20000 else 1)
        self.box = bounding_box(self.mask, margin=2 * self.block + 2, block=self.block)

    def image(self, data: np.ndarray, smooth: bool = True, binary: bool = False):
        """``data`` (PET grid) as a registration-grid image."""
        import nibabel as nib
        from scipy import ndimage

        d = ndimage.gaussian_filter(data, self.sigma_vox) if (smooth and self.settings.smoothing_fwhm_mm > 0) \
            else data
        d, aff = crop_and_block(d, self.affine, self.box, self.block)
        if binary:
            d = (d > 0.5).astype(np.float32)
        return nib.Nifti1Image(d, aff)


def _realign(s: _Series, grid: _RegistrationGrid, ref: np.ndarray, registrable: np.ndarray,
             empty: list[int], engine: Engine, settings: MotionSettings, work_dir
             ) -> tuple[list[np.ndarray], int | None]:
    """Pass 2: register the registrable frames (streamed to the engine) and resample them in
    place on the reference grid; pass 3: the other non-empty frames borrow the first registered
    frame's transform. Returns the per-frame pull matrices and the first registered frame."""
    import nibabel as nib

    ref_full = nib.Nifti1Image(ref, s.affine)
    matrices = [np.eye(4) for _ in range(s.n)]

    def resample(i: int) -> None:
        moving = nib.Nifti1Image(np.asarray(s.frame(i)), s.affine)
        s.frame(i)[...] = np.asarray(engine.resample(moving, ref_full, [matrices[i]],
                                                     step="frame realignment").dataobj)

    reg_frames = [int(i) for i in np.flatnonzero(registrable)]
    first_reg = reg_frames[0] if reg_frames else None
    with tempfile.TemporaryDirectory(prefix="gliaflow_hmc_",
                                     dir=None if work_dir is None else str(work_dir)) as tmp:
        found = engine.realign_series(
            grid.image(grid.ref_smooth, smooth=False), ((i, grid.image(s.frame(i))) for i in reg_frames),
            levels=grid.levels, mask=grid.image(grid.mask.astype(np.float32), smooth=False, binary=True),
            sampling_rate=settings.sampling_rate, work_dir=Path(tmp))
        for i in reg_frames:
            matrices[i] = found[i]
            resample(i)
        if first_reg is not None:
            for i in np.flatnonzero(~registrable):
                i = int(i)
                matrices[i] = matrices[first_reg].copy()
                if i not in empty:
                    resample(i)
    return matrices, first_reg


def _motion_table(s: _Series, registrable: np.ndarray, matrices: list[np.ndarray], coords: np.ndarray,
                  fd_radius_mm: float):
    """The per-frame motion table (:data:`MOTION_COLUMNS`; rad, mm)."""
    import pandas as pd

    params = np.array([matrix_to_params(m) for m in matrices])
    return pd.DataFrame({
        "frame": np.arange(s.n),
        "frame_start": s.starts,
        "frame_end": s.ends,
        "registered": np.where(registrable, "true", "false"),
        "rot_x": params[:, 0], "rot_y": params[:, 1], "rot_z": params[:, 2],
        "trans_x": params[:, 3], "trans_y": params[:, 4], "trans_z": params[:, 5],
        "framewise_displacement": framewise_displacement(params, fd_radius_mm),
        "mean_displacement": np.array([displacement(m, coords).mean() for m in matrices]),
    })[MOTION_COLUMNS]
