"""Group statistics entry points: regional + voxelwise analysis and their outputs.

The cohort flow calls :func:`run_group_stats` with ``OUT_DIR/group/regional.tsv``. It runs

- :func:`~gliaflow.pipeline.stats.regional.regional_group_stats` (patient vs control per region
  and metric, Hedges' g, FDR/Holm/permutation FWER),
- :func:`~gliaflow.pipeline.stats.regional.regional_correlations` (partial correlations with
  clinical scores within a group),
- :func:`voxelwise_group_stats` for each metric with maps (masked GLM, Freedman-Lane
  permutations, max-T FWER, TFCE, clusters with atlas labels),

and writes everything with :func:`write_group_outputs` under ``OUT_DIR/group/``:

``stats_regional.tsv``, ``stats_correlation.tsv``, ``stats_design.tsv`` (+ JSON sidecars), and
per voxelwise metric in ``group/voxelwise/``:
``meas-<m>_contrast-<c>_stat-<s>_statmap.nii.gz`` for s in t, z, effect, pfwe, logpfwe
(-log10 FWER p), tfce, tfcepfwe, logtfcepfwe, each with a JSON sidecar describing the model,
``meas-<m>_desc-mask_mask.nii.gz``, ``meas-<m>_design.tsv`` and ``meas-<m>_contrast-<c>_clusters.tsv``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gliaflow.pipeline.config import StatsSettings
from gliaflow.pipeline.io.derivatives import Derivatives, atomic_write_json, save_nifti, write_tsv
from gliaflow.pipeline.errors import StatsError
from gliaflow.pipeline._utils import camel_case, participant_label
from gliaflow.pipeline.provenance import (STEP_GROUP_CORRELATION, STEP_GROUP_REGIONAL,
                                          STEP_GROUP_VOXELWISE, ToolCall, gliaflow_call,
                                          library_call)
from gliaflow.pipeline.stats.design import Design, build_design, contrast_vector, subject_table
from gliaflow.pipeline.stats.regional import regional_correlations, regional_group_stats
from gliaflow.pipeline.stats.voxelwise import (cluster_table, describe_screen, load_maps, permutation_glm,
                                               screen_columns)

__all__ = [
    "VoxelwiseResult",
    "voxelwise_group_stats",
    "write_group_outputs",
    "run_group_stats",
    "read_regional",
    "group_provenance",
]

log = logging.getLogger(__name__)


def read_regional(path: str | Path) -> pd.DataFrame:
    """Read a BIDS TSV (``n/a`` as missing) as a DataFrame; participant_id kept as text."""
    path = Path(path)
    if not path.is_file():
        raise StatsError("regional table not found", file=path)
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True,
                       dtype={"participant_id": str, "session_id": str, "region": str})


class VoxelwiseResult(dict):
    """Voxelwise outputs for one metric: a dict with keys ``images`` (name -> nibabel image),
    ``clusters`` (DataFrame), ``design`` (Design), ``sidecar`` (dict), ``summary`` (dict)."""


def _drop_exact_fits(Y: np.ndarray, vmask: np.ndarray, X: np.ndarray, mask_path
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Leave out the voxels the design fits exactly (no residual variance: t is undefined).

    Returns the remaining data (n, V'), the voxel mask without them, and how many were dropped.
    """
    exact = screen_columns(Y, X)["exact_fit"]
    if not exact.any():
        return Y, vmask, 0
    if exact.all():
        raise StatsError("every voxel of the mask is fitted exactly by the design (no residual "
                         "variance); the maps cannot be tested", file=mask_path, field="mask")
    out = vmask.copy()
    out[vmask] = ~exact
    return Y[:, ~exact], out, int(exact.sum())


def voxelwise_group_stats(maps: list[tuple[str, Path]], mask: str | Path, subjects: pd.DataFrame,
                          settings: StatsSettings, metric: str = "suvr", atlas=None,
                          contrast: str | dict | None = None) -> VoxelwiseResult:
    """Voxelwise patient-vs-control GLM with permutation inference for one metric.

    Parameters
    ----------
    maps : list of (participant_id, path)
        3-D parametric maps (metric units, e.g. SUVR or VT mL/cm3) in template space, on the
        mask's grid. With ``settings.session`` set, maps whose file name has another ``ses-``
        are skipped; several maps left for one participant is an error. Subjects excluded by the design (LAB, other groups) are ignored; design
        subjects without a map are left out (the count is in the summary).
    mask : path
        Brain mask image (nonzero = brain) defining the grid. Voxels that cannot be tested are
        left out of the analysis mask before the GLM: not finite in some subject's map (e.g.
        outside its field of view), the same value in every subject, or fitted exactly by the
        design; their counts are in the summary (``n_voxels_excluded``) and the sidecars
        (``NVoxelsExcluded``), and logged.
    subjects : DataFrame
        Subject covariates, index participant_id (as from :func:`subject_table`).
    settings : StatsSettings
        covariates, smoothing_fwhm_mm, n_permutations, seed, tail, tfce, tfce_steps,
        connectivity, cluster_forming_z, cluster_mass.
    metric : str
        Name used in outputs.
    atlas : optional
        Atlas (``.image``, ``.labels``) or tuple (label image or path, labels table) for the
        cluster table.
    contrast : str or dict, optional
        Design column (or {column: weight}) to test instead of the group effect.
    """
    import nibabel as nib

    t0 = time.perf_counter()
    by_pid: dict[str, list[Path]] = {}
    for pid, path in maps:
        path = Path(path)
        if settings.session is not None and "ses-" in path.name \
                and f"ses-{settings.session}_" not in path.name:
            continue  # another session's map
        by_pid.setdefault(participant_label(pid), []).append(path)
    multi = {k: v for k, v in by_pid.items() if len(v) > 1}
    if multi:
        k, v = next(iter(multi.items()))
        raise StatsError(f"participant {k} has {len(v)} maps for {metric} ({[p.name for p in v]}); "
                         "set stats.session to the session to analyse", field="session_id")
    by_pid = {k: v[0] for k, v in by_pid.items()}
    full = build_design(subjects, settings)  # validates the whole cohort first
    present = [s for s in full.subjects if participant_label(s) in by_pid]
    n_missing_map = len(full.subjects) - len(present)
    design = build_design(subjects.loc[present], settings)
    design.n_excluded_lab, design.n_excluded_group = full.n_excluded_lab, full.n_excluded_group
    c = contrast_vector(design, contrast)
    cname = design.contrast_name if contrast is None else camel_case(
        contrast if isinstance(contrast, str) else "_".join(contrast))
    paths = [by_pid[participant_label(s)] for s in design.subjects]
    Y, vmask, affine, mask_img, excluded = load_maps(paths, mask, settings.smoothing_fwhm_mm)
    Y, vmask, excluded["exact_fit"] = _drop_exact_fits(Y, vmask, design.X, mask)
    if any(excluded.values()):
        log.info("voxelwise %s: %d brain-mask voxels left out of the analysis (%s); %d analysed",
                 metric, sum(excluded.values()), describe_screen(excluded), int(vmask.sum()))
    res = permutation_glm(Y, design.X, c, n_permutations=settings.n_permutations, seed=settings.seed,
                          tail=settings.tail, mask=vmask, tfce_on=settings.tfce,
                          tfce_steps=settings.tfce_steps, connectivity=settings.connectivity,
                          cluster_forming_z=settings.cluster_forming_z if settings.cluster_mass else None)

    def vol(values, fill=0.0):
        out = np.full(vmask.shape, fill, dtype=np.float32)
        out[vmask] = values
        return nib.Nifti1Image(out, affine)

    images = {"t": vol(res.t), "z": vol(res.z), "effect": vol(res.estimate),
              "pfwe": vol(res.p_fwer, 1.0), "logpfwe": vol(-np.log10(res.p_fwer))}
    if res.tfce is not None:
        images["tfce"] = vol(res.tfce)
        images["tfcepfwe"] = vol(res.p_fwer_tfce, 1.0)
        images["logtfcepfwe"] = vol(-np.log10(res.p_fwer_tfce))
    images["mask"] = nib.Nifti1Image(vmask.astype(np.uint8), affine)

    def arr(name):
        return np.asarray(images[name].dataobj, float) if name in images else None

    clusters = cluster_table(arr("z"), arr("t"), vmask, affine, settings.cluster_forming_z,
                             settings.connectivity, p_fwer=arr("pfwe"), p_fwer_tfce=arr("tfcepfwe"),
                             max_null_mass=res.max_null_mass, cluster_t=res.cluster_t, atlas=atlas,
                             tail=settings.tail)
    sidecar = {
        "Model": "OLS, one fit per voxel",
        "Formula": f"{metric} ~ " + " + ".join([settings.group_column] + design.covariates),
        "DesignColumns": design.columns,
        "Contrast": {k: float(w) for k, w in zip(design.columns, c) if w != 0},
        "ContrastName": cname,
        "Tail": settings.tail,
        "DegreesOfFreedom": res.df,
        "NSubjects": design.n,
        "NByGroup": design.n_by_group(),
        "NExcludedLAB": design.n_excluded_lab,
        "NExcludedGroup": design.n_excluded_group,
        "Inference": {
            "Method": "permutation (Freedman-Lane), FWER by max statistic",
            "NPermutations": settings.n_permutations,
            "Seed": settings.seed,
            "NuisanceColumns": [design.columns[j] for j in res.info["nuisance_columns"]],
            "TFCE": ({"E": 0.5, "H": 2.0, "Steps": settings.tfce_steps, "Extent": "voxels",
                      "Connectivity": settings.connectivity} if settings.tfce else None),
            "ClusterMass": ({"ClusterFormingZ": settings.cluster_forming_z,
                             "ClusterFormingT": res.cluster_t} if settings.cluster_mass else None),
        },
        "ClusterFormingZ": settings.cluster_forming_z,
        "Connectivity": settings.connectivity,
        "SmoothingFWHMmm": settings.smoothing_fwhm_mm,
        "NVoxels": int(vmask.sum()),
        "NVoxelsExcluded": dict(excluded),
        "Metric": metric,
        "Sources": [str(p) for p in paths] + [str(mask)],
    }
    summary = {"metric": metric, "n": design.n, "n_by_group": design.n_by_group(),
               "n_missing_map": int(n_missing_map), "n_voxels": int(vmask.sum()),
               "n_voxels_excluded": dict(excluded),
               "n_permutations": settings.n_permutations,
               "n_voxels_fwer_05": int((res.p_fwer < 0.05).sum()),
               "n_voxels_tfce_fwer_05": (int((res.p_fwer_tfce < 0.05).sum())
                                         if res.p_fwer_tfce is not None else None),
               "n_clusters": int(len(clusters)), "seconds": round(time.perf_counter() - t0, 2)}
    return VoxelwiseResult(images=images, clusters=clusters, design=design, sidecar=sidecar,
                           summary=summary, contrast_name=cname, result=res)


def _sidecar_for(stat: str, base: dict) -> dict:
    desc = {
        "t": "t statistic of the contrast", "z": "z score with the t statistic's tail probability",
        "effect": "contrast estimate (patient minus control) in the metric's units",
        "pfwe": "FWER-corrected p (max-T permutation)", "logpfwe": "-log10 FWER-corrected p (max-T)",
        "tfce": "TFCE of the t map (signed)", "tfcepfwe": "FWER-corrected p of TFCE (max-TFCE)",
        "logtfcepfwe": "-log10 FWER-corrected p of TFCE", "mask": "voxels analysed",
    }[stat]
    return {**base, "Statistic": stat, "Description": desc}


def write_group_outputs(out_dir: str | Path, regional: pd.DataFrame | None = None,
                        correlation: pd.DataFrame | None = None, design: Design | None = None,
                        voxelwise: dict[str, VoxelwiseResult] | None = None,
                        meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write group statistics under ``out_dir`` (the ``group`` folder), atomically.

    Parameters
    ----------
    out_dir : path
        The group output folder (``OUT_DIR/group``).
    regional, correlation : DataFrame, optional
        Tables from :func:`regional_group_stats` / :func:`regional_correlations`.
    design : Design, optional
        The regional design (written as ``stats_design.tsv``).
    voxelwise : dict metric -> VoxelwiseResult, optional
    meta : dict, optional
        Added to the sidecars (e.g. the settings).

    Returns
    -------
    dict name -> path of every file written.
    """
    out_dir = Path(out_dir)
    meta = meta or {}
    written: dict[str, Path] = {}
    if regional is not None:
        written["stats_regional"] = write_tsv(regional, out_dir / "stats_regional.tsv")
        written["stats_regional_json"] = Derivatives.sidecar(out_dir / "stats_regional.tsv", {
            **meta, "Description": "patient vs control per metric and region (OLS)",
            "estimate": "patient minus control, metric units", "hedges_g": "covariate-adjusted, "
            "95% CI from the noncentral t", "p_fdr": "Benjamini-Hochberg across regions per metric",
            "p_holm": "Holm across regions per metric",
            "p_fwer_perm": "Freedman-Lane max-T permutation across regions per metric"})
    if correlation is not None:
        written["stats_correlation"] = write_tsv(correlation, out_dir / "stats_correlation.tsv")
        written["stats_correlation_json"] = Derivatives.sidecar(out_dir / "stats_correlation.tsv", {
            **meta, "Description": "partial Pearson correlation within group", "ci": "Fisher z 95%",
            "p_fdr": "Benjamini-Hochberg across regions per metric x score x group"})
    if design is not None:
        written["stats_design"] = write_tsv(design.to_frame(), out_dir / "stats_design.tsv")
        written["stats_design_json"] = Derivatives.sidecar(out_dir / "stats_design.tsv", {
            **meta, "DesignColumns": design.columns,
            "Contrast": dict(zip(design.columns, design.contrast.tolist())),
            "ContrastName": design.contrast_name, "NExcludedLAB": design.n_excluded_lab,
            "NExcludedGroup": design.n_excluded_group})
    for metric, vr in (voxelwise or {}).items():
        m = camel_case(metric)
        vdir = out_dir / "voxelwise"
        cname = vr["contrast_name"]
        base = {**meta, **vr["sidecar"]}
        for stat, img in vr["images"].items():
            if stat == "mask":
                p = vdir / f"meas-{m}_desc-mask_mask.nii.gz"
            else:
                p = vdir / f"meas-{m}_contrast-{cname}_stat-{stat}_statmap.nii.gz"
            written[f"{metric}:{stat}"] = save_nifti(img, p)
            Derivatives.sidecar(p, _sidecar_for(stat, base))
        written[f"{metric}:design"] = write_tsv(vr["design"].to_frame(), vdir / f"meas-{m}_design.tsv")
        written[f"{metric}:clusters"] = write_tsv(vr["clusters"], vdir / f"meas-{m}_contrast-{cname}_clusters.tsv")
        Derivatives.sidecar(written[f"{metric}:clusters"], {
            **base, "Description": f"clusters of |z| > {base['ClusterFormingZ']} "
            f"({base['Connectivity']}-connectivity), peak statistics and atlas labels",
            "coordinates": "mm, image affine", "volume_mm3": "mm^3"})
    return written


_S = "gliaflow.pipeline.stats."


def group_provenance(regional: pd.DataFrame, correlation: pd.DataFrame | None,
                     voxelwise: dict[str, VoxelwiseResult], settings: StatsSettings) -> list[ToolCall]:
    """Records of what :func:`run_group_stats` ran, from the tables it produced.

    Counts: gliaflow functions, linear solves and smoothing filters per call; for the t and
    noncentral t distributions the tests that used them, for scipy.ndimage.label (cluster
    labelling inside the permutation loop) the voxelwise analyses that used it. The screen of
    untestable regions and voxels (:func:`~gliaflow.pipeline.stats.voxelwise.screen_columns`)
    is counted once per metric (regional) and per voxelwise analysis.
    """
    calls: list[ToolCall] = []
    n_fit = int(regional["t"].notna().sum()) if len(regional) else 0
    if n_fit:
        calls += [gliaflow_call(STEP_GROUP_REGIONAL, _S + "design.fit_ols", count=n_fit),
                  library_call(STEP_GROUP_REGIONAL, "NumPy", "numpy.linalg.inv", count=n_fit),
                  library_call(STEP_GROUP_REGIONAL, "SciPy", "scipy.stats.t", count=n_fit),
                  gliaflow_call(STEP_GROUP_REGIONAL, _S + "regional.hedges_g_ci", count=n_fit),
                  library_call(STEP_GROUP_REGIONAL, "SciPy", "scipy.optimize.brentq(scipy.stats.nct.cdf)",
                               count=2 * n_fit)]
    n_metrics = int(regional["metric"].nunique()) if len(regional) else 0
    if n_metrics:
        calls += [gliaflow_call(STEP_GROUP_REGIONAL, _S + "voxelwise.screen_columns", count=n_metrics),
                  gliaflow_call(STEP_GROUP_REGIONAL, _S + "design.fdr_bh", count=n_metrics)]
        n_perm = int(regional.groupby("metric")["p_fwer_perm"].apply(lambda v: v.notna().any()).sum())
        if n_perm:
            calls.append(gliaflow_call(STEP_GROUP_REGIONAL, _S + "voxelwise.permutation_glm"
                                       f"(n_permutations={settings.n_permutations})", count=n_perm))
    if correlation is not None and len(correlation):
        n = len(correlation)
        calls += [gliaflow_call(STEP_GROUP_CORRELATION, _S + "regional.partial_correlation", count=n),
                  library_call(STEP_GROUP_CORRELATION, "NumPy", "numpy.linalg.lstsq", count=2 * n)]
        n_p = int(correlation["p"].notna().sum())
        if n_p:
            calls.append(library_call(STEP_GROUP_CORRELATION, "SciPy", "scipy.stats.t", count=n_p))
    if voxelwise:
        n = len(voxelwise)
        calls += [gliaflow_call(STEP_GROUP_VOXELWISE, _S + "group.voxelwise_group_stats", count=n),
                  gliaflow_call(STEP_GROUP_VOXELWISE, _S + "voxelwise.screen_columns", count=n),
                  gliaflow_call(STEP_GROUP_VOXELWISE, _S + "voxelwise.permutation_glm"
                                f"(n_permutations={settings.n_permutations}, tfce={settings.tfce})",
                                count=n),
                  gliaflow_call(STEP_GROUP_VOXELWISE, _S + "voxelwise.cluster_table", count=n),
                  library_call(STEP_GROUP_VOXELWISE, "SciPy", "scipy.ndimage.label", count=n)]
        if settings.smoothing_fwhm_mm and settings.smoothing_fwhm_mm > 0:
            n_maps = sum(int(v["summary"]["n"]) for v in voxelwise.values())
            calls.append(library_call(STEP_GROUP_VOXELWISE, "SciPy", "scipy.ndimage.gaussian_filter",
                                      count=2 * n_maps))  # masked smoothing: map and mask
    return calls


def run_group_stats(regional_tsv: str | Path, out_dir: str | Path, settings: StatsSettings,
                    maps: dict[str, list[tuple[str, Path]]] | None = None, mask: str | Path | None = None,
                    atlas=None, participants: str | Path | pd.DataFrame | None = None) -> dict:
    """The cohort flow's group step: regional and voxelwise statistics, written under
    ``out_dir/group`` (``out_dir`` is the derivatives root; if it is already named ``group`` it
    is used as is).

    Parameters
    ----------
    regional_tsv : path
        ``OUT_DIR/group/regional.tsv`` (participant x session x region rows, metric columns,
        subject covariates).
    out_dir : path
        Derivatives root (OUT_DIR).
    settings : StatsSettings
    maps : dict metric -> list of (participant_id, path), optional
        Parametric maps in template space per metric (used for ``settings.voxelwise_metrics``
        when ``settings.voxelwise``; every metric given when voxelwise_metrics is empty).
    mask : path, optional
        Brain mask on the maps' grid (required when maps are given).
    atlas : optional
        Label image + table for the cluster tables.
    participants : path or DataFrame, optional
        participants.tsv, merged for covariates missing from the regional table.

    Returns
    -------
    dict with ``paths`` (name -> Path), ``summary`` (small JSON-able dict; ``warnings`` lists
    steps skipped, e.g. a clinical score absent from the table: the correlation table is then
    not written, the group comparison still is; ``regions_not_tested`` maps metric -> region ->
    reason, e.g. ``constant`` for a reference region's SUVR; each voxelwise metric's
    ``n_voxels_excluded`` counts the voxels left out by reason) and ``provenance`` (ToolCall
    records of what ran, :func:`group_provenance`).

    Raises
    ------
    StatsError
        The group design is unusable (see :func:`build_design`), naming the column.
    """
    out_dir = Path(out_dir)
    gdir = out_dir if out_dir.name == "group" else out_dir / "group"
    regional = read_regional(regional_tsv)
    if isinstance(participants, (str, Path)):
        participants = pd.read_csv(participants, sep="\t", na_values=["n/a"], dtype={"participant_id": str})
    t0 = time.perf_counter()
    reg, design = regional_group_stats(regional, settings, regional_tsv, participants)
    warnings: list[dict] = []
    corr = None
    if settings.clinical_scores:
        try:
            corr = regional_correlations(regional, settings, regional_tsv, participants)
        except StatsError as exc:
            # a missing or sparse clinical score must not cost the group comparison: the
            # correlation table is skipped and the reason is reported in the summary
            warnings.append({"step": "correlation", **exc.as_record()})
    vox: dict[str, VoxelwiseResult] = {}
    if maps and settings.voxelwise:
        if mask is None:
            raise StatsError("voxelwise statistics need a brain mask", field="mask")
        subjects, _ = subject_table(regional, settings, regional_tsv, participants)
        wanted = settings.voxelwise_metrics or list(maps)
        for metric in wanted:
            if metric not in maps:
                continue
            vox[metric] = voxelwise_group_stats(maps[metric], mask, subjects, settings, metric, atlas)
    meta = {"Settings": settings.model_dump(mode="json"), "Sources": [str(regional_tsv)]}
    paths = write_group_outputs(gdir, reg, corr, design, vox, meta)
    sig = reg[reg["significant"].fillna(False).astype(bool)]
    summary = {
        "n_subjects": design.n, "n_by_group": design.n_by_group(),
        "n_excluded_lab": design.n_excluded_lab, "n_excluded_group": design.n_excluded_group,
        "metrics": sorted(reg["metric"].unique().tolist()),
        "n_regions": int(reg["region"].nunique()),
        "regions_not_tested": reg.attrs.get("untestable", {}),
        "significant_fdr": {m: sorted(s["region"].tolist()) for m, s in sig.groupby("metric")},
        "voxelwise": {m: v["summary"] for m, v in vox.items()},
        "seconds": round(time.perf_counter() - t0, 2),
        "warnings": warnings,
    }
    paths["summary"] = atomic_write_json(gdir / "stats_summary.json", summary)
    return {"paths": paths, "summary": summary,
            "provenance": group_provenance(reg, corr, vox, settings)}
