"""Voxelwise group statistics: masked GLM, Freedman-Lane permutations, max-T, TFCE, clusters.

Model: the same OLS as the regional analysis (``metric ~ group + genotype + covariates``) fitted
at every in-mask voxel. Inference is by permutation:

- **Freedman-Lane** (Freedman & Lane 1983; Winkler et al. 2014, NeuroImage 92:381): the data are
  residualised on the nuisance columns Z (every design column with zero weight in the contrast),
  the residuals R are permuted across subjects, and the full model is refitted.
- **Vectorised refit.** With Q an orthonormal basis of the design X (thin QR), every quantity
  the t statistic needs is a linear function of ``Q' P R``: the contrast estimate is
  ``(Q'a)' Q' P R`` with ``a = X (X'X)^-1 c``, and the residual sum of squares is
  ``||R||^2 - ||Q' P R||^2`` because ``||P R|| = ||R||``. A batch of B permutations is therefore
  ONE matrix product ``(B*p x n) @ (n x V)`` (float32, BLAS), p = number of design columns.
- **FWER** by the max statistic over the mask (Nichols & Holmes 2002); the unpermuted labelling is
  the first of the ``n_permutations + 1`` relabellings, so p >= 1/(n_permutations + 1).
- **TFCE** (Smith & Nichols 2009) with E=0.5, H=2, extent in voxels, ``tfce_steps`` equal height
  steps from 0 to the map maximum (dh = max/steps, as FSL), neighbourhood ``connectivity``
  (26 by default; 6 and 18 allowed). Thresholds are labelled with :func:`scipy.ndimage.label`,
  one at a time over the shrinking suprathreshold set (default), or all in one call on a
  stacked 4-D array whose 4th axis is not connected (``method='stack'``; same values, slower).
- Optional **cluster mass** (sum of |t| over suprathreshold voxels, cluster-forming threshold
  given as z and converted to t at the model's degrees of freedom).

Units: maps are in the metric's own units (e.g. SUVR, VT in mL/cm3); coordinates in mm of the
images' affine; smoothing FWHM in mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import logging

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sps

from gliaflow.pipeline.errors import ImageError, StatsError
from gliaflow.pipeline.stats.design import t_to_z

__all__ = [
    "structure",
    "tfce",
    "fwhm_to_sigma_vox",
    "smooth_masked",
    "constant_columns",
    "screen_columns",
    "describe_screen",
    "load_maps",
    "PermutationResult",
    "permutation_glm",
    "combine_chunks",
    "cluster_table",
    "atlas_lookup",
]

log = logging.getLogger(__name__)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: a column is constant when its SD is at most this fraction of max(1, its largest |value|)
CONSTANT_RTOL = 1e-12
#: the design fits a column exactly when its residual norm is at most this fraction of its spread
EXACT_FIT_RTOL = 1e-10
#: what each reason of :func:`screen_columns` means, for messages and summaries
SCREEN_REASONS = {
    "nonfinite": "not finite in every subject",
    "constant": "the same value in every subject",
    "exact_fit": "fitted exactly by the design (no residual variance)",
}


def structure(connectivity: int = 26) -> np.ndarray:
    """3x3x3 neighbourhood: 6 (faces), 18 (faces+edges) or 26 (faces+edges+corners)."""
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise StatsError("connectivity must be 6, 18 or 26", field="connectivity")
    return ndimage.generate_binary_structure(3, rank)


def tfce(stat: np.ndarray, E: float = 0.5, H: float = 2.0, steps: int = 50,
         connectivity: int = 26, two_sided: bool = False, method: str = "loop") -> np.ndarray:
    """Threshold-free cluster enhancement of a 3-D statistic map.

    ``TFCE(v) = sum_h e(v, h)^E * h^H * dh`` over heights h = dh, 2dh, ..., max (dh = max/steps),
    e(v, h) the size in voxels of the cluster containing v in ``{stat >= h}``.

    Parameters
    ----------
    stat : ndarray (X, Y, Z)
        Statistic map (t or z); values outside the mask should be 0 (or NaN, treated as 0).
    E, H : float
        Extent and height exponents (0.5 and 2 as Smith & Nichols 2009).
    steps : int
        Number of height steps.
    connectivity : {6, 18, 26}
    two_sided : bool
        If True, negative values are enhanced too (returned with negative sign).
    method : {'loop', 'stack'}
        'stack' labels every threshold in one :func:`scipy.ndimage.label` call on a 4-D stack
        (4th axis unconnected); 'loop' labels one threshold at a time over the voxels still above
        the previous one. Same result; 'loop' measured 2-4x faster (0.9 s vs 3.5 s two-sided on
        a whole-brain 2 mm map, 50 steps) and uses far less memory, so it is the default.

    Returns
    -------
    ndarray (X, Y, Z), float64
    """
    stat = np.nan_to_num(np.asarray(stat, float), nan=0.0)
    if method not in ("loop", "stack"):
        raise ValueError("method must be 'loop' or 'stack'")
    out = _tfce_pos(stat, E, H, steps, connectivity, method)
    if two_sided:
        out -= _tfce_pos(-stat, E, H, steps, connectivity, method)
    return out


def _tfce_pos(stat: np.ndarray, E: float, H: float, steps: int, connectivity: int,
              method: str = "loop") -> np.ndarray:
    out = np.zeros(stat.shape)
    mx = float(stat.max()) if stat.size else 0.0
    if not mx > 0:
        return out
    dh = mx / steps
    heights = dh * np.arange(1, steps + 1)
    above = stat >= heights[0] - 1e-12 * mx
    if not above.any():
        return out
    # crop to the bounding box of the lowest threshold
    sl = ndimage.find_objects(above.astype(np.int8))[0]
    sub = stat[sl]
    if method == "loop":
        out[sl] = _tfce_loop(sub, heights, dh, E, H, connectivity)
        return out
    stack = sub[..., None] >= (heights - 1e-12 * mx)  # (x, y, z, steps)
    s4 = np.zeros((3, 3, 3, 3), bool)
    s4[:, :, :, 1] = structure(connectivity)
    labels, nlab = ndimage.label(stack, structure=s4)
    sizes = np.bincount(labels.ravel(), minlength=nlab + 1).astype(float)
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    vox, step = np.divmod(idx, steps)
    w = sizes[lab] ** E * heights[step] ** H * dh
    acc = np.bincount(vox, weights=w, minlength=sub.size).reshape(sub.shape)
    out[sl] = acc
    return out


def _tfce_loop(sub: np.ndarray, heights: np.ndarray, dh: float, E: float, H: float,
               connectivity: int) -> np.ndarray:
    """TFCE by labelling one threshold at a time, restricted to the voxels still above the
    previous threshold (large images: less memory than the stacked 4-D labelling)."""
    st = structure(connectivity)
    acc = np.zeros(sub.size)
    flat = sub.ravel()
    cand = np.flatnonzero(flat >= heights[0] - 1e-12 * heights[-1])
    b = np.zeros(sub.shape, bool)
    bf = b.reshape(-1)
    for h in heights:
        cand = cand[flat[cand] >= h - 1e-12 * heights[-1]]
        if cand.size == 0:
            break
        bf[:] = False
        bf[cand] = True
        lab, nl = ndimage.label(b, st)
        sizes = np.bincount(lab.ravel()[cand], minlength=nl + 1).astype(float)
        acc[cand] += sizes[lab.ravel()[cand]] ** E * (h ** H * dh)
    return acc.reshape(sub.shape)


def fwhm_to_sigma_vox(affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Gaussian sigma per axis in voxels for a FWHM in mm, voxel sizes from the affine."""
    vox = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return fwhm_mm * _FWHM_TO_SIGMA / vox


def smooth_masked(vol: np.ndarray, mask: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian smoothing restricted to the mask (normalised convolution: smooth(v*m)/smooth(m)),
    so the brain edge is not dimmed by the zeros outside it. Outside the mask: 0."""
    m = mask.astype(float)
    num = ndimage.gaussian_filter(np.where(mask, vol, 0.0), sigma_vox, mode="constant")
    den = ndimage.gaussian_filter(m, sigma_vox, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mask & (den > 1e-6), num / den, 0.0)
    return out


def constant_columns(Y: np.ndarray) -> np.ndarray:
    """Columns of ``Y`` (subjects x voxels or regions) with the same value in every subject.

    A column is constant when its standard deviation is at most ``CONSTANT_RTOL`` x max(1, its
    largest absolute value), in the data's own units (rounding noise of an exact ratio such as a
    reference region's SUVR counts as constant). Columns must be finite (see
    :func:`screen_columns`).

    Returns
    -------
    ndarray bool (V,)
    """
    Y = np.asarray(Y, float)
    return ~(Y.std(axis=0) > CONSTANT_RTOL * np.maximum(1.0, np.abs(Y).max(axis=0)))


def screen_columns(Y: np.ndarray, X: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns of ``Y`` a GLM cannot test, by reason (see :data:`SCREEN_REASONS`).

    Parameters
    ----------
    Y : ndarray (n, V)
        Data, subjects x voxels (or regions), any units.
    X : ndarray (n, p), optional
        Design matrix; when given, columns the design fits exactly are flagged too (their
        residual norm is at most ``EXACT_FIT_RTOL`` x their norm about the mean): the t statistic
        is 0/0 there, and a permutation test of rounding noise would enter the max-T null.

    Returns
    -------
    dict reason -> ndarray bool (V,)
        ``nonfinite``, ``constant`` and (with ``X``) ``exact_fit``; disjoint (a column is
        counted under its first reason only).
    """
    Y = np.asarray(Y, float)
    nonfinite = ~np.isfinite(Y).all(axis=0)
    constant = np.zeros_like(nonfinite)
    constant[~nonfinite] = constant_columns(Y[:, ~nonfinite])
    out = {"nonfinite": nonfinite, "constant": constant}
    if X is not None:
        exact = np.zeros_like(nonfinite)
        rest = ~(nonfinite | constant)
        if rest.any():
            Q, _ = np.linalg.qr(np.asarray(X, float))
            Yr = Y[:, rest]
            rss = ((Yr - Q @ (Q.T @ Yr)) ** 2).sum(axis=0)
            tss = ((Yr - Yr.mean(axis=0)) ** 2).sum(axis=0)
            exact[rest] = rss <= EXACT_FIT_RTOL ** 2 * tss
        out["exact_fit"] = exact
    return out


def describe_screen(counts: dict[str, int], what: str = "voxels") -> str:
    """One phrase for the non-zero counts of :func:`screen_columns`, e.g. ``'12 voxels the same
    value in every subject'``; '' when every count is 0."""
    return "; ".join(f"{n} {what} {SCREEN_REASONS.get(k, k)}" for k, n in counts.items() if n)


def _load3d(path) -> tuple[np.ndarray, np.ndarray, Any]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds
        raise ImageError(f"cannot read image: {exc}", file=path) from exc
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(f"expected a 3-D image, got shape {data.shape}", file=path)
    return data, img.affine, img


def load_maps(paths: Sequence[str | Path], mask_path: str | Path, fwhm_mm: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, dict[str, int]]:
    """Read subject maps into a (subjects x voxels) matrix over the usable mask.

    Parameters
    ----------
    paths : sequence of path
        3-D NIfTI maps in template space, all on the mask's grid (same shape and affine).
    mask_path : path
        Brain mask (nonzero = brain).
    fwhm_mm : float
        Gaussian smoothing FWHM in mm (0: none), applied within the mask.

    Returns
    -------
    Y : ndarray (n, V) float64
        Map values at the usable voxels: inside the mask, finite in every subject, and not
        constant across subjects (after smoothing).
    mask : ndarray bool (X, Y, Z)
        The usable voxels.
    affine : ndarray (4, 4)
    mask_img : nibabel image
    excluded : dict
        Brain-mask voxels left out: ``nonfinite`` (NaN or infinite in some subject's map, e.g.
        outside its field of view) and ``constant`` (the same value in every subject).
    """
    mdata, maff, mimg = _load3d(mask_path)
    brain = mdata > 0
    if not brain.any():
        raise ImageError("the brain mask is empty", file=mask_path)
    sigma = fwhm_to_sigma_vox(maff, fwhm_mm) if fwhm_mm and fwhm_mm > 0 else None
    Y = np.empty((len(paths), int(brain.sum())))
    fin = np.ones(Y.shape[1], bool)
    for i, p in enumerate(paths):  # one volume in memory at a time
        d, aff, _ = _load3d(p)
        if d.shape != mdata.shape or not np.allclose(aff, maff, atol=1e-3):
            raise ImageError(f"map grid {d.shape} differs from the mask grid {mdata.shape} (or the "
                             "affines differ); resample the maps to the template grid first", file=p)
        ok = np.isfinite(d)
        fin &= ok[brain]
        if sigma is not None:
            d = smooth_masked(np.nan_to_num(d), brain & ok, sigma)
        Y[i] = d[brain]
    const = np.zeros_like(fin)
    const[fin] = constant_columns(Y[:, fin])
    keep = fin & ~const
    mask = np.zeros_like(brain)
    mask[brain] = keep
    if not keep.any():
        raise ImageError("no voxel of the mask has finite, varying values across subjects",
                         file=mask_path)
    excluded = {"nonfinite": int((~fin).sum()), "constant": int(const.sum())}
    return Y[:, keep], mask, maff, mimg, excluded


@dataclass
class PermutationResult:
    """Result of :func:`permutation_glm` (one entry per voxel/column unless stated).

    Attributes
    ----------
    t, z, estimate, p_unc : ndarray (V,)
        Observed t, z (same tail probability), contrast estimate (metric units) and parametric
        uncorrected p.
    p_fwer : ndarray (V,)
        Max-T FWER-corrected permutation p.
    max_null : ndarray (n_perm + 1,)
        Max statistic of each relabelling (first = unpermuted).
    tfce, p_fwer_tfce : ndarray or None
        Observed TFCE map values and TFCE FWER p (when TFCE ran).
    max_null_tfce, max_null_mass : ndarray or None
    cluster_t : float or None
        Cluster-forming threshold in t units (cluster mass).
    t_perm : ndarray or None
        Observed t in the precision of the permutation engine (what the null is compared with).
    """

    t: np.ndarray
    z: np.ndarray
    estimate: np.ndarray
    p_unc: np.ndarray
    p_fwer: np.ndarray
    max_null: np.ndarray
    df: int
    n_permutations: int
    seed: int
    tail: str
    tfce: np.ndarray | None = None
    p_fwer_tfce: np.ndarray | None = None
    max_null_tfce: np.ndarray | None = None
    max_null_mass: np.ndarray | None = None
    cluster_t: float | None = None
    info: dict = field(default_factory=dict)
    t_perm: np.ndarray | None = None


def _perm_p(obs: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """FWER p: fraction of relabellings whose max is >= the observed value."""
    srt = np.sort(null_max)
    obs = np.asarray(obs, float)
    # relative tolerance: the observed value may be recomputed in another precision than the
    # unpermuted entry of the null (which always counts)
    ge = srt.size - np.searchsorted(srt, obs - 1e-6 * np.abs(obs), side="left")
    return np.maximum(ge, 1) / srt.size


def _signed(t: np.ndarray, tail: str) -> np.ndarray:
    if tail == "two-sided":
        return np.abs(t)
    return -t if tail == "less" else t


def permutation_glm(Y: np.ndarray, X: np.ndarray, contrast: np.ndarray, n_permutations: int = 1000,
                    seed: int = 0, tail: str = "two-sided", mask: np.ndarray | None = None,
                    tfce_on: bool = False, tfce_steps: int = 50, connectivity: int = 26,
                    E: float = 0.5, H: float = 2.0, cluster_forming_z: float | None = None,
                    batch_bytes: int = 256 * 2**20, dtype=np.float32,
                    chunk: tuple[int, int] | None = None) -> PermutationResult:
    """Masked GLM with Freedman-Lane permutation inference (max-T; optional TFCE, cluster mass).

    Parameters
    ----------
    Y : ndarray (n, V)
        Data, subjects x voxels (or regions), any units; every column finite, not constant and
        not fitted exactly by ``X`` (leave such columns out with :func:`screen_columns`).
    X : ndarray (n, p)
        Full-rank design matrix (intercept included).
    contrast : ndarray (p,)
        Contrast; columns with zero weight are nuisance (Freedman-Lane).
    n_permutations : int
        Random relabellings in addition to the unpermuted one (0: parametric only).
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same permutations.
    tail : {'two-sided', 'greater', 'less'}
    mask : ndarray bool (X, Y, Z), optional
        Where the V columns sit in the volume (needed for TFCE and cluster mass).
    tfce_on : bool
        Also compute TFCE on each relabelling (needs ``mask``; slow on whole brain).
    cluster_forming_z : float, optional
        If given (and ``mask``), cluster-mass FWER with this z threshold.
    batch_bytes : int
        Memory budget of one batch's product (bytes).
    dtype : numpy dtype
        Precision of the batched product and of the permuted statistics (float32 default;
        ``||R||^2`` in float64 before rounding; observed t, z, estimate maps in float64).
    chunk : (lo, hi), optional
        Compute only relabellings lo..hi-1 of the seed's list (0 = unpermuted); merge the chunks
        with :func:`combine_chunks`. The p values of a single chunk use only its own null.

    Raises
    ------
    StatsError
        A design that does not match the data or is rank deficient; columns that cannot be
        tested (see :func:`screen_columns`).
    """
    Y = np.asarray(Y, float)
    X = np.asarray(X, float)
    c = np.asarray(contrast, float)
    n, V = Y.shape
    p = X.shape[1]
    if X.shape[0] != n:
        raise StatsError(f"design has {X.shape[0]} rows for {n} subjects", field="design")
    if np.linalg.matrix_rank(X) < p:
        raise StatsError("design matrix is rank deficient", field="design")
    untestable = {k: int(v.sum()) for k, v in screen_columns(Y, X).items()}
    if any(untestable.values()):
        raise StatsError(f"{sum(untestable.values())} of {V} columns cannot be tested ("
                         f"{describe_screen(untestable, 'columns')}); leave them out first "
                         "(screen_columns)", field="data")
    if (tfce_on or cluster_forming_z) and mask is None:
        raise StatsError("TFCE and cluster mass need the voxel mask", field="mask")
    XtX_inv = np.linalg.inv(X.T @ X)
    df = n - p
    nuis = np.flatnonzero(c == 0)
    Z = X[:, nuis]
    R = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0] if Z.size else Y.copy()
    Q, _ = np.linalg.qr(X)
    a = X @ XtX_inv @ c  # contrast estimate = a'y; ||a||^2 = c'(X'X)^-1 c
    vfac = float(c @ XtX_inv @ c)
    # rotate the basis so that its first column is a/||a||: then t = g0 sqrt(df / sse) with
    # g0 = q1' P R and sse = ||R||^2 - ||Q' P R||^2 (rotation leaves ||Q' P R|| unchanged)
    u = Q.T @ a
    u /= np.linalg.norm(u)
    rot, _ = np.linalg.qr(np.column_stack([u, np.eye(p)]))
    if rot[:, 0] @ u < 0:
        rot[:, 0] *= -1
    Q = Q @ rot
    ssR = (R ** 2).sum(axis=0)
    ftype = np.dtype(dtype).type
    Rd = np.ascontiguousarray(R, dtype=ftype)
    ssRd = ssR.astype(ftype)
    # floor of the residual sum of squares (rounding): 1e-7 of the total, at least the smallest normal
    tiny = np.maximum(ssRd * ftype(1e-7), np.finfo(ftype).tiny)

    rng = np.random.default_rng(seed)
    perms = [np.arange(n)] + [rng.permutation(n) for _ in range(int(n_permutations))]
    lo, hi = (0, len(perms)) if chunk is None else (int(chunk[0]), int(chunk[1]))
    if not 0 <= lo < hi <= len(perms):
        raise StatsError(f"chunk {chunk} is outside 0..{len(perms)}", field="chunk")
    # every chunk also evaluates the unpermuted labelling (for the observed statistics)
    perms = perms[lo:hi] if lo == 0 else [perms[0]] + perms[lo:hi]
    drop_first = lo != 0
    nP = len(perms)
    B = max(1, min(nP, int(batch_bytes // max(1, (p + 2) * V * np.dtype(dtype).itemsize))))
    max_null = np.empty(nP)
    max_tfce = np.empty(nP) if tfce_on else None
    max_mass = np.empty(nP) if cluster_forming_z else None
    two = tail == "two-sided"
    cluster_t = None
    if cluster_forming_z:
        cluster_t = float(sps.t.isf(sps.norm.sf(cluster_forming_z), df))
    st = structure(connectivity) if mask is not None else None
    vol = np.zeros(mask.shape) if mask is not None else None
    t_obs = tf_obs = None
    for b0 in range(0, nP, B):
        idx = range(b0, min(nP, b0 + B))
        # W_pi = Q[pi^-1]' so that W_pi R = Q' P_pi R with (P_pi R)[i] = R[pi[i]]
        W = np.concatenate([Q[np.argsort(perms[k])].T for k in idx], axis=0).astype(ftype)
        G = (W @ Rd).reshape(len(idx), p, V)
        g0 = G[:, 0, :]
        hss = np.square(g0)
        tmp = np.empty_like(hss)
        for j in range(1, p):
            np.square(G[:, j, :], out=tmp)
            hss += tmp
        del tmp
        np.subtract(ssRd[None, :], hss, out=hss)  # sse
        np.maximum(hss, tiny[None, :], out=hss)
        np.divide(ftype(df), hss, out=hss)
        np.sqrt(hss, out=hss)
        t = np.multiply(g0, hss, out=hss)
        del G, g0
        max_null[b0:b0 + len(idx)] = _signed(t, tail).max(axis=1)
        if b0 == 0:
            t_obs = t[0].copy()
        if tfce_on or cluster_forming_z:
            for k, row in zip(idx, t):
                vol[mask] = row
                if tfce_on:
                    tf = tfce(vol if tail != "less" else -vol, E, H, tfce_steps, connectivity,
                              two_sided=two)
                    if tail == "less":
                        tf = -tf
                    tfm = _signed(tf[mask], tail)
                    max_tfce[k] = tfm.max()
                    if k == 0:
                        tf_obs = tf[mask]
                if cluster_forming_z:
                    sv = _signed(vol, tail)
                    supra = (sv > cluster_t) & mask
                    lab, nl = ndimage.label(supra, st)
                    max_mass[k] = (ndimage.sum_labels(sv, lab, np.arange(1, nl + 1)).max()
                                   if nl else 0.0)
    # observed statistics in float64 (the permutation p values use the same-precision t)
    XtY = XtX_inv @ X.T @ Y
    est = c @ XtY
    resid = Y - X @ XtY
    t64 = est / np.sqrt((resid ** 2).sum(axis=0) / df * vfac)
    if tail == "greater":
        p_unc = sps.t.sf(t64, df)
    elif tail == "less":
        p_unc = sps.t.cdf(t64, df)
    else:
        p_unc = np.minimum(1.0, 2 * sps.t.sf(np.abs(t64), df))
    if drop_first:
        max_null = max_null[1:]
        max_tfce = max_tfce[1:] if max_tfce is not None else None
        max_mass = max_mass[1:] if max_mass is not None else None
    res = PermutationResult(
        t=t64, z=t_to_z(t64, df), estimate=est, p_unc=p_unc,
        p_fwer=_perm_p(_signed(t_obs, tail), max_null), max_null=max_null, df=df,
        n_permutations=int(n_permutations), seed=int(seed), tail=tail, cluster_t=cluster_t,
        info={"batch": B, "n_columns": V, "dtype": np.dtype(dtype).name,
              "method": "Freedman-Lane", "nuisance_columns": nuis.tolist(), "chunk": [lo, hi]},
        t_perm=t_obs)
    if tfce_on:
        res.tfce = tf_obs
        res.max_null_tfce = max_tfce
        res.p_fwer_tfce = _perm_p(_signed(tf_obs, tail), max_tfce)
    if cluster_forming_z:
        res.max_null_mass = max_mass
    return res


def combine_chunks(parts: Sequence[PermutationResult]) -> PermutationResult:
    """Merge :func:`permutation_glm` results computed on chunks of the relabellings.

    Run ``permutation_glm(..., chunk=(lo, hi))`` for contiguous chunks covering
    ``0 .. n_permutations + 1`` with the same data, design, seed and settings (for instance on
    several Dask workers: TFCE costs ~1 s per relabelling on a whole-brain 2 mm grid); this
    concatenates their null distributions and recomputes the FWER p values. The result equals a
    single run with ``chunk=None``.
    """
    parts = sorted(parts, key=lambda r: r.info["chunk"][0])
    edges = [tuple(r.info["chunk"]) for r in parts]
    total = parts[0].n_permutations + 1
    if edges[0][0] != 0 or edges[-1][1] != total or any(
            a[1] != b[0] for a, b in zip(edges[:-1], edges[1:])):
        raise StatsError(f"chunks {edges} do not cover 0..{total} contiguously", field="chunk")
    if len({(r.seed, r.n_permutations, r.tail, r.t.size) for r in parts}) != 1:
        raise StatsError("chunks come from different runs (seed, permutations, tail or size)",
                         field="chunk")
    first = parts[0]

    def cat(name: str) -> np.ndarray | None:
        """Attribute ``name`` of the chunks joined in chunk order (None when the runs lack it)."""
        return None if getattr(first, name) is None else np.concatenate([getattr(r, name) for r in parts])

    out = PermutationResult(**{**first.__dict__})
    out.info = {**first.info, "chunk": [0, total], "n_chunks": len(parts)}
    out.max_null = cat("max_null")
    out.p_fwer = _perm_p(_signed(first.t_perm, first.tail), out.max_null)
    if first.tfce is not None:
        out.max_null_tfce = cat("max_null_tfce")
        out.p_fwer_tfce = _perm_p(_signed(first.tfce, first.tail), out.max_null_tfce)
    if first.max_null_mass is not None:
        out.max_null_mass = cat("max_null_mass")
    return out


# ----------------------------------------------------------------------------------------------
# Clusters and atlas labels
# ----------------------------------------------------------------------------------------------

def _atlas_arrays(atlas) -> tuple[np.ndarray, np.ndarray, dict[int, str]] | None:
    """Normalise an atlas argument to (label array 3-D int, affine, {index: name})."""
    if atlas is None:
        return None
    import nibabel as nib

    if hasattr(atlas, "image") and hasattr(atlas, "labels"):
        img, labels = atlas.image, atlas.labels
    elif isinstance(atlas, (tuple, list)) and len(atlas) == 2:
        img, labels = atlas
    else:
        raise StatsError("atlas must be an Atlas (image, labels) or a tuple (image, labels table)",
                         field="atlas")
    if isinstance(img, (str, Path)):
        img = nib.load(str(img))
    data = np.asarray(img.dataobj)
    if data.ndim == 4:  # probabilistic atlas: one volume per label (index = volume + 1)
        arg = data.argmax(axis=3) + 1
        data = np.where(data.max(axis=3) > 0, arg, 0)
    data = np.rint(data).astype(int)
    if isinstance(labels, (str, Path)):
        labels = pd.read_csv(labels, sep="\t")
    if isinstance(labels, pd.DataFrame):
        icol = "index" if "index" in labels.columns else labels.columns[0]
        ncol = "name" if "name" in labels.columns else labels.columns[1]
        names = {int(i): str(nm) for i, nm in zip(labels[icol], labels[ncol])}
    elif isinstance(labels, dict):
        names = {int(k): str(v) for k, v in labels.items()}
    else:
        names = {int(i): str(nm) for i, nm in enumerate(labels)}
    return data, img.affine, names


def atlas_lookup(atlas, coords_mm: np.ndarray) -> list[str]:
    """Atlas label name at each mm coordinate (nearest atlas voxel; '' outside labels).

    ``atlas``: an object with ``.image`` and ``.labels`` (the resources.Atlas), or a tuple
    ``(image or path, labels)`` with labels a DataFrame (columns index, name), a dict or a list.
    """
    arr = _atlas_arrays(atlas)
    coords_mm = np.atleast_2d(np.asarray(coords_mm, float))
    if arr is None:
        return [""] * len(coords_mm)
    data, aff, names = arr
    ijk = np.rint(np.c_[coords_mm, np.ones(len(coords_mm))] @ np.linalg.inv(aff).T)[:, :3].astype(int)
    out = []
    for i, j, k in ijk:
        if 0 <= i < data.shape[0] and 0 <= j < data.shape[1] and 0 <= k < data.shape[2]:
            v = int(data[i, j, k])
            out.append(names.get(v, str(v)) if v else "")
        else:
            out.append("")
    return out


CLUSTER_COLUMNS = ["cluster_id", "sign", "n_voxels", "volume_mm3", "peak_t", "peak_z", "peak_x_mm",
                   "peak_y_mm", "peak_z_mm", "peak_p_fwer", "peak_p_fwer_tfce", "cluster_mass",
                   "p_fwer_cluster_mass", "peak_label", "labels"]


def cluster_table(zmap: np.ndarray, tmap: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                  threshold_z: float = 3.1, connectivity: int = 26,
                  p_fwer: np.ndarray | None = None, p_fwer_tfce: np.ndarray | None = None,
                  max_null_mass: np.ndarray | None = None, cluster_t: float | None = None,
                  atlas=None, tail: str = "two-sided") -> pd.DataFrame:
    """Clusters of ``|z| > threshold_z`` (signs separately) with peak statistics.

    Parameters
    ----------
    zmap, tmap : ndarray (X, Y, Z)
        Observed z and t maps (0 outside the mask).
    mask : ndarray bool
    affine : ndarray (4, 4)
        Voxel to mm.
    threshold_z : float
        Cluster-forming threshold (z).
    p_fwer, p_fwer_tfce : ndarray (X, Y, Z), optional
        Voxel FWER p maps, reported at each peak.
    max_null_mass, cluster_t : optional
        Permutation null of the max cluster mass (sum of |t| above ``cluster_t``) for a
        cluster-mass FWER p.
    atlas : optional
        Label image + table (see :func:`atlas_lookup`).

    Returns
    -------
    DataFrame with columns CLUSTER_COLUMNS (mm coordinates, volume in mm3), sorted by |peak z|.
    """
    st = structure(connectivity)
    vox_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    signs = {"two-sided": (1, -1), "greater": (1,), "less": (-1,)}[tail]
    rows = []
    arr = _atlas_arrays(atlas)
    for sgn in signs:
        zz = np.where(mask, sgn * zmap, 0.0)
        lab, nl = ndimage.label(zz > threshold_z, st)
        for k in range(1, nl + 1):
            vox = np.argwhere(lab == k)
            vals = zz[lab == k]
            pk = vox[np.argmax(vals)]
            xyz = (affine @ np.r_[pk, 1.0])[:3]
            mass = None
            pmass = None
            if cluster_t is not None:
                tt = sgn * tmap[lab == k]
                mass = float(tt[tt > cluster_t].sum())
                if max_null_mass is not None:
                    pmass = float(_perm_p(np.array([mass]), max_null_mass)[0])
            region_names = []
            if arr is not None:
                coords = np.c_[vox, np.ones(len(vox))] @ affine.T
                names = atlas_lookup(atlas, coords[:, :3])
                s = pd.Series([n for n in names if n])
                if len(s):
                    vc = s.value_counts()
                    region_names = [f"{nm} ({100.0 * cnt / len(vox):.0f}%)" for nm, cnt in vc.head(3).items()]
            rows.append({
                "cluster_id": 0, "sign": "+" if sgn > 0 else "-", "n_voxels": len(vox),
                "volume_mm3": len(vox) * vox_mm3, "peak_t": float(tmap[tuple(pk)]),
                "peak_z": float(zmap[tuple(pk)]), "peak_x_mm": xyz[0], "peak_y_mm": xyz[1],
                "peak_z_mm": xyz[2],
                "peak_p_fwer": float(p_fwer[tuple(pk)]) if p_fwer is not None else np.nan,
                "peak_p_fwer_tfce": float(p_fwer_tfce[tuple(pk)]) if p_fwer_tfce is not None else np.nan,
                "cluster_mass": mass if mass is not None else np.nan,
                "p_fwer_cluster_mass": pmass if pmass is not None else np.nan,
                "peak_label": atlas_lookup(atlas, xyz[None])[0] if arr is not None else "",
                "labels": "; ".join(region_names),
            })
    df = pd.DataFrame(rows, columns=CLUSTER_COLUMNS)
    if len(df):
        df = df.reindex(df["peak_z"].abs().sort_values(ascending=False).index).reset_index(drop=True)
        df["cluster_id"] = np.arange(1, len(df) + 1)
    return df
