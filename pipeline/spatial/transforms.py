"""Rigid-transform helpers shared by frame realignment, PET-to-T1 registration and their tests.

Conventions (used everywhere in gliaflow)
-----------------------------------------
* A transform is a 4x4 homogeneous matrix in **RAS world millimetres** (nibabel's convention).
* Transforms are **pull** (ITK/ANTs) transforms: ``M`` maps a point ``x`` of the *fixed*
  (reference, output) space to the corresponding point ``y = M @ x`` of the *moving* (input)
  space, so that ``resampled(x) = moving(M x)``. This is what ``antsRegistration(fixed, moving)``
  estimates and what ``antsApplyTransforms -r fixed`` uses. A file named
  ``_from-petref_to-T1w_mode-image_xfm.txt`` therefore holds the T1w -> PET-reference map.
* ITK stores points in **LPS**; ``ras_to_lps`` / ``lps_to_ras`` convert a matrix between the two
  (``M_lps = F M_ras F`` with ``F = diag(-1, -1, 1, 1)``).
* FSL (FLIRT, MCFLIRT) matrices are **push** transforms between *scaled-voxel* coordinates: voxel
  indices times voxel sizes, with the x axis flipped (``x -> (nx - 1) vx - x``) when the image
  affine has a positive determinant (neurological storage). ``fsl_to_ras`` / ``ras_to_fsl``
  convert between such a matrix (input -> reference) and the pull RAS matrix above, given the
  shapes and affines of both images (oblique and flipped headers included).
* Rigid parameters ``(rot_x, rot_y, rot_z, trans_x, trans_y, trans_z)``: rotations in radians
  about the RAS x (left-right), y (posterior-anterior) and z (inferior-superior) axes, composed
  as ``R = Rz @ Ry @ Rx`` (x first), translations in mm of the matrix about the world origin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gliaflow.pipeline.errors import ImageError

__all__ = [
    "LPS_FLIP",
    "ras_to_lps",
    "lps_to_ras",
    "params_to_matrix",
    "matrix_to_params",
    "rotation_matrix",
    "is_rigid",
    "framewise_displacement",
    "mask_world_coords",
    "displacement",
    "displacement_error",
    "itk_affine_to_matrix",
    "matrix_to_itk_affine",
    "format_itk_text",
    "write_itk_text",
    "read_itk_text",
    "fsl_scaled_voxel_matrix",
    "fsl_to_ras",
    "ras_to_fsl",
    "read_fsl_matrix",
    "write_fsl_matrix",
    "resample_world",
    "bounding_box",
    "crop_and_block",
]

LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(m: np.ndarray) -> np.ndarray:
    """Convert a 4x4 world transform from RAS mm to LPS mm (ITK)."""
    return LPS_FLIP @ np.asarray(m, dtype=float) @ LPS_FLIP


def lps_to_ras(m: np.ndarray) -> np.ndarray:
    """Convert a 4x4 world transform from LPS mm (ITK) to RAS mm."""
    return LPS_FLIP @ np.asarray(m, dtype=float) @ LPS_FLIP


def rotation_matrix(rot_x: float, rot_y: float, rot_z: float) -> np.ndarray:
    """3x3 rotation ``Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x)``; angles in radians."""
    cx, sx = np.cos(rot_x), np.sin(rot_x)
    cy, sy = np.cos(rot_y), np.sin(rot_y)
    cz, sz = np.cos(rot_z), np.sin(rot_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def params_to_matrix(params: Sequence[float], center: Sequence[float] | None = None) -> np.ndarray:
    """4x4 rigid matrix from ``(rot_x, rot_y, rot_z [rad], trans_x, trans_y, trans_z [mm])``.

    With ``center`` (mm), the rotation is about that point: ``y = R (x - c) + c + t``.
    """
    p = np.asarray(params, dtype=float)
    if p.shape != (6,):
        raise ValueError("rigid parameters must be 6 values (3 rotations in rad, 3 translations in mm)")
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(*p[:3])
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)
    m[:3, 3] = c + p[3:] - m[:3, :3] @ c
    return m


def matrix_to_params(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`params_to_matrix` (about the world origin).

    Returns ``[rot_x, rot_y, rot_z]`` (rad) and ``[trans_x, trans_y, trans_z]`` (mm). The rotation
    part is first projected onto the nearest rotation (polar decomposition), so tiny numerical
    scaling in a stored float matrix does not bias the angles.
    """
    m = np.asarray(m, dtype=float)
    u, _, vt = np.linalg.svd(m[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:
        raise ValueError("matrix contains a reflection; not a rigid transform")
    ry = -np.arcsin(np.clip(r[2, 0], -1.0, 1.0))
    rx = np.arctan2(r[2, 1], r[2, 2])
    rz = np.arctan2(r[1, 0], r[0, 0])
    return np.array([rx, ry, rz, *m[:3, 3]])


def is_rigid(m: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the 3x3 part of ``m`` is a proper rotation within ``tol``."""
    r = np.asarray(m, dtype=float)[:3, :3]
    return bool(np.allclose(r.T @ r, np.eye(3), atol=tol) and np.linalg.det(r) > 0)


def framewise_displacement(params: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement, in mm.

    Parameters
    ----------
    params : array (n_frames, 6)
        Rotations (rad) then translations (mm) per frame (see :func:`matrix_to_params`).
    radius_mm : float
        Sphere radius converting rotations to arc length (mm); 50 mm by convention.

    Returns
    -------
    array (n_frames,)
        ``sum |d trans| + radius * sum |d rot|`` between consecutive frames; 0 for the first frame.
    """
    p = np.asarray(params, dtype=float).reshape(-1, 6)
    fd = np.zeros(p.shape[0])
    if p.shape[0] > 1:
        d = np.abs(np.diff(p, axis=0))
        fd[1:] = d[:, 3:].sum(axis=1) + radius_mm * d[:, :3].sum(axis=1)
    return fd


def mask_world_coords(mask: np.ndarray, affine: np.ndarray, step: int = 1) -> np.ndarray:
    """World (RAS mm) coordinates of the non-zero voxels of ``mask``, shape (n, 3).

    ``step`` > 1 keeps every ``step``-th voxel along each axis (cheaper error estimates).
    """
    mask = np.asarray(mask)
    sub = mask[::step, ::step, ::step] != 0
    ijk = np.argwhere(sub) * step
    if ijk.size == 0:
        raise ImageError("mask is empty", field="mask")
    return ijk @ np.asarray(affine, dtype=float)[:3, :3].T + np.asarray(affine, dtype=float)[:3, 3]


def displacement(m: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Per-point displacement length ``|M x - x|`` (mm) for world points ``coords`` (n, 3)."""
    m = np.asarray(m, dtype=float)
    moved = coords @ m[:3, :3].T + m[:3, 3]
    return np.linalg.norm(moved - coords, axis=1)


def displacement_error(m_est: np.ndarray, m_true: np.ndarray, coords: np.ndarray) -> float:
    """Mean distance (mm) between where two transforms send the world points ``coords`` (n, 3).

    This is the accuracy measure of the issue: the displacement error averaged over brain voxels.
    """
    a = np.asarray(m_est, dtype=float)
    b = np.asarray(m_true, dtype=float)
    pa = coords @ a[:3, :3].T + a[:3, 3]
    pb = coords @ b[:3, :3].T + b[:3, 3]
    return float(np.linalg.norm(pa - pb, axis=1).mean())


# --------------------------------------------------------------------------- ITK transform files

def itk_affine_to_matrix(parameters: Sequence[float], fixed_parameters: Sequence[float]) -> np.ndarray:
    """4x4 **RAS** matrix from ITK ``MatrixOffsetTransformBase`` parameters (LPS).

    ITK: ``y = A (x - c) + t + c`` with ``parameters = A (row-major, 9) + t (3)`` and
    ``fixed_parameters = c`` (3), all in LPS mm.
    """
    p = np.asarray(parameters, dtype=float)
    c = np.asarray(fixed_parameters, dtype=float)
    if p.size != 12 or c.size != 3:
        raise ValueError("expected 12 parameters and 3 fixed parameters (3-D affine transform)")
    a = p[:9].reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = p[9:] + c - a @ c
    return lps_to_ras(m)


def matrix_to_itk_affine(m_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ITK (LPS) ``(parameters[12], fixed_parameters[3])`` for a 4x4 RAS matrix (centre 0)."""
    m = ras_to_lps(m_ras)
    return np.concatenate([m[:3, :3].ravel(), m[:3, 3]]), np.zeros(3)


def format_itk_text(matrices_ras: Iterable[np.ndarray]) -> str:
    """ITK "Insight Transform File V1.0" text with one ``AffineTransform_double_3_3`` per matrix."""
    lines = ["#Insight Transform File V1.0"]
    for i, m in enumerate(matrices_ras):
        p, c = matrix_to_itk_affine(m)
        lines += [
            f"#Transform {i}",
            "Transform: AffineTransform_double_3_3",
            "Parameters: " + " ".join(f"{v:.10g}" for v in p),
            "FixedParameters: " + " ".join(f"{v:.10g}" for v in c),
        ]
    return "\n".join(lines) + "\n"


def write_itk_text(matrices_ras: np.ndarray | Sequence[np.ndarray], path: str | Path) -> Path:
    """Write one (4x4) or several RAS matrices as an ITK text transform file, atomically."""
    from gliaflow.pipeline.io.derivatives import atomic_write_text

    arr = np.asarray(matrices_ras, dtype=float)
    if arr.ndim == 2:
        arr = arr[None]
    return atomic_write_text(path, format_itk_text(arr))


def read_itk_text(path: str | Path) -> list[np.ndarray]:
    """Read every 3-D affine/rigid transform of an ITK text file as 4x4 RAS matrices.

    Understands ``AffineTransform``, ``MatrixOffsetTransformBase`` (12 parameters) and
    ``Euler3DTransform`` (6 parameters, ITK's ZXY composition) in float or double.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"cannot read transform: {exc}", file=path) from exc
    out: list[np.ndarray] = []
    kind = params = None
    for line in text.splitlines():
        if line.startswith("Transform:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("Parameters:"):
            params = np.array(line.split(":", 1)[1].split(), dtype=float)
        elif line.startswith("FixedParameters:"):
            fixed = np.array(line.split(":", 1)[1].split(), dtype=float)
            if kind is None or params is None:
                raise ImageError("malformed ITK transform file", file=path)
            if kind.startswith(("AffineTransform", "MatrixOffsetTransformBase")) and params.size == 12:
                out.append(itk_affine_to_matrix(params, fixed))
            elif kind.startswith("Euler3DTransform") and params.size == 6:
                # ITK Euler3D (ComputeZYX off): R = Rz Rx Ry, parameters in LPS
                ax, ay, az = params[:3]
                cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
                rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
                ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
                a = rz @ rx @ ry
                out.append(itk_affine_to_matrix(np.concatenate([a.ravel(), params[3:]]), fixed[:3]))
            else:
                raise ImageError(f"unsupported transform type {kind!r}", file=path, field="Transform")
            kind = params = None
    if not out:
        raise ImageError("no transform found", file=path)
    return out


# --------------------------------------------------------------------------- FSL matrices

def fsl_scaled_voxel_matrix(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """4x4 map from voxel indices to FSL's scaled-voxel coordinates (mm) of an image.

    ``diag(vx, vy, vz)``, with the x axis reversed (``x -> (nx - 1) vx - x``) when
    ``det(affine[:3, :3]) > 0``: FSL works in radiological voxel order.
    """
    a = np.asarray(affine, dtype=float)
    vox = np.linalg.norm(a[:3, :3], axis=0)
    s = np.diag([vox[0], vox[1], vox[2], 1.0])
    if np.linalg.det(a[:3, :3]) > 0:
        s[0, 0] = -vox[0]
        s[0, 3] = (int(shape[0]) - 1) * vox[0]
    return s


def fsl_to_ras(fsl_matrix: np.ndarray, in_shape: Sequence[int], in_affine: np.ndarray,
               ref_shape: Sequence[int], ref_affine: np.ndarray) -> np.ndarray:
    """Pull RAS matrix (reference world point -> input world point) from an FSL matrix that maps
    the input image's scaled-voxel coordinates to the reference image's (FLIRT ``-omat``)."""
    s_in = fsl_scaled_voxel_matrix(in_shape, in_affine)
    s_ref = fsl_scaled_voxel_matrix(ref_shape, ref_affine)
    return (np.asarray(in_affine, float) @ np.linalg.inv(s_in) @ np.linalg.inv(np.asarray(fsl_matrix, float))
            @ s_ref @ np.linalg.inv(np.asarray(ref_affine, float)))


def ras_to_fsl(matrix: np.ndarray, in_shape: Sequence[int], in_affine: np.ndarray,
               ref_shape: Sequence[int], ref_affine: np.ndarray) -> np.ndarray:
    """FSL matrix (input scaled-voxel -> reference scaled-voxel) from a pull RAS matrix
    (reference world point -> input world point); the inverse of :func:`fsl_to_ras`."""
    s_in = fsl_scaled_voxel_matrix(in_shape, in_affine)
    s_ref = fsl_scaled_voxel_matrix(ref_shape, ref_affine)
    pull_vox = (s_in @ np.linalg.inv(np.asarray(in_affine, float)) @ np.asarray(matrix, float)
                @ np.asarray(ref_affine, float) @ np.linalg.inv(s_ref))
    return np.linalg.inv(pull_vox)


def read_fsl_matrix(path: str | Path) -> np.ndarray:
    """A 4x4 FSL matrix from its text file (four rows of four numbers)."""
    path = Path(path)
    try:
        m = np.loadtxt(path, dtype=float)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read FSL matrix: {exc}", file=path) from exc
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ImageError(f"an FSL matrix is 4x4 and finite, got shape {m.shape}", file=path)
    return m


def write_fsl_matrix(matrix: np.ndarray, path: str | Path) -> Path:
    """Write a 4x4 FSL matrix as text (FLIRT's format), atomically."""
    from gliaflow.pipeline.io.derivatives import atomic_write_text

    rows = "\n".join("  ".join(f"{v:.10f}" for v in row) for row in np.asarray(matrix, float))
    return atomic_write_text(path, rows + "\n")


def resample_world(
    data: np.ndarray,
    in_affine: np.ndarray,
    out_shape: Sequence[int],
    out_affine: np.ndarray,
    matrix: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a 3-D array onto another grid through a pull transform (scipy, float32 out).

    ``out[v] = data at world point matrix @ (out_affine @ v)``: ``matrix`` (4x4, RAS mm) maps output
    world points to input world points (identity when None), as everywhere in this module.
    """
    from scipy import ndimage

    out_affine = np.asarray(out_affine, dtype=float)
    m = np.eye(4) if matrix is None else np.asarray(matrix, dtype=float)
    vox = np.linalg.inv(np.asarray(in_affine, dtype=float)) @ m @ out_affine
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), vox[:3, :3], offset=vox[:3, 3],
        output_shape=tuple(int(s) for s in out_shape), order=order, cval=cval, output=np.float32)


def bounding_box(mask: np.ndarray, margin: int, block: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` plus ``margin`` voxels, sizes rounded down to multiples of ``block``."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, mask.shape)
    size = np.maximum((hi - lo) // block * block, block)
    hi = np.minimum(lo + size, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def crop_and_block(data: np.ndarray, affine: np.ndarray, box: tuple[slice, ...], block: int):
    """Crop ``data`` to ``box`` and average ``block``^3 voxel blocks; return data and its affine."""
    d = data[box]
    lo = np.array([sl.start for sl in box], float)
    if block > 1:
        nx, ny, nz = (np.array(d.shape) // block)
        d = d[: nx * block, : ny * block, : nz * block]
        d = d.reshape(nx, block, ny, block, nz, block).mean(axis=(1, 3, 5))
    aff = affine.copy()
    aff[:3, :3] = affine[:3, :3] * block
    aff[:3, 3] = affine[:3, :3] @ (lo + (block - 1) / 2.0) + affine[:3, 3]
    return np.ascontiguousarray(d, dtype=np.float32), aff
