"""The embedded default engine: ANTsPy (ANTs/ITK as a pip wheel, no binaries).

Implements :class:`~gliaflow.pipeline.engines.base.Engine` with ``ants.registration`` (Rigid with
Mattes mutual information; Affine; SyNOnly), ``ants.apply_transforms``,
``ants.n4_bias_field_correction`` and ``ants.atropos``. Images cross the seam as nibabel images
and are converted here (:func:`to_ants`, :func:`to_nib`).

ITK reads its thread count (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``) once per process; the
workflow layer sets it when a worker starts. The engine's ``seed`` is handed to ANTsPy
(``--random-seed`` of antsRegistration) for each call and the previous value restored after it.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np

from gliaflow.pipeline.engines.base import Engine, Normalization, RigidLevel
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.provenance import package_version
from gliaflow.pipeline.spatial.transforms import LPS_FLIP, itk_affine_to_matrix, write_itk_text

__all__ = ["AntsEngine", "to_ants", "to_nib", "nifti_to_ants", "ants_to_affine", "downsample"]

_INTERP = {"linear": "linear", "nearest": "nearestNeighbor", "label": "genericLabel"}


# --------------------------------------------------------------------------- conversion

def nifti_to_ants(data: np.ndarray, affine: np.ndarray):
    """A float32 3-D ANTsImage from a voxel array and its RAS affine (no shear allowed)."""
    import ants

    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ImageError("affine has a zero voxel size", field="affine")
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ImageError("affine has shear; cannot be represented as an ITK image", field="affine")
    flip = LPS_FLIP[:3, :3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(flip @ affine[:3, 3]),
        spacing=tuple(spacing),
        direction=flip @ direction,
    )


def ants_to_affine(img) -> np.ndarray:
    """RAS 4x4 affine of an ANTsImage (inverse of the geometry used in :func:`nifti_to_ants`)."""
    flip = LPS_FLIP[:3, :3]
    a = np.eye(4)
    a[:3, :3] = flip @ np.asarray(img.direction) @ np.diag(img.spacing)
    a[:3, 3] = flip @ np.asarray(img.origin)
    return a


def to_ants(img: nib.spatialimages.SpatialImage, data: np.ndarray | None = None):
    """ANTsImage (float32) from a nibabel image (or its affine with ``data``)."""
    arr = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    return nifti_to_ants(arr, img.affine)


def to_nib(aimg, dtype=np.float32) -> nib.Nifti1Image:
    """Nibabel NIfTI from an ANTsImage (RAS affine, qform = sform, units mm/s)."""
    out = nib.Nifti1Image(np.asarray(aimg.numpy(), dtype=dtype), ants_to_affine(aimg))
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    return out


def downsample(img, resolution_mm: float):
    """Gaussian pre-smoothing and linear resampling of an ANTsImage to ``resolution_mm`` (mm);
    returned unchanged when it is already at least that coarse."""
    import ants

    sp = np.asarray(img.spacing, float)
    if np.all(sp >= 0.9 * resolution_mm):
        return img
    sigma = np.sqrt(np.maximum(resolution_mm ** 2 - sp ** 2, 0)) / 2.3548  # mm
    sm = ants.smooth_image(img, float(sigma.max()), sigma_in_physical_coordinates=True)
    return ants.resample_image(sm, (resolution_mm,) * 3, use_voxels=False, interp_type=0)


def _as_ants(img):
    return img if not isinstance(img, nib.spatialimages.SpatialImage) else to_ants(img)


# --------------------------------------------------------------------------- engine

class AntsEngine(Engine):
    """ANTsPy implementation of the engine seam (the default for every step)."""

    name = "ants"
    name_cited = "ANTs"

    def version(self) -> str:
        return "ANTsPy " + package_version("antspyx")

    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        import ants

        old = ants.config._random_seed
        ants.config._random_seed = self.seed
        try:
            yield
        finally:
            ants.config._random_seed = old

    # ------------------------------------------------------------------ PET
    def register_rigid(self, fixed, moving, *, levels: Sequence[RigidLevel], init=None,
                       fixed_mask=None, sampling_rate: float = 0.25, work_dir: Path,
                       step: str = "rigid registration") -> np.ndarray:
        import ants

        work_dir = Path(work_dir)
        with tempfile.TemporaryDirectory(prefix="rigid_", dir=work_dir) as tmp:
            initial = ["Identity"] if init is None else [str(write_itk_text(init, Path(tmp) / "init.txt"))]
            kw = dict(type_of_transform="Rigid", initial_transform=initial, aff_metric="mattes",
                      aff_sampling=32, aff_random_sampling_rate=sampling_rate,
                      aff_iterations=tuple(int(lv.iterations) for lv in levels),
                      aff_shrink_factors=tuple(int(lv.shrink) for lv in levels),
                      aff_smoothing_sigmas=tuple(float(lv.smoothing_vox) for lv in levels),
                      outprefix=str(Path(tmp) / "reg_"))
            if fixed_mask is not None:
                kw["mask"] = _as_ants(fixed_mask)
            with self._seeded():
                reg = ants.registration(_as_ants(fixed), _as_ants(moving), **kw)
            tx = ants.read_transform(reg["fwdtransforms"][0])
            m = itk_affine_to_matrix(tx.parameters, tx.fixed_parameters)
        self.record(step, "ants.registration(type_of_transform='Rigid', aff_metric='mattes')")
        return m

    def resample(self, moving, reference, transforms=(), invert=None, interpolation="linear",
                 step: str = "resampling") -> nib.Nifti1Image:
        import ants

        with tempfile.TemporaryDirectory(prefix="resample_") as tmp:
            tl = []
            for k, t in enumerate(transforms):
                if isinstance(t, (str, Path)):
                    tl.append(str(t))
                else:
                    tl.append(str(write_itk_text(np.asarray(t, float), Path(tmp) / f"m{k}.txt")))
            if not tl:
                tl = [str(write_itk_text(np.eye(4), Path(tmp) / "identity.txt"))]
            inv = list(invert) if invert is not None else [False] * len(tl)
            out = ants.apply_transforms(fixed=_as_ants(reference), moving=_as_ants(moving),
                                        transformlist=tl, whichtoinvert=inv,
                                        interpolator=_INTERP[interpolation])
        self.record(step, f"ants.apply_transforms(interpolator='{_INTERP[interpolation]}')")
        return to_nib(out)

    # ------------------------------------------------------------------ T1w
    def bias_correct(self, t1, *, fit_resolution_mm: float, iterations: Sequence[int],
                     work_dir: Path) -> nib.Nifti1Image:
        """N4 fitted on the T1w resampled to 2 mm and shrunk to ``fit_resolution_mm``; the field
        is brought back to the native grid linearly (evaluating the spline at 1 mm costs more
        than the fit)."""
        import ants

        t1a = _as_ants(t1)
        t1a = t1a - t1a.min() + 0.0  # N4 needs positive intensities
        small = downsample(t1a, 2.0)
        thr = float(np.percentile(small.numpy(), 60)) * 0.1
        head = ants.get_mask(small, low_thresh=thr, cleanup=0)
        shrink = max(1, int(round(fit_resolution_mm / min(small.spacing))))
        with self._seeded():
            field = ants.n4_bias_field_correction(
                small, mask=head, shrink_factor=shrink, return_bias_field=True,
                convergence={"iters": list(iterations), "tol": 1e-7})
        if small is not t1a:
            field = ants.resample_image_to_target(field, t1a, interp_type="linear")
        fnp = field.numpy()
        fnp = np.where(fnp > 1e-3, fnp, 1.0)
        self.record("bias correction", "ants.n4_bias_field_correction")
        return to_nib(t1a.new_image_like((t1a.numpy() / fnp).astype(np.float32)))

    def normalize(self, t1, template, *, transform: str, affine_iterations: Sequence[int],
                  syn_iterations: Sequence[int], work_dir: Path) -> Normalization:
        """Affine (centre-of-mass start, on the T1w resampled to the affine template resolution),
        then, for ``'SyN'``, SyN without a new affine stage on the T1w masked with the dilated
        template mask pulled back through the affine, at the nonlinear template resolution."""
        import ants
        from scipy import ndimage

        work_dir = Path(work_dir)
        t1a = _as_ants(t1)
        lo, hi = template["affine"], template["nonlinear"]
        f_lo = to_ants(lo["t1"])
        res_lo = float(min(f_lo.spacing))
        n_aff = len(affine_iterations)
        with self._seeded():
            aff = ants.registration(
                fixed=f_lo, moving=downsample(t1a, res_lo), type_of_transform="Affine",
                aff_iterations=tuple(affine_iterations),
                aff_shrink_factors=tuple(int(2 ** k) for k in range(n_aff - 1, -1, -1)),
                aff_smoothing_sigmas=tuple(range(n_aff - 1, -1, -1)),
                aff_random_sampling_rate=0.25, outprefix=str(work_dir / "aff_"))
        affine_file = Path(aff["fwdtransforms"][0])
        self.record("template normalization", "ants.registration(type_of_transform='Affine')")
        if transform == "Affine":
            return Normalization(affine=affine_file)

        fixed = to_ants(hi["t1"])
        rough = ants.apply_transforms(fixed=t1a, moving=to_ants(lo["mask"]),
                                      transformlist=[str(affine_file)], whichtoinvert=[True],
                                      interpolator="linear")
        rough_np = ndimage.binary_dilation(rough.numpy() > 0.5, iterations=max(
            1, int(round(8.0 / min(t1a.spacing)))))
        moving = downsample(t1a * rough.new_image_like(rough_np.astype(np.float32)),
                            float(min(fixed.spacing)))
        del rough, rough_np
        with self._seeded():
            syn = ants.registration(
                fixed=fixed, moving=moving, type_of_transform="SyNOnly",
                initial_transform=[str(affine_file)], reg_iterations=tuple(syn_iterations),
                flow_sigma=3, total_sigma=0, grad_step=0.2, outprefix=str(work_dir / "syn_"))
        self.record("template normalization", "ants.registration(type_of_transform='SyNOnly')")
        fwd = [Path(p) for p in syn["fwdtransforms"]]   # [warp, affine]
        inv = [Path(p) for p in syn["invtransforms"]]   # [affine, inverse warp]
        return Normalization(
            affine=next(p for p in fwd if p.suffix == ".mat"),
            warp=next(p for p in fwd if p.name.endswith("Warp.nii.gz")),
            inverse_warp=next(p for p in inv if p.name.endswith("InverseWarp.nii.gz")))

    def segment(self, t1, brain, priors, *, resolution_mm, iterations, prior_weight, mrf,
                work_dir) -> list[np.ndarray]:
        """Atropos (CSF, GM, WM) initialised with the prior probabilities; on the T1w resampled to
        ``resolution_mm`` when that is coarser than the T1w, probabilities brought back linearly."""
        import ants

        if priors is None:
            raise ImageError("the ANTs segmentation (Atropos) needs tissue priors", field="priors")
        t1a = _as_ants(t1)
        mask_img = t1a.new_image_like(np.asarray(brain, dtype=np.float32))
        prior_imgs = [t1a.new_image_like(np.asarray(p, dtype=np.float32)) for p in priors]
        coarse = resolution_mm is not None and min(t1a.spacing) < 0.9 * resolution_mm
        if coarse:
            a_img = downsample(t1a, resolution_mm)
            x_img = ants.resample_image_to_target(mask_img, a_img, interp_type="nearestNeighbor")
            i_imgs = [ants.resample_image_to_target(p, a_img, interp_type="linear") for p in prior_imgs]
        else:
            a_img, x_img, i_imgs = t1a, mask_img, prior_imgs
        with self._seeded():
            seg = ants.atropos(a=a_img, x=x_img, i=i_imgs, m=mrf, c=f"[{iterations},0]",
                               priorweight=prior_weight)
        self.record("tissue segmentation", "ants.atropos(i='PriorProbabilityImages')")
        probs = seg["probabilityimages"]
        if coarse:
            probs = [ants.resample_image_to_target(pi, t1a, interp_type="linear") for pi in probs]
        return [pi.numpy().astype(np.float32) for pi in probs]

    def similarity(self, fixed, moving, mask=None) -> float:
        """Mattes mutual information between two images on the same grid (QC; NaN on failure)."""
        import ants

        try:
            return float(ants.image_similarity(_as_ants(fixed), _as_ants(moving),
                                               metric_type="MattesMutualInformation",
                                               fixed_mask=None if mask is None else _as_ants(mask)))
        except Exception:  # noqa: BLE001 - similarity is QC only
            return float("nan")
