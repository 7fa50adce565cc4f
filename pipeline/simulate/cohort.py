"""Digital phantom cohort: a BIDS-PET [11C]PBR28 dataset with known truth.

:func:`simulate_cohort` writes, under ``out_dir``::

    dataset_description.json, README, participants.tsv, participants.json
    sub-XX/ses-baseline/anat/sub-XX_ses-baseline_T1w.nii.gz (+ .json)
    sub-XX/ses-baseline/pet/sub-XX_ses-baseline_trc-PBR28_pet.nii.gz (+ .json), Bq/mL
    sub-XX/ses-baseline/pet/sub-XX_ses-baseline_trc-PBR28_recording-autosampler_blood.tsv/.json
    sub-XX/ses-baseline/pet/sub-XX_ses-baseline_trc-PBR28_recording-manual_blood.tsv/.json
    derivatives/phantom-truth/...   (the truth; see :data:`TRUTH_README`)

What each subject gets (all random draws come from ``numpy.random.default_rng([seed, i])`` for
subject ``i``, so a cohort is deterministic for a seed and adding subjects does not change the
earlier ones):

* anatomy: the MNI152 template (``pipeline.resources``) plus a synthetic CSF rim, skull and scalp,
  pulled back through a random affine (rotations <= 4 deg, translations <= 6 mm, scalings
  +-5 %) and a smooth random displacement (<= 3 mm), times a smooth multiplicative bias field
  (+-~20 %), with Rician noise;
* kinetics: a 2TCM per atlas region for grey matter (VT from genotype, subject factor, region
  factor and, for patients, +~25 % in frontal and parietal cortex and a cingulate effect that
  drives fatigue), a 2TCM for white matter (VT ~ half of GM), 1TCM for CSF and extracerebral
  tissue; blood volume vB (5 % GM, 3 % WM, 4 % scalp) of whole blood; computed with
  :func:`gliaflow.pipeline.kinetics.forward.tcm_tac` from the plasma parent input of
  :mod:`gliaflow.pipeline.simulate.blood`;
* PET: 37 frames (~93 min), tissue fractions mixed per voxel on a PET grid with its own voxel
  size and a flipped x axis (LAS), PET-to-T1 rigid misalignment (<= 5 deg, <= 10 mm), rigid head
  motion random-walking from the first frame starting at or after 20 min, Gaussian PSF blur
  (FWHM in the sidecar), noise with variance proportional to activity / (frame duration x decay
  factor) (11C, data decay-corrected to injection; values are not clipped at 0);
* blood: autosampler whole blood (first 600 s, 1 s steps, catheter dispersion tau 2.6 s, not
  corrected) and manual samples (total plasma, whole blood, parent fraction), kBq/mL; the samples
  see the input 3-10 s later than the brain (``blood_delay_s`` in cohort_truth.tsv).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from gliaflow.pipeline.io import resources
from gliaflow.pipeline.io.derivatives import atomic_write_json, atomic_write_text, save_nifti, write_tsv
from gliaflow.pipeline.errors import ConfigError, OutputError
from gliaflow.pipeline.kinetics.forward import tcm_tac
from gliaflow.pipeline.simulate.anatomy import (Deformation, apply, box_grid, grid_points, rigid_matrix, sample_vox,
                               world_to_voxel)
from gliaflow.pipeline.simulate.blood import (HALF_LIFE_C11_S, autosampler_samples, blood_curves, frame_timing,
                             manual_samples, random_input)

__all__ = ["SIZES", "SizePreset", "simulate_cohort", "design_cohort", "SUVR_WINDOW_S", "TRUTH_README",
           "clear_cache"]

Size = Literal["tiny", "small", "default", "realistic"]


@dataclass(frozen=True)
class SizePreset:
    """Grid sizes (mm) of one phantom size: template source grid, T1w voxel, PET voxel."""

    template_mm: float
    t1_mm: float
    pet_mm: float
    psf_fwhm_mm: float


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(template_mm=4.0, t1_mm=4.0, pet_mm=4.0, psf_fwhm_mm=5.0),
    "small": SizePreset(template_mm=3.0, t1_mm=3.0, pet_mm=4.0, psf_fwhm_mm=5.0),
    "default": SizePreset(template_mm=2.0, t1_mm=2.0, pet_mm=3.0, psf_fwhm_mm=4.5),
    "realistic": SizePreset(template_mm=1.0, t1_mm=1.0, pet_mm=2.0, psf_fwhm_mm=4.5),
}

#: SUVR window: frames whose mid-time lies in [3600, 5400] s (60-90 min), duration-weighted mean.
SUVR_WINDOW_S = (3600.0, 5400.0)

SESSION = "baseline"
TRACER = "PBR28"
#: Frontal-cortex grey-matter VT (mL/cm3) for a typical subject of each genotype (Collste 2016).
VT_GM_BY_GENOTYPE = {"HAB": 3.9, "MAB": 2.2, "LAB": 1.1}
VND = 0.8          # non-displaceable distribution volume K1/k2 (mL/cm3)
K1_GM = 0.12       # mL/cm3/min
K1_WM = 0.055
K4 = 0.04          # 1/min
WM_VT_RATIO = 0.5  # WM VT / frontal GM VT
VB = {"gm": 0.05, "wm": 0.03, "csf": 0.0, "extra": 0.04}
MOTION_ONSET_S = 1200.0
_TRUTH_FMT = "%.10g"  # truth tables keep 10 significant digits
NOISE_K = 3000.0   # Bq s/mL: variance = NOISE_K * (2 mm / voxel)^3 * activity / (duration * decay)

_FRONTAL = re.compile(r"frontal|precentral|juxtapositional|paracingulate|supp_motor|"
                      r"superiorfrontal|rostralmiddlefrontal|caudalmiddlefrontal|pars|orbitofrontal", re.I)
_PARIETAL = re.compile(r"pariet|postcentral|supramarginal|angular|precune", re.I)
_CINGULATE = re.compile(r"cingul", re.I)
_REGION_FACTORS = [  # (pattern, factor on GM VT)
    (re.compile(r"thalam", re.I), 1.25), (re.compile(r"brain-?stem", re.I), 1.15),
    (re.compile(r"putamen|caudate|pallid|accumbens", re.I), 0.9),
    (re.compile(r"hippocamp|amygdala", re.I), 0.95), (re.compile(r"ventric", re.I), 0.6),
    (re.compile(r"cerebel", re.I), 1.05),
]

TRUTH_README = """# gliaflow phantom truth

Ground truth of the phantom cohort written beside it by `gliaflow simulate`.

Coordinates: NIfTI world coordinates, RAS+ millimetres (+x right, +y anterior, +z superior).
ITK/ANTs use LPS: convert a RAS 4x4 matrix M with F M F, F = diag(-1, -1, 1, 1).
Rigid parameters: M = T(center + t) Rz Ry Rx T(-center); rotations in degrees about the world
x, y, z axes through `center` (mm), applied x first; translation t (mm).

Files (per session, under sub-XX/ses-baseline/):
- *_from-pet_to-T1w_xfm.json: `matrix` maps PET world points to T1w world points of the same
  anatomical point (x_T1 = M x_PET) for the reference (unmoved) head pose; `inverse` maps T1w to
  PET. In ANTs terms (fixed = T1w, moving = PET), the PET->T1 registration result maps fixed
  points to moving points, i.e. equals `inverse` (after the RAS->LPS conversion).
- *_desc-motion_timeseries.tsv: per frame, rot_x/y/z (deg), trans_x/y/z (mm) and center of the
  rigid head motion H_f (PET world, RAS mm). H_f maps a head point's PET world position in the
  reference pose (frames before motion starts) to its position during frame f: x_f = H_f x_ref.
  Realigning frame f to the reference (fixed = reference, moving = frame f) recovers H_f.
  *_desc-motion_xfms.json has the same as 4x4 matrices. Frame f at PET world x shows the anatomy
  at T1w world point pet_to_t1 @ inv(H_f) @ x.
- *_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz: 4D (x, y, z, 3) float32 on the T1w
  grid: the template (MNI) world coordinate (mm) of each T1w voxel centre (a coordinate map,
  not a displacement). *_from-T1w_to-MNI152NLin2009aSym_xfm.json: its affine part and parameters.
- *_space-T1w_seg-<atlas>_dseg.nii.gz (+ _dseg.tsv): the atlas labels pulled into T1w space
  (nearest neighbour) - the labels a perfect pipeline would produce (for Dice).
- *_space-T1w_label-GM|WM|CSF_probseg.nii.gz: true tissue fractions in T1w space.
- *_space-T1w_desc-wholebrain|occipitalcortex|cerebellumgm_mask.nii.gz: the reference regions
  (resources.reference_regions of the atlas, definitions in resources.REFERENCE_REGION_SOURCES)
  pulled into T1w space (nearest neighbour).
- *_desc-truth_kinetics.tsv: one row per atlas region (+ unlabeled GM, WM, CSF, extracerebral):
  K1 (mL/cm3/min), k2, k3, k4 (1/min), vB, VT_tissue (= K1/k2 (1 + k3/k4), mL/cm3: the
  grey-matter VT of the region), VT_region (tissue-fraction weighted VT of everything inside the
  T1w-space label: what a perfect pipeline without PVC measures), tissue fractions, volume,
  SUVR_wb / SUVR_occ / SUVR_cbl (60-90 min: frames with mid-time in [3600, 5400] s,
  duration-weighted mean, of the true regional TACs; reference = whole_brain / occipital_cortex
  / cerebellum_gm).
- *_desc-truth_tacs.tsv: frame_start, frame_end (s) and the true (noise-free, unblurred, no
  motion) mean activity (Bq/mL) in each T1w-space atlas region and reference region.
- *_desc-truth_blood.tsv: time (s, 1 s steps) and the true parent plasma, total plasma, whole
  blood (Bq/mL) and parent fraction that drive the tissue (no delay, no dispersion). The
  recorded blood (BIDS _blood.tsv) is this curve delayed by `blood_delay_s` (cohort_truth.tsv),
  the autosampler one also dispersed (tau `blood_dispersion_tau_s`, not corrected).

Cohort files: cohort_truth.tsv (one row per session: group, genotype, effects, fatigue, dose,
misalignment and motion summary) and regional_truth.tsv (all sessions' kinetics rows).
"""


# ----------------------------------------------------------------------------------------------
# cohort design
# ----------------------------------------------------------------------------------------------
def design_cohort(n_subjects: int, seed: int = 0, lab_fraction: float = 0.0) -> pd.DataFrame:
    """Subject-level design: group, genotype, demographics and the true effects.

    Groups alternate patient/control (subject 01 is a patient); genotypes alternate HAB/MAB
    within each group starting from a random one (so both genotypes appear in both groups from
    4 subjects up); ``lab_fraction`` of subjects (rounded down) are made LAB.

    Returns
    -------
    DataFrame
        participant_id, group, tspo_genotype, site, age (years), sex, weight (kg), fatigue (0-100),
        subject_factor (multiplies all VT), frontal_effect, parietal_effect, cingulate_effect
        (fractional VT increase; 0 for controls), dose_mbq.
    """
    if n_subjects < 1:
        raise ConfigError("need at least one subject", field="subjects")
    rng = np.random.default_rng([seed, 10**6])
    start = {"patient": int(rng.integers(2)), "control": int(rng.integers(2))}
    count = {"patient": 0, "control": 0}
    n_lab = int(np.floor(lab_fraction * n_subjects))
    lab_ids = set(rng.choice(n_subjects, size=n_lab, replace=False).tolist()) if n_lab else set()
    rows = []
    for i in range(n_subjects):
        r = np.random.default_rng([seed, i])
        group = "patient" if i % 2 == 0 else "control"
        geno = ("HAB", "MAB")[(start[group] + count[group]) % 2]
        count[group] += 1
        if i in lab_ids:
            geno = "LAB"
        subject_factor = float(np.exp(r.normal(0, 0.10)))
        if group == "patient":
            fr = float(np.clip(r.normal(0.25, 0.05), 0.1, 0.4))
            pa = float(np.clip(r.normal(0.25, 0.05), 0.1, 0.4))
            cg = float(np.clip(r.normal(0.2, 0.1), 0.0, 0.45))
            fatigue = float(np.clip(30 + 120 * cg + r.normal(0, 5), 0, 100))
        else:
            fr = pa = cg = 0.0
            fatigue = float(np.clip(r.normal(15, 6), 0, 100))
        rows.append({
            "participant_id": f"sub-{i + 1:02d}", "group": group, "tspo_genotype": geno,
            "site": ("A", "B")[int(r.integers(2))], "age": int(r.integers(25, 66)),
            "sex": ("F", "M")[int(r.integers(2))], "weight": round(float(r.uniform(55, 95)), 1),
            "fatigue": round(fatigue, 1), "subject_factor": subject_factor,
            "frontal_effect": fr, "parietal_effect": pa, "cingulate_effect": cg,
            "dose_mbq": round(float(r.uniform(330, 420)), 1),
        })
    return pd.DataFrame(rows)


def _region_category(name: str) -> str:
    if _CINGULATE.search(name) and not re.search(r"paracingul", name, re.I):
        return "cingulate"
    if _FRONTAL.search(name) and not re.search(r"temporal|occipital", name, re.I):
        return "frontal"
    if _PARIETAL.search(name):
        return "parietal"
    return "other"


def _kinetic_table(subj: dict, labels: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Rate constants for every class: atlas regions (GM), unlabeled GM, WM, CSF, extracerebral."""
    vt0 = VT_GM_BY_GENOTYPE[subj["tspo_genotype"]] * subj["subject_factor"]
    vnd = VND * float(np.exp(rng.normal(0, 0.05)))
    k1 = K1_GM * float(np.exp(rng.normal(0, 0.08)))
    k4 = K4 * float(np.exp(rng.normal(0, 0.08)))
    rows = []

    def add(cls, index, name, K1, vt, vb, category="other", model="2TCM"):
        k2 = K1 / vnd
        if model == "1TCM":
            k2 = K1 / vt
            k3 = kk4 = 0.0
        else:
            bp = max(vt / vnd - 1.0, 0.05)
            vt = vnd * (1 + bp)
            k3, kk4 = k4 * bp, k4
        rows.append({"class": cls, "index": int(index), "name": name, "category": category,
                     "K1": K1, "k2": k2, "k3": k3, "k4": kk4, "vB": vb, "VT_tissue": vt})

    add("gm", 0, "unlabeled_gm", k1, vt0, VB["gm"])
    effects = {"frontal": subj["frontal_effect"], "parietal": subj["parietal_effect"],
               "cingulate": subj["cingulate_effect"], "other": 0.0}
    for idx, name in zip(labels["index"], labels["name"]):
        factor = 1.0
        for pat, f in _REGION_FACTORS:
            if pat.search(name):
                factor = f
                break
        cat = _region_category(name)
        jitter = float(np.exp(rng.normal(0, 0.03)))
        vt = vt0 * factor * jitter * (1.0 + effects[cat])
        add("gm", idx, name, k1 * float(np.exp(rng.normal(0, 0.03))), vt, VB["gm"], cat)
    add("wm", -1, "white_matter", K1_WM, vt0 * WM_VT_RATIO, VB["wm"])
    add("csf", -2, "csf", 0.004, 0.1, VB["csf"], model="1TCM")
    add("extra", -3, "extracerebral", 0.03, 0.5, VB["extra"], model="1TCM")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# template-space source maps (cached per resolution and atlas)
# ----------------------------------------------------------------------------------------------
_SOURCE_CACHE: dict[tuple, dict[str, Any]] = {}


def _sources(r: float, atlas_name: str) -> dict[str, Any]:
    key = (r, atlas_name)
    if key in _SOURCE_CACHE:
        return _SOURCE_CACHE[key]
    shape, aff = resources.template_grid(r)
    t1 = np.asarray(resources.template_t1(r).dataobj, dtype=np.float32)
    pri = {k: np.asarray(v.dataobj, dtype=np.float32) for k, v in resources.tissue_priors(r).items()}
    brain = (pri["gm"] + pri["wm"] + pri["csf"])
    outside = brain < 0.5
    d = ndi.distance_transform_edt(outside, sampling=r)
    rim = ((d > 0) & (d <= 2.5)).astype(np.float32)
    skull = ((d > 2.5) & (d <= 7.5)).astype(np.float32)
    scalp = ((d > 7.5) & (d <= 12.5)).astype(np.float32)
    sm = lambda a: ndi.gaussian_filter(a, 1.0 / r)  # noqa: E731  (soften the shells ~1 mm)
    rim, skull, scalp = sm(rim), sm(skull), sm(scalp)
    csf = np.clip(pri["csf"] + rim * (1 - brain), 0, 1)
    head_t1 = t1 + (1 - np.clip(brain, 0, 1)) * (0.22 * rim + 0.05 * skull + 0.6 * scalp)
    atlas = resources.get_atlas(atlas_name, resolution_mm=r)
    refs = resources.reference_regions(atlas, r)
    out = {
        "shape": shape, "affine": aff, "t1": head_t1.astype(np.float32),
        "gm": pri["gm"], "wm": pri["wm"], "csf": csf.astype(np.float32),
        "extra": np.clip(scalp + 0.3 * skull, 0, 1).astype(np.float32),
        "labels": np.asarray(atlas.image.dataobj).astype(np.int32), "atlas": atlas,
        "refs": {k: np.asarray(v.dataobj).astype(np.uint8) for k, v in refs.items()},
    }
    _SOURCE_CACHE[key] = out
    return out


def clear_cache() -> None:
    """Forget the template-space source maps cached in memory (and the resources' caches)."""
    _SOURCE_CACHE.clear()
    resources.clear_cache()


def _world_box(shape, aff) -> tuple[np.ndarray, np.ndarray]:
    c = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    w = apply(aff, c)
    return w.min(0), w.max(0)


# ----------------------------------------------------------------------------------------------
# one session
# ----------------------------------------------------------------------------------------------
def _pull(src: dict, phi, pts: np.ndarray, keys=("gm", "wm", "csf", "extra")) -> dict[str, np.ndarray]:
    x = phi(pts)
    vox = world_to_voxel(src["affine"], x)
    out = {k: sample_vox(src[k], vox, order=1) for k in keys}
    out["labels"] = sample_vox(src["labels"], vox, order=0).astype(np.int32)
    out["mni"] = x
    out["vox"] = vox
    return out


def _bias_field(rng: np.random.Generator, shape) -> np.ndarray:
    g = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*g, indexing="ij")
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    f = sum(rng.normal(0, 1) * t for t in terms)
    f = f / max(np.abs(f).max(), 1e-9) * 0.2
    return np.exp(f).astype(np.float32)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data)


@dataclass
class _Anatomy:
    """One subject's anatomy on its T1w grid (world RAS mm)."""

    phi: Deformation  # T1w world -> template (MNI) world
    shape: tuple[int, int, int]
    affine: np.ndarray
    labels: np.ndarray  # atlas labels (int)
    fractions: dict[str, np.ndarray]  # gm, wm, csf, extra tissue fractions (0..1)
    refs: dict[str, np.ndarray]  # reference-region masks (uint8)
    mni: np.ndarray  # (voxels, 3) template world coordinate of each T1w voxel centre (mm)


@dataclass
class _Kinetics:
    """One subject's blood input, rate constants and the TAC of every tissue class."""

    fs: np.ndarray  # frame starts (s)
    fe: np.ndarray  # frame ends (s)
    t_grid: np.ndarray  # 1 s grid from injection (s)
    p_in: dict[str, Any]  # input-function parameters (random_input)
    curves: dict[str, np.ndarray]  # parent, plasma, whole_blood (Bq/mL), parent_fraction on t_grid
    kin: pd.DataFrame  # one row per class/region (_kinetic_table), truth columns added later
    tacs: np.ndarray  # (frames, rows of kin) frame-mean activity (Bq/mL)
    ci: dict[str, int]  # row of the wm, csf, extra classes
    gm_rows: np.ndarray  # rows of the GM classes (first: unlabeled GM)
    gm_index: np.ndarray  # their atlas label indices
    lut: np.ndarray  # atlas label -> row (unlabeled GM for labels without a row)


@dataclass
class _PetGeometry:
    """PET grid, the PET-to-T1w misalignment and the head motion per frame."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    rot_deg: np.ndarray  # PET-to-T1w rotation (deg)
    trans_mm: np.ndarray  # PET-to-T1w translation (mm)
    pet_to_t1: np.ndarray  # x_T1w = pet_to_t1 @ x_PET (reference head pose)
    poses: np.ndarray  # (frames, 6): rot xyz (deg), trans xyz (mm)
    H: list[np.ndarray]  # rigid motion per frame: x_f = H_f @ x_ref


def _simulate_anatomy(rng: np.random.Generator, src: dict, preset: SizePreset, lo: np.ndarray,
                      hi: np.ndarray, center: np.ndarray, anat_dir: Path, ent: str) -> _Anatomy:
    """Warp the template head into a subject, write its T1w (bias field, Rician noise) and
    return the anatomy on the T1w grid."""
    phi = Deformation.random(rng, lo - 10, hi + 10, center)
    t1_shape, t1_aff = box_grid(lo - 8, hi + 8, preset.t1_mm)
    pts = grid_points(t1_shape, t1_aff)
    anat = _pull(src, phi, pts, keys=("t1", "gm", "wm", "csf", "extra"))
    del pts
    t1 = anat["t1"].reshape(t1_shape) * _bias_field(rng, t1_shape) * 1000.0
    sigma = 18.0
    t1 = np.sqrt((t1 + rng.normal(0, sigma, t1.shape)) ** 2 + rng.normal(0, sigma, t1.shape) ** 2)
    t1_img = nib.Nifti1Image(np.round(t1).astype(np.int16), t1_aff)
    t1_img.header.set_xyzt_units("mm", "sec")
    t1_img.header.set_qform(t1_aff, 1)
    t1_img.header.set_sform(t1_aff, 1)
    save_nifti(t1_img, anat_dir / f"{ent}_T1w.nii.gz")
    _write_json(anat_dir / f"{ent}_T1w.json", {
        "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "gliaflow phantom",
        "ManufacturersModelName": "digital phantom", "MRAcquisitionType": "3D",
        "SeriesDescription": "simulated T1w (MNI152 2009a warped, bias field, Rician noise)"})
    return _Anatomy(
        phi=phi, shape=t1_shape, affine=t1_aff, labels=anat["labels"].reshape(t1_shape),
        fractions={k: anat[k].reshape(t1_shape) for k in ("gm", "wm", "csf", "extra")},
        refs={k: sample_vox(v, anat["vox"], order=0).reshape(t1_shape).astype(np.uint8)
              for k, v in src["refs"].items()},
        mni=anat["mni"])


def _simulate_kinetics(rng: np.random.Generator, subj: dict, src: dict) -> _Kinetics:
    """Draw the blood input and the rate constants; the TAC of every class (2TCM/1TCM + vB)."""
    fs, fe = frame_timing()
    t_grid = np.arange(0.0, fe[-1] + 1.0, 1.0)
    p_in = random_input(rng, subj["dose_mbq"])
    curves = blood_curves(p_in, t_grid)
    kin = _kinetic_table(subj, src["atlas"].labels, rng)
    tacs = np.stack([tcm_tac(fs, fe, t_grid, curves["parent"], curves["whole_blood"],
                             r.K1, r.k2, r.k3, r.k4, r.vB) for r in kin.itertuples()], axis=1)  # (F, C)
    ci = {c: int(np.flatnonzero((kin["class"] == c).to_numpy())[0]) for c in ("wm", "csf", "extra")}
    gm_rows = kin.index[kin["class"] == "gm"].to_numpy()
    gm_index = kin.loc[gm_rows, "index"].to_numpy()
    lut = np.zeros(int(max(gm_index.max(), src["labels"].max())) + 1, dtype=np.int64)  # label -> row
    lut[:] = gm_rows[0]
    lut[gm_index] = gm_rows
    return _Kinetics(fs=fs, fe=fe, t_grid=t_grid, p_in=p_in, curves=curves, kin=kin, tacs=tacs,
                     ci=ci, gm_rows=gm_rows, gm_index=gm_index, lut=lut)


def _regional_truth(k: _Kinetics, an: _Anatomy, preset: SizePreset) -> dict[str, np.ndarray]:
    """True TACs (Bq/mL) of every T1w-space atlas region and reference region; adds VT_region,
    tissue fractions, volume (mL) and SUVR_wb/_occ/_cbl to ``k.kin``. Returns the truth TAC
    table's columns (frame_start, frame_end, one per region, ``ref_<name>``)."""
    kin, tacs, ci, gm_rows, gm_index, lut = k.kin, k.tacs, k.ci, k.gm_rows, k.gm_index, k.lut
    fs, fe = k.fs, k.fe
    labels_t1, frac_t1 = an.labels, an.fractions
    vox_ml = preset.t1_mm ** 3 / 1000.0
    truth_tacs = {"frame_start": fs, "frame_end": fe}
    lab_flat = labels_t1.ravel()
    fr_means = {}
    for c in ("gm", "wm", "csf", "extra"):
        fr_means[c] = ndi.mean(frac_t1[c], labels_t1, gm_index) if gm_index.size else np.array([])
    counts = np.bincount(lab_flat, minlength=lut.size)[gm_index]

    def mix_tac(mg, mw, mc, mx, row):
        return mg * tacs[:, row] + mw * tacs[:, ci["wm"]] + mc * tacs[:, ci["csf"]] + mx * tacs[:, ci["extra"]]

    vt = kin["VT_tissue"].to_numpy()
    kin["VT_region"] = np.nan
    kin["gm_fraction"] = np.nan
    kin["wm_fraction"] = np.nan
    kin["csf_fraction"] = np.nan
    kin["volume_ml"] = 0.0
    for j, row in enumerate(gm_rows):
        if row == gm_rows[0]:
            continue
        n = counts[j]
        kin.loc[row, "volume_ml"] = n * vox_ml
        if n == 0:
            continue
        mg, mw, mc, mx = (fr_means[c][j] for c in ("gm", "wm", "csf", "extra"))
        kin.loc[row, ["gm_fraction", "wm_fraction", "csf_fraction"]] = [mg, mw, mc]
        kin.loc[row, "VT_region"] = mg * vt[row] + mw * vt[ci["wm"]] + mc * vt[ci["csf"]] + mx * vt[ci["extra"]]
        truth_tacs[kin.loc[row, "name"]] = mix_tac(mg, mw, mc, mx, row)
    # reference regions: voxelwise labels inside them (GM kinetics differ by region)
    gm_t1 = frac_t1["gm"]
    ref_tacs = {}
    for name, m in an.refs.items():
        sel = m.astype(bool)
        if not sel.any():
            ref_tacs[name] = np.full(fs.size, np.nan)
            continue
        rows = lut[np.clip(labels_t1[sel], 0, lut.size - 1)]
        wsum = np.bincount(rows, weights=gm_t1[sel], minlength=len(kin))
        nvox = sel.sum()
        tac = tacs @ (wsum / nvox)
        for c in ("wm", "csf", "extra"):
            tac = tac + frac_t1[c][sel].mean() * tacs[:, ci[c]]
        ref_tacs[name] = tac
        truth_tacs[f"ref_{name}"] = tac
    mids = 0.5 * (fs + fe)
    win = (mids >= SUVR_WINDOW_S[0]) & (mids <= SUVR_WINDOW_S[1])
    wdur = (fe - fs)[win]

    def late(tac):
        return float(np.sum(np.asarray(tac)[win] * wdur) / wdur.sum())

    for col, ref in (("SUVR_wb", "whole_brain"), ("SUVR_occ", "occipital_cortex"), ("SUVR_cbl", "cerebellum_gm")):
        denom = late(ref_tacs[ref])
        kin[col] = [late(truth_tacs[nm]) / denom if nm in truth_tacs and kin.loc[i, "class"] == "gm" and i != gm_rows[0]
                    else np.nan for i, nm in zip(kin.index, kin["name"])]
    return truth_tacs


def _pet_geometry(rng: np.random.Generator, preset: SizePreset, lo: np.ndarray, hi: np.ndarray,
                  center: np.ndarray, fs: np.ndarray, motion: bool, misalign: bool) -> _PetGeometry:
    """PET grid (flipped x), a random PET-to-T1w misalignment and a random walk of head motion
    from the first frame starting at or after MOTION_ONSET_S."""
    pet_shape, pet_aff = box_grid(lo - 6, hi + 6, preset.pet_mm, flip_x=True)
    if misalign:
        c_rot, c_tr = rng.uniform(-5, 5, 3), rng.uniform(-10, 10, 3)
    else:
        c_rot, c_tr = np.zeros(3), np.zeros(3)
    pet_to_t1 = rigid_matrix(c_rot, c_tr, center)
    poses = np.zeros((fs.size, 6))  # rot xyz (deg), trans xyz (mm)
    if motion:
        moving = np.flatnonzero(fs >= MOTION_ONSET_S)
        cur = np.zeros(6)
        for f in moving:
            cur = cur + np.concatenate([rng.normal(0, 0.6, 3), rng.normal(0, 0.9, 3)])
            cur[:3] = np.clip(cur[:3], -3, 3)
            cur[3:] = np.clip(cur[3:], -4, 4)
            poses[f] = cur
    H = [rigid_matrix(p[:3], p[3:], center) for p in poses]
    return _PetGeometry(shape=pet_shape, affine=pet_aff, rot_deg=c_rot, trans_mm=c_tr,
                        pet_to_t1=pet_to_t1, poses=poses, H=H)


def _pet_frames(rng: np.random.Generator, src: dict, phi, k: _Kinetics, g: _PetGeometry,
                preset: SizePreset, noise_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The 4-D PET (Bq/mL, float32): tissue fractions mixed per voxel in each frame's head pose,
    PSF blur, activity-dependent noise. Returns the data and the decay factor of each frame."""
    fs, fe, tacs, ci, lut = k.fs, k.fe, k.tacs, k.ci, k.lut
    n_frames = fs.size
    pet_pts = grid_points(g.shape, g.affine)
    data = np.zeros(g.shape + (n_frames,), dtype=np.float32)
    sig = preset.psf_fwhm_mm / 2.3548 / preset.pet_mm
    lam = np.log(2) / HALF_LIFE_C11_S
    dur = fe - fs
    decay = np.exp(-lam * fs) * (1 - np.exp(-lam * dur)) / (lam * dur)
    k_noise = NOISE_K * noise_scale * (2.0 / preset.pet_mm) ** 3
    cache_key, maps = None, None
    for f in range(n_frames):
        key = tuple(np.round(g.poses[f], 9))
        if key != cache_key:
            x_t1 = apply(g.pet_to_t1 @ np.linalg.inv(g.H[f]), pet_pts)
            m = _pull(src, phi, x_t1)
            rows = lut[np.clip(m["labels"], 0, lut.size - 1)]
            maps = (m["gm"], rows, m["wm"], m["csf"], m["extra"])
            cache_key = key
        gm, rows, wm, csf, ex = maps
        img = (gm * tacs[f, rows] + wm * tacs[f, ci["wm"]] + csf * tacs[f, ci["csf"]]
               + ex * tacs[f, ci["extra"]]).reshape(g.shape)
        img = ndi.gaussian_filter(img, sig, mode="constant")
        floor = 0.05 * float(img.max())
        var = k_noise * (np.clip(img, 0, None) + floor) / (dur[f] * decay[f])
        data[..., f] = img + rng.standard_normal(g.shape) * np.sqrt(var)
    return data, decay


def _write_pet(rng: np.random.Generator, data: np.ndarray, decay: np.ndarray, g: _PetGeometry,
               k: _Kinetics, subj: dict, preset: SizePreset, pet_dir: Path, pent: str) -> None:
    """The PET image (int16 with a scale factor, like scanners) and its BIDS sidecar (the
    injected mass is drawn here)."""
    fs, dur = k.fs, k.fe - k.fs
    pet_img = nib.Nifti1Image(data, g.affine)
    pet_img.set_data_dtype(np.int16)  # stored as int16 with a scale factor (scl_slope), like scanners
    pet_img.header.set_xyzt_units("mm", "sec")
    pet_img.header.set_qform(g.affine, 1)
    pet_img.header.set_sform(g.affine, 1)
    save_nifti(pet_img, pet_dir / f"{pent}_pet.nii.gz")
    mass_ug = round(float(rng.uniform(1.5, 3.5)), 2)
    _write_json(pet_dir / f"{pent}_pet.json", {
        "Manufacturer": "gliaflow phantom", "ManufacturersModelName": "digital phantom",
        "Units": "Bq/mL", "BodyPart": "Brain",
        "TracerName": TRACER, "TracerRadionuclide": "C11", "TracerMolecularWeight": 348.4,
        "TracerMolecularWeightUnits": "g/mol",
        "InjectedRadioactivity": subj["dose_mbq"], "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": mass_ug, "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(subj["dose_mbq"] / mass_ug, 3), "SpecificRadioactivityUnits": "MBq/ug",
        "ModeOfAdministration": "bolus", "TimeZero": "10:00:00", "ScanStart": 0, "InjectionStart": 0,
        "InjectionEnd": 10, "FrameTimesStart": fs.tolist(), "FrameDuration": dur.tolist(),
        "AcquisitionMode": "list mode", "ImageDecayCorrected": True, "ImageDecayCorrectionTime": 0,
        "DecayCorrectionFactor": (1.0 / decay).round(6).tolist(),
        "ReconMethodName": "3D-OSEM (simulated)", "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"], "ReconMethodParameterValues": [16, 4],
        "ReconFilterType": "none", "ReconFilterSize": 0,
        "PSFFWHM": preset.psf_fwhm_mm, "PSFFWHMUnits": "mm",
        "PSFDescription": "effective isotropic Gaussian resolution of the image (all blur; no other filter)",
        "AttenuationCorrection": "simulated",
        "BodyWeight": subj["weight"], "BodyWeightUnits": "kg",
    })


def _write_blood(rng: np.random.Generator, k: _Kinetics, pet_dir: Path, pent: str) -> float:
    """Autosampler and manual blood recordings (kBq/mL) with their sidecars; the sampling site
    sees the bolus later than the brain. Returns that delay (s)."""
    p_in, t_grid = k.p_in, k.t_grid
    blood_delay_s = float(rng.uniform(3.0, 10.0))
    measured = blood_curves(p_in, t_grid - blood_delay_s)
    auto = autosampler_samples(rng, p_in, t_grid, measured)
    manual = manual_samples(rng, t_grid, measured)
    for df in (auto, manual):
        for c in df.columns:
            if c.endswith("radioactivity"):
                df[c] = df[c] / 1000.0  # Bq/mL -> kBq/mL
    write_tsv(auto, pet_dir / f"{pent}_recording-autosampler_blood.tsv")
    write_tsv(manual, pet_dir / f"{pent}_recording-manual_blood.tsv")
    col = lambda d, u: {"Description": d, "Units": u}  # noqa: E731
    _write_json(pet_dir / f"{pent}_recording-autosampler_blood.json", {
        "Description": "Continuous arterial whole-blood sampling (automatic blood sampling system)",
        "PlasmaAvail": False, "MetaboliteAvail": False, "WholeBloodAvail": True,
        "DispersionCorrected": False, "DispersionConstant": p_in["dispersion_tau_s"],
        "DispersionConstantUnits": "s", "WithdrawalRate": 5, "WithdrawalRateUnits": "mL/min",
        "time": col("Time from injection start", "s"),
        "whole_blood_radioactivity": col("Arterial whole-blood radioactivity, decay-corrected to injection", "kBq/mL"),
    })
    _write_json(pet_dir / f"{pent}_recording-manual_blood.json", {
        "Description": "Manual arterial samples: whole blood, plasma and HPLC parent fraction",
        "PlasmaAvail": True, "MetaboliteAvail": True, "WholeBloodAvail": True,
        "MetaboliteMethod": "HPLC (simulated)", "MetaboliteRecoveryCorrectionApplied": False,
        "DispersionCorrected": False,
        "time": col("Time from injection start", "s"),
        "plasma_radioactivity": col("Total plasma radioactivity, decay-corrected to injection", "kBq/mL"),
        "whole_blood_radioactivity": col("Whole-blood radioactivity, decay-corrected to injection", "kBq/mL"),
        "metabolite_parent_fraction": col("Fraction of plasma radioactivity from the parent compound", "unitless"),
    })
    return blood_delay_s


def _write_truth(tdir: Path, ent: str, sub: str, k: _Kinetics, truth_tacs: dict, an: _Anatomy,
                 g: _PetGeometry, center: np.ndarray, atlas) -> pd.DataFrame:
    """The session's truth files (see :data:`TRUTH_README`). Returns the kinetics table written."""
    kin_out = k.kin.copy()
    kin_out.insert(0, "participant_id", sub)
    kin_out.insert(1, "session", SESSION)
    write_tsv(kin_out, tdir / f"{ent}_desc-truth_kinetics.tsv", float_format=_TRUTH_FMT)
    write_tsv(pd.DataFrame(truth_tacs), tdir / f"{ent}_desc-truth_tacs.tsv", float_format=_TRUTH_FMT)
    curves = k.curves
    write_tsv(pd.DataFrame({"time": k.t_grid, "parent_plasma": curves["parent"], "plasma": curves["plasma"],
                            "whole_blood": curves["whole_blood"], "parent_fraction": curves["parent_fraction"]}),
              tdir / f"{ent}_desc-truth_blood.tsv", float_format=_TRUTH_FMT)
    poses = g.poses
    mot = pd.DataFrame({"frame": np.arange(k.fs.size), "frame_start": k.fs, "frame_end": k.fe,
                        "rot_x": poses[:, 0], "rot_y": poses[:, 1], "rot_z": poses[:, 2],
                        "trans_x": poses[:, 3], "trans_y": poses[:, 4], "trans_z": poses[:, 5],
                        "center_x": center[0], "center_y": center[1], "center_z": center[2]})
    write_tsv(mot, tdir / f"{ent}_desc-motion_timeseries.tsv", float_format=_TRUTH_FMT)
    _write_json(tdir / f"{ent}_desc-motion_xfms.json", {
        "Description": "Rigid head motion H_f per frame (PET world RAS mm): x_f = H_f @ x_ref",
        "Space": "PET world, RAS+ mm", "matrices": [h.round(9).tolist() for h in g.H]})
    _write_json(tdir / f"{ent}_from-pet_to-T1w_xfm.json", {
        "Description": "x_T1w = matrix @ x_PET (world RAS+ mm, reference head pose)",
        "matrix": g.pet_to_t1.round(9).tolist(), "inverse": np.linalg.inv(g.pet_to_t1).round(9).tolist(),
        "rotation_deg": g.rot_deg.tolist(), "translation_mm": g.trans_mm.tolist(), "center_mm": center.tolist()})
    t1_shape, t1_aff = an.shape, an.affine
    coords = nib.Nifti1Image(an.mni.reshape(t1_shape + (3,)).astype(np.float32), t1_aff)
    save_nifti(coords, tdir / f"{ent}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz")
    _write_json(tdir / f"{ent}_from-T1w_to-MNI152NLin2009aSym_xfm.json", {
        "Description": "x_mni = affine @ (x_t1 + u(x_t1)); the _mode-image_xfm.nii.gz holds x_mni per "
                       "T1w voxel (RAS+ mm)", "affine": an.phi.A.round(9).tolist(), **an.phi.params})
    atlas_tag = atlas.name.replace("-", "")
    save_nifti(nib.Nifti1Image(an.labels.astype(np.int16), t1_aff), tdir / f"{ent}_space-T1w_seg-{atlas_tag}_dseg.nii.gz")
    write_tsv(atlas.labels, tdir / f"{ent}_space-T1w_seg-{atlas_tag}_dseg.tsv")
    for c, lab in (("gm", "GM"), ("wm", "WM"), ("csf", "CSF")):
        save_nifti(nib.Nifti1Image(an.fractions[c].astype(np.float32), t1_aff),
                   tdir / f"{ent}_space-T1w_label-{lab}_probseg.nii.gz")
    for name, m in an.refs.items():
        save_nifti(nib.Nifti1Image(m, t1_aff), tdir / f"{ent}_space-T1w_desc-{name.replace('_', '')}_mask.nii.gz")
    return kin_out


def _simulate_session(out_dir: Path, truth_dir: Path, subj: dict, preset: SizePreset, seed: int,
                      index: int, atlas_name: str, motion: bool, misalign: bool,
                      noise_scale: float) -> dict[str, Any]:
    """Simulate and write one subject's session (T1w, PET, blood) and its truth.

    Every random draw comes from ``default_rng([seed, index, 7])`` in a fixed order (anatomy,
    kinetics, PET geometry and noise, injected mass, blood), so a session depends only on the
    seed and its index. Returns the session's row of cohort_truth.tsv plus ``_kinetics`` (its
    truth kinetics table).
    """
    rng = np.random.default_rng([seed, index, 7])
    src = _sources(preset.template_mm, atlas_name)
    sub = subj["participant_id"]
    ent = f"{sub}_ses-{SESSION}"
    lo, hi = _world_box(src["shape"], src["affine"])
    lo, hi = lo + 4.0, hi - 4.0  # the template box has >= 10 mm of margin around the scalp
    center = np.array([0.0, -18.0, 18.0])
    pet_dir = out_dir / sub / f"ses-{SESSION}" / "pet"
    pent = f"{ent}_trc-{TRACER}"

    an = _simulate_anatomy(rng, src, preset, lo, hi, center, out_dir / sub / f"ses-{SESSION}" / "anat", ent)
    k = _simulate_kinetics(rng, subj, src)
    truth_tacs = _regional_truth(k, an, preset)
    g = _pet_geometry(rng, preset, lo, hi, center, k.fs, motion, misalign)
    data, decay = _pet_frames(rng, src, an.phi, k, g, preset, noise_scale)
    _write_pet(rng, data, decay, g, k, subj, preset, pet_dir, pent)
    del data
    blood_delay_s = _write_blood(rng, k, pet_dir, pent)
    kin_out = _write_truth(truth_dir / sub / f"ses-{SESSION}", ent, sub, k, truth_tacs, an, g, center,
                           src["atlas"])

    kin, poses = k.kin, g.poses
    disp = np.sqrt((poses[:, 3:] ** 2).sum(1))
    return {"participant_id": sub, "session": SESSION, "blood_delay_s": blood_delay_s,
            "blood_dispersion_tau_s": k.p_in["dispersion_tau_s"], "pet_to_t1_rot_deg": np.abs(g.rot_deg).max(),
            "pet_to_t1_trans_mm": float(np.sqrt((g.trans_mm ** 2).sum())), "max_motion_trans_mm": float(disp.max()),
            "max_motion_rot_deg": float(np.abs(poses[:, :3]).max()), "vnd": float(kin.loc[0, "K1"] / kin.loc[0, "k2"]),
            "_kinetics": kin_out}


# ----------------------------------------------------------------------------------------------
# cohort
# ----------------------------------------------------------------------------------------------
def _participants_json() -> dict:
    return {
        "participant_id": {"Description": "Participant identifier"},
        "group": {"Description": "Diagnostic group", "Levels": {"patient": "patient", "control": "healthy control"}},
        "tspo_genotype": {"Description": "rs6971 TSPO genotype", "Levels": {
            "HAB": "high-affinity binder", "MAB": "mixed-affinity binder", "LAB": "low-affinity binder"}},
        "site": {"Description": "Acquisition site"},
        "age": {"Description": "Age at scan", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        "weight": {"Description": "Body weight", "Units": "kg"},
        "fatigue": {"Description": "Fatigue score (0-100, higher is worse)", "Units": "arbitrary"},
    }


def simulate_cohort(out_dir: str | Path, n_subjects: int = 4, seed: int = 0, size: Size = "default",
                    atlas: str = "harvard-oxford", motion: bool = True, misalign: bool = True,
                    noise_scale: float = 1.0, lab_fraction: float = 0.0, overwrite: bool = False,
                    progress=None) -> Path:
    """Write a phantom BIDS-PET cohort with known truth.

    Parameters
    ----------
    out_dir : path
        Output BIDS folder (created; must be empty unless ``overwrite``).
    n_subjects : int
        Number of subjects (one ``ses-baseline`` PET session each; patients and controls alternate).
    seed : int
        Random seed; the same seed gives byte-identical images and tables.
    size : {'tiny', 'small', 'default', 'realistic'}
        Grid sizes (:data:`SIZES`): tiny 4 mm everywhere; small 3 mm T1w / 4 mm PET; default
        2 mm T1w / 3 mm PET; realistic 1 mm T1w / 2 mm PET. All have the full 37-frame timing.
    atlas : str
        Atlas whose regions carry the kinetics and the truth (embedded name).
    motion, misalign : bool
        Add late-frame head motion / a PET-to-T1w rigid misalignment.
    noise_scale : float
        Multiplies the PET noise variance (0 gives noise-free PET).
    lab_fraction : float
        Fraction of subjects made LAB (default none).
    progress : callable, optional
        Called as ``progress(done, total, participant_id)`` after each subject.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown size '{size}', choose from {list(SIZES)}", field="size")
    if n_subjects < 1 or n_subjects > 999:
        raise ConfigError("subjects must be between 1 and 999", field="subjects")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError("output path exists and is not a folder", file=out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError("output folder is not empty (choose another folder, or --overwrite)", file=out_dir)
    preset = SIZES[size]
    design = design_cohort(n_subjects, seed, lab_fraction)
    truth_dir = out_dir / "derivatives" / "phantom-truth"
    from gliaflow.pipeline import __version__

    atomic_write_json(out_dir / "dataset_description.json", {
        "Name": f"gliaflow phantom cohort (seed {seed}, size {size})", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "License": "CC0",
        "Authors": ["gliaflow simulate"],
        "GeneratedBy": [{"Name": "gliaflow simulate", "Version": __version__}],
    })
    atomic_write_text(out_dir / "README", "Simulated [11C]PBR28 PET cohort written by `gliaflow simulate`.\n"
                      "The truth is in derivatives/phantom-truth (see its README).\n")
    part = design[["participant_id", "group", "tspo_genotype", "site", "age", "sex", "weight", "fatigue"]]
    write_tsv(part, out_dir / "participants.tsv")
    atomic_write_json(out_dir / "participants.json", _participants_json())
    atomic_write_json(truth_dir / "dataset_description.json", {
        "Name": "gliaflow phantom truth", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "gliaflow simulate", "Version": __version__}],
        "SourceDatasets": [{"URL": "../../"}],
        "PhantomSettings": {"seed": seed, "size": size, "atlas": atlas, "motion": motion,
                            "misalign": misalign, "noise_scale": noise_scale,
                            "template_mm": preset.template_mm, "t1_mm": preset.t1_mm,
                            "pet_mm": preset.pet_mm, "psf_fwhm_mm": preset.psf_fwhm_mm,
                            "suvr_window_s": list(SUVR_WINDOW_S)},
        "Resources": resources.describe(),
    })
    atomic_write_text(truth_dir / "README.md", TRUTH_README)
    rows, kins = [], []
    for i, subj in enumerate(design.to_dict("records")):
        res = _simulate_session(out_dir, truth_dir, subj, preset, seed, i, atlas, motion, misalign, noise_scale)
        kins.append(res.pop("_kinetics"))
        rows.append({**subj, **res})
        if progress is not None:
            progress(i + 1, n_subjects, subj["participant_id"])
    cohort = pd.DataFrame(rows)
    cols = ["participant_id", "session"] + [c for c in cohort.columns if c not in ("participant_id", "session")]
    write_tsv(cohort[cols], truth_dir / "cohort_truth.tsv", float_format=_TRUTH_FMT)
    write_tsv(pd.concat(kins, ignore_index=True), truth_dir / "regional_truth.tsv", float_format=_TRUTH_FMT)
    return out_dir
