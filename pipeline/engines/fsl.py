"""FSL behind the engine seam, run through Nipype's FSL interfaces (``nipype.interfaces.fsl``).

Each operation writes its inputs to the step's scratch folder, runs one Nipype interface with
``.run()`` (no Nipype scheduler) and converts the result to the seam's convention:

* frame realignment: MCFLIRT to a reference volume (``-reffile``), normalised mutual information,
  6 dof, per-frame matrices (``-mats``);
* rigid registration: FLIRT, 6 dof, mutual information, +-``SEARCH_DEG`` search (no search when
  started from a given matrix);
* resampling: FLIRT ``-applyxfm`` for matrices; ITK transform chains (template normalization
  in the seam's convention) are applied with ANTs, recorded as such;
* bias correction: BET (robust centre, ``-R``) then FAST's bias field (``-B -b``) divided out of
  the whole head;
* brain extraction: BET ``-R``; tissue segmentation: FAST, 3 classes, T1, partial-volume maps
  used as CSF/GM/WM probabilities (priors are not used);
* template normalization: FLIRT 12 dof (correlation ratio) + FNIRT, the warp written as a
  displacement field (``fnirtfileutils``) and inverted (``invwarp``), both converted to ITK
  displacement fields.

FSL matrices are push transforms between scaled-voxel coordinates
(:func:`~gliaflow.pipeline.spatial.transforms.fsl_to_ras` converts them, flips included).
FSL is not shipped with gliaflow (non-commercial licence): the engine runs the FSL found at
``fsl_dir`` (default ``$FSLDIR``), and :func:`check_fsl` says what is missing before any work.
Command lines that ran are recorded with the tool's version.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from gliaflow.pipeline.engines.base import Engine, Normalization
from gliaflow.pipeline.errors import ConfigError, ImageError
from gliaflow.pipeline.provenance import ToolCall, package_version
from gliaflow.pipeline.spatial.transforms import (
    LPS_FLIP,
    fsl_scaled_voxel_matrix,
    fsl_to_ras,
    ras_to_fsl,
    read_fsl_matrix,
    write_fsl_matrix,
)

__all__ = ["FslEngine", "check_fsl", "FSL_BINARIES", "fsl_field_to_itk"]

#: binaries each operation runs (checked before any work by :func:`check_fsl`)
FSL_BINARIES = {
    "motion": ("mcflirt", "flirt"),
    "registration": ("flirt",),
    "segmentation": ("bet", "bet2", "fast"),
    "normalization": ("flirt", "fnirt", "fnirtfileutils", "invwarp"),
}
SEARCH_DEG = 30


def _fsl_dir(fsl_dir: str | Path | None) -> Path | None:
    d = fsl_dir if fsl_dir is not None else os.environ.get("FSLDIR")
    return Path(d) if d else None


def check_fsl(steps: Sequence[str], fsl_dir: str | Path | None = None) -> Path:
    """The FSL installation for ``steps`` (keys of :data:`FSL_BINARIES`), or a ConfigError naming
    the ``FSLDIR`` variable or the missing binary."""
    d = _fsl_dir(fsl_dir)
    if d is None:
        raise ConfigError("an FSL engine is selected but FSLDIR is not set; point FSLDIR at an "
                          "FSL installation or choose engine 'ants'", field="FSLDIR")
    if not (d / "bin").is_dir():
        raise ConfigError(f"FSLDIR={d} has no bin/ folder", field="FSLDIR")
    for step in steps:
        for b in FSL_BINARIES[step]:
            if not os.access(d / "bin" / b, os.X_OK):
                raise ConfigError(f"FSL binary '{b}' needed for {step} is missing from {d}/bin "
                                  f"(FSLDIR={d})", field="FSLDIR")
    return d


def fsl_field_to_itk(field: nib.Nifti1Image, in_shape: Sequence[int], in_affine: np.ndarray) -> nib.Nifti1Image:
    """ITK displacement field (LPS vectors, 5-D NIfTI, intent VECTOR) from an FSL *relative*
    displacement field.

    ``field`` is defined on the reference grid; at a reference voxel with scaled-voxel position
    ``p`` it holds ``d`` (mm) such that the input image's scaled-voxel position is ``p + d``
    (FSL ``--relout`` / fnirtfileutils' default). The ITK field holds, at each reference world
    point ``x``, ``y - x`` in LPS where ``y`` is the corresponding input world point (the pull
    convention of the seam).
    """
    ref_aff = np.asarray(field.affine, float)
    shape = field.shape[:3]
    d = np.asarray(field.dataobj, dtype=np.float64).reshape(shape + (3,))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    s_ref = fsl_scaled_voxel_matrix(shape, ref_aff)
    p = ijk @ s_ref[:3, :3].T + s_ref[:3, 3] + d
    to_world = np.asarray(in_affine, float) @ np.linalg.inv(fsl_scaled_voxel_matrix(in_shape, in_affine))
    y = p @ to_world[:3, :3].T + to_world[:3, 3]
    x = ijk @ ref_aff[:3, :3].T + ref_aff[:3, 3]
    disp = (y - x) * np.diag(LPS_FLIP)[:3]
    img = nib.Nifti1Image(disp[:, :, :, None, :].astype(np.float32), ref_aff)
    img.header.set_intent("vector")
    return img


class FslEngine(Engine):
    """FSL (through Nipype) implementation of the engine seam.

    Parameters
    ----------
    fsl_dir : path, optional
        FSL installation (default: the ``FSLDIR`` environment variable of this process).
    seed : int, optional
        Unused by FSL's deterministic tools; accepted for the common interface.
    """

    name = "fsl"
    name_cited = "FSL"

    def __init__(self, fsl_dir: str | Path | None = None, seed: int | None = None):
        super().__init__(seed=seed)
        self.fsl_dir = check_fsl([], fsl_dir)

    def version(self) -> str:
        f = self.fsl_dir / "etc" / "fslversion"
        try:
            return f.read_text().split(":")[0].strip() or "unknown"
        except OSError:
            return "unknown"

    # ------------------------------------------------------------------ running interfaces
    def _env(self) -> dict[str, str]:
        return {"FSLDIR": str(self.fsl_dir), "FSLOUTPUTTYPE": "NIFTI_GZ",
                "PATH": f"{self.fsl_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _run(self, interface, step: str, cwd: Path):
        """Run a Nipype FSL interface in ``cwd`` with this FSL; record FSL and Nipype calls."""
        interface.inputs.environ = self._env()
        if "output_type" in interface.inputs.trait_names():
            interface.inputs.output_type = "NIFTI_GZ"
        cwd.mkdir(parents=True, exist_ok=True)
        try:
            res = interface.run(cwd=str(cwd))
        except Exception as exc:  # nipype raises RuntimeError/OSError with the tool's stderr
            raise ImageError(f"{type(interface).__name__} failed: {exc}", field=step) from exc
        cmd = res.runtime.cmdline
        self.calls.append(ToolCall(step=step, tool="FSL", version=self.version(),
                                   interface=cmd.split()[0].rsplit("/", 1)[-1], command=cmd))
        self.calls.append(ToolCall(step=step, tool="Nipype", version=package_version("nipype"),
                                   interface=f"nipype.interfaces.fsl.{type(interface).__name__}"))
        return res.outputs

    @staticmethod
    def _save(img: nib.Nifti1Image, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        out.set_qform(img.affine, code=1)
        out.set_sform(img.affine, code=1)
        nib.save(out, str(path))
        return path

    @staticmethod
    def _load(path: str | Path) -> nib.Nifti1Image:
        img = nib.load(str(path))
        return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)

    # ------------------------------------------------------------------ PET
    def register_rigid(self, fixed, moving, *, levels, init=None, fixed_mask=None,
                       sampling_rate: float = 0.25, work_dir: Path,
                       step: str = "rigid registration") -> np.ndarray:
        """FLIRT, 6 dof, mutual information. ``levels`` and ``sampling_rate`` are ANTs concepts:
        FLIRT runs its own 8/4/2/1 mm schedule on all voxels."""
        from nipype.interfaces import fsl

        d = Path(work_dir) / f"flirt{len(self.calls):04d}"
        fx, mv = self._save(fixed, d / "fixed.nii.gz"), self._save(moving, d / "moving.nii.gz")
        flirt = fsl.FLIRT(in_file=str(mv), reference=str(fx), dof=6, cost="mutualinfo",
                          out_matrix_file=str(d / "moving_to_fixed.mat"), out_file=str(d / "out.nii.gz"))
        if fixed_mask is not None:
            flirt.inputs.ref_weight = str(self._save(fixed_mask, d / "fixed_mask.nii.gz"))
        if init is not None:
            m0 = ras_to_fsl(init, moving.shape[:3], moving.affine, fixed.shape[:3], fixed.affine)
            flirt.inputs.in_matrix_file = str(write_fsl_matrix(m0, d / "init.mat"))
            flirt.inputs.no_search = True
        else:
            for ax in ("x", "y", "z"):
                setattr(flirt.inputs, f"searchr_{ax}", [-SEARCH_DEG, SEARCH_DEG])
        out = self._run(flirt, step, d)
        return fsl_to_ras(read_fsl_matrix(out.out_matrix_file), moving.shape[:3], moving.affine,
                          fixed.shape[:3], fixed.affine)

    def realign_series(self, reference, frames, *, levels, mask, sampling_rate, work_dir):
        """MCFLIRT of the frames (stacked) to ``reference``: normalised MI, 6 dof, per-frame
        matrices. ``levels``/``sampling_rate``/``mask`` are ANTs concepts MCFLIRT does not take."""
        from nipype.interfaces import fsl

        frames = list(frames)
        if not frames:
            return {}
        d = Path(work_dir) / "mcflirt"
        d.mkdir(parents=True, exist_ok=True)
        idx = [i for i, _ in frames]
        series = np.stack([np.asarray(img.dataobj, dtype=np.float32) for _, img in frames], axis=-1)
        aff = frames[0][1].affine
        nib.save(nib.Nifti1Image(series, aff), str(d / "frames.nii.gz"))
        ref = self._save(reference, d / "reference.nii.gz")
        mc = fsl.MCFLIRT(in_file=str(d / "frames.nii.gz"), ref_file=str(ref), cost="normmi", dof=6,
                         save_mats=True, out_file=str(d / "frames_mcf.nii.gz"))
        out = self._run(mc, "frame realignment", d)
        mats = sorted(Path(p) for p in out.mat_file)
        if len(mats) != len(idx):
            raise ImageError(f"MCFLIRT wrote {len(mats)} matrices for {len(idx)} frames", field="mats")
        shape = series.shape[:3]
        return {i: fsl_to_ras(read_fsl_matrix(m), shape, aff, reference.shape[:3], reference.affine)
                for i, m in zip(idx, mats)}

    def resample(self, moving, reference, transforms=(), invert=None, interpolation="linear",
                 step: str = "resampling") -> nib.Nifti1Image:
        """FLIRT ``-applyxfm`` for one pull matrix (or none); chains with ITK files go to ANTs."""
        from nipype.interfaces import fsl

        transforms = list(transforms)
        if any(isinstance(t, (str, Path)) for t in transforms) or len(transforms) > 1 \
                or interpolation == "label":
            from gliaflow.pipeline.engines.ants import AntsEngine

            ants = AntsEngine(seed=self.seed)
            out = ants.resample(moving, reference, transforms, invert, interpolation, step=step)
            self.calls += ants.calls
            return out
        m = np.eye(4) if not transforms else np.asarray(transforms[0], float)
        if invert and invert[0]:
            m = np.linalg.inv(m)
        d = Path(self._scratch()) / f"applyxfm{len(self.calls):05d}"
        mv, rf = self._save(moving, d / "moving.nii.gz"), self._save(reference, d / "reference.nii.gz")
        fm = ras_to_fsl(m, moving.shape[:3], moving.affine, reference.shape[:3], reference.affine)
        ax = fsl.ApplyXFM(in_file=str(mv), reference=str(rf), apply_xfm=True,
                          in_matrix_file=str(write_fsl_matrix(fm, d / "xfm.mat")),
                          interp={"linear": "trilinear", "nearest": "nearestneighbour"}[interpolation],
                          out_file=str(d / "out.nii.gz"), out_matrix_file=str(d / "out.mat"))
        out = self._run(ax, step, d)
        img = self._load(out.out_file)
        shutil.rmtree(d, ignore_errors=True)
        return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), reference.affine)

    def _scratch(self) -> Path:
        import tempfile

        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.TemporaryDirectory(prefix="gliaflow_fsl_")
        return Path(self._tmp.name)

    # ------------------------------------------------------------------ T1w
    def _bet(self, t1, work_dir: Path) -> np.ndarray:
        from nipype.interfaces import fsl

        d = Path(work_dir) / "bet"
        src = self._save(t1, d / "t1.nii.gz")
        out = self._run(fsl.BET(in_file=str(src), robust=True, mask=True,
                                out_file=str(d / "t1_brain.nii.gz")), "brain extraction", d)
        return np.asarray(nib.load(out.mask_file).dataobj) > 0

    def bias_correct(self, t1, *, fit_resolution_mm, iterations, work_dir) -> nib.Nifti1Image:
        """FAST's bias field estimated inside the BET brain and divided out of the whole head
        (``fit_resolution_mm`` and ``iterations`` are N4 settings FAST does not take)."""
        from nipype.interfaces import fsl

        data = np.asarray(t1.dataobj, dtype=np.float32)
        data = data - data.min()
        pos = nib.Nifti1Image(data, t1.affine)
        brain = self._bet(pos, work_dir)
        d = Path(work_dir) / "fast_bias"
        src = self._save(nib.Nifti1Image(data * brain, t1.affine), d / "brain.nii.gz")
        out = self._run(fsl.FAST(in_files=[str(src)], img_type=1, number_classes=3,
                                 output_biasfield=True, no_pve=True, out_basename=str(d / "fast")),
                        "bias correction", d)
        field = np.asarray(nib.load(out.bias_field[0]).dataobj, dtype=np.float32)
        field = np.where(np.isfinite(field) & (field > 1e-3), field, 1.0)
        return nib.Nifti1Image((data / field).astype(np.float32), t1.affine)

    def brain_probability(self, t1, *, normalization, template_mask, work_dir) -> np.ndarray:
        return self._bet(t1, work_dir).astype(np.float32)

    def segment(self, t1, brain, priors, *, resolution_mm, iterations, prior_weight, mrf,
                work_dir) -> list[np.ndarray]:
        """FAST, 3 classes on the brain-extracted T1w; partial-volume maps as CSF/GM/WM
        probabilities (FAST orders T1 classes by intensity). Priors and the Atropos settings
        are not used."""
        from nipype.interfaces import fsl

        d = Path(work_dir) / "fast"
        data = np.asarray(t1.dataobj, dtype=np.float32) * np.asarray(brain, bool)
        src = self._save(nib.Nifti1Image(data, t1.affine), d / "brain.nii.gz")
        out = self._run(fsl.FAST(in_files=[str(src)], img_type=1, number_classes=3,
                                 out_basename=str(d / "fast")), "tissue segmentation", d)
        pves = sorted(out.partial_volume_files)
        if len(pves) != 3:
            raise ImageError(f"FAST wrote {len(pves)} partial-volume maps, expected 3", field="pve")
        return [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in pves]

    def normalize(self, t1, template, *, transform, affine_iterations, syn_iterations,
                  work_dir) -> Normalization:
        """FLIRT 12 dof (BET brain to template brain, correlation ratio); for ``'SyN'`` FNIRT on
        top (``affine_iterations``/``syn_iterations`` are ANTs settings FSL does not take)."""
        from nipype.interfaces import fsl

        d = Path(work_dir) / "fsl_norm"
        brain = self._bet(t1, work_dir)
        t1d = np.asarray(t1.dataobj, dtype=np.float32)
        t1b = self._save(nib.Nifti1Image(t1d * brain, t1.affine), d / "t1_brain.nii.gz")
        t1h = self._save(t1, d / "t1.nii.gz")
        tpl = template["nonlinear"]
        tb = self._save(nib.Nifti1Image(np.asarray(tpl["t1"].dataobj, np.float32)
                                        * (np.asarray(tpl["mask"].dataobj) > 0.5), tpl["t1"].affine),
                        d / "template_brain.nii.gz")
        th = self._save(tpl["t1"], d / "template.nii.gz")
        out = self._run(fsl.FLIRT(in_file=str(t1b), reference=str(tb), dof=12, cost="corratio",
                                  out_matrix_file=str(d / "t1_to_tpl.mat"), out_file=str(d / "aff.nii.gz")),
                        "template normalization", d)
        fmat = read_fsl_matrix(out.out_matrix_file)
        pull = fsl_to_ras(fmat, t1.shape[:3], t1.affine, tpl["t1"].shape[:3], tpl["t1"].affine)
        affine_file = _write_ants_affine(pull, d / "affine.mat")
        if transform == "Affine":
            return Normalization(affine=affine_file)
        tm = self._save(tpl["mask"], d / "template_mask.nii.gz")
        fn = fsl.FNIRT(in_file=str(t1h), ref_file=str(th), affine_file=str(out.out_matrix_file),
                       refmask_file=str(tm), fieldcoeff_file=str(d / "coef.nii.gz"),
                       warped_file=str(d / "warped.nii.gz"))
        fn_out = self._run(fn, "template normalization", d)
        wu = fsl.WarpUtils(in_file=str(fn_out.fieldcoeff_file), reference=str(th), out_format="field",
                           with_affine=True, out_file=str(d / "field.nii.gz"))
        field = self._run(wu, "template normalization", d).out_file
        iw = fsl.InvWarp(warp=str(field), reference=str(t1h), inverse_warp=str(d / "invfield.nii.gz"),
                         relative=True)
        inv = self._run(iw, "template normalization", d).inverse_warp
        ident = _write_ants_affine(np.eye(4), d / "identity.mat")
        fwd = fsl_field_to_itk(nib.load(str(field)), t1.shape[:3], t1.affine)
        bwd = fsl_field_to_itk(nib.load(str(inv)), tpl["t1"].shape[:3], tpl["t1"].affine)
        nib.save(fwd, str(d / "warp_itk.nii.gz"))
        nib.save(bwd, str(d / "invwarp_itk.nii.gz"))
        return Normalization(affine=ident, warp=d / "warp_itk.nii.gz", inverse_warp=d / "invwarp_itk.nii.gz")


def _write_ants_affine(pull_ras: np.ndarray, path: Path) -> Path:
    """An ITK binary ``.mat`` (what ANTs writes, so the anat outputs keep one format)."""
    import ants

    from gliaflow.pipeline.spatial.transforms import matrix_to_itk_affine

    p, c = matrix_to_itk_affine(pull_ras)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    parameters=list(p), fixed_parameters=list(c))
    ants.write_transform(tx, str(path))
    return path
