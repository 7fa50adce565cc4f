"""Moving images between spaces: PET reference -> T1w -> template (the embedded MNI152 2009).

The transforms come from the stages: the rigid PET-to-T1w registration (ITK text, mapping T1w
points to PET-reference points) and the T1w-to-template SyN (an ANTs transform list mapping
template points to T1w points). ANTs applies a transform list to the points of the fixed (output)
grid in list order, so ``template -> T1w -> PET`` is ``to_template + [petref_to_t1w]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from gliaflow.pipeline.engines import Engine, get_engine

__all__ = ["pet_to_template"]


def pet_to_template(img: nib.spatialimages.SpatialImage, xfm_petref_to_t1w: str | Path,
                    to_template: Sequence[str | Path], resolution_mm: float = 2.0,
                    interpolation: str = "linear", engine: Engine | None = None) -> nib.Nifti1Image:
    """Resample a 3-D PET-space image onto the template grid.

    Parameters
    ----------
    img : nibabel image
        3-D image on the PET-reference grid (any units; NaNs are treated as 0 and restored as
        NaN outside the resampled support).
    xfm_petref_to_t1w : path
        ITK text transform of the PET-to-T1w registration (T1w point -> PET point).
    to_template : list of paths
        ANTs transform list mapping template points to T1w points (anat stage ``to_template``).
    resolution_mm : float
        Template grid resolution (mm): 1 or 2.
    interpolation : {'linear', 'nearest', 'label'}
    engine : Engine, optional
        Engine that resamples (default ANTs, which applies ITK transform chains natively).

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the template grid; voxels outside the PET field of view are NaN.
    """
    from gliaflow.pipeline.io.resources import template_t1

    engine = engine or get_engine("ants")
    tmpl = template_t1(resolution_mm)
    data = np.asarray(img.dataobj, dtype=np.float32)
    finite = np.isfinite(data)
    tl = [Path(p) for p in to_template] + [Path(xfm_petref_to_t1w)]
    out = engine.resample(nib.Nifti1Image(np.where(finite, data, 0).astype(np.float32), img.affine),
                          tmpl, tl, interpolation=interpolation, step="maps to template space")
    sup = engine.resample(nib.Nifti1Image(finite.astype(np.float32), img.affine), tmpl, tl,
                          step="maps to template space")
    res = np.asarray(out.dataobj, dtype=np.float32).copy()
    res[np.asarray(sup.dataobj) < 0.5] = np.nan
    return nib.Nifti1Image(res, tmpl.affine)
