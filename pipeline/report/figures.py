"""Report figures: each function takes loaded data (nibabel images, DataFrames) and returns PNG bytes.

Plots use matplotlib's Agg backend and nilearn's plotting (offline: nilearn's MNI template ships
in its package data). Figures are small (``dpi`` from :class:`ReportSettings`) so reports stay
light. Units: times in the tables are seconds (plotted in minutes), concentrations Bq/mL
(plotted in kBq/mL), rotations radians (plotted in degrees), translations and framewise
displacement mm.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

__all__ = [
    "load_img",
    "mean_3d",
    "pet_in_t1",
    "motion_figure",
    "registration_figure",
    "segmentation_figure",
    "atlas_figure",
    "reference_masks_figure",
    "tacs_figure",
    "fits_long",
    "fits_figure",
    "logan_figure",
    "map_montage",
    "effect_size_figure",
    "group_genotype_figure",
    "correlation_figure",
    "robust_z_figure",
    "voxelwise_figure",
]

TISSUE_COLORS = ["#d95f02", "#1b9e77", "#7570b3"]  # GM, WM, CSF
MASK_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#a65628"]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _display_png(display, dpi: int) -> bytes:
    buf = io.BytesIO()
    display.frame_axes.figure.savefig(buf, format="png", dpi=dpi)
    display.close()
    return buf.getvalue()


def load_img(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI image (3D or 4D) with nibabel."""
    return nib.load(str(path))


def mean_3d(img) -> nib.Nifti1Image:
    """A 3D image: ``img`` itself, or the mean over the 4th axis of a 4D image."""
    if img.ndim == 3:
        return img
    data = np.asarray(img.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3] + (-1,)).mean(axis=3)
    return nib.Nifti1Image(data, img.affine)


def _finite(img) -> nib.Nifti1Image:
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))
    return nib.Nifti1Image(data, img.affine)


def pet_in_t1(petref: str | Path, t1w: str | Path, xfm: str | Path | None = None
              ) -> tuple[nib.Nifti1Image, str]:
    """Resample the PET reference image into T1w space.

    Parameters
    ----------
    petref, t1w : path
        3D PET reference (Bq/mL) and T1w images.
    xfm : path, optional
        ITK/ANTs rigid transform PET reference -> T1w (``_from-petref_to-T1w_mode-image_xfm``).
        Without it the images are overlaid by their scanner (header) coordinates.

    Returns
    -------
    (image, note) : PET resampled on the T1w grid, and a sentence saying how.
    """
    if xfm is not None and Path(xfm).exists():
        from gliaflow.pipeline.spatial.transforms import read_itk_text, resample_world

        t1 = load_img(t1w)
        pet = mean_3d(load_img(petref))
        data = resample_world(np.asarray(pet.dataobj, dtype=np.float32), pet.affine, t1.shape[:3],
                              t1.affine, matrix=read_itk_text(xfm)[0], order=1)
        return nib.Nifti1Image(data, t1.affine), f"PET reference resampled with {Path(xfm).name}"
    from nilearn.image import resample_to_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = resample_to_img(mean_3d(load_img(petref)), load_img(t1w), interpolation="continuous",
                              force_resample=True, copy_header=True)
    return res, "no PET-to-T1 transform available: overlay by scanner coordinates"


# ------------------------------------------------------------------------------------------------
# per-session figures
# ------------------------------------------------------------------------------------------------

def _mid_min(df: pd.DataFrame) -> np.ndarray:
    if {"frame_start", "frame_end"} <= set(df.columns):
        return (df["frame_start"].to_numpy(float) + df["frame_end"].to_numpy(float)) / 2 / 60
    if "time_s" in df.columns:
        return df["time_s"].to_numpy(float) / 60
    return np.arange(len(df), dtype=float)


def motion_figure(motion: pd.DataFrame, dpi: int = 80, fd_threshold_mm: float | None = None
                  ) -> bytes:
    """Frame realignment parameters: translations (mm), rotations (deg), framewise displacement.

    Parameters
    ----------
    motion : DataFrame
        Columns frame_start, frame_end (s), trans_x/y/z (mm), rot_x/y/z (rad),
        framewise_displacement (mm); missing columns are skipped.
    fd_threshold_mm : float, optional
        Draws a horizontal line on the FD panel.
    """
    t = _mid_min(motion)
    fig, axes = plt.subplots(3, 1, figsize=(7, 5.2), sharex=True)
    for ax, cols, scale, ylabel in (
        (axes[0], ["trans_x", "trans_y", "trans_z"], 1.0, "translation (mm)"),
        (axes[1], ["rot_x", "rot_y", "rot_z"], 180 / np.pi, "rotation (deg)"),
        (axes[2], ["framewise_displacement"], 1.0, "FD (mm)"),
    ):
        for col in cols:
            if col in motion.columns:
                ax.plot(t, motion[col].to_numpy(float) * scale, marker=".", ms=3, lw=1,
                        label=col.replace("framewise_displacement", "FD"))
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", ncol=3, frameon=False)
    if fd_threshold_mm is not None:
        axes[2].axhline(fd_threshold_mm, color="r", ls="--", lw=0.8)
    axes[2].set_xlabel("mid-frame time (min)", fontsize=8)
    return _png(fig, dpi)


def _pet_levels(pet: nib.Nifti1Image) -> list[float]:
    data = np.asarray(pet.dataobj, dtype=np.float32)
    vals = data[np.isfinite(data) & (data > 0)]
    if vals.size == 0:
        return []
    levels = sorted(set(float(np.percentile(vals, q)) for q in (50, 85)))
    return [lv for lv in levels if lv > 0]


def registration_figure(t1: nib.Nifti1Image, pet_t1: nib.Nifti1Image, dpi: int = 80,
                        title: str = "") -> bytes:
    """PET-on-T1 check: PET iso-contours (50th/85th percentile of positive voxels) over the T1w,
    three orthogonal planes."""
    from nilearn import plotting

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plotting.plot_anat(_finite(t1), display_mode="ortho", draw_cross=False,
                                     figure=plt.figure(figsize=(7.5, 2.7)), title=title or None,
                                     annotate=True, dim=-0.3, colorbar=False)
        levels = _pet_levels(pet_t1)
        if levels:
            display.add_contours(_finite(pet_t1), levels=levels, colors=["#ffd400", "#ff2a00"][:len(levels)],
                                 linewidths=0.9)
    return _display_png(display, dpi)


def segmentation_figure(t1: nib.Nifti1Image, dseg: nib.Nifti1Image, dpi: int = 80) -> bytes:
    """Tissue segmentation (GM=1, WM=2, CSF=3) over the T1w, three planes."""
    from nilearn import plotting

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plotting.plot_roi(_finite(dseg), bg_img=_finite(t1), display_mode="ortho",
                                    draw_cross=False, cmap=ListedColormap(TISSUE_COLORS),
                                    vmin=0.5, vmax=3.5, alpha=0.45, colorbar=False,
                                    figure=plt.figure(figsize=(7.5, 2.7)),
                                    title="GM (orange) / WM (green) / CSF (purple)")
    return _display_png(display, dpi)


def atlas_figure(bg: nib.Nifti1Image, labels: nib.Nifti1Image, dpi: int = 80,
                 title: str = "") -> bytes:
    """Atlas label image over a background (e.g. the PET reference), axial montage."""
    from nilearn import plotting

    data = np.asarray(labels.dataobj)
    n = int(np.nanmax(data)) if data.size else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plotting.plot_roi(labels, bg_img=_finite(mean_3d(bg)), display_mode="z",
                                    cut_coords=6, draw_cross=False, cmap="tab20", alpha=0.55,
                                    vmin=0.5, vmax=max(n, 1) + 0.5, black_bg=True, colorbar=False,
                                    figure=plt.figure(figsize=(8, 1.9)), title=title or None)
    return _display_png(display, dpi)


def _masks_centre(masks: Mapping[str, nib.Nifti1Image]) -> tuple[float, float, float] | None:
    """World coordinates (mm) of the centre of mass of the smallest non-empty mask, so that the
    three planes cut through it."""
    best = None
    for m in masks.values():
        data = np.asarray(m.dataobj) > 0.5
        n = int(data.sum())
        if n and (best is None or n < best[0]):
            best = (n, np.argwhere(data).mean(axis=0), m.affine)
    if best is None:
        return None
    return tuple(float(v) for v in nib.affines.apply_affine(best[2], best[1]))


def reference_masks_figure(bg: nib.Nifti1Image, masks: Mapping[str, nib.Nifti1Image], dpi: int = 80
                           ) -> bytes:
    """Outlines of the reference-region masks over a background image, three planes."""
    from nilearn import plotting

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = list(masks)
        display = plotting.plot_anat(_finite(mean_3d(bg)), display_mode="ortho", draw_cross=False,
                                     figure=plt.figure(figsize=(7.5, 2.8)), dim=-0.3,
                                     cut_coords=_masks_centre(masks), colorbar=False)
        for i, name in enumerate(names):
            m = masks[name]
            if np.asarray(m.dataobj).any():
                display.add_contours(_finite(m), levels=[0.5],
                                     colors=[MASK_COLORS[i % len(MASK_COLORS)]], linewidths=1.2)
        handles = [plt.Line2D([], [], color=MASK_COLORS[i % len(MASK_COLORS)], label=n)
                   for i, n in enumerate(names)]
        display.frame_axes.figure.legend(handles=handles, loc="lower center", ncol=len(names),
                                         fontsize=7, frameon=True)
    return _display_png(display, dpi)


def _region_columns(tacs: pd.DataFrame) -> list[str]:
    return [c for c in tacs.columns if c not in ("frame", "frame_start", "frame_end", "time_s")
            and pd.api.types.is_numeric_dtype(tacs[c])]


def tacs_figure(tacs: pd.DataFrame | None, plasma: pd.DataFrame | None = None,
                tacs_pvc: pd.DataFrame | None = None, dpi: int = 80, max_regions: int = 10,
                highlight: tuple[str, ...] = ()) -> bytes:
    """Regional TACs (kBq/mL vs min), the PVC TACs when given, and the plasma input (log scale).

    Parameters
    ----------
    tacs, tacs_pvc : DataFrame
        frame_start, frame_end (s) and one column per region (Bq/mL).
    plasma : DataFrame
        time_s (s) and concentration columns (Bq/mL), e.g. parent_bqml, whole_blood_bqml.
    max_regions : int
        Regions drawn per panel; regions named in ``highlight`` are kept first, then those with
        the highest mean uptake.
    """
    panels = [(n, d) for n, d in (("regional TACs", tacs), ("PVC (GTM) TACs", tacs_pvc),
                                   ("plasma input", plasma)) if d is not None and len(d)]
    if not panels:
        raise ValueError("no TAC or plasma table to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, df) in zip(axes[0], panels):
        if name == "plasma input":
            t = _mid_min(df)
            for col in df.columns:
                if col in ("time_s", "time", "frame_start", "frame_end"):
                    continue
                if not pd.api.types.is_numeric_dtype(df[col]):
                    continue
                y = df[col].to_numpy(float) / 1000
                if col == "parent_fraction" or not np.isfinite(y).any():
                    continue
                ax.plot(t, np.where(y > 0, y, np.nan), lw=1, label=col.replace("_bqml", ""))
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_ylabel("kBq/mL (log)", fontsize=8)
        else:
            t = _mid_min(df)
            regions = _region_columns(df)
            keep = [r for r in regions if r in highlight]
            rest = sorted((r for r in regions if r not in keep),
                          key=lambda r: -np.nanmean(df[r].to_numpy(float)))
            for r in (keep + rest)[:max_regions]:
                ax.plot(t, df[r].to_numpy(float) / 1000, marker=".", ms=2.5, lw=1,
                        ls="--" if r in highlight else "-", label=r)
            ax.set_ylabel("kBq/mL", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (min)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _png(fig, dpi)


_MEASURED = ("measured", "observed", "tac", "measured_bqml", "observed_bqml", "tissue_bqml", "data")
_FITTED = ("fitted", "fit", "predicted", "fitted_bqml", "model_bqml", "prediction")


def fits_long(fits: pd.DataFrame) -> pd.DataFrame:
    """Normalise a model-fit table to long form: model, region, t_min, measured, fitted (Bq/mL).

    Accepts long tables with ``model`` and ``region`` columns, a time (frame_start/frame_end s,
    ``time_s`` or ``t_mid_s``) and measured/fitted value columns (several common names).

    Raises
    ------
    ValueError
        When the columns are not recognised (the message lists them).
    """
    cols = {c.lower(): c for c in fits.columns}
    meas = next((cols[c] for c in _MEASURED if c in cols), None)
    fitc = next((cols[c] for c in _FITTED if c in cols), None)
    if "model" not in cols or "region" not in cols or meas is None or fitc is None:
        raise ValueError(f"fit table columns not recognised: {list(fits.columns)}")
    if "frame_start" in cols and "frame_end" in cols:
        t = (fits[cols["frame_start"]].astype(float) + fits[cols["frame_end"]].astype(float)) / 2
    elif "t_mid_s" in cols:
        t = fits[cols["t_mid_s"]].astype(float)
    elif "time_s" in cols:
        t = fits[cols["time_s"]].astype(float)
    else:
        raise ValueError(f"fit table has no time column: {list(fits.columns)}")
    return pd.DataFrame({"model": fits[cols["model"]].astype(str), "region": fits[cols["region"]].astype(str),
                         "t_min": t / 60, "measured": fits[meas].astype(float),
                         "fitted": fits[fitc].astype(float)})


def fits_figure(fits: pd.DataFrame, dpi: int = 80, regions: list[str] | None = None,
                max_regions: int = 3) -> bytes:
    """Model fits (top row) and residuals (bottom row) for a few regions, one line per model.

    ``fits`` is any table :func:`fits_long` accepts; values in Bq/mL, plotted in kBq/mL.
    """
    long = fits_long(fits)
    avail = list(dict.fromkeys(long["region"]))
    chosen = [r for r in (regions or []) if r in avail] or avail
    chosen = chosen[:max_regions]
    models = list(dict.fromkeys(long["model"]))
    fig, axes = plt.subplots(2, len(chosen), figsize=(3.3 * len(chosen), 4.2), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [2, 1]})
    for j, region in enumerate(chosen):
        sub = long[long["region"] == region]
        ax, axr = axes[0, j], axes[1, j]
        first = sub[sub["model"] == models[0]].sort_values("t_min")
        ax.plot(first["t_min"], first["measured"] / 1000, "ko", ms=3, label="measured")
        for m in models:
            s = sub[sub["model"] == m].sort_values("t_min")
            if s.empty:
                continue
            ax.plot(s["t_min"], s["fitted"] / 1000, lw=1.1, label=m)
            axr.plot(s["t_min"], (s["measured"] - s["fitted"]) / 1000, marker=".", ms=3, lw=0.8,
                     label=m)
        axr.axhline(0, color="k", lw=0.6)
        ax.set_title(region, fontsize=9)
        ax.set_ylabel("kBq/mL", fontsize=8)
        axr.set_ylabel("residual", fontsize=8)
        axr.set_xlabel("time (min)", fontsize=8)
        for a in (ax, axr):
            a.tick_params(labelsize=7)
            a.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _png(fig, dpi)


def logan_figure(points: pd.DataFrame, dpi: int = 80, regions: list[str] | None = None,
                 max_regions: int = 3) -> bytes:
    """Logan plots (x = int Cp / C_T, y = int C_T / C_T, min) with the fitted line over the frames
    after t* (filled dots) for a few regions."""
    avail = list(dict.fromkeys(points["region"]))
    chosen = ([r for r in (regions or []) if r in avail] or avail)[:max_regions]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.3 * len(chosen), 2.6), squeeze=False)
    for ax, region in zip(axes[0], chosen):
        s = points[points["region"] == region]
        used = s["used"].astype(bool).to_numpy()
        ax.scatter(s["x"][~used], s["y"][~used], s=12, facecolors="white", edgecolors="k")
        ax.scatter(s["x"][used], s["y"][used], s=12, color="k")
        su = s[used]
        if len(su):
            ax.plot(su["x"], su["line"], color="#c0392b", lw=1.2, label="fit after t*")
            ax.legend(fontsize=6, frameon=False)
        ax.set_title(f"Logan: {region}", fontsize=9)
        ax.set_xlabel("∫Cp / C_T (min)", fontsize=8)
        ax.set_ylabel("∫C_T / C_T (min)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig, dpi)


def _ras(img) -> np.ndarray:
    img = nib.as_closest_canonical(mean_3d(img))
    return np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))


def map_montage(maps: Mapping[str, nib.Nifti1Image], dpi: int = 80, n_slices: int = 6) -> bytes:
    """Axial montage of parametric maps: one row per map, ``n_slices`` slices through the
    non-zero extent, colour range 0..99th percentile, with a colour bar per row."""
    names = list(maps)
    if not names:
        raise ValueError("no maps")
    fig, axes = plt.subplots(len(names), n_slices, figsize=(1.25 * n_slices + 0.8, 1.35 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        vol = _ras(maps[name])
        nz = np.nonzero(np.abs(vol).sum(axis=(0, 1)) > 0)[0]
        lo, hi = (nz[0], nz[-1]) if nz.size else (0, vol.shape[2] - 1)
        zs = np.linspace(lo + (hi - lo) * 0.15, hi - (hi - lo) * 0.1, n_slices).round().astype(int)
        vals = vol[vol != 0]
        vmax = float(np.percentile(vals, 99)) if vals.size else 1.0
        vmin = min(0.0, float(np.percentile(vals, 1))) if vals.size else 0.0
        im = None
        for j, z in enumerate(zs):
            ax = axes[i, j]
            im = ax.imshow(vol[:, :, z].T, origin="lower", cmap="inferno", vmin=vmin,
                           vmax=vmax if vmax > vmin else vmin + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
        cb = fig.colorbar(im, ax=axes[i, :].tolist(), fraction=0.02, pad=0.01)
        cb.ax.tick_params(labelsize=6)
    return _png(fig, dpi)


# ------------------------------------------------------------------------------------------------
# cohort figures
# ------------------------------------------------------------------------------------------------

def effect_size_figure(stats_regional: pd.DataFrame, dpi: int = 80, alpha: float = 0.05,
                       metrics: list[str] | None = None, max_regions: int = 30) -> bytes:
    """Forest plot of Hedges' g with confidence intervals per region, one panel per metric.

    Parameters
    ----------
    stats_regional : DataFrame
        Columns region, metric, hedges_g, g_ci_low, g_ci_high and p_fdr (filled marker when
        p_fdr < alpha) or p.
    """
    df = stats_regional.copy()
    metrics = metrics or list(dict.fromkeys(df["metric"].astype(str)))[:4]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1.2,
                                                       0.9 + 0.19 * min(max_regions, df["region"].nunique())),
                             squeeze=False, sharey=False)
    pcol = "p_fdr" if "p_fdr" in df.columns else ("p" if "p" in df.columns else None)
    for ax, metric in zip(axes[0], metrics):
        sub = df[df["metric"].astype(str) == metric].dropna(subset=["hedges_g"])
        sub = sub.reindex(sub["hedges_g"].abs().sort_values(ascending=False).index).head(max_regions)
        sub = sub.iloc[::-1]
        y = np.arange(len(sub))
        g = sub["hedges_g"].to_numpy(float)
        lo = sub["g_ci_low"].to_numpy(float) if "g_ci_low" in sub else g
        hi = sub["g_ci_high"].to_numpy(float) if "g_ci_high" in sub else g
        sig = (sub[pcol].to_numpy(float) < alpha) if pcol else np.zeros(len(sub), bool)
        ax.hlines(y, lo, hi, color="#555", lw=1)
        ax.scatter(g[~sig], y[~sig], facecolors="white", edgecolors="#25344a", s=18, zorder=3,
                   label=f"{pcol} ≥ {alpha}" if pcol else None)
        ax.scatter(g[sig], y[sig], color="#c0392b", s=20, zorder=3,
                   label=f"{pcol} < {alpha}" if pcol else None)
        ax.axvline(0, color="k", lw=0.7)
        ax.set_yticks(y)
        ax.set_yticklabels(sub["region"].astype(str), fontsize=6)
        ax.set_xlabel("Hedges' g (patient − control)", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        if pcol:
            ax.legend(fontsize=6, loc="lower right", frameon=False)
    fig.tight_layout()
    return _png(fig, dpi)


def group_genotype_figure(regional: pd.DataFrame, metric: str, region: str, group_col: str = "group",
                          genotype_col: str = "tspo_genotype", dpi: int = 80) -> bytes:
    """A regional metric by genotype (x) and group (colour), one dot per session with the group
    median as a bar."""
    sub = regional[regional["region"].astype(str) == region].copy()
    sub = sub.dropna(subset=[metric])
    if genotype_col not in sub.columns:
        sub[genotype_col] = "all"
    if group_col not in sub.columns:
        sub[group_col] = "all"
    sub[genotype_col] = sub[genotype_col].fillna("n/a").astype(str)
    sub[group_col] = sub[group_col].fillna("n/a").astype(str)
    genos = sorted(sub[genotype_col].unique(), key=lambda g: ("HAB", "MAB", "LAB").index(g)
                   if g in ("HAB", "MAB", "LAB") else 9)
    groups = sorted(sub[group_col].unique())
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(genos) * max(1, len(groups)) / 2, 3))
    rng = np.random.default_rng(0)
    width = 0.8 / max(1, len(groups))
    colors = ["#377eb8", "#e41a1c", "#4daf4a", "#984ea3"]
    for gi, grp in enumerate(groups):
        for xi, geno in enumerate(genos):
            vals = sub.loc[(sub[group_col] == grp) & (sub[genotype_col] == geno), metric].to_numpy(float)
            if vals.size == 0:
                continue
            x0 = xi - 0.4 + width * (gi + 0.5)
            ax.scatter(x0 + rng.uniform(-width / 4, width / 4, vals.size), vals, s=12,
                       color=colors[gi % 4], alpha=0.8, label=grp if xi == 0 or geno == genos[0] else None)
            ax.hlines(np.median(vals), x0 - width / 3, x0 + width / 3, color=colors[gi % 4], lw=2)
    ax.set_xticks(range(len(genos)))
    ax.set_xticklabels(genos, fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.set_title(f"{metric} in {region}", fontsize=9)
    ax.tick_params(labelsize=7)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig, dpi)


def correlation_figure(regional: pd.DataFrame, pairs: list[dict[str, Any]], group_col: str = "group",
                       dpi: int = 80) -> bytes:
    """Scatter of a regional metric against a clinical score, one panel per (region, metric,
    score) in ``pairs`` (dicts with keys region, metric, score and optional r, p), with a
    least-squares line."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.1 * len(pairs), 2.8), squeeze=False)
    for ax, pr in zip(axes[0], pairs):
        sub = regional[regional["region"].astype(str) == str(pr["region"])]
        sub = sub[[pr["metric"], pr["score"]] + ([group_col] if group_col in sub else [])].dropna(
            subset=[pr["metric"], pr["score"]])
        x = sub[pr["score"]].to_numpy(float)
        y = sub[pr["metric"]].to_numpy(float)
        if group_col in sub:
            for i, (g, s) in enumerate(sub.groupby(group_col)):
                ax.scatter(s[pr["score"]], s[pr["metric"]], s=12, label=str(g),
                           color=["#377eb8", "#e41a1c", "#4daf4a"][i % 3])
            ax.legend(fontsize=6, frameon=False)
        else:
            ax.scatter(x, y, s=12)
        if x.size >= 3 and np.ptp(x) > 0:
            b = np.polyfit(x, y, 1)
            xx = np.linspace(x.min(), x.max(), 10)
            ax.plot(xx, np.polyval(b, xx), "k-", lw=1)
        stat = ""
        for key in ("r", "rho", "estimate"):
            if key in pr and pr[key] is not None and np.isfinite(pr[key]):
                stat = f" {key}={pr[key]:.2f}"
                break
        if "p" in pr and pr["p"] is not None and np.isfinite(pr["p"]):
            stat += f" p={pr['p']:.2g}"
        ax.set_title(f"{pr['region']}{stat}", fontsize=8)
        ax.set_xlabel(str(pr["score"]), fontsize=8)
        ax.set_ylabel(str(pr["metric"]), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig, dpi)


def robust_z_figure(z: pd.DataFrame, threshold: float = 3.5, dpi: int = 80) -> bytes:
    """Strip plot of robust z-scores: one column per QC metric, one dot per session; sessions
    beyond ±threshold are drawn red and labelled."""
    cols = list(z.columns)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(cols) + 1.5), 3.2))
    rng = np.random.default_rng(1)
    for i, c in enumerate(cols):
        v = z[c].to_numpy(float)
        ok = np.isfinite(v)
        vv = np.clip(v[ok], -12, 12)
        out = np.abs(vv) > threshold
        xs = i + rng.uniform(-0.18, 0.18, vv.size)
        ax.scatter(xs[~out], vv[~out], s=9, color="#25344a", alpha=0.7)
        ax.scatter(xs[out], vv[out], s=16, color="#c0392b")
        for x, y, name in zip(xs[out], vv[out], np.asarray(z.index)[ok][out]):
            ax.annotate(str(name), (x, y), fontsize=5.5, xytext=(3, 0), textcoords="offset points")
    ax.axhline(threshold, color="#c0392b", ls="--", lw=0.8)
    ax.axhline(-threshold, color="#c0392b", ls="--", lw=0.8)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=6.5)
    ax.set_ylabel("robust z (median/MAD)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig, dpi)


def voxelwise_figure(stat_img: nib.Nifti1Image, threshold: float | None = None, dpi: int = 80,
                     title: str = "", bg_img: nib.Nifti1Image | None = None) -> bytes:
    """A voxelwise statistic map (e.g. z, template space) thresholded over the MNI152 template
    (nilearn package data, offline), three planes at the peak."""
    from nilearn import plotting

    data = np.nan_to_num(np.asarray(stat_img.dataobj, dtype=np.float32))
    img = nib.Nifti1Image(data, stat_img.affine)
    cut = None
    if np.abs(data).max() > 0:
        ijk = np.unravel_index(np.argmax(np.abs(data)), data.shape)
        cut = tuple(float(v) for v in nib.affines.apply_affine(stat_img.affine, ijk))
    kwargs = {} if bg_img is None else {"bg_img": bg_img}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        display = plotting.plot_stat_map(img, threshold=threshold, display_mode="ortho", cut_coords=cut,
                                         draw_cross=False, figure=plt.figure(figsize=(7.5, 2.7)),
                                         title=title or None, colorbar=True, **kwargs)
    return _display_png(display, dpi)
