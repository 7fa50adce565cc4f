"""Anatomical phantom for the anat/atlas/TAC tests and the subject-processing benchmark.

A subject T1 is the MNI152 2009 template (nilearn package data) pulled through a known mapping
``y = A @ x + u(x)`` (subject world point x -> template world point y, RAS mm): a random affine A
(rotations, translations, anisotropic scaling) plus a smooth random displacement u (mm), with a
multiplicative bias field and noise. The ground-truth atlas in subject space is the template-space
atlas sampled through the same mapping (nearest neighbour).
"""
from __future__ import annotations

import numpy as np
import nibabel as nib
from scipy import ndimage


def _rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def template_1mm():
    from gliaflow.pipeline.spatial.anatomy import template_images

    return template_images(1.0)


def _sample(img, world, order, cval=0.0):
    """Sample a nibabel image at world points (..., 3) RAS mm."""
    inv = np.linalg.inv(img.affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    data = np.asarray(img.dataobj)
    if order == 0:
        data = data.astype(np.int32) if np.issubdtype(data.dtype, np.integer) else data
    else:
        data = data.astype(np.float32)
    return ndimage.map_coordinates(data, np.moveaxis(vox, -1, 0), order=order, mode="constant",
                                   cval=cval, prefilter=False)


def subject_grid(resolution_mm: float, rot_deg=(0.0, 0.0, 0.0), shape_mm=(190, 226, 186),
                 flip_x: bool = False):
    """Subject voxel grid (shape, affine) covering the head, optionally oblique/flipped."""
    shape = tuple(int(np.ceil(s / resolution_mm)) for s in shape_mm)
    r = _rot(*np.deg2rad(rot_deg)) * resolution_mm
    if flip_x:
        r = r @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = r
    centre = (np.array(shape) - 1) / 2.0
    aff[:3, 3] = np.array([0.0, -18.0, 18.0]) - r @ centre
    return shape, aff


def make_mapping(seed: int = 0, max_rot_deg: float = 8.0, max_shift_mm: float = 8.0,
                 scale_range: float = 0.06, disp_mm: float = 3.0, smooth_mm: float = 25.0):
    """Random (affine 4x4, displacement function) for ``y = A x + u(x)`` (RAS mm)."""
    rng = np.random.default_rng(seed)
    ang = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    a = np.eye(4)
    a[:3, :3] = _rot(*ang) @ np.diag(1.0 + rng.uniform(-scale_range, scale_range, 3))
    a[:3, 3] = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    # Smooth displacement on a coarse lattice (8 mm) over the head box, cubic interpolation.
    step = 8.0
    lo = np.array([-110.0, -150.0, -90.0])
    n = (np.array([220.0, 260.0, 200.0]) / step).astype(int) + 1
    field = rng.standard_normal((3, *n))
    field = np.stack([ndimage.gaussian_filter(f, smooth_mm / step / 2.355 * 2) for f in field])
    field *= disp_mm / np.abs(field).max()

    def u(world):
        idx = (world - lo) / step
        return np.stack([ndimage.map_coordinates(field[k], np.moveaxis(idx, -1, 0), order=3,
                                                 mode="nearest") for k in range(3)], axis=-1)

    return a, u


def grid_world(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"),
                   axis=-1)
    return ijk @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)


def make_subject(resolution_mm: float = 3.0, seed: int = 0, atlas_img=None, rot_deg=(0, 0, 0),
                 flip_x: bool = False, noise: float = 0.02, bias: float = 0.15, **mapping_kw):
    """Subject T1 (and, with ``atlas_img``, the true atlas) on a subject grid.

    Returns
    -------
    dict with ``t1`` (nibabel), ``atlas`` (nibabel int32, if atlas given), ``gm``/``wm``/``csf``
    (true tissue probabilities on the subject grid), ``mapping`` (A, u) and ``world_to_template``
    (callable on world points (..., 3)).
    """
    tpl = template_1mm()
    shape, aff = subject_grid(resolution_mm, rot_deg, flip_x=flip_x)
    a, u = make_mapping(seed, **mapping_kw)
    x = grid_world(shape, aff)
    y = x @ a[:3, :3].T.astype(np.float32) + a[:3, 3].astype(np.float32) + u(x)
    t1 = tpl["t1"]
    # Smooth the 1 mm template to the subject resolution before sampling (no aliasing).
    sig = max(resolution_mm / 2.355 * 0.8, 0.0)
    t1s = nib.Nifti1Image(ndimage.gaussian_filter(np.asarray(t1.dataobj, np.float32), sig), t1.affine)
    val = _sample(t1s, y, order=1)
    rng = np.random.default_rng(seed + 100)
    if bias:
        b = ndimage.gaussian_filter(rng.standard_normal((6, 6, 6)), 1.0)
        b = ndimage.zoom(b / np.abs(b).max(), np.array(shape) / 6.0, order=3)[: shape[0], : shape[1],
                                                                            : shape[2]]
        val = val * (1.0 + bias * b)
    val = val + noise * val.max() * rng.standard_normal(val.shape) * (val > 0)
    val = np.clip(val, 0, None).astype(np.float32)
    out = {"t1": nib.Nifti1Image(val, aff), "mapping": (a, u), "shape": shape, "affine": aff,
           "world_to_template": lambda w: w @ a[:3, :3].T + a[:3, 3] + u(w)}
    out["t1"].header.set_xyzt_units("mm", "sec")
    for k in ("gm", "wm", "csf"):
        out[k] = nib.Nifti1Image(_sample(tpl[k], y, order=1).astype(np.float32), aff)
    if atlas_img is not None:
        out["atlas"] = nib.Nifti1Image(_sample(atlas_img, y, order=0).astype(np.int32), aff)
    return out


_CACHE: dict = {}


def run_phantom_anat(out_dir, resolution_mm: float = 2.0, seed: int = 1, rot_deg=(0, 0, 0),
                     flip_x: bool = False, **settings_kw):
    """Build a phantom subject with the Harvard-Oxford truth and run process_anat once per
    (resolution, seed, settings) in this process (shared by test_anat and test_atlas)."""
    from pathlib import Path

    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.spatial.anatomy import AnatOutputs, process_anat
    from gliaflow.pipeline.config import SegmentationSettings

    key = (resolution_mm, seed, tuple(rot_deg), flip_x, repr(sorted(settings_kw.items())))
    if key in _CACHE:
        return _CACHE[key]
    atlas = resources.get_atlas("harvard-oxford")
    ph = make_subject(resolution_mm, seed=seed, atlas_img=atlas.image, rot_deg=rot_deg,
                      flip_x=flip_x)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1_path = out_dir / "sub-phantom_T1w.nii.gz"
    nib.save(ph["t1"], t1_path)
    settings = SegmentationSettings(**settings_kw)
    outputs = AnatOutputs.bids(out_dir / "anat", {"sub": "phantom"})
    res = process_anat(t1_path, settings, outputs)
    _CACHE[key] = (ph, atlas, res, t1_path)
    return _CACHE[key]


# Settings and phantom used by test_anat and test_atlas (one shared process_anat run).
TEST_SETTINGS = dict(template_resolution_mm=3.0, syn_iterations=[40, 20, 10], n4_iterations=[20, 20],
                     atropos_iterations=2)
TEST_PHANTOM = dict(resolution_mm=2.0, seed=1, rot_deg=(12.0, 0.0, 8.0), flip_x=True)
