"""Geometry of the phantom: rigid/affine matrices, the subject deformation, grids, sampling.

Coordinate conventions (used by every truth file the phantom writes):

* All world coordinates are NIfTI world coordinates, **RAS+ millimetres** (+x towards the
  subject's right, +y anterior, +z superior), as
  given by each image's ``affine`` (voxel index -> world mm). ITK/ANTs use LPS: convert a 4x4
  RAS matrix ``M`` with ``F @ M @ F`` where ``F = diag(-1, -1, 1, 1)``.
* :func:`rigid_matrix` builds ``T(center + t) @ Rz @ Ry @ Rx @ T(-center)``: rotations (degrees)
  about the world x, then y, then z axes through ``center`` (mm), then translation ``t`` (mm).
* The subject deformation maps T1w world points to template (MNI) world points:
  ``x_mni = A @ (x_t1 + u(x_t1))`` with ``A`` an affine and ``u`` a smooth displacement (mm)
  defined on a coarse grid and interpolated linearly. The subject T1w image is the template
  pulled back through it: ``T1(x_t1) = template(x_mni)``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "rigid_matrix",
    "affine_matrix",
    "rigid_params",
    "Deformation",
    "grid_points",
    "sample",
    "sample_vox",
    "world_to_voxel",
    "box_grid",
]


def _rot(rx: float, ry: float, rz: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def rigid_matrix(rot_deg, trans_mm, center_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid matrix (RAS mm): rotate by ``rot_deg`` (x, y, z; degrees) about ``center_mm``,
    then translate by ``trans_mm`` (mm). ``M = T(c + t) Rz Ry Rx T(-c)``."""
    return affine_matrix(rot_deg, trans_mm, (1.0, 1.0, 1.0), center_mm)


def affine_matrix(rot_deg, trans_mm, scale, center_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 affine ``T(c + t) R diag(scale) T(-c)`` (scaling applied first, about ``center_mm``)."""
    c = np.asarray(center_mm, dtype=float)
    m = np.eye(4)
    m[:3, :3] = _rot(*rot_deg) @ np.diag(np.asarray(scale, dtype=float))
    m[:3, 3] = c + np.asarray(trans_mm, dtype=float) - m[:3, :3] @ c
    return m


def rigid_params(m: np.ndarray, center_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`rigid_matrix`: (rot_deg xyz, trans_mm) for a rigid 4x4 ``m``."""
    R = m[:3, :3]
    ry = np.arcsin(-np.clip(R[2, 0], -1, 1))
    rx = np.arctan2(R[2, 1], R[2, 2])
    rz = np.arctan2(R[1, 0], R[0, 0])
    c = np.asarray(center_mm, dtype=float)
    t = m[:3, 3] - c + R @ c
    return np.rad2deg([rx, ry, rz]), t


def box_grid(lo_mm, hi_mm, vox_mm: float, flip_x: bool = False) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned grid covering the world box [lo, hi] (mm) with voxel ``vox_mm``.

    ``flip_x`` stores x from right to left (a LAS voxel order, like many scanner exports)."""
    lo, hi = np.asarray(lo_mm, float), np.asarray(hi_mm, float)
    shape = tuple(int(np.ceil((b - a) / vox_mm)) + 1 for a, b in zip(lo, hi))
    aff = np.diag([vox_mm, vox_mm, vox_mm, 1.0])
    aff[:3, 3] = lo
    if flip_x:
        aff[0, 0] = -vox_mm
        aff[0, 3] = lo[0] + (shape[0] - 1) * vox_mm
    return shape, aff


def grid_points(shape, affine: np.ndarray, z_slice: slice | None = None) -> np.ndarray:
    """World coordinates (N, 3) of voxel centres of a grid (optionally only slices ``z_slice``)."""
    ks = np.arange(shape[2])[z_slice] if z_slice is not None else np.arange(shape[2])
    ii, jj, kk = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), ks, indexing="ij")
    vox = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    return vox @ affine[:3, :3].T + affine[:3, 3]


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points (N, 3)."""
    return pts @ m[:3, :3].T + m[:3, 3]


def world_to_voxel(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Voxel coordinates (3, N) of world points ``pts`` (N, 3) in a grid with ``affine``."""
    inv = np.linalg.inv(affine)
    return np.ascontiguousarray((pts @ inv[:3, :3].T + inv[:3, 3]).T)


def sample_vox(arr: np.ndarray, vox: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Values of ``arr`` at voxel coordinates ``vox`` (3, N) (linear or nearest, no prefilter)."""
    return ndi.map_coordinates(arr, vox, order=order, mode="constant", cval=cval, prefilter=False)


def sample(arr: np.ndarray, affine: np.ndarray, pts: np.ndarray, order: int = 1,
           cval: float = 0.0) -> np.ndarray:
    """Values of a 3D array (world ``affine``) at world points ``pts`` (N, 3) (mm)."""
    return sample_vox(arr, world_to_voxel(affine, pts), order, cval)


class Deformation:
    """Subject T1w world (mm) -> template world (mm): ``x_mni = A (x + u(x))``.

    Parameters
    ----------
    A : ndarray (4, 4)
        Affine part (RAS mm).
    node_affine : ndarray (4, 4)
        Affine of the coarse grid on which ``disp`` is given (T1w world mm).
    disp : ndarray (nx, ny, nz, 3)
        Displacement (mm, RAS) at the grid nodes; linearly interpolated, zero outside.
    """

    def __init__(self, A: np.ndarray, node_affine: np.ndarray, disp: np.ndarray):
        self.A = np.asarray(A, float)
        self.node_affine = np.asarray(node_affine, float)
        self.disp = np.ascontiguousarray(np.asarray(disp, float))

    @classmethod
    def random(cls, rng: np.random.Generator, lo_mm, hi_mm, center_mm, max_rot_deg: float = 4.0,
               max_trans_mm: float = 6.0, max_scale: float = 0.05, spacing_mm: float = 12.0,
               max_disp_mm: float = 3.0) -> "Deformation":
        """A random affine (uniform rotations/translations/scalings within the bounds) and a smooth
        random displacement (Gaussian noise on a ``spacing_mm`` grid, smoothed, scaled so that its
        largest magnitude is ``max_disp_mm``)."""
        rot = rng.uniform(-max_rot_deg, max_rot_deg, 3)
        trans = rng.uniform(-max_trans_mm, max_trans_mm, 3)
        scale = 1.0 + rng.uniform(-max_scale, max_scale, 3)
        A = affine_matrix(rot, trans, scale, center_mm)
        shape, node_aff = box_grid(np.asarray(lo_mm) - spacing_mm, np.asarray(hi_mm) + spacing_mm,
                                   spacing_mm)
        noise = rng.standard_normal(shape + (3,))
        disp = np.stack([ndi.gaussian_filter(noise[..., k], 1.5, mode="nearest") for k in range(3)], -1)
        mag = np.sqrt((disp ** 2).sum(-1)).max()
        disp *= max_disp_mm / max(mag, 1e-9)
        d = cls(A, node_aff, disp)
        d.params = {"rotation_deg": rot.tolist(), "translation_mm": trans.tolist(),
                    "scale": scale.tolist(), "center_mm": list(map(float, center_mm)),
                    "displacement_spacing_mm": spacing_mm, "max_displacement_mm": max_disp_mm}
        return d

    def displacement(self, pts: np.ndarray) -> np.ndarray:
        """u(x) (mm) at world points (N, 3)."""
        vox = world_to_voxel(self.node_affine, pts)
        return np.stack([sample_vox(self.disp[..., k], vox, order=1) for k in range(3)], 1)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        return apply(self.A, pts + self.displacement(pts))
