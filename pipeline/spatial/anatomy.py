"""Anatomical processing of the T1w image: bias correction, brain extraction, tissue segmentation
and nonlinear registration to the MNI152 2009 template.

The toolkit-specific operations go through the engine seam (:mod:`gliaflow.pipeline.engines`):
``SegmentationSettings.engine`` does bias correction, brain extraction and tissue segmentation,
``SegmentationSettings.normalization_engine`` the template registration. The steps below are
those of the default (ANTs) engines; each is timed and the expensive ones run at deliberately
coarse resolutions:

1. **Checks**: 3-D, finite, not constant, a usable (non-singular, shear-free) affine. Flipped or
   oblique affines are fine: ITK works in world coordinates.
2. **N4** bias-field correction fitted on a ``settings.n4_fit_resolution_mm`` grid.
3. **Affine** T1 -> template at ``settings.affine_resolution_mm`` (mutual information, centre of
   mass initialisation).
4. **SyN** (no new affine stage; skipped when ``settings.transform`` is ``Affine``) T1 ->
   template at ``settings.template_resolution_mm`` on the T1 masked with the dilated template
   mask brought back with the affine; iterations ``settings.syn_iterations``.
5. **Brain mask**: the template brain mask brought back with the inverse transform, then refined
   (threshold 0.5, intensity floor, largest component, hole filling).
6. **Atropos** 3-class (CSF, GM, WM) segmentation inside the mask with the template tissue priors
   (brought back with the inverse transform) at ``settings.prior_weight``, on the T1w resampled
   to ``settings.segmentation_resolution_mm``; probabilities are brought back linearly.

Measured (tests/benchmarks/subject_processing.py, 1 mm T1w, 2 threads, machine shared with other
jobs): N4 fitted on a 1 mm grid shrunk 4x took ~40-110 s because of the full-resolution spline
evaluation; fitted at 6 mm on a 2 mm copy it takes ~7 s. Atropos at 1 mm took ~110 s, at 2 mm
~12 s. Registration inputs resampled to the working resolution made the affine ~3 s and SyN
(2 mm, 40x20x10 at shrink 4/2/1) ~7-15 s.

All images are written with :func:`~gliaflow.pipeline.io.derivatives.save_nifti` (atomic). Voxel
sizes are mm; volumes mm3; times s.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from gliaflow.pipeline.config import SegmentationSettings
from gliaflow.pipeline.io.derivatives import build_name, save_nifti
from gliaflow.pipeline.engines import Engine, Normalization, get_engine
from gliaflow.pipeline.errors import ImageError

__all__ = [
    "TEMPLATE_NAME",
    "DSEG_LABELS",
    "AnatOutputs",
    "AnatResult",
    "check_t1",
    "template_images",
    "process_anat",
]

TEMPLATE_NAME = "MNI152NLin2009aSym"
# fMRIPrep's discrete segmentation convention.
DSEG_LABELS = {1: "GM", 2: "WM", 3: "CSF"}


def check_t1(t1) -> nib.Nifti1Image:
    """Load and validate a T1w image.

    Parameters
    ----------
    t1 : path or nibabel image

    Returns
    -------
    nibabel image (3-D, float32 data, finite)

    Raises
    ------
    ImageError
        Missing/unreadable file, not 3-D, NaN/inf, all zero or constant, singular or sheared
        affine (naming the file and the field).
    """
    src = str(t1) if isinstance(t1, (str, Path)) else None
    if src is not None:
        if not Path(src).exists():
            raise ImageError("T1w image not found", file=src)
        try:
            img = nib.load(src)
        except Exception as exc:
            raise ImageError(f"cannot read T1w image: {exc}", file=src) from exc
    else:
        img = t1
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise ImageError(f"T1w must be 3-D, got shape {shape}", file=src, field="dim")
    aff = np.asarray(img.affine, float)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise ImageError("T1w affine is singular or not finite", file=src, field="sform/qform")
    vox = np.linalg.norm(aff[:3, :3], axis=0)
    direction = aff[:3, :3] / vox
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise ImageError("T1w affine has shear; reslice the image first", file=src,
                         field="sform/qform")
    if np.any(vox > 3.05):
        raise ImageError(f"T1w voxels are too coarse ({np.round(vox, 2).tolist()} mm)", file=src,
                         field="pixdim")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ImageError("T1w contains NaN or infinite values", file=src)
    if np.ptp(data) == 0:
        raise ImageError("T1w is constant (all zero?)", file=src)
    out = nib.Nifti1Image(data, aff)
    out.header.set_xyzt_units("mm", "sec")
    return out


# --------------------------------------------------------------------------- template

def template_images(resolution_mm: float) -> dict[str, nib.Nifti1Image]:
    """The embedded MNI152 2009 template at ``resolution_mm``: ``t1``, ``mask``, ``gm``, ``wm``,
    ``csf`` (tissue probabilities in [0, 1])."""
    from gliaflow.pipeline.io import resources

    res = resolution_mm
    pri = resources.tissue_priors(res)
    out = {"t1": resources.template_t1(res), "mask": resources.template_mask(res)}
    for k in ("gm", "wm", "csf"):
        out[k] = pri[k]
    return out


# --------------------------------------------------------------------------- outputs

class AnatOutputs(BaseModel):
    """Where :func:`process_anat` writes (all paths explicit)."""

    t1_preproc: Path
    brain_mask: Path
    dseg: Path
    probseg_gm: Path
    probseg_wm: Path
    probseg_csf: Path
    xfm_affine: Path = Field(description="T1w->template affine (ITK .mat), part of both directions.")
    xfm_warp: Path = Field(description="Forward warp (template points -> T1w points, .nii.gz).")
    xfm_inverse_warp: Path = Field(description="Inverse warp (T1w points -> template points).")

    @classmethod
    def bids(cls, anat_dir: str | Path, entities: dict[str, str | None],
             template: str = TEMPLATE_NAME) -> "AnatOutputs":
        """fMRIPrep-style names in ``anat_dir`` for the given entities (sub, ses, ...)."""
        d = Path(anat_dir)
        e = {k: v for k, v in entities.items() if k in ("sub", "ses", "run")}

        def n(suffix, ext, **more):
            return d / build_name({**e, **more}, suffix, ext)

        return cls(
            t1_preproc=n("T1w", ".nii.gz", desc="preproc"),
            brain_mask=n("mask", ".nii.gz", desc="brain"),
            dseg=n("dseg", ".nii.gz"),
            probseg_gm=n("probseg", ".nii.gz", label="GM"),
            probseg_wm=n("probseg", ".nii.gz", label="WM"),
            probseg_csf=n("probseg", ".nii.gz", label="CSF"),
            xfm_affine=n("xfm", ".mat", **{"from": "T1w", "to": template, "mode": "image",
                                           "desc": "affine"}),
            xfm_warp=n("xfm", ".nii.gz", **{"from": template, "to": "T1w", "mode": "image",
                                            "desc": "warp"}),
            xfm_inverse_warp=n("xfm", ".nii.gz", **{"from": "T1w", "to": template, "mode": "image",
                                                    "desc": "warp"}),
        )


class AnatResult(BaseModel):
    """What :func:`process_anat` produced.

    ``to_template`` / ``to_t1`` are ANTs transform lists for ``ants.apply_transforms``:
    ``apply_transforms(fixed=template, moving=T1-space image, transformlist=to_template)`` and
    ``apply_transforms(fixed=T1, moving=template-space image, transformlist=to_t1[0],
    whichtoinvert=to_t1[1])``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    outputs: AnatOutputs
    template: str = TEMPLATE_NAME
    template_resolution_mm: float
    to_template: list[Path]
    to_t1: list[Path]
    to_t1_invert: list[bool]
    timings_s: dict[str, float]
    qc: dict[str, Any]


# --------------------------------------------------------------------------- processing

def _vmhwm_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux /proc, NaN elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _mem(timings: dict, step: str) -> None:
    timings.setdefault("_peak_rss_mib", {})[step] = round(_vmhwm_mib(), 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def _refine_mask(prob: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Threshold the warped template mask, drop near-zero T1 voxels, keep one filled component."""
    mask = prob >= 0.5
    inside = t1[mask]
    if inside.size:
        floor = 0.1 * np.percentile(inside, 50)
        mask &= t1 > floor
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = _largest_component(mask)
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    return mask


def process_anat(
    t1_path: str | Path,
    settings: SegmentationSettings,
    outputs: AnatOutputs,
    work_dir: str | Path | None = None,
    engine: Engine | None = None,
    normalization_engine: Engine | None = None,
) -> AnatResult:
    """Bias-correct, skull-strip, segment and normalise a T1w image.

    Parameters
    ----------
    t1_path : path
        T1w NIfTI (any orientation; 3-D; voxels <= 3 mm).
    settings : SegmentationSettings
        Resolutions (mm), N4, affine/SyN iterations, transform, Atropos settings, engines.
    outputs : AnatOutputs
        Output paths (see :meth:`AnatOutputs.bids`).
    work_dir : path, optional
        Scratch for the engines' temporary files (a temporary folder when None; removed at the end).
    engine, normalization_engine : Engine, optional
        Engines for bias correction / brain extraction / segmentation and for the template
        registration (their calls are recorded in ``.calls``); default from ``settings``.

    Returns
    -------
    AnatResult
        Paths, transform lists (template <-> T1w, ITK files), per-step wall times (s) and a QC
        record (brain and tissue volumes in mm3, template similarity).
    """
    engine = engine or get_engine(settings.engine)
    normalization_engine = normalization_engine or (
        engine if settings.normalization_engine == settings.engine else get_engine(settings.normalization_engine))
    run = _AnatRun()
    img = run.step("load", lambda: check_t1(t1_path))
    with tempfile.TemporaryDirectory(prefix="gliaflow_anat_", dir=work_dir) as tmp:
        tmp = Path(tmp)
        t1n = run.step("n4", lambda: engine.bias_correct(
            img, fit_resolution_mm=settings.n4_fit_resolution_mm,
            iterations=settings.n4_iterations, work_dir=tmp) if settings.n4 else _positive(img))

        tpl = run.step("template", lambda: {
            "affine": template_images(settings.affine_resolution_mm),
            "nonlinear": template_images(settings.template_resolution_mm)})
        norm = run.step("normalization", lambda: normalization_engine.normalize(
            t1n, tpl, transform=settings.transform, affine_iterations=settings.affine_iterations,
            syn_iterations=settings.syn_iterations, work_dir=tmp))
        brain = run.step("brain_mask", lambda: _refine_mask(engine.brain_probability(
            t1n, normalization=norm, template_mask=tpl["nonlinear"]["mask"], work_dir=tmp),
            np.asarray(t1n.dataobj)))
        probs = run.step("segmentation", lambda: _segment(
            engine, normalization_engine, t1n, brain, norm, tpl["nonlinear"], settings, tmp))
        norm = run.step("write", lambda: _write_outputs(t1n, brain, probs, norm, outputs))
        qc = _anat_qc(normalization_engine, t1n, brain, probs, norm, tpl["nonlinear"])
    run.timings["total"] = time.perf_counter() - run.t0
    qc["peak_rss_mib"] = run.peak_rss_mib
    return AnatResult(
        outputs=outputs, template_resolution_mm=settings.template_resolution_mm,
        to_template=norm.to_template, to_t1=norm.to_t1, to_t1_invert=norm.to_t1_invert,
        timings_s=run.timings, qc=qc)


@dataclass
class _AnatRun:
    """Wall time (s) and peak resident memory (MiB) of each step of :func:`process_anat`."""

    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, func):
        t = time.perf_counter()
        out = func()
        self.timings[name] = time.perf_counter() - t
        self.peak_rss_mib[name] = round(_vmhwm_mib(), 1)
        return out


def _positive(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The T1w shifted to non-negative intensities (what N4 would see), when N4 is off."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    return nib.Nifti1Image(data - data.min(), img.affine, img.header)


def _segment(engine: Engine, resampler: Engine, t1n, brain: np.ndarray, norm: Normalization,
             tpl: dict, settings: SegmentationSettings, work_dir: Path) -> list[np.ndarray]:
    """Three-class probabilities (CSF, GM, WM; float32, zero outside ``brain``, summing to one
    inside it) from the engine, with the template priors pulled back to the T1w grid."""
    priors = []
    for k in ("csf", "gm", "wm"):
        p = resampler.resample(tpl[k], t1n, norm.to_t1, norm.to_t1_invert, step="tissue priors")
        priors.append(np.asarray(p.dataobj, dtype=np.float32).clip(0, None))
    tot = np.sum(priors, axis=0, dtype=np.float32)
    # Inside the brain mask, renormalise; where the template says nothing, use a flat prior.
    flat = tot < 1e-3
    np.maximum(tot, np.float32(1e-3), out=tot)
    for p in priors:
        p /= tot
        p[flat] = np.float32(1.0 / 3.0)
        p *= brain
    del tot, flat
    probs = engine.segment(t1n, brain, priors, resolution_mm=settings.segmentation_resolution_mm,
                           iterations=settings.atropos_iterations, prior_weight=settings.prior_weight,
                           mrf=settings.atropos_mrf, work_dir=work_dir)
    tot = np.sum(probs, axis=0, dtype=np.float32)
    # renormalise inside the mask (edge voxels of a coarse grid fall outside its mask)
    ok = tot > 1e-3
    np.maximum(tot, np.float32(1e-3), out=tot)
    for p, pr in zip(probs, priors):
        p /= tot
        p[~ok] = pr[~ok]
        p *= brain
    return probs


def _copy_atomic(src: Path, dst: Path) -> Path:
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, str(dst) + ".tmp")
    Path(str(dst) + ".tmp").replace(dst)
    return Path(dst)


def _write_outputs(t1n, brain: np.ndarray, probs: list[np.ndarray], norm: Normalization,
                   o: AnatOutputs) -> Normalization:
    """Write the preprocessed T1w, mask, dseg, probsegs and transforms; return the transforms at
    their output paths."""
    csf, gm, wm = probs
    dseg = np.zeros(brain.shape, np.uint8)
    cls = np.argmax(np.stack([gm, wm, csf]), axis=0) + 1
    dseg[brain] = cls[brain]
    ref = nib.Nifti1Image(np.asarray(t1n.dataobj, dtype=np.float32), t1n.affine)
    ref.set_qform(ref.affine, code=1)
    ref.set_sform(ref.affine, code=1)
    ref.header.set_xyzt_units("mm", "sec")
    save_nifti(ref, o.t1_preproc)
    save_nifti(nib.Nifti1Image(brain.astype(np.uint8), ref.affine, ref.header), o.brain_mask)
    save_nifti(nib.Nifti1Image(dseg, ref.affine, ref.header), o.dseg)
    for arr, p in ((gm, o.probseg_gm), (wm, o.probseg_wm), (csf, o.probseg_csf)):
        save_nifti(nib.Nifti1Image(arr, ref.affine, ref.header), p)
    out = Normalization(affine=_copy_atomic(norm.affine, o.xfm_affine))
    if norm.warp is not None:
        out.warp = _copy_atomic(norm.warp, o.xfm_warp)
        out.inverse_warp = _copy_atomic(norm.inverse_warp, o.xfm_inverse_warp)
    return out


def _anat_qc(resampler: Engine, t1n, brain: np.ndarray, probs: list[np.ndarray],
             norm: Normalization, tpl: dict) -> dict[str, Any]:
    """Brain and tissue volumes (mm3), template similarity of the normalised brain, flags."""
    vox_mm3 = float(abs(np.linalg.det(t1n.affine[:3, :3])))
    csf, gm, wm = probs
    cls = np.argmax(np.stack([gm, wm, csf]), axis=0) + 1
    masked = nib.Nifti1Image(np.asarray(t1n.dataobj, dtype=np.float32) * brain, t1n.affine)
    warped = resampler.resample(masked, tpl["t1"], norm.to_template, step="template QC")
    qc = {
        "brain_volume_mm3": float(brain.sum() * vox_mm3),
        "gm_volume_mm3": float(((cls == 1) & brain).sum() * vox_mm3),
        "wm_volume_mm3": float(((cls == 2) & brain).sum() * vox_mm3),
        "csf_volume_mm3": float(((cls == 3) & brain).sum() * vox_mm3),
        "template_mi": _template_similarity(tpl["t1"], warped, tpl["mask"]),
        "flags": [],
    }
    if not (800e3 <= qc["brain_volume_mm3"] <= 2200e3):
        qc["flags"].append(f"brain volume {qc['brain_volume_mm3'] / 1e3:.0f} cm3 is outside "
                           "800-2200 cm3: check brain extraction")
    return qc


def _template_similarity(fixed, moving, mask) -> float:
    """Mattes mutual information (ITK's, negative is better) between the template and the
    normalised brain, over the template mask; NaN when it cannot be computed."""
    from gliaflow.pipeline.engines.ants import AntsEngine

    return AntsEngine().similarity(fixed, moving, mask)
