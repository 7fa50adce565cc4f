"""Atlas regions, tissue classes and reference regions in T1w and PET space.

Template-space images (atlas labels, reference-region masks) are brought to the T1w grid with the
inverse of the T1w-to-template transform computed by :func:`gliaflow.pipeline.spatial.anatomy.process_anat`
(labels: ANTs ``genericLabel`` interpolation; probabilities: linear). T1w-space images are brought
to the PET grid with the rigid PET-to-T1w transform (nearest neighbour for labels, linear for
probabilities and masks).

Rigid transforms follow :mod:`gliaflow.pipeline.spatial.transforms`: a 4x4 RAS matrix ``M`` that maps a
T1w world point to the PET world point (the content of ``_from-petref_to-T1w_mode-image_xfm``),
or the path of that ITK text file.

Label tables are pandas DataFrames with columns ``index`` (int label value) and ``name``.
Volumes are mm3.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from gliaflow.pipeline.config import AtlasSettings
from gliaflow.pipeline.engines import Engine, get_engine
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.io.resources import select_regions
from gliaflow.pipeline.provenance import STEP_LABELS_PET, gliaflow_call, library_call

__all__ = [
    "TISSUE_LABELS",
    "SUBCORTICAL_PATTERN",
    "atlas_entity",
    "load_atlas",
    "select_regions",
    "is_cortical",
    "template_to_t1",
    "labels_to_t1",
    "gm_mask_labels",
    "reference_masks_t1",
    "add_tissue_labels",
    "t1_to_pet",
    "labels_to_pet",
    "region_volumes",
    "labels_qc",
]

# Extra GTM regions added after the atlas labels (index, name).
TISSUE_LABELS = {"other_gm": 9001, "white_matter": 9002, "csf": 9003}

SUBCORTICAL_PATTERN = re.compile(
    r"thalam|caudat|putam|pallid|hippocamp|amygdal|accumb|stem|ventric|vermis|cerebel|white|"
    r"cerebral_wm|csf|olfactory|vessel|\bwm\b", re.IGNORECASE)


def atlas_entity(name: str) -> str:
    """BIDS ``seg`` entity value for an atlas name (alphanumerics only): harvard-oxford ->
    harvardoxford."""
    return re.sub(r"[^A-Za-z0-9]", "", name)


def load_atlas(settings: AtlasSettings):
    """The atlas named in ``settings`` (embedded or custom) as a resources ``Atlas``
    (``.name``, ``.image`` 3-D integer label image in template space, ``.labels`` DataFrame)."""
    from gliaflow.pipeline.io import resources

    if settings.name == "custom":
        return resources.get_atlas("custom", image=settings.image, labels=settings.labels)
    return resources.get_atlas(settings.name)


def is_cortical(name: str) -> bool:
    """Whether an atlas region is cortex (GM-masked) rather than subcortical/cerebellar/WM."""
    return not SUBCORTICAL_PATTERN.search(name)


# --------------------------------------------------------------------------- template -> T1

def _load(img, what: str):
    if isinstance(img, (str, Path)):
        if not Path(img).exists():
            raise ImageError(f"{what} not found", file=img)
        return nib.load(str(img))
    return img


def template_to_t1(img, t1_ref, to_t1: Sequence[str | Path], to_t1_invert: Sequence[bool],
                   interpolation: str = "linear", dtype=np.float32,
                   engine: Engine | None = None) -> nib.Nifti1Image:
    """Resample a template-space image onto the T1w grid.

    Parameters
    ----------
    img : nibabel image or path
        3-D image in template space.
    t1_ref : nibabel image or path
        The T1w grid (e.g. the bias-corrected T1w).
    to_t1, to_t1_invert : ANTs transform list and inversion flags
        ``AnatResult.to_t1`` / ``AnatResult.to_t1_invert``.
    interpolation : {'linear', 'nearest', 'label'}
        ``label`` uses label-wise voting (ANTs ``genericLabel``), for label images.
    engine : Engine, optional
        Engine that resamples (default ANTs, which applies ITK transform chains natively).
    """
    engine = engine or get_engine("ants")
    ref = _load(t1_ref, "T1w reference")
    src = _load(img, "template image")
    res = engine.resample(src, ref, [Path(p) for p in to_t1], list(to_t1_invert),
                          interpolation=interpolation, step="atlas to T1w")
    data = res.get_fdata()
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data)
    return nib.Nifti1Image(data.astype(dtype), res.affine)


def labels_to_t1(atlas_img, t1_ref, to_t1, to_t1_invert, labels_table: pd.DataFrame | None = None,
                 interpolation: str = "nearest", engine: Engine | None = None) -> nib.Nifti1Image:
    """Atlas labels (template space) on the T1w grid (int32; labels not in the table -> 0).

    ``interpolation`` is ``'nearest'`` (default, fast) or ``'label'`` (ANTs genericLabel: smoothed
    per-label voting, smoother borders, cost grows with the number of labels).
    """
    out = template_to_t1(atlas_img, t1_ref, to_t1, to_t1_invert, interpolation=interpolation,
                         dtype=np.int32, engine=engine)
    if labels_table is not None:
        data = np.asarray(out.dataobj)
        data = np.where(np.isin(data, labels_table["index"].astype(int).to_numpy()), data, 0)
        out = nib.Nifti1Image(data.astype(np.int32), out.affine)
    return out


def gm_mask_labels(label_img, gm_prob, labels_table: pd.DataFrame, brain_mask=None,
                   threshold: float = 0.35) -> nib.Nifti1Image:
    """Restrict cortical labels to grey matter (``gm_prob >= threshold``); subcortical labels
    (see :func:`is_cortical`) are kept inside the brain mask. Same grid for all inputs."""
    lab = np.asarray(_load(label_img, "labels").dataobj).astype(np.int32)
    gm = np.asarray(_load(gm_prob, "GM probability").dataobj, dtype=np.float32)
    if gm.shape != lab.shape:
        raise ImageError(f"GM probability grid {gm.shape} differs from labels {lab.shape}")
    cortical = [int(i) for i, n in zip(labels_table["index"], labels_table["name"]) if is_cortical(n)]
    drop = np.isin(lab, cortical) & (gm < threshold)
    if brain_mask is not None:
        drop |= np.asarray(_load(brain_mask, "brain mask").dataobj) == 0
    out = np.where(drop, 0, lab).astype(np.int32)
    return nib.Nifti1Image(out, _load(label_img, "labels").affine)


def reference_masks_t1(ref_masks_template: Mapping[str, Any], t1_ref, to_t1, to_t1_invert,
                       gm_prob, brain_mask, threshold: float = 0.5, gm_threshold: float = 0.35,
                       engine: Engine | None = None) -> dict[str, nib.Nifti1Image]:
    """Reference regions on the T1w grid (uint8 masks).

    ``whole_brain`` is the brain mask without CSF-dominated voxels; every other region is its
    template mask brought back (linear, >= ``threshold``) and restricted to grey matter when its
    name ends in ``_gm`` or ``_cortex``.
    """
    brain = np.asarray(_load(brain_mask, "brain mask").dataobj) > 0
    gm = np.asarray(_load(gm_prob, "GM probability").dataobj, dtype=np.float32)
    aff = _load(brain_mask, "brain mask").affine
    out = {}
    for name, m in ref_masks_template.items():
        if name == "whole_brain":
            mask = brain
        else:
            warped = template_to_t1(m, t1_ref, to_t1, to_t1_invert, interpolation="linear",
                                    engine=engine)
            mask = (np.asarray(warped.dataobj) >= threshold) & brain
            if name.endswith(("_gm", "_cortex")):
                mask &= gm >= gm_threshold
        out[name] = nib.Nifti1Image(mask.astype(np.uint8), aff)
    return out


def add_tissue_labels(label_img, labels_table: pd.DataFrame, dseg) -> tuple[nib.Nifti1Image,
                                                                             pd.DataFrame]:
    """Complete an atlas label image into a brain partition for GTM: unlabelled voxels of the
    tissue segmentation (fMRIPrep dseg: 1 GM, 2 WM, 3 CSF) get :data:`TISSUE_LABELS`."""
    lab = np.asarray(_load(label_img, "labels").dataobj).astype(np.int32)
    ds = np.asarray(_load(dseg, "dseg").dataobj).astype(np.int32)
    if ds.shape != lab.shape:
        raise ImageError(f"dseg grid {ds.shape} differs from labels {lab.shape}")
    clash = set(labels_table["index"].astype(int)) & set(TISSUE_LABELS.values())
    if clash:
        raise ImageError(f"atlas uses label values {sorted(clash)} reserved for tissue classes")
    free = lab == 0
    for cls, name in ((1, "other_gm"), (2, "white_matter"), (3, "csf")):
        lab[free & (ds == cls)] = TISSUE_LABELS[name]
    table = pd.concat([labels_table[["index", "name"]],
                       pd.DataFrame({"index": list(TISSUE_LABELS.values()),
                                     "name": list(TISSUE_LABELS)})], ignore_index=True)
    return nib.Nifti1Image(lab, _load(label_img, "labels").affine), table


# --------------------------------------------------------------------------- T1 -> PET

def _t1_to_pet_matrix(xfm) -> np.ndarray:
    if isinstance(xfm, (str, Path)):
        from gliaflow.pipeline.spatial.transforms import read_itk_text

        mats = read_itk_text(xfm)
        if len(mats) != 1:
            raise ImageError(f"expected one transform, found {len(mats)}", file=xfm)
        return mats[0]
    m = np.asarray(xfm, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ImageError("the T1w->PET transform must be a finite 4x4 matrix", field="xfm")
    return m


def t1_to_pet(img, pet_ref, xfm, order: int = 1, dtype=np.float32) -> nib.Nifti1Image:
    """Resample a T1w-grid image onto the PET grid through the rigid transform.

    Parameters
    ----------
    img : nibabel image or path (3-D, T1w grid)
    pet_ref : nibabel image or path
        PET reference (3-D) or the 4-D PET (its first three dimensions define the grid).
    xfm : 4x4 array or path
        RAS matrix mapping a T1w world point to the PET world point (pull transform of the
        PET-to-T1w registration; ``_from-petref_to-T1w_mode-image_xfm.txt``).
    order : int
        0 nearest neighbour (labels), 1 linear (probabilities, masks).
    """
    src = _load(img, "T1w-space image")
    ref = _load(pet_ref, "PET reference")
    m = _t1_to_pet_matrix(xfm)
    # PET voxel -> PET world -> T1 world (M^-1) -> T1 voxel
    vox = np.linalg.inv(src.affine) @ np.linalg.inv(m) @ ref.affine
    data = np.asarray(src.dataobj)
    data = data.astype(np.int32 if order == 0 else np.float32)
    out = ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], output_shape=ref.shape[:3],
                                   order=order, mode="constant", cval=0, prefilter=False)
    img_out = nib.Nifti1Image(out.astype(dtype), ref.affine)
    img_out.header.set_xyzt_units("mm", "sec")
    return img_out


def labels_to_pet(label_img, pet_ref, xfm) -> nib.Nifti1Image:
    """Integer labels (T1w grid) on the PET grid, nearest neighbour (int32)."""
    return t1_to_pet(label_img, pet_ref, xfm, order=0, dtype=np.int32)


def masks_to_pet(masks: Mapping[str, Any], pet_ref, xfm, threshold: float = 0.5
                 ) -> dict[str, nib.Nifti1Image]:
    """Binary masks (T1w grid) on the PET grid: linear interpolation, ``>= threshold`` (uint8)."""
    out = {}
    for name, m in masks.items():
        r = t1_to_pet(m, pet_ref, xfm, order=1)
        out[name] = nib.Nifti1Image((np.asarray(r.dataobj) >= threshold).astype(np.uint8), r.affine)
    return out


__all__.append("masks_to_pet")


# --------------------------------------------------------------------------- volumes and QC

def region_volumes(label_img, labels_table: pd.DataFrame,
                   masks: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Voxel counts and volumes (mm3) per region of a label image (and per extra mask).

    Returns a DataFrame with columns ``index``, ``name``, ``voxels``, ``volume_mm3`` (masks get
    index -1).
    """
    img = _load(label_img, "labels")
    lab = np.rint(np.asarray(img.dataobj)).astype(np.int64)
    vox_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
    idx = labels_table["index"].astype(int).to_numpy()
    vals, counts = np.unique(lab, return_counts=True)
    lut = dict(zip(vals.tolist(), counts.tolist()))
    n = np.array([lut.get(int(i), 0) for i in idx])
    rows = pd.DataFrame({"index": idx, "name": labels_table["name"].astype(str).to_numpy(),
                         "voxels": n, "volume_mm3": n * vox_mm3})
    extra = []
    for name, m in (masks or {}).items():
        mi = _load(m, name)
        c = int((np.asarray(mi.dataobj) > 0).sum())
        extra.append({"index": -1, "name": name, "voxels": c,
                      "volume_mm3": c * float(abs(np.linalg.det(mi.affine[:3, :3])))})
    if extra:
        rows = pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)
    return rows


def labels_qc(volumes: pd.DataFrame, min_volume_mm3: float) -> dict[str, Any]:
    """QC record from :func:`region_volumes`: empty and too-small regions, total labelled volume."""
    small = volumes.loc[(volumes["volume_mm3"] > 0) & (volumes["volume_mm3"] < min_volume_mm3),
                        "name"].tolist()
    empty = volumes.loc[volumes["voxels"] == 0, "name"].tolist()
    flags = []
    if empty:
        flags.append(f"{len(empty)} region(s) without voxels")
    if small:
        flags.append(f"{len(small)} region(s) smaller than {min_volume_mm3:g} mm3")
    return {
        "region_volumes_mm3": dict(zip(volumes["name"], volumes["volume_mm3"].astype(float))),
        "empty_regions": empty,
        "small_regions": small,
        "labelled_volume_mm3": float(volumes.loc[volumes["index"] >= 0, "volume_mm3"].sum()),
        "flags": flags,
    }


# --------------------------------------------------------------------------- one-call helper

class SessionLabels:
    """Labels of one session on the T1w and PET grids (see :func:`session_labels`).

    Attributes
    ----------
    table : DataFrame
        Selected atlas regions (``index``, ``name``).
    labels_t1, labels_pet : nibabel int32 images
        GM-masked atlas labels (selected regions only).
    partition_t1, partition_pet, partition_table :
        Atlas labels completed with :data:`TISSUE_LABELS` (the GTM partition) and its table.
    refs_t1, refs_pet : dict name -> nibabel uint8 mask
        Reference regions.
    volumes_t1, volumes_pet : DataFrame
        :func:`region_volumes` (mm3) of the labels and reference regions.
    provenance : list of ToolCall
        gliaflow's own steps and library calls (the engine's calls are recorded by the engine).
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)


def session_labels(anat, atlas, pet_ref, xfm, settings: AtlasSettings, ref_resolution_mm=2.0,
                   engine: Engine | None = None) -> SessionLabels:
    """Atlas regions, GTM partition and reference regions of one session in T1w and PET space.

    Parameters
    ----------
    anat : AnatResult
        From :func:`gliaflow.pipeline.spatial.anatomy.process_anat`.
    atlas : resources.Atlas
        Template-space atlas (``.image``, ``.labels``), e.g. :func:`load_atlas`.
    pet_ref : nibabel image or path
        PET grid (3-D reference or 4-D series).
    xfm : 4x4 array or path
        T1w -> PET rigid map (``_from-petref_to-T1w_mode-image_xfm.txt``).
    settings : AtlasSettings
        ``regions`` (names or indices) and ``reference_regions``.
    ref_resolution_mm : float
        Template resolution (mm) at which reference-region masks are built.
    engine : Engine, optional
        Engine that resamples template-space images (default ANTs).
    """
    from gliaflow.pipeline.io import resources

    o = anat.outputs
    table = select_regions(atlas.labels, settings.regions)
    engine = engine or get_engine("ants")
    lab = labels_to_t1(atlas.image, o.t1_preproc, anat.to_t1, anat.to_t1_invert, table, engine=engine)
    lab = gm_mask_labels(lab, o.probseg_gm, table, o.brain_mask)
    part, ptable = add_tissue_labels(lab, table, o.dseg)
    refs_tpl = resources.reference_regions(atlas, ref_resolution_mm)  # names checked by AtlasSettings
    refs = reference_masks_t1({k: refs_tpl[k] for k in settings.reference_regions}, o.t1_preproc,
                              anat.to_t1, anat.to_t1_invert, o.probseg_gm, o.brain_mask,
                              engine=engine)
    lab_pet = labels_to_pet(lab, pet_ref, xfm)
    part_pet = labels_to_pet(part, pet_ref, xfm)
    refs_pet = masks_to_pet(refs, pet_ref, xfm)
    # t1_to_pet resamples with scipy: nearest neighbour for the two label images, linear for
    # each reference mask
    calls = [gliaflow_call(STEP_LABELS_PET, "gliaflow.pipeline.regions.atlas.t1_to_pet",
                           count=2 + len(refs)),
             library_call(STEP_LABELS_PET, "SciPy", "scipy.ndimage.affine_transform(order=0)",
                          count=2)]
    if refs:
        calls.append(library_call(STEP_LABELS_PET, "SciPy",
                                  "scipy.ndimage.affine_transform(order=1)", count=len(refs)))
    return SessionLabels(
        table=table, labels_t1=lab, labels_pet=lab_pet, partition_t1=part,
        partition_pet=part_pet, partition_table=ptable, refs_t1=refs, refs_pet=refs_pet,
        volumes_t1=region_volumes(lab, table, refs), volumes_pet=region_volumes(lab_pet, table,
                                                                                refs_pet),
        provenance=calls)


__all__ += ["SessionLabels", "session_labels"]
