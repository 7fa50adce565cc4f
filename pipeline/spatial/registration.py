"""Rigid (6-dof) PET-to-T1w registration, with a similarity score and QC flags.

:func:`register_pet_to_t1` registers the PET reference (moving) to the bias-corrected T1w (fixed)
with mutual information, through the engine named in ``RegistrationSettings.engine`` (ANTs Rigid
with Mattes MI by default). It starts from a centre-of-mass alignment, tries
``RegistrationSettings.n_starts`` initial rotations about the T1w brain centre at a coarse
resolution, keeps the start with the best normalised mutual information (NMI) and refines it.

Transform convention (see :mod:`gliaflow.pipeline.spatial.transforms`): the result is a 4x4 RAS-mm *pull*
matrix mapping a T1w-space point to the PET-reference point, written as an ITK text file
(LPS, ``AffineTransform_double_3_3``) — PETPrep's ``_from-petref_to-T1w_mode-image_xfm.txt``:
``antsApplyTransforms -i petref -r T1w -t xfm`` resamples the PET into T1w space.

Similarity and QC
-----------------
``similarity`` is the normalised mutual information ``2 I(T1; PET) / (H(T1) + H(PET))`` in [0, 1],
from a 32x32-bin joint histogram over T1w brain voxels (every 2nd voxel), PET sampled trilinearly
through the transform. A result is flagged (``likely_wrong``) when any of:

* ``low_similarity``: NMI below ``flag_similarity_below``;
* ``not_at_optimum``: a rigid step of ``check_step_mm`` (a translation along one axis, or a
  rotation moving brain voxels by that much on average) raises the NMI by more than
  ``optimum_tolerance`` (relative): the registration stopped away from the similarity maximum,
  which on the phantom happens for results off by more than ~3 mm;
* ``ambiguous_optimum``: two starts converged to solutions more than ``check_step_mm`` apart
  with NMIs within ``optimum_tolerance`` of each other;
* ``pet_not_covering_brain``: less than ``min_brain_coverage`` of the T1w brain receives PET
  signal (PET FOV misses the brain, or the registration put it elsewhere);
* ``large_initial_offset`` (reported, not by itself "wrong"): the PET and T1w brain centres are
  more than ``max_expected_offset_mm`` apart in the image headers.

Bad input (all :class:`~gliaflow.pipeline.errors.ImageError`): unreadable files, a PET reference
with more than one frame, an all-zero or all-non-finite image, a mask of a different shape or
empty. NaNs in an otherwise valid image are set to 0 and flagged ``nonfinite_values_replaced``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from gliaflow.pipeline.config import RegistrationSettings
from gliaflow.pipeline.engines import Engine, RigidLevel, get_engine
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.spatial.transforms import (
    bounding_box,
    crop_and_block,
    displacement_error,
    mask_world_coords,
    params_to_matrix,
    write_itk_text,
)

__all__ = ["CoregResult", "register_pet_to_t1", "assess_coregistration", "normalized_mutual_information"]


class CoregResult(BaseModel):
    """What :func:`register_pet_to_t1` produced.

    Attributes
    ----------
    xfm : Path
        ITK text transform (T1w point -> PET-reference point).
    matrix : 4x4 list
        Same transform as a RAS-mm matrix.
    similarity : float
        Normalised mutual information (0..1) over the T1w brain at the result.
    optimum_gain : float
        Largest relative NMI gain found by the local optimality check (<= 0 at a maximum).
    brain_coverage : float
        Fraction of T1w brain voxels that receive PET signal through the transform.
    initial_offset_mm : float
        Distance between PET and T1w brain centres in the image headers, mm.
    start_similarity : list of float
        Coarse-stage NMI of each start.
    flags : list of str
    likely_wrong : bool
        True when a flag other than ``large_initial_offset`` / ``nonfinite_values_replaced`` is set.
    seconds : float
    """

    xfm: Path
    matrix: list[list[float]]
    similarity: float
    optimum_gain: float
    brain_coverage: float
    initial_offset_mm: float
    start_similarity: list[float]
    flags: list[str]
    likely_wrong: bool
    seconds: float


# --------------------------------------------------------------------------- loading

def _load3d(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(float32 data with non-finite set to 0, affine, had_nonfinite) of a 3-D image."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ImageError(f"cannot read {what}: {exc}", file=path) from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        data = np.array(img.dataobj[..., 0], dtype=np.float32)
    elif len(shape) == 3:
        data = np.array(img.dataobj[...], dtype=np.float32)
    else:
        raise ImageError(f"{what} must be a 3-D image (got shape {shape}); pass the PET reference, "
                         "not the 4-D series", file=path, field="dim")
    bad = ~np.isfinite(data)
    had = bool(bad.any())
    if had:
        data[bad] = 0
    if not np.any(data):
        raise ImageError(f"{what} is all zero (or non-finite)", file=path, field="data")
    return data, img.affine, had


def _centroid(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Weighted centre of an image in world (RAS) mm."""
    from scipy import ndimage

    c_vox = np.array(ndimage.center_of_mass(np.asarray(weights, dtype=np.float32)))
    return affine[:3, :3] @ c_vox + affine[:3, 3]


def _pet_signal_threshold(pet: np.ndarray) -> float:
    pos = pet[pet > 0]
    return 0.1 * float(np.percentile(pos, 99.5)) if pos.size else 0.0


# --------------------------------------------------------------------------- similarity

class _Sampler:
    """T1w brain sample points and PET interpolation for fast NMI evaluations."""

    def __init__(self, t1: np.ndarray, t1_affine: np.ndarray, mask: np.ndarray,
                 pet: np.ndarray, pet_affine: np.ndarray, step: int, bins: int = 32,
                 max_points: int = 50_000):
        coords = mask_world_coords(mask, t1_affine, step)
        if coords.shape[0] > max_points:  # fixed-seed subset: same points every call
            keep = np.random.default_rng(0).choice(coords.shape[0], max_points, replace=False)
            coords = coords[np.sort(keep)]
        self.coords = coords
        ijk = np.round((self.coords - t1_affine[:3, 3]) @ np.linalg.inv(t1_affine[:3, :3]).T).astype(int)
        t1v = t1[ijk[:, 0], ijk[:, 1], ijk[:, 2]].astype(np.float64)
        lo, hi = np.percentile(t1v, [0.5, 99.5])
        self.t1_bins = np.clip(((t1v - lo) / max(hi - lo, 1e-12) * bins).astype(int), 0, bins - 1)
        self.pet = pet
        self.pet_inv = np.linalg.inv(pet_affine)
        self.pet_hi = float(np.percentile(pet[pet > 0], 99.5))
        self.pet_thr = _pet_signal_threshold(pet)
        self.bins = bins

    def pet_values(self, m: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        a = self.pet_inv @ m
        vox = self.coords @ a[:3, :3].T + a[:3, 3]
        return ndimage.map_coordinates(self.pet, vox.T, order=1, cval=0.0, prefilter=False)

    def nmi(self, m: np.ndarray) -> float:
        pv = self.pet_values(m)
        pb = np.clip((pv / self.pet_hi * self.bins).astype(int), 0, self.bins - 1)
        return normalized_mutual_information(self.t1_bins, pb, self.bins)

    def coverage(self, m: np.ndarray) -> float:
        return float(np.mean(self.pet_values(m) > self.pet_thr))


def normalized_mutual_information(a_bins: np.ndarray, b_bins: np.ndarray, bins: int) -> float:
    """``2 I(A; B) / (H(A) + H(B))`` (0..1) from two integer bin-index arrays of equal length."""
    joint = np.bincount(a_bins * bins + b_bins, minlength=bins * bins).astype(np.float64)
    p = joint / joint.sum()
    pa = p.reshape(bins, bins).sum(axis=1)
    pb = p.reshape(bins, bins).sum(axis=0)

    def h(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb, hab = h(pa), h(pb), h(p)
    if ha + hb <= 0:
        return 0.0
    return float(2.0 * (ha + hb - hab) / (ha + hb))


def _perturbations(step_mm: float, center: np.ndarray, radius_mm: float) -> list[np.ndarray]:
    """12 rigid steps (RAS, about ``center``): +-step along each axis, +-step/radius about each axis."""
    out = []
    ang = step_mm / max(radius_mm, 1.0)
    for k in range(3):
        for sgn in (1.0, -1.0):
            p = np.zeros(6)
            p[3 + k] = sgn * step_mm
            out.append(params_to_matrix(p, center))
            p = np.zeros(6)
            p[k] = sgn * ang
            out.append(params_to_matrix(p, center))
    return out


def _assess(
    sampler: "_Sampler",
    matrix: np.ndarray,
    settings: RegistrationSettings,
    center: np.ndarray,
    radius_mm: float,
) -> dict:
    """NMI, local-optimality gain and brain coverage of a T1w->PET matrix (see module docstring)."""
    m = np.asarray(matrix, dtype=float)
    base = sampler.nmi(m)
    gains = [sampler.nmi(m @ d) for d in _perturbations(settings.check_step_mm, center, radius_mm)]
    gain = (max(gains) - base) / max(base, 1e-12)
    return {"similarity": base, "optimum_gain": float(gain), "brain_coverage": sampler.coverage(m)}


# --------------------------------------------------------------------------- registration

class _Inputs:
    """Loaded, checked images and the quantities both registration and assessment need."""


def _prepare(pet_ref_path, t1_path, t1_mask, settings: RegistrationSettings) -> _Inputs:
    from scipy import ndimage

    flags: list[str] = []
    pet, pet_aff, pet_nan = _load3d(pet_ref_path, "PET reference")
    t1, t1_aff, t1_nan = _load3d(t1_path, "T1w image")
    if pet_nan or t1_nan:
        flags.append("nonfinite_values_replaced")
    if t1_mask is not None:
        mdata, m_aff, _ = _load3d(t1_mask, "T1w brain mask")
        if mdata.shape != t1.shape or not np.allclose(m_aff, t1_aff, atol=1e-3):
            raise ImageError(f"mask grid {mdata.shape} does not match the T1w grid {t1.shape}",
                             file=t1_mask, field="affine")
        brain = mdata > 0.5
    else:
        brain = ndimage.binary_fill_holes(t1 > t1[t1 > 0].mean())
        lab, nlab = ndimage.label(brain)
        if nlab > 1:
            sizes = ndimage.sum(brain, lab, index=np.arange(1, nlab + 1))
            brain = lab == (1 + int(np.argmax(sizes)))
    if brain.sum() < 100:
        raise ImageError("T1w brain mask has fewer than 100 voxels", file=t1_mask or t1_path, field="mask")

    vox_t1 = float(np.cbrt(abs(np.linalg.det(t1_aff[:3, :3]))))
    c_t1 = _centroid(brain, t1_aff)
    pet_thr = _pet_signal_threshold(pet)
    c_pet = _centroid(np.where(pet > pet_thr, pet, 0), pet_aff)
    initial_offset = float(np.linalg.norm(c_pet - c_t1))
    if initial_offset > settings.max_expected_offset_mm:
        flags.append("large_initial_offset")
    bcoords = mask_world_coords(brain, t1_aff, step=max(1, int(round(4 / vox_t1))))
    radius = float(np.linalg.norm(bcoords - c_t1, axis=1).mean())

    inp = _Inputs()
    inp.flags, inp.pet, inp.pet_aff, inp.t1, inp.t1_aff, inp.brain = flags, pet, pet_aff, t1, t1_aff, brain
    inp.vox_t1, inp.c_t1, inp.c_pet, inp.bcoords, inp.radius = vox_t1, c_t1, c_pet, bcoords, radius
    inp.initial_offset = initial_offset
    inp.sampler = _Sampler(t1, t1_aff, brain, pet, pet_aff, step=max(1, int(round(2 / vox_t1))))
    return inp


def assess_coregistration(
    pet_ref_path: str | Path,
    t1_path: str | Path,
    matrix: np.ndarray,
    settings: RegistrationSettings,
    t1_mask: str | Path | None = None,
) -> dict:
    """QC of a given T1w->PET matrix (RAS mm pull), the same checks as :func:`register_pet_to_t1`.

    Returns a dict with ``similarity`` (NMI 0..1), ``optimum_gain`` (relative), ``brain_coverage``
    (fraction), ``initial_offset_mm`` (mm) and ``flags`` (list of str; ``ambiguous_optimum`` is only
    available from a registration run).
    """
    inp = _prepare(pet_ref_path, t1_path, t1_mask, settings)
    qc = _assess(inp.sampler, np.asarray(matrix, dtype=float), settings, inp.c_t1, inp.radius)
    flags = list(inp.flags)
    flags += _quality_flags(qc, settings)
    return {**qc, "initial_offset_mm": inp.initial_offset, "flags": flags}


def _quality_flags(qc: dict, settings: RegistrationSettings) -> list[str]:
    """QC flags of a registration result from its similarity, optimality and brain coverage."""
    flags = []
    if qc["similarity"] < settings.flag_similarity_below:
        flags.append("low_similarity")
    if qc["optimum_gain"] > settings.optimum_tolerance:
        flags.append("not_at_optimum")
    if qc["brain_coverage"] < settings.min_brain_coverage:
        flags.append("pet_not_covering_brain")
    return flags


def _start_rotations(n: int, angle_deg: float) -> list[tuple[float, float, float]]:
    a = np.deg2rad(angle_deg)
    seq = [(0.0, 0.0, 0.0), (a, 0.0, 0.0), (-a, 0.0, 0.0), (0.0, 0.0, a), (0.0, 0.0, -a),
           (0.0, a, 0.0), (0.0, -a, 0.0)]
    k = 2
    while len(seq) < n:
        seq += [(k * a, 0.0, 0.0), (-k * a, 0.0, 0.0), (0.0, 0.0, k * a), (0.0, 0.0, -k * a)]
        k += 1
    return seq[:n]


def register_pet_to_t1(
    pet_ref_path: str | Path,
    t1_path: str | Path,
    settings: RegistrationSettings,
    t1_mask: str | Path | None = None,
    out_xfm: str | Path = "from-petref_to-T1w_mode-image_xfm.txt",
    work_dir: str | Path | None = None,
    engine: Engine | None = None,
) -> CoregResult:
    """Rigidly register a 3-D PET reference to a T1w image (mutual information, multi-start).

    Parameters
    ----------
    pet_ref_path : path
        3-D PET reference (e.g. the realigned mean from :func:`~gliaflow.pipeline.spatial.motion.realign_frames`);
        any activity units.
    t1_path : path
        Bias-corrected T1w (whole head or skull-stripped), any intensity units.
    settings : RegistrationSettings
        ``n_starts``, ``start_angle_deg``, resolution schedules, QC thresholds (mm, NMI).
    t1_mask : path, optional
        T1w brain mask (same grid as ``t1_path``). Without it, a head mask is derived from the T1w
        (intensity above its mean, largest component, holes filled); scores are then over the head.
    out_xfm : path
        Output ITK text transform (PETPrep ``_from-petref_to-T1w_mode-image_xfm.txt``); the caller
        chooses the path.
    work_dir : path, optional
        Scratch folder for the engine's files (temporary by default; removed at the end).
    engine : Engine, optional
        The engine that registers (its calls are recorded in ``engine.calls``); default
        ``get_engine(settings.engine)``.

    Returns
    -------
    CoregResult

    Raises
    ------
    ImageError
        Unreadable/empty/4-D PET reference, unreadable/empty T1w, or a mask that does not match.
    """
    t0 = time.perf_counter()
    import nibabel as nib
    from scipy import ndimage

    inp = _prepare(pet_ref_path, t1_path, t1_mask, settings)
    flags = list(inp.flags)
    pet, pet_aff, t1, t1_aff, brain = inp.pet, inp.pet_aff, inp.t1, inp.t1_aff, inp.brain
    vox_t1, c_t1, c_pet, bcoords, radius = inp.vox_t1, inp.c_t1, inp.c_pet, inp.bcoords, inp.radius
    initial_offset = inp.initial_offset

    # registration grid: T1w cropped to the dilated brain and block-averaged to the finest level
    block = max(1, int(round(settings.fine_resolution_mm[-1] / vox_t1)))
    reg_vox = vox_t1 * block
    reg_mask = ndimage.binary_dilation(brain, iterations=max(1, int(round(8.0 / vox_t1))))
    box = bounding_box(reg_mask, margin=block * 2, block=block)
    t1_small, small_aff = crop_and_block(t1, t1_aff, box, block)
    mask_small, _ = crop_and_block(reg_mask.astype(np.float32), t1_aff, box, block)
    fixed = nib.Nifti1Image(t1_small, small_aff)
    mask_img = nib.Nifti1Image((mask_small > 0.5).astype(np.float32), small_aff)
    moving = nib.Nifti1Image(pet.astype(np.float32), pet_aff)
    engine = engine or get_engine(settings.engine)

    coarse_sampler = _Sampler(t1, t1_aff, brain, pet, pet_aff, step=max(1, int(round(4 / vox_t1))),
                              max_points=20_000)
    fine_sampler = inp.sampler

    def shrink_for(mm: float) -> int:
        return max(1, int(round(mm / reg_vox)))

    coarse = tuple(shrink_for(mm) for mm in settings.coarse_resolution_mm)
    fine = tuple(shrink_for(mm) for mm in settings.fine_resolution_mm)

    def sig(sh: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(max(0.0, 0.5 * (s - 1)) for s in sh)

    def levels(shrinks: tuple[int, ...], iterations: list[int]) -> list[RigidLevel]:
        return [RigidLevel(shrink=s, smoothing_vox=sg, iterations=k)
                for s, sg, k in zip(shrinks, sig(shrinks), iterations)]

    with tempfile.TemporaryDirectory(prefix="gliaflow_coreg_",
                                     dir=None if work_dir is None else str(work_dir)) as tmp:
        results: list[tuple[float, np.ndarray]] = []
        for rot in _start_rotations(settings.n_starts, settings.start_angle_deg):
            m0 = params_to_matrix([*rot, 0.0, 0.0, 0.0], c_t1)
            m0[:3, 3] += c_pet - c_t1
            m = engine.register_rigid(fixed, moving, levels=levels(coarse, settings.coarse_iterations),
                                      init=m0, fixed_mask=mask_img,
                                      sampling_rate=settings.sampling_rate, work_dir=Path(tmp),
                                      step="PET-to-T1w registration")
            results.append((coarse_sampler.nmi(m), m))
        start_scores = [float(s) for s, _ in results]
        best = int(np.argmax(start_scores))
        matrix = engine.register_rigid(fixed, moving, levels=levels(fine, settings.fine_iterations),
                                       init=results[best][1], fixed_mask=mask_img,
                                       sampling_rate=settings.sampling_rate, work_dir=Path(tmp),
                                       step="PET-to-T1w registration")

    qc = _assess(fine_sampler, matrix, settings, c_t1, radius)
    # a start that converged elsewhere with (nearly) the same similarity -> ambiguous
    s_best = start_scores[best]
    for s, m in results:
        if (s >= s_best * (1 - settings.optimum_tolerance)
                and displacement_error(m, results[best][1], bcoords) > settings.check_step_mm):
            flags.append("ambiguous_optimum")
            break
    flags += _quality_flags(qc, settings)
    likely_wrong = any(f not in ("large_initial_offset", "nonfinite_values_replaced") for f in flags)

    xfm = write_itk_text(matrix, out_xfm)
    return CoregResult(
        xfm=Path(xfm), matrix=matrix.tolist(), similarity=qc["similarity"],
        optimum_gain=qc["optimum_gain"], brain_coverage=qc["brain_coverage"],
        initial_offset_mm=initial_offset, start_similarity=start_scores, flags=flags,
        likely_wrong=likely_wrong, seconds=time.perf_counter() - t0,
    )
