"""Anatomical processing of the T1w image with ANTsPy: bias correction, brain extraction, tissue
segmentation and nonlinear registration to the MNI152 2009 template.

Steps (each timed; the expensive ones run at deliberately coarse resolutions):

1. **Checks**: 3-D, finite, not constant, a usable (non-singular, shear-free) affine. Flipped or
   oblique affines are fine: ITK works in world coordinates.
2. **N4** bias-field correction fitted on a ``settings.n4_fit_resolution_mm`` grid.
3. **Affine** T1 -> template at ``settings.affine_resolution_mm`` (mutual information, centre of
   mass initialisation).
4. **SyN** (no new affine stage) T1 -> template at ``settings.template_resolution_mm`` on the T1
   masked with the dilated template mask brought back with the affine; iterations
   ``settings.syn_iterations`` at shrink factors 2^(n-1) ... 1.
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

All images are written with :func:`~gliaflow.pipeline.derivatives.save_nifti` (atomic). Voxel
sizes are mm; volumes mm3; times s.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from .config import SegmentationSettings
from .derivatives import build_name, save_nifti
from .errors import ConfigError, ImageError
from .transforms import ants_to_affine, nifti_to_ants

__all__ = [
    "TEMPLATE_NAME",
    "DSEG_LABELS",
    "AnatOutputs",
    "AnatResult",
    "check_t1",
    "to_ants",
    "to_nib",
    "template_images",
    "process_anat",
]

TEMPLATE_NAME = "MNI152NLin2009aSym"
# fMRIPrep's discrete segmentation convention.
DSEG_LABELS = {1: "GM", 2: "WM", 3: "CSF"}


# --------------------------------------------------------------------------- image conversion

def to_ants(img: nib.spatialimages.SpatialImage, data: np.ndarray | None = None):
    """ANTsImage (float32) from a nibabel image (or its affine with ``data``)."""
    arr = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    return nifti_to_ants(arr, img.affine)


def to_nib(aimg, dtype=np.float32) -> nib.Nifti1Image:
    """Nibabel NIfTI from an ANTsImage (RAS affine, qform = sform)."""
    out = nib.Nifti1Image(np.asarray(aimg.numpy(), dtype=dtype), ants_to_affine(aimg))
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    return out


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
    from . import resources

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


def _downsample(img, resolution_mm: float):
    """Gaussian pre-smoothing and linear resampling of an ANTsImage to ``resolution_mm`` (mm);
    returned unchanged when it is already at least that coarse."""
    import ants

    sp = np.asarray(img.spacing, float)
    if np.all(sp >= 0.9 * resolution_mm):
        return img
    sigma = np.sqrt(np.maximum(resolution_mm ** 2 - sp ** 2, 0)) / 2.3548  # mm
    sm = ants.smooth_image(img, float(sigma.max()), sigma_in_physical_coordinates=True)
    return ants.resample_image(sm, (resolution_mm,) * 3, use_voxels=False, interp_type=0)


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


def _mi(fixed, moving, mask=None) -> float:
    import ants

    try:
        return float(ants.image_similarity(fixed, moving, metric_type="MattesMutualInformation",
                                           fixed_mask=mask))
    except Exception:  # similarity is QC only
        return float("nan")


def process_anat(
    t1_path: str | Path,
    settings: SegmentationSettings,
    outputs: AnatOutputs,
    n_threads: int = 1,
    work_dir: str | Path | None = None,
    seed: int = 1,
) -> AnatResult:
    """Bias-correct, skull-strip, segment and normalise a T1w image.

    Parameters
    ----------
    t1_path : path
        T1w NIfTI (any orientation; 3-D; voxels <= 3 mm).
    settings : SegmentationSettings
        Resolutions (mm), N4 shrink, affine/SyN iterations, prior weight.
    outputs : AnatOutputs
        Output paths (see :meth:`AnatOutputs.bids`).
    n_threads : int
        ITK threads.
    work_dir : path, optional
        Scratch for ANTs temporary files (a temporary folder when None; removed at the end).
    seed : int
        ITK random seed (affine metric sampling), for reproducible results.

    Returns
    -------
    AnatResult
        Paths, ANTs transform lists (template <-> T1w), per-step wall times (s) and a QC record
        (brain and tissue volumes in mm3, template similarity).
    """
    import os

    import ants

    if settings.transform != "SyN":
        raise ConfigError(f"transform {settings.transform!r} is not implemented; process_anat runs "
                          "an affine then a SyN stage ('SyN')", field="segmentation.transform")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n_threads)
    os.environ["ANTS_RANDOM_SEED"] = str(seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    img = check_t1(t1_path)
    t1 = to_ants(img)
    timings["load"] = time.perf_counter() - t0

    tmp_owner = tempfile.TemporaryDirectory(prefix="gliaflow_anat_", dir=work_dir)
    tmp = Path(tmp_owner.name)
    try:
        # 1. N4. The bias field is a smooth B-spline: it is fitted on the T1 resampled to 2 mm and
        #    shrunk further (to n4_fit_resolution_mm), and
        #    reconstructed at 2 mm, then brought to the native grid linearly. Evaluating the
        #    spline on the 1 mm grid would cost more than the fit itself.
        t = time.perf_counter()
        t1 = t1 - t1.min() + 0.0  # N4 needs positive intensities
        if settings.n4:
            small = _downsample(t1, 2.0)
            thr = float(np.percentile(small.numpy(), 60)) * 0.1
            head = ants.get_mask(small, low_thresh=thr, cleanup=0)
            shrink = max(1, int(round(settings.n4_fit_resolution_mm / min(small.spacing))))
            field = ants.n4_bias_field_correction(
                small, mask=head, shrink_factor=shrink, return_bias_field=True,
                convergence={"iters": list(settings.n4_iterations), "tol": 1e-7})
            if small is not t1:
                field = ants.resample_image_to_target(field, t1, interp_type="linear")
            fnp = field.numpy()
            fnp = np.where(fnp > 1e-3, fnp, 1.0)
            t1n = t1.new_image_like((t1.numpy() / fnp).astype(np.float32))
            del field, fnp, head, small
        else:
            t1n = t1
        _mem(timings, "n4")
        timings["n4"] = time.perf_counter() - t

        # 2. Template at the affine and SyN resolutions.
        t = time.perf_counter()
        tpl_lo = template_images(settings.affine_resolution_mm)
        tpl = template_images(settings.template_resolution_mm)
        f_lo = to_ants(tpl_lo["t1"])
        f_mask_lo = to_ants(tpl_lo["mask"])
        fixed = to_ants(tpl["t1"])
        fixed_mask = to_ants(tpl["mask"])
        timings["template"] = time.perf_counter() - t

        # 3. Affine T1 -> template (low resolution, centre-of-mass start). Registration inputs
        #    are resampled to the working resolution (smoothing the 1 mm T1 once here is much
        #    cheaper than ITK's per-level pyramid on the full grid).
        t = time.perf_counter()
        t1_lo = _downsample(t1n, settings.affine_resolution_mm)
        n_aff = len(settings.affine_iterations)
        aff = ants.registration(
            fixed=f_lo, moving=t1_lo, type_of_transform="Affine",
            aff_iterations=tuple(settings.affine_iterations),
            aff_shrink_factors=tuple(int(2 ** k) for k in range(n_aff - 1, -1, -1)),
            aff_smoothing_sigmas=tuple(range(n_aff - 1, -1, -1)),
            aff_random_sampling_rate=0.25, outprefix=str(tmp / "aff_"))
        affine_file = aff["fwdtransforms"][0]
        timings["affine"] = time.perf_counter() - t
        _mem(timings, "affine")

        # 4. Rough brain mask (dilated) -> masked T1 -> SyN at the template resolution.
        t = time.perf_counter()
        rough = ants.apply_transforms(fixed=t1n, moving=f_mask_lo, transformlist=[affine_file],
                                      whichtoinvert=[True], interpolator="linear")
        rough_np = ndimage.binary_dilation(rough.numpy() > 0.5, iterations=max(
            1, int(round(8.0 / min(t1n.spacing)))))
        moving = _downsample(t1n * rough.new_image_like(rough_np.astype(np.float32)),
                             settings.template_resolution_mm)
        del rough, rough_np, t1_lo, t1
        n_syn = len(settings.syn_iterations)
        syn = ants.registration(
            fixed=fixed, moving=moving, type_of_transform="SyNOnly",
            initial_transform=[affine_file], reg_iterations=tuple(settings.syn_iterations),
            flow_sigma=3, total_sigma=0, grad_step=0.2, outprefix=str(tmp / "syn_"))
        timings["syn"] = time.perf_counter() - t
        _mem(timings, "syn")
        fwd = [Path(p) for p in syn["fwdtransforms"]]   # [warp, affine]
        inv = [Path(p) for p in syn["invtransforms"]]   # [affine, inverse warp]
        warp = next(p for p in fwd if p.name.endswith("Warp.nii.gz"))
        iwarp = next(p for p in inv if p.name.endswith("InverseWarp.nii.gz"))
        affp = next(p for p in fwd if p.suffix == ".mat")

        # 5. Brain mask from the template mask brought back, refined.
        t = time.perf_counter()
        to_t1 = [str(affp), str(iwarp)]
        to_t1_inv = [True, False]
        mprob = ants.apply_transforms(fixed=t1n, moving=fixed_mask, transformlist=to_t1,
                                      whichtoinvert=to_t1_inv, interpolator="linear")
        brain = _refine_mask(mprob.numpy(), t1n.numpy())
        mask_img = t1n.new_image_like(brain.astype(np.float32))
        timings["brain_mask"] = time.perf_counter() - t
        _mem(timings, "brain_mask")

        # 6. Atropos with warped priors (order CSF, GM, WM = ascending T1 intensity).
        t = time.perf_counter()
        priors = []
        for k in ("csf", "gm", "wm"):
            p = ants.apply_transforms(fixed=t1n, moving=to_ants(tpl[k]), transformlist=to_t1,
                                      whichtoinvert=to_t1_inv, interpolator="linear")
            priors.append(p.numpy().clip(0, None).astype(np.float32))
            del p
        tot = np.sum(priors, axis=0, dtype=np.float32)
        # Inside the brain mask, renormalise; where the template says nothing, use a flat prior.
        flat = tot < 1e-3
        np.maximum(tot, np.float32(1e-3), out=tot)
        for p in priors:
            p /= tot
            p[flat] = np.float32(1.0 / 3.0)
            p *= brain
        del tot, flat
        prior_imgs = [t1n.new_image_like(p) for p in priors]
        seg_res = settings.segmentation_resolution_mm
        coarse = seg_res is not None and min(t1n.spacing) < 0.9 * seg_res
        if coarse:  # segment on a coarser grid, bring probabilities back linearly
            a_img = _downsample(t1n, seg_res)
            x_img = ants.resample_image_to_target(mask_img, a_img, interp_type="nearestNeighbor")
            i_imgs = [ants.resample_image_to_target(p, a_img, interp_type="linear")
                      for p in prior_imgs]
        else:
            a_img, x_img, i_imgs = t1n, mask_img, prior_imgs
        seg = ants.atropos(a=a_img, x=x_img, i=i_imgs, m=settings.atropos_mrf,
                           c=f"[{settings.atropos_iterations},0]", priorweight=settings.prior_weight)
        probs = seg["probabilityimages"]
        if coarse:
            probs = [ants.resample_image_to_target(pi, t1n, interp_type="linear") for pi in probs]
        probs = [pi.numpy().astype(np.float32) for pi in probs]
        del seg, prior_imgs, i_imgs, a_img, x_img
        tot = np.sum(probs, axis=0, dtype=np.float32)
        # renormalise inside the mask (edge voxels of the coarse grid fall outside its mask)
        ok = tot > 1e-3
        np.maximum(tot, np.float32(1e-3), out=tot)
        for p, pr in zip(probs, priors):
            p /= tot
            p[~ok] = pr[~ok]
            p *= brain
        del tot, ok, priors
        timings["atropos"] = time.perf_counter() - t
        _mem(timings, "atropos")

        # 7. Write outputs.
        t = time.perf_counter()
        csf, gm, wm = probs
        dseg = np.zeros(brain.shape, np.uint8)
        cls = np.argmax(np.stack([gm, wm, csf]), axis=0) + 1
        dseg[brain] = cls[brain]
        o = outputs
        ref = to_nib(t1n)
        save_nifti(ref, o.t1_preproc)
        save_nifti(nib.Nifti1Image(brain.astype(np.uint8), ref.affine, ref.header), o.brain_mask)
        save_nifti(nib.Nifti1Image(dseg, ref.affine, ref.header), o.dseg)
        for arr, p in ((gm, o.probseg_gm), (wm, o.probseg_wm), (csf, o.probseg_csf)):
            save_nifti(nib.Nifti1Image(arr, ref.affine, ref.header), p)
        del probs, gm, wm, csf, cls
        for src, dst in ((affp, o.xfm_affine), (warp, o.xfm_warp), (iwarp, o.xfm_inverse_warp)):
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, str(dst) + ".tmp")
            Path(str(dst) + ".tmp").replace(dst)
        timings["write"] = time.perf_counter() - t
        _mem(timings, "write")

        vox_mm3 = float(np.prod(t1n.spacing))
        warped = ants.apply_transforms(fixed=fixed, moving=t1n * mask_img,
                                       transformlist=[str(o.xfm_warp), str(o.xfm_affine)])
        qc = {
            "brain_volume_mm3": float(brain.sum() * vox_mm3),
            "gm_volume_mm3": float((dseg == 1).sum() * vox_mm3),
            "wm_volume_mm3": float((dseg == 2).sum() * vox_mm3),
            "csf_volume_mm3": float((dseg == 3).sum() * vox_mm3),
            "template_mi": _mi(fixed, warped, fixed_mask),
            "flags": [],
        }
        if not (800e3 <= qc["brain_volume_mm3"] <= 2200e3):
            qc["flags"].append(f"brain volume {qc['brain_volume_mm3'] / 1e3:.0f} cm3 is outside "
                               "800-2200 cm3: check brain extraction")
        timings["total"] = time.perf_counter() - t0
        qc["peak_rss_mib"] = timings.pop("_peak_rss_mib", {})
        return AnatResult(
            outputs=o, template_resolution_mm=settings.template_resolution_mm,
            to_template=[o.xfm_warp, o.xfm_affine], to_t1=[o.xfm_affine, o.xfm_inverse_warp],
            to_t1_invert=[True, False], timings_s=timings, qc=qc)
    finally:
        tmp_owner.cleanup()
