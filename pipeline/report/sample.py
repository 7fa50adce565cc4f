"""Small synthetic stage outputs and cohort tables in the formats the session stages write (gliaflow.pipeline.session).

Used by the report tests and to preview the reports without running the pipeline
(``python -m gliaflow.pipeline.report.sample OUT_DIR``). Images are tiny (a few 10^4 voxels) and
everything is deterministic given ``seed``. Units: seconds, mm, radians, Bq/mL.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from gliaflow.pipeline.io.derivatives import atomic_write_json, atomic_write_text, save_nifti, write_tsv

__all__ = ["sample_session", "sample_cohort", "sample_provenance", "SAMPLE_SIDECAR", "REGIONS"]

REGIONS = ["frontal", "parietal", "cingulate", "thalamus", "occipital_cortex", "cerebellum_gm"]

SAMPLE_SIDECAR: dict[str, Any] = {
    "TracerName": "[11C]PBR28", "TracerRadionuclide": "C11", "InjectedRadioactivity": 370.5,
    "InjectedRadioactivityUnits": "MBq", "BodyWeight": 70.0, "Units": "Bq/mL",
    "FrameTimesStart": [0, 30, 60, 120, 240, 420, 600, 900, 1200, 1800, 2400, 3000, 3600, 4200, 4800],
    "FrameDuration": [30, 30, 60, 120, 180, 180, 300, 300, 600, 600, 600, 600, 600, 600, 600],
    "ImageDecayCorrected": True,
}

_ANTS = ("ANTs", "ANTsPy 0.6.3")
_SCIPY = ("SciPy", "1.13.1")

# (step, (tool, version) or None for gliaflow, interface, count) of an ANTs-engine session
_SAMPLE_CALLS = [
    ("bias correction", _ANTS, "ants.n4_bias_field_correction", 1),
    ("template normalization", _ANTS, "ants.registration(type_of_transform='Affine')", 1),
    ("template normalization", _ANTS, "ants.registration(type_of_transform='SyNOnly')", 1),
    ("tissue segmentation", _ANTS, "ants.atropos(i='PriorProbabilityImages')", 1),
    ("frame realignment", _ANTS, "ants.registration(type_of_transform='Rigid', aff_metric='mattes')", 11),
    ("frame realignment", _ANTS, "ants.apply_transforms(interpolator='linear')", 15),
    ("PET-to-T1w registration", _ANTS, "ants.registration(type_of_transform='Rigid', aff_metric='mattes')", 5),
    ("atlas to T1w", _ANTS, "ants.apply_transforms(interpolator='genericLabel')", 1),
    ("labels to PET", _SCIPY, "scipy.ndimage.affine_transform(order=0)", 2),
    ("regional TACs", None, "gliaflow.pipeline.regions.tacs.regional_tacs", 1),
    ("partial-volume correction", None, "gliaflow.pipeline.regions.pvc.gtm_pvc", 1),
    ("partial-volume correction", _SCIPY, "scipy.ndimage.gaussian_filter", 9),
    ("plasma input", None, "gliaflow.pipeline.blood.input.plasma_input_from_tables", 1),
    ("regional kinetic modelling", None, "gliaflow.pipeline.kinetics.compartment.fit_tcm(n_tissue=2)", 6),
    ("regional kinetic modelling", _SCIPY, "scipy.optimize.least_squares(method='trf')", 24),
    ("regional kinetic modelling", None, "gliaflow.pipeline.kinetics.graphical.fit_logan", 6),
]


def sample_provenance() -> list:
    """Provenance records of an ANTs-engine session with GTM PVC, 2TCM and Logan fits (sample
    data in the form the stages return, for the report previews and tests)."""
    from gliaflow.pipeline import __version__
    from gliaflow.pipeline.provenance import ToolCall

    return [ToolCall(step=step, tool=tv[0] if tv else "gliaflow", version=tv[1] if tv else __version__,
                     interface=interface, count=count)
            for step, tv, interface, count in _SAMPLE_CALLS]


_ITK_RIGID = """#Insight Transform File V1.0
#Transform 0
Transform: AffineTransform_double_3_3
Parameters: 1 0 0 0 1 0 0 0 1 {tx} {ty} {tz}
FixedParameters: 0 0 0
"""


def _affine(vox: float, shape: tuple[int, int, int]) -> np.ndarray:
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = -vox * (np.array(shape) - 1) / 2
    return aff


def _brain(shape, vox, shift_mm=(0.0, 0.0, 0.0)):
    """Ellipsoid brain: radii 60/72/55 mm; returns (dseg GM=1/WM=2/CSF=3, coords mm)."""
    aff = _affine(vox, shape)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(aff, ijk).reshape(shape + (3,)) - np.asarray(shift_mm)
    r = np.sqrt((xyz[..., 0] / 60) ** 2 + (xyz[..., 1] / 72) ** 2 + (xyz[..., 2] / 55) ** 2)
    dseg = np.zeros(shape, np.uint8)
    dseg[r < 1.0] = 1
    dseg[r < 0.8] = 2
    vent = np.sqrt((xyz[..., 0] / 10) ** 2 + (xyz[..., 1] / 25) ** 2 + ((xyz[..., 2] - 5) / 12) ** 2)
    dseg[vent < 1.0] = 3
    return dseg, xyz, aff


def _regions(xyz: np.ndarray, inside: np.ndarray) -> np.ndarray:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lab = np.zeros(inside.shape, np.int16)
    lab[inside & (y > 25)] = 1  # frontal
    lab[inside & (y <= 25) & (y > -30) & (z > 15)] = 2  # parietal
    lab[inside & (np.abs(x) < 10) & (np.abs(y) < 30) & (z > 0) & (z <= 15)] = 3  # cingulate
    lab[inside & (np.abs(x) < 15) & (np.abs(y) < 15) & (z < 0) & (z > -15)] = 4  # thalamus
    lab[inside & (y < -45) & (z > -10)] = 5  # occipital
    lab[inside & (y < -35) & (z <= -25)] = 6  # cerebellum
    return lab


def _feng(t_s: np.ndarray) -> np.ndarray:
    t = np.maximum(t_s / 60 - 0.3, 0)  # min, 0.3 min delay
    a1, a2, a3, l1, l2, l3 = 851.1, 21.88, 20.81, -4.134, -0.1191, -0.01043
    cp = (a1 * t - a2 - a3) * np.exp(l1 * t) + a2 * np.exp(l2 * t) + a3 * np.exp(l3 * t)
    return np.where(t > 0, cp, 0) * 1000 / 20  # Bq/mL


def sample_session(out_dir: str | Path, seed: int = 0, motion_scale: float = 1.0,
                   vt: dict[str, float] | None = None, ref_masks_4d: bool = False) -> dict[str, Path]:
    """Write one synthetic session's stage outputs into ``out_dir``; return the outputs mapping.

    Keys follow the stage outputs of gliaflow.pipeline.session (t1w_preproc, brain_mask, dseg, petref, pet_hmc, motion_tsv,
    xfm_petref_to_t1w, dseg_pet, labels_tsv, ref_<name> (or one 4D ``ref_masks``), tacs,
    tacs_pvc, plasma_tsv, fits_tsv (the regional parameter table), regional_metrics, map_suvr,
    map_vt_logan, map_suvr_mni). TACs follow a 1TCM with the Feng input (VT per region, K1 0.1
    mL/cm3/min, 3% noise), so curves recomputed from ``fits_tsv`` match the data.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    o: dict[str, Path] = {}
    # T1 at 3 mm (small), PET at 4 mm shifted by 2 mm (recovered by the xfm)
    t1_shape, pet_shape = (48, 56, 44), (36, 42, 34)
    dseg, xyz, aff = _brain(t1_shape, 3.0)
    t1 = np.choose(dseg, [5.0, 60.0, 100.0, 20.0]).astype(np.float32)
    t1 += rng.normal(0, 3, t1.shape).astype(np.float32)
    o["t1w_preproc"] = save_nifti(nib.Nifti1Image(ndimage.gaussian_filter(t1, 0.6), aff),
                                  out / "anat_desc-preproc_T1w.nii.gz")
    o["brain_mask"] = save_nifti(nib.Nifti1Image((dseg > 0).astype(np.uint8), aff),
                                 out / "anat_desc-brain_mask.nii.gz")
    o["dseg"] = save_nifti(nib.Nifti1Image(dseg, aff), out / "anat_dseg.nii.gz")

    pdseg, pxyz, paff = _brain(pet_shape, 4.0, shift_mm=(2.0, 0.0, 0.0))
    inside = pdseg > 0
    lab = _regions(pxyz, inside)
    frames_s = np.asarray(SAMPLE_SIDECAR["FrameTimesStart"], float)
    durs = np.asarray(SAMPLE_SIDECAR["FrameDuration"], float)
    ends = frames_s + durs
    tgrid = np.arange(0, ends[-1] + 1, 1.0)
    cp = _feng(tgrid)
    vt = vt or {}
    tacs = {"frame_start": frames_s, "frame_end": ends}
    fits_rows = []
    metrics = []
    for i, name in enumerate(REGIONS, start=1):
        v = vt.get(name, 2.5 + 0.3 * rng.standard_normal() + (0.6 if name in ("frontal", "cingulate") else 0))
        k1, k2 = 0.1, 0.1 / v  # 1/min
        h = k1 * np.exp(-k2 * tgrid / 60)
        ct = np.convolve(cp, h)[: tgrid.size] * (1 / 60)
        mean = np.array([ct[(tgrid >= s) & (tgrid < e)].mean() for s, e in zip(frames_s, ends)])
        noisy = mean * (1 + 0.03 * rng.standard_normal(mean.size))
        tacs[name] = noisy
        # the kinetics stage's regional table: one row per region, <model>_<parameter> columns
        fits_rows.append({"region": name, "1tcm_K1": k1, "1tcm_k2": k2, "1tcm_vB": 0.0, "1tcm_VT": v,
                          "1tcm_converged": True, "1tcm_reason": "",
                          "2tcm_K1": k1, "2tcm_k2": k2 * 1.5, "2tcm_k3": 0.02, "2tcm_k4": 0.02 * 2,
                          "2tcm_vB": 0.0, "2tcm_VT": k1 / (k2 * 1.5) * 1.5, "2tcm_converged": name != "thalamus",
                          "2tcm_reason": "" if name != "thalamus" else "k4 at bound",
                          "logan_VT": v, "logan_intercept": -1.0 / k2, "logan_converged": True})
        suv = float(noisy[-3:].mean() / (370.5e6 / 70000))
        metrics.append({"region": name, "suv": suv, "vt_1tcm": v, "vt_logan": v * 0.97,
                        "vt_ma1": v * 0.99, "volume_mm3": float((lab == i).sum() * 64.0)})
    tac_df = pd.DataFrame(tacs)
    wb = tac_df[REGIONS].mean(axis=1)
    metr = pd.DataFrame(metrics)
    late = slice(len(frames_s) - 3, None)
    metr["suvr"] = [float(tac_df[r].iloc[late].mean() / wb.iloc[late].mean()) for r in REGIONS]
    o["tacs"] = write_tsv(tac_df, out / "seg-sample_tacs.tsv")
    pvc = tac_df.copy()
    pvc[REGIONS] = pvc[REGIONS] * 1.15
    o["tacs_pvc"] = write_tsv(pvc, out / "seg-sample_desc-gtm_tacs.tsv")
    o["fits_tsv"] = write_tsv(pd.DataFrame(fits_rows), out / "desc-fits_kinetics.tsv")
    o["regional_metrics"] = write_tsv(metr, out / "desc-regional_metrics.tsv")
    # the plasma input as the kinetics stage writes it: uniform grid from 0 s
    o["plasma_tsv"] = write_tsv(pd.DataFrame({"time_s": tgrid, "parent_bqml": cp,
                                              "whole_blood_bqml": cp * 0.9 + 200 * (tgrid > 20)}),
                                out / "desc-plasmainput_blood.tsv")
    # PET images
    uptake = np.zeros(pet_shape, np.float32)
    for i, name in enumerate(REGIONS, start=1):
        uptake[lab == i] = tac_df[name].iloc[late].mean()
    uptake[inside & (lab == 0)] = float(wb.iloc[late].mean()) * 0.9
    uptake = ndimage.gaussian_filter(uptake, 1.2)
    o["petref"] = save_nifti(nib.Nifti1Image(uptake, paff), out / "desc-ref_pet.nii.gz")
    dyn = uptake[..., None] * (tac_df[REGIONS].mean(axis=1).to_numpy() / wb.iloc[late].mean())[None, None, None]
    o["pet_hmc"] = save_nifti(nib.Nifti1Image(dyn.astype(np.float32), paff), out / "desc-hmc_pet.nii.gz")
    o["dseg_pet"] = save_nifti(nib.Nifti1Image(lab, paff), out / "space-pet_seg-sample_dseg.nii.gz")
    o["labels_tsv"] = write_tsv(pd.DataFrame({"index": range(1, len(REGIONS) + 1), "name": REGIONS}),
                                out / "seg-sample_dseg.tsv")
    if ref_masks_4d:
        refs = np.stack([inside, lab == 5, lab == 6], axis=3).astype(np.uint8)
        o["ref_masks"] = save_nifti(nib.Nifti1Image(refs, paff), out / "desc-ref_mask.nii.gz")
        atomic_write_json(out / "desc-ref_mask.json",
                          {"Regions": ["whole_brain", "occipital_cortex", "cerebellum_gm"]})
    else:  # one mask per reference region, as the labels_tacs stage writes them
        for name, m in (("whole_brain", inside), ("occipital_cortex", lab == 5), ("cerebellum_gm", lab == 6)):
            label = name.replace("_", "")
            o[f"ref_{name}"] = save_nifti(nib.Nifti1Image(m.astype(np.uint8), paff),
                                          out / f"space-petref_label-{label}_mask.nii.gz")
    o["xfm_petref_to_t1w"] = atomic_write_text(out / "from-petref_to-T1w_mode-image_xfm.txt",
                                               _ITK_RIGID.format(tx=-2.0, ty=0.0, tz=0.0))
    suvr_map = np.where(inside, uptake / float(wb.iloc[late].mean()), 0).astype(np.float32)
    o["map_suvr"] = save_nifti(nib.Nifti1Image(suvr_map, paff), out / "desc-suvr_pet.nii.gz")
    o["map_vt_logan"] = save_nifti(nib.Nifti1Image(suvr_map * 2.6, paff), out / "desc-vtlogan_pet.nii.gz")
    o["map_suvr_mni"] = o["map_suvr"]
    # motion
    n = len(frames_s)
    drift = np.cumsum(rng.normal(0, 0.15 * motion_scale, (n, 6)), axis=0)
    drift[: 3] = 0
    mot = pd.DataFrame({"frame": range(n), "frame_start": frames_s, "frame_end": ends,
                        "rot_x": drift[:, 0] * 0.01, "rot_y": drift[:, 1] * 0.01, "rot_z": drift[:, 2] * 0.01,
                        "trans_x": drift[:, 3], "trans_y": drift[:, 4], "trans_z": drift[:, 5]})
    d = mot[["trans_x", "trans_y", "trans_z"]].diff().abs().sum(axis=1) + 50 * mot[
        ["rot_x", "rot_y", "rot_z"]].diff().abs().sum(axis=1)
    mot["framewise_displacement"] = d.fillna(0.0)
    o["motion_tsv"] = write_tsv(mot, out / "desc-motion_timeseries.tsv")
    return o


def sample_cohort(n_per_group: int = 8, seed: int = 0) -> dict[str, Any]:
    """Synthetic cohort tables: sessions (ledger + QC), regional (long), stats_regional,
    stats_correlation. One session has large motion (an outlier), one failed, one skipped."""
    rng = np.random.default_rng(seed)
    sessions, regional = [], []
    genos = ["HAB", "MAB"]
    k = 0
    for group in ("control", "patient"):
        for i in range(n_per_group):
            k += 1
            sid = f"sub-{k:02d}_ses-baseline"
            geno = genos[i % 2]
            fatigue = float(rng.uniform(10, 40) + (30 if group == "patient" else 0))
            sessions.append({"session_id": sid, "participant_id": f"sub-{k:02d}", "status": "done",
                             "error": "", "report": f"{sid}_report.html",
                             "mean_fd_mm": abs(rng.normal(0.3, 0.05)), "max_fd_mm": abs(rng.normal(0.9, 0.1)),
                             "coreg_similarity": rng.normal(0.45, 0.02),
                             "gm_volume_mm3": rng.normal(650e3, 20e3), "flags": ""})
            for r in REGIONS:
                eff = 0.25 if (group == "patient" and r in ("frontal", "cingulate", "parietal")) else 0
                gen = 1.0 if geno == "HAB" else 0.6
                suvr = 1.0 + eff + 0.04 * rng.standard_normal() + 0.004 * (fatigue - 40) * (r == "cingulate")
                regional.append({"participant_id": f"sub-{k:02d}", "session_id": sid, "region": r,
                                 "group": group, "tspo_genotype": geno, "fatigue": fatigue,
                                 "suvr": suvr, "vt_logan": 3.0 * gen * suvr + 0.1 * rng.standard_normal()})
    sessions[3]["mean_fd_mm"] = 2.9
    sessions[3]["max_fd_mm"] = 8.0
    sessions[5]["coreg_similarity"] = 0.12
    sessions[5]["flags"] = "coreg_suspect"
    sessions.append({"session_id": f"sub-{k + 1:02d}_ses-baseline", "participant_id": f"sub-{k + 1:02d}",
                     "status": "failed", "error": "BloodDataError: plasma.tsv: column 'time' missing",
                     "report": ""})
    sessions.append({"session_id": f"sub-{k + 2:02d}_ses-baseline", "participant_id": f"sub-{k + 2:02d}",
                     "status": "skipped", "error": "BIDSError: no T1w image", "report": ""})
    sess = pd.DataFrame(sessions)
    reg = pd.DataFrame(regional)
    rows = []
    for metric in ("suvr", "vt_logan"):
        for r in REGIONS:
            sub = reg[reg["region"] == r]
            a = sub.loc[sub["group"] == "patient", metric].to_numpy()
            b = sub.loc[sub["group"] == "control", metric].to_numpy()
            sp = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
            g = (a.mean() - b.mean()) / sp * (1 - 3 / (4 * (a.size + b.size) - 9))
            se_g = np.sqrt((a.size + b.size) / (a.size * b.size) + g ** 2 / (2 * (a.size + b.size)))
            from scipy import stats as sps

            t, p = sps.ttest_ind(a, b)
            rows.append({"region": r, "metric": metric, "estimate": a.mean() - b.mean(),
                         "se": (a.mean() - b.mean()) / t, "t": t, "p": p, "hedges_g": g,
                         "g_ci_low": g - 1.96 * se_g, "g_ci_high": g + 1.96 * se_g})
    st = pd.DataFrame(rows)
    st["p_fdr"] = np.minimum(1, st["p"] * len(st) / st["p"].rank())
    corr = []
    pat = reg[reg["group"] == "patient"]
    for r in REGIONS:
        s = pat[pat["region"] == r]
        from scipy import stats as sps

        rr, p = sps.pearsonr(s["fatigue"], s["suvr"])
        corr.append({"region": r, "metric": "suvr", "score": "fatigue", "r": rr, "p": p, "n": len(s)})
    cor = pd.DataFrame(corr)
    cor["p_fdr"] = np.minimum(1, cor["p"] * len(cor) / cor["p"].rank())
    return {"sessions": sess, "regional": reg, "stats_regional": st, "stats_correlation": cor}


def sample_voxelwise(out_dir: str | Path) -> dict[str, Any]:
    """A small z map in MNI152 space (4 mm) with one blob, and its cluster table."""
    out = Path(out_dir)
    shape = (46, 55, 46)
    aff = np.array([[4, 0, 0, -90], [0, 4, 0, -126], [0, 0, 4, -72], [0, 0, 0, 1.0]])
    ijk = np.indices(shape).transpose(1, 2, 3, 0)
    center = np.linalg.solve(aff, [20, 40, 30, 1])[:3]
    z = 4.5 * np.exp(-((ijk - center) ** 2).sum(-1) / (2 * 2.0 ** 2))
    zpath = save_nifti(nib.Nifti1Image(z.astype(np.float32), aff), out / "group_stat-z_suvr.nii.gz")
    clusters = pd.DataFrame([{"cluster_id": 1, "sign": "+", "n_voxels": int((z > 3.1).sum()),
                              "volume_mm3": float((z > 3.1).sum() * 64), "peak_z": float(z.max()),
                              "peak_x_mm": 20.0, "peak_y_mm": 40.0, "peak_z_mm": 30.0,
                              "peak_p_fwer": 0.012, "peak_label": "Frontal Pole"}])
    cpath = write_tsv(clusters, out / "group_clusters_suvr.tsv")
    return {"maps": {"suvr patient > control (z)": zpath}, "threshold": 3.1,
            "clusters": {"suvr patient > control (z)": cpath}}


if __name__ == "__main__":  # preview: python -m gliaflow.pipeline.report.sample OUT_DIR
    from gliaflow.pipeline.report.dashboard import write_cohort_dashboard
    from gliaflow.pipeline.report.session_report import write_session_report
    from gliaflow.pipeline.config import PipelineConfig

    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "report_preview")
    outs = sample_session(dest / "sub-01")
    write_session_report(dest / "sub-01_ses-baseline_report.html", session_id="sub-01_ses-baseline",
                         sidecar=SAMPLE_SIDECAR, outputs=outs, qc={"mean_fd_mm": 0.3}, flags=[],
                         config=PipelineConfig().model_dump(mode="json"), errors=[],
                         provenance=sample_provenance())
    c = sample_cohort()
    write_cohort_dashboard(dest / "dashboard.html", sessions=c["sessions"], regional=c["regional"],
                           stats_regional=c["stats_regional"], stats_correlation=c["stats_correlation"],
                           voxelwise=sample_voxelwise(dest), provenance=sample_provenance(),
                           config=PipelineConfig().model_dump(mode="json"))
    print(dest)
