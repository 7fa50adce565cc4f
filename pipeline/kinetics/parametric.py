"""Voxelwise parametric maps: SUV, SUVR, Logan VT, MA1 VT and basis-function 1TCM VT.

Every map is computed for a block of voxels at once with a few matrix products (no per-voxel
Python loop), block by block (``KineticsSettings.chunk_voxels`` voxels), optionally on a pool
of threads.

Units: frame times s, concentrations Bq/mL; SUV g/mL, SUVR unitless, VT mL/cm3.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from gliaflow.pipeline.blood.tables import PlasmaInput
from gliaflow.pipeline.config import KineticsSettings
from gliaflow.pipeline.errors import ModelError
from gliaflow.pipeline.kinetics.base import FrameAverager, Frames, frame_weights
from gliaflow.pipeline.numerics import exp_conv, weighted_sum
from gliaflow.pipeline.kinetics.names import MAP_NAMES, PLASMA_MAPS
from gliaflow.pipeline.kinetics.graphical import GraphicalDesign, logan_vt, ma1_vt, transpose_blocked, tstar_mask
from gliaflow.pipeline.kinetics.suv import window_weights
from gliaflow.pipeline.provenance import STEP_MAPS, ToolCall, gliaflow_call

__all__ = ["MAP_NAMES", "basis_1tcm_vt", "BasisSet1TCM", "MapContext", "map_block", "parametric_maps",
           "ParametricMaps"]


class ParametricMaps(dict):
    """Map name -> array (what :func:`parametric_maps` returns), with ``provenance``: the
    records of what computed them (:mod:`gliaflow.pipeline.provenance`)."""

    def __init__(self, *args, provenance: list[ToolCall] | None = None, **kw):
        super().__init__(*args, **kw)
        self.provenance: list[ToolCall] = list(provenance or [])


class BasisSet1TCM:
    """Basis functions ``B_j = frame_mean(Cp (x) exp(-theta_j t))`` of the 1TCM (theta = k2, 1/min).

    With the blood volume removed, a 1TCM TAC is ``K1 B_j`` for the right ``theta_j``; the best
    ``j`` maximises the explained sum of squares, and ``VT = K1 / k2``.
    """

    def __init__(self, plasma: PlasmaInput, frames: Frames, n: int = 64,
                 theta_range_per_min: tuple[float, float] = (0.003, 1.0), weights=None):
        self.theta = np.geomspace(*theta_range_per_min, n)
        avg = FrameAverager(plasma.t_s, frames.start_s, frames.end_s)
        B = np.column_stack([avg(exp_conv(plasma.parent_bqml, plasma.dt_s, th)) for th in self.theta])
        self.w = np.ones(frames.n) if weights is None else np.asarray(weights, float)
        self.Bw = B * self.w[:, None]                 # (f, n)
        self.norm = np.einsum("fn,fn->n", B, self.Bw)  # (n,)


def basis_1tcm_vt(tacs, basis: BasisSet1TCM, dtype=np.float32) -> np.ndarray:
    """VT (mL/cm3) of TACs (V, f) (blood volume already removed) by 1TCM basis functions.

    NaN where no basis function has a positive coefficient.
    """
    Y = np.asarray(tacs, dtype=dtype)
    P = Y @ basis.Bw.astype(dtype)                          # (V, n)
    norm = basis.norm.astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(P > 0, P * P / norm, -np.inf)
    j = np.argmax(score, axis=1)
    pj = np.take_along_axis(P, j[:, None], axis=1)[:, 0]
    vt = pj / (basis.norm[j] * basis.theta[j])
    return np.where(pj > 0, vt, np.nan).astype(dtype)


class MapContext:
    """Constants shared by every voxel block (computed once per scan)."""

    def __init__(self, frames: Frames, maps: list[str], settings: KineticsSettings,
                 plasma: PlasmaInput | None, ref_tac, injected_bq, body_weight_kg, dtype):
        s = settings
        self.maps = maps
        self.dtype = dtype
        w = frame_weights(frames, "duration" if s.weights == "counts" else s.weights)
        self.cb_fm = None
        self.vb = s.vb if (s.graphical_blood_correction and s.vb) else None
        if any(m in PLASMA_MAPS for m in maps):
            if self.vb:
                self.cb_fm = FrameAverager(plasma.t_s, frames.start_s, frames.end_s)(
                    plasma.whole_blood_bqml).astype(dtype)
            use = tstar_mask(frames, s.tstar_min, s.tstar_frames)
            if use.sum() < 3:
                raise ModelError(f"only {int(use.sum())} frames after t* (need >= 3)", field="tstar_min")
            self.design = GraphicalDesign(frames, plasma, use, w, dtype)
        self.basis = BasisSet1TCM(plasma, frames, s.basis_n, weights=w) if "basis1tcm" in maps else None
        self.win = window_weights(frames, s.suvr_window_min).astype(dtype) if (
            "suv" in maps or "suvr" in maps) else None
        if "suv" in maps:
            if not (injected_bq and injected_bq > 0 and body_weight_kg and body_weight_kg > 0):
                raise ModelError("SUV maps need a positive injected dose and body weight",
                                 field="InjectedRadioactivity")
            self.suv_scale = float(body_weight_kg * 1000.0 / injected_bq)
        if "suvr" in maps:
            ref = float(np.asarray(ref_tac, float) @ self.win)
            if not ref > 0:
                raise ModelError("reference region mean is not positive in the SUVR window",
                                 field="reference_region")
            self.ref_mean = ref


_CACHE_BLOCK = 16384  # voxels per inner block: keeps the (f, V) work arrays in cache


def map_block(block: np.ndarray, ctx: MapContext) -> np.ndarray:
    """All requested maps for a chunk of voxels (V, f) -> (V, len(maps)), computed in
    cache-sized sub-blocks (see :func:`_map_block`)."""
    block = np.asarray(block)
    if block.shape[0] <= _CACHE_BLOCK:
        return _map_block(block, ctx)
    out = np.empty((block.shape[0], len(ctx.maps)), dtype=ctx.dtype)
    for a in range(0, block.shape[0], _CACHE_BLOCK):
        out[a:a + _CACHE_BLOCK] = _map_block(block[a:a + _CACHE_BLOCK], ctx)
    return out


def _map_block(block: np.ndarray, ctx: MapContext) -> np.ndarray:
    """All requested maps for one block of voxels.

    Parameters
    ----------
    block : ndarray, shape (V, f)
        TACs (Bq/mL).
    ctx : MapContext

    Returns
    -------
    ndarray, shape (V, len(maps))
    """
    Y = transpose_blocked(np.asarray(block), ctx.dtype)   # (f, V): frames first
    out = np.empty((Y.shape[1], len(ctx.maps)), dtype=ctx.dtype)
    Yc = Y
    if ctx.cb_fm is not None:
        Yc = Y - ctx.vb * ctx.cb_fm[:, None]
        Yc *= ctx.dtype(1.0 / (1.0 - ctx.vb))
    for i, m in enumerate(ctx.maps):
        if m == "suv":
            out[:, i] = weighted_sum(ctx.win, Y) * ctx.suv_scale
        elif m == "suvr":
            out[:, i] = weighted_sum(ctx.win, Y) / ctx.ref_mean
        elif m == "logan":
            out[:, i] = logan_vt(Yc, design=ctx.design, with_r2=False, frames_major=True)[0]
        elif m == "ma1":
            out[:, i] = ma1_vt(Yc, design=ctx.design, frames_major=True)[0]
        elif m == "basis1tcm":
            out[:, i] = basis_1tcm_vt(Yc.T, ctx.basis, dtype=ctx.dtype)
        else:
            raise ModelError(f"unknown map {m!r}; known: {', '.join(MAP_NAMES)}", field="maps")
    return out


def parametric_maps(data: np.ndarray, frames: Frames, settings: KineticsSettings | None = None,
                    maps: Iterable[str] | None = None, plasma: PlasmaInput | None = None,
                    ref_tac=None, injected_bq: float | None = None,
                    body_weight_kg: float | None = None, mask: np.ndarray | None = None,
                    threads: int = 1, dtype=np.float32) -> dict[str, np.ndarray]:
    """Voxelwise maps of a dynamic image.

    Parameters
    ----------
    data : ndarray, shape (..., f)
        Dynamic image with frames last (e.g. nibabel's x, y, z, t) or (V, f), Bq/mL.
    frames : Frames
        Frame timing (s).
    settings : KineticsSettings
        ``maps``, ``suvr_window_min``, ``tstar_min``/``tstar_frames``, ``weights`` (counts-based
        weights fall back to duration for maps), ``vb`` (blood correction for VT maps),
        ``chunk_voxels``, ``basis_n``.
    maps : list of str, optional
        Overrides ``settings.maps``: any of ``suv``, ``suvr``, ``logan``, ``ma1``, ``basis1tcm``.
    plasma : PlasmaInput
        Needed by ``logan``, ``ma1``, ``basis1tcm``.
    ref_tac : array_like, shape (f,)
        Reference-region TAC (Bq/mL), needed by ``suvr``.
    injected_bq, body_weight_kg : float
        Needed by ``suv``.
    mask : ndarray of bool, shape data.shape[:-1], optional
        Voxels to compute; the others are NaN.
    threads : int
        Blocks computed at once by a thread pool (numpy's matrix products release the GIL);
        1 computes them one after the other.
    dtype : numpy dtype
        Working and output precision (float32 default).

    Returns
    -------
    ParametricMaps
        Map name -> array of shape ``data.shape[:-1]``; ``.provenance`` has one record per map
        (gliaflow's blockwise implementation, ``count`` = voxel blocks computed).
    """
    s = settings or KineticsSettings()
    maps = list(maps or s.maps)
    data = np.asarray(data)
    if data.shape[-1] != frames.n:
        raise ModelError(f"data has {data.shape[-1]} frames, the frame table {frames.n}", field="frames")
    if any(m in PLASMA_MAPS for m in maps) and plasma is None:
        raise ModelError("VT maps need a plasma input", field="maps")
    if "suvr" in maps and ref_tac is None:
        raise ModelError("SUVR maps need a reference TAC", field="reference_region")
    spatial = data.shape[:-1]
    flat = data.reshape(-1, frames.n)
    idx = None
    if mask is not None:
        idx = np.flatnonzero(np.asarray(mask, bool).ravel())
        flat = flat[idx]
    unknown = [m for m in maps if m not in MAP_NAMES]
    if unknown:
        raise ModelError(f"unknown map(s) {unknown}; known: {', '.join(MAP_NAMES)}", field="maps")
    ctx = MapContext(frames, maps, s, plasma, ref_tac, injected_bq, body_weight_kg, dtype)
    chunk = s.chunk_voxels
    res = np.empty((flat.shape[0], len(maps)), dtype=dtype)

    def block(a: int) -> None:
        res[a:a + chunk] = map_block(flat[a:a + chunk], ctx)

    starts = range(0, flat.shape[0], chunk)
    if threads > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(block, starts))
    else:
        for a in starts:
            block(a)
    out = ParametricMaps(provenance=[
        gliaflow_call(STEP_MAPS, f"gliaflow.pipeline.kinetics.parametric.map_block(map='{m}')",
                      count=len(starts)) for m in maps] if len(starts) else [])
    for i, m in enumerate(maps):
        if idx is None:
            out[m] = res[:, i].reshape(spatial)
        else:
            full = np.full(int(np.prod(spatial)), np.nan, dtype=dtype)
            full[idx] = res[:, i]
            out[m] = full.reshape(spatial)
    return out
