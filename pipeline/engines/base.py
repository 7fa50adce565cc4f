"""The engine seam: the image operations whose implementation differs between toolkits.

An :class:`Engine` does frame realignment, rigid registration, bias correction, template
normalization, brain extraction, tissue segmentation and resampling. Everything around these
operations (reading and checking images, choosing references and masks, cropping, QC, writing
BIDS derivatives) is toolkit-neutral code in :mod:`gliaflow.pipeline.spatial` that calls the
engine selected for the step (``motion.engine``, ``registration.engine``,
``segmentation.engine``, ``segmentation.normalization_engine``).

Conventions at the seam (one for every engine)
----------------------------------------------
* Images are nibabel images with RAS affines in mm; 3-D unless stated.
* A linear transform is a 4x4 **pull** matrix in RAS world mm mapping a point of the fixed
  (output) space to the moving (input) space: ``resampled(x) = moving(M @ x)``; see
  :mod:`gliaflow.pipeline.spatial.transforms` for converters to and from ITK (LPS) and FSL
  (scaled-voxel) matrices.
* A nonlinear transform (template normalization) is an ITK transform chain on disk, applied in
  list order to the points of the output grid as ``antsApplyTransforms`` does: the affine as an
  ITK ``.mat`` and the warps as ITK displacement-field NIfTI files (:class:`Normalization`).
  An engine whose toolkit stores warps otherwise converts them to this form before returning.
* Engines record what they ran (:attr:`Engine.calls`, :class:`~gliaflow.pipeline.provenance.ToolCall`);
  stages return these records so that reports and methods text name only what ran.
* Process-wide state: engines never write ``os.environ``. Thread counts of a toolkit are
  process settings made once per worker by the workflow layer; a random ``seed`` given to an
  engine is applied to each of its calls and restored afterwards.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import nibabel as nib
import numpy as np
from pydantic import BaseModel, Field

from gliaflow.pipeline.provenance import ToolCall, merge_calls

__all__ = ["RigidLevel", "Normalization", "Engine"]


class RigidLevel(BaseModel):
    """One resolution level of a rigid registration."""

    shrink: int = Field(ge=1, description="Shrink factor of the fixed grid at this level.")
    smoothing_vox: float = Field(ge=0, description="Gaussian sigma (voxels of the fixed grid).")
    iterations: int = Field(ge=0, description="Optimiser iterations at this level.")


class Normalization(BaseModel):
    """T1w <-> template transforms as ITK files (see the module docstring).

    ``to_template`` maps template points to T1w points (resample a T1w-space image onto the
    template grid); ``to_t1`` with ``to_t1_invert`` maps T1w points to template points (resample
    a template-space image onto the T1w grid).
    """

    affine: Path = Field(description="T1w->template affine, ITK .mat (inverted in to_t1).")
    warp: Path | None = Field(None, description="Template points -> T1w points displacement field.")
    inverse_warp: Path | None = Field(None, description="T1w points -> template points field.")

    @property
    def to_template(self) -> list[Path]:
        return ([self.warp] if self.warp else []) + [self.affine]

    @property
    def to_t1(self) -> list[Path]:
        return [self.affine] + ([self.inverse_warp] if self.inverse_warp else [])

    @property
    def to_t1_invert(self) -> list[bool]:
        return [True] + ([False] if self.inverse_warp else [])


class Engine(abc.ABC):
    """A toolkit behind the seam. Subclasses implement the abstract operations.

    Parameters
    ----------
    seed : int, optional
        Random seed for the toolkit's stochastic steps (metric sampling), applied per call.
    """

    name: ClassVar[str]
    #: the toolkit's name as cited in methods text and provenance (``"ANTs"``, ``"FSL"``)
    name_cited: ClassVar[str] = ""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.calls: list[ToolCall] = []

    # ------------------------------------------------------------------ provenance
    @abc.abstractmethod
    def version(self) -> str:
        """Version string of the toolkit that runs."""

    def record(self, step: str, interface: str, command: str | None = None,
               tool: str | None = None, version: str | None = None) -> None:
        """Note one call (folded with earlier identical calls by :meth:`provenance`)."""
        self.calls.append(ToolCall(step=step, tool=tool or self.name_cited,
                                   version=version or self.version(), interface=interface,
                                   command=command))

    def provenance(self) -> list[ToolCall]:
        """The calls made so far, repeated calls folded into counts."""
        return merge_calls(self.calls)

    # ------------------------------------------------------------------ PET
    @abc.abstractmethod
    def register_rigid(self, fixed: nib.Nifti1Image, moving: nib.Nifti1Image, *,
                       levels: Sequence[RigidLevel], init: np.ndarray | None = None,
                       fixed_mask: nib.Nifti1Image | None = None, sampling_rate: float = 0.25,
                       work_dir: Path, step: str = "rigid registration") -> np.ndarray:
        """Rigid (6 dof) registration maximising mutual information.

        Returns the 4x4 RAS pull matrix (fixed point -> moving point); ``init`` is the starting
        matrix in the same convention (identity when None). ``sampling_rate`` is the fraction of
        fixed-grid voxels the metric samples.
        """

    def realign_series(self, reference: nib.Nifti1Image, frames: Iterable[tuple[int, nib.Nifti1Image]],
                       *, levels: Sequence[RigidLevel], mask: nib.Nifti1Image | None,
                       sampling_rate: float, work_dir: Path) -> dict[int, np.ndarray]:
        """Rigidly register each frame to ``reference`` (frame index -> pull matrix).

        The default registers frame by frame with :meth:`register_rigid`; an engine with a
        series tool (MCFLIRT) may override it.
        """
        return {i: self.register_rigid(reference, img, levels=levels, fixed_mask=mask,
                                       sampling_rate=sampling_rate, work_dir=work_dir,
                                       step="frame realignment")
                for i, img in frames}

    @abc.abstractmethod
    def resample(self, moving: nib.Nifti1Image, reference: nib.Nifti1Image,
                 transforms: Sequence[np.ndarray | Path] = (), invert: Sequence[bool] | None = None,
                 interpolation: str = "linear", step: str = "resampling") -> nib.Nifti1Image:
        """Resample ``moving`` onto the grid of ``reference`` through a transform chain (pull
        matrices and/or ITK files, applied in list order; ``invert`` per item).

        ``interpolation``: ``linear``, ``nearest`` or ``label`` (label-wise voting). Returns a
        float32 image on the reference grid (0 outside the moving field of view).
        """

    # ------------------------------------------------------------------ T1w
    @abc.abstractmethod
    def bias_correct(self, t1: nib.Nifti1Image, *, fit_resolution_mm: float,
                     iterations: Sequence[int], work_dir: Path) -> nib.Nifti1Image:
        """Intensity non-uniformity correction of a T1w (positive float32 out, same grid)."""

    @abc.abstractmethod
    def normalize(self, t1: nib.Nifti1Image, template: dict[str, dict[str, nib.Nifti1Image]], *,
                  transform: str, affine_iterations: Sequence[int], syn_iterations: Sequence[int],
                  work_dir: Path) -> Normalization:
        """Register a bias-corrected T1w to the template.

        ``template`` holds the template images (``t1``, ``mask``) at two resolutions under
        ``'affine'`` and ``'nonlinear'``. ``transform`` is ``'SyN'`` (affine then nonlinear) or
        ``'Affine'``. Files are written in ``work_dir``; the caller copies them to their place.
        """

    def brain_probability(self, t1: nib.Nifti1Image, *, normalization: Normalization,
                          template_mask: nib.Nifti1Image, work_dir: Path) -> np.ndarray:
        """Probability (0..1, T1w grid) that a voxel is brain. The default pulls the template
        brain mask back through the normalization; an engine with its own brain extraction
        (BET) overrides it."""
        img = self.resample(template_mask, t1, normalization.to_t1, normalization.to_t1_invert,
                            interpolation="linear", step="brain extraction")
        return np.asarray(img.dataobj, dtype=np.float32)

    @abc.abstractmethod
    def segment(self, t1: nib.Nifti1Image, brain: np.ndarray, priors: Sequence[np.ndarray] | None, *,
                resolution_mm: float | None, iterations: int, prior_weight: float, mrf: str,
                work_dir: Path) -> list[np.ndarray]:
        """Three-class tissue segmentation inside ``brain``: float32 probabilities (CSF, GM, WM)
        on the T1w grid. ``priors`` are the template's CSF/GM/WM probabilities on the T1w grid
        (engines that do not use priors ignore them)."""
