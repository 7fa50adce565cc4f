"""Phantom cohort: BIDS validity, determinism, and that the written truth describes the images."""
from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from gliaflow.pipeline.simulate.cohort import design_cohort, simulate_cohort
from gliaflow.pipeline.simulate.anatomy import rigid_matrix, rigid_params

TRUTH = "derivatives/phantom-truth"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "bids"
    simulate_cohort(out, n_subjects=2, seed=3, size="tiny")
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One noise-free subject (with misalignment and motion) to check the geometry truth."""
    out = tmp_path_factory.mktemp("phantom_clean") / "bids"
    simulate_cohort(out, n_subjects=1, seed=5, size="tiny", noise_scale=0.0)
    return out


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_bids_layout_and_sidecars(cohort):
    part = pd.read_csv(cohort / "participants.tsv", sep="\t")
    assert list(part.columns) == ["participant_id", "group", "tspo_genotype", "site", "age", "sex",
                                  "weight", "fatigue"]
    assert part["participant_id"].tolist() == ["sub-01", "sub-02"]
    meta = json.loads((cohort / "participants.json").read_text())
    assert set(meta["tspo_genotype"]["Levels"]) >= {"HAB", "MAB"}
    pet_dir = cohort / "sub-01/ses-baseline/pet"
    side = json.loads((pet_dir / "sub-01_ses-baseline_trc-PBR28_pet.json").read_text())
    for key in ("TracerName", "TracerRadionuclide", "InjectedRadioactivity", "InjectedRadioactivityUnits",
                "InjectedMass", "InjectedMassUnits", "SpecificRadioactivity", "SpecificRadioactivityUnits",
                "ModeOfAdministration", "TimeZero", "ScanStart", "InjectionStart", "FrameTimesStart",
                "FrameDuration", "Units", "AcquisitionMode", "ImageDecayCorrected", "ImageDecayCorrectionTime",
                "ReconMethodName", "ReconMethodParameterLabels", "ReconMethodParameterUnits",
                "ReconMethodParameterValues", "ReconFilterType", "ReconFilterSize", "AttenuationCorrection"):
        assert key in side, key
    pet = nib.load(pet_dir / "sub-01_ses-baseline_trc-PBR28_pet.nii.gz")
    assert pet.ndim == 4 and pet.shape[3] == len(side["FrameDuration"]) == len(side["FrameTimesStart"]) == 37
    assert abs(sum(side["FrameDuration"]) / 60 - 93) < 1
    start, dur = np.array(side["FrameTimesStart"]), np.array(side["FrameDuration"])
    assert np.allclose(start[1:], start[:-1] + dur[:-1])  # contiguous, ordered
    t1 = nib.load(cohort / "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz")
    assert not np.allclose(pet.affine[:3, :3], t1.affine[:3, :3])  # different grids/orientations
    auto = pd.read_csv(pet_dir / "sub-01_ses-baseline_trc-PBR28_recording-autosampler_blood.tsv", sep="\t")
    assert np.allclose(np.diff(auto["time"]), 1.0) and auto["time"].iloc[-1] == 600
    manual = pd.read_csv(pet_dir / "sub-01_ses-baseline_trc-PBR28_recording-manual_blood.tsv", sep="\t",
                         na_values="n/a")
    mj = json.loads((pet_dir / "sub-01_ses-baseline_trc-PBR28_recording-manual_blood.json").read_text())
    for col in manual.columns:
        assert "Units" in mj[col]
    assert mj["plasma_radioactivity"]["Units"] == "kBq/mL"
    late = manual.dropna().iloc[-1]
    assert 0.15 < late["metabolite_parent_fraction"] < 0.35  # PBR28-like parent fraction at 90 min
    assert 1.0 < late["plasma_radioactivity"] / late["whole_blood_radioactivity"] < 1.6
    assert manual["metabolite_parent_fraction"].isna().sum() == 2  # samples without HPLC


def test_validates_with_gliaflow_bids(cohort):
    bids = pytest.importorskip("gliaflow.pipeline.io.bids")
    disc = bids.discover(cohort, require_blood=True)
    assert [s.participant for s in disc.sessions] == ["01", "02"] and not disc.invalid
    tab = disc.sessions[0].blood[0].table()
    assert tab["time_s"].notna().all()


def test_deterministic_and_subject_independent(cohort, tmp_path):
    # same seed, fewer subjects: sub-01 must be byte-identical (data and tables)
    again = simulate_cohort(tmp_path / "again", n_subjects=1, seed=3, size="tiny")
    files = [f for f in _files(again) if "sub-01" in str(f)]
    assert len(files) > 20
    for f in files:
        a, b = cohort / f, again / f
        if f.name.endswith(".nii.gz"):
            ia, ib = nib.load(a), nib.load(b)
            assert np.array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)), f
            assert np.array_equal(ia.affine, ib.affine)
            assert ia.header.get_slope_inter() == ib.header.get_slope_inter()
        else:
            assert a.read_bytes() == b.read_bytes(), f


def test_different_seed_differs(cohort, tmp_path):
    d = design_cohort(2, seed=4)
    d3 = design_cohort(2, seed=3)
    assert not d["fatigue"].equals(d3["fatigue"])


def test_design_effects():
    d = design_cohort(40, seed=1)
    pat = d[d["group"] == "patient"]
    ctl = d[d["group"] == "control"]
    assert len(pat) == len(ctl) == 20
    for g in (pat, ctl):
        assert set(g["tspo_genotype"]) == {"HAB", "MAB"}
    assert (ctl[["frontal_effect", "parietal_effect", "cingulate_effect"]] == 0).all().all()
    assert 0.2 < pat["frontal_effect"].mean() < 0.3
    assert np.corrcoef(pat["fatigue"], pat["cingulate_effect"])[0, 1] > 0.7
    assert pat["fatigue"].mean() > ctl["fatigue"].mean() + 15


def test_truth_tables(cohort):
    reg = pd.read_csv(cohort / TRUTH / "regional_truth.tsv", sep="\t")
    part = pd.read_csv(cohort / "participants.tsv", sep="\t").set_index("participant_id")
    gm = reg[(reg["class"] == "gm") & (reg["index"] > 0)]
    vt = gm["K1"] / gm["k2"] * (1 + gm["k3"] / gm["k4"])
    assert np.allclose(vt, gm["VT_tissue"], rtol=1e-6)
    for sub, rows in gm.groupby("participant_id"):
        fp = rows[rows["name"].str.contains("Frontal_Pole")]["VT_tissue"].mean()
        temporal = rows[rows["name"].str.contains("Temporal_Pole")]["VT_tissue"].mean()
        geno, group = part.loc[sub, "tspo_genotype"], part.loc[sub, "group"]
        base = {"HAB": (2.9, 5.0), "MAB": (1.6, 3.0)}[geno]
        assert base[0] < temporal < base[1]
        ratio = fp / temporal
        assert (1.1 < ratio < 1.5) if group == "patient" else (0.9 < ratio < 1.1)
        # regional (mixed-tissue) VT is below the grey-matter VT and SUVRs are plausible
        assert (rows["VT_region"].dropna() < rows.loc[rows["VT_region"].notna(), "VT_tissue"] + 1e-9).all()
        assert 0.7 < rows["SUVR_wb"].median() < 1.5
    tacs = pd.read_csv(cohort / TRUTH / "sub-01/ses-baseline/sub-01_ses-baseline_desc-truth_tacs.tsv", sep="\t")
    assert {"frame_start", "frame_end", "ref_whole_brain", "ref_occipital_cortex"} <= set(tacs.columns)
    cohort_truth = pd.read_csv(cohort / TRUTH / "cohort_truth.tsv", sep="\t")
    # recorded blood = true input delayed by blood_delay_s (kBq/mL in the BIDS file)
    blood = pd.read_csv(cohort / TRUTH / "sub-01/ses-baseline/sub-01_ses-baseline_desc-truth_blood.tsv", sep="\t")
    manual = pd.read_csv(cohort / "sub-01/ses-baseline/pet/sub-01_ses-baseline_trc-PBR28_recording-manual_blood.tsv",
                         sep="\t", na_values="n/a")
    delay = cohort_truth.loc[0, "blood_delay_s"]
    assert 3 <= delay <= 10
    expected = np.interp(manual["time"] - delay, blood["time"], blood["plasma"]) / 1000.0
    assert 0.97 < np.median(manual["plasma_radioactivity"] / expected) < 1.03
    assert (cohort_truth["pet_to_t1_trans_mm"] <= np.sqrt(3) * 10).all()
    assert (cohort_truth["max_motion_rot_deg"] <= 3 + 1e-9).all()


def test_rigid_params_round_trip():
    m = rigid_matrix([3.0, -2.0, 4.5], [1.0, -7.0, 2.5], [0, -18, 18])
    rot, tr = rigid_params(m, [0, -18, 18])
    assert np.allclose(rot, [3.0, -2.0, 4.5]) and np.allclose(tr, [1.0, -7.0, 2.5])


def _t1_from_pet(pet_img, frame, t1_img, t1_from_pet_point):
    """Sample a PET frame at the PET point of every T1w voxel centre (nearest grid: linear)."""
    shape = t1_img.shape
    ii = np.indices(shape).reshape(3, -1).T
    x_t1 = ii @ t1_img.affine[:3, :3].T + t1_img.affine[:3, 3]
    x_pet = x_t1 @ t1_from_pet_point[:3, :3].T + t1_from_pet_point[:3, 3]
    inv = np.linalg.inv(pet_img.affine)
    vox = (x_pet @ inv[:3, :3].T + inv[:3, 3]).T
    data = np.asanyarray(pet_img.dataobj[..., frame], dtype=np.float32)
    return ndi.map_coordinates(data, vox, order=1).reshape(shape)


def test_geometry_truth_matches_images(clean):
    """The documented transforms bring the PET onto the truth GM map; wrong ones do worse."""
    sub = "sub-01_ses-baseline"
    truth = clean / TRUTH / "sub-01/ses-baseline"
    pet = nib.load(clean / f"sub-01/ses-baseline/pet/{sub}_trc-PBR28_pet.nii.gz")
    t1 = nib.load(clean / f"sub-01/ses-baseline/anat/{sub}_T1w.nii.gz")
    gm = nib.load(truth / f"{sub}_space-T1w_label-GM_probseg.nii.gz").get_fdata()
    brain = gm + nib.load(truth / f"{sub}_space-T1w_label-WM_probseg.nii.gz").get_fdata()
    xfm = json.loads((truth / f"{sub}_from-pet_to-T1w_xfm.json").read_text())
    t1_to_pet = np.array(xfm["inverse"])
    assert np.allclose(np.array(xfm["matrix"]) @ t1_to_pet, np.eye(4), atol=1e-6)
    motion = json.loads((truth / f"{sub}_desc-motion_xfms.json").read_text())["matrices"]
    sel = brain > 0.05

    def corr(frame, m):
        p = _t1_from_pet(pet, frame, t1, m)
        return np.corrcoef(p[sel], brain[sel])[0, 1]

    ref_frame = 24  # last frame before motion starts
    assert np.allclose(motion[ref_frame], np.eye(4))
    good = corr(ref_frame, t1_to_pet)
    assert good > 0.75
    assert good > corr(ref_frame, np.eye(4)) + 0.05
    # a late frame with motion: x_f = H_f x_ref, so the T1 point maps to H_f @ t1_to_pet
    mot = pd.read_csv(truth / f"{sub}_desc-motion_timeseries.tsv", sep="\t")
    f = int(np.argmax(np.abs(mot[["trans_x", "trans_y", "trans_z"]]).sum(axis=1) + np.abs(
        mot[["rot_x", "rot_y", "rot_z"]]).sum(axis=1)))
    H = np.array(motion[f])
    assert f > ref_frame and not np.allclose(H, np.eye(4))
    with_motion = corr(f, H @ t1_to_pet)
    assert with_motion > corr(f, t1_to_pet) and with_motion > corr(f, np.linalg.inv(H) @ t1_to_pet)

    # atlas truth in T1w space is the template atlas pulled through the coordinate map
    coords = nib.load(truth / f"{sub}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.nii.gz").get_fdata()
    dseg = nib.load(truth / f"{sub}_space-T1w_seg-harvardoxford_dseg.nii.gz").get_fdata().astype(int)
    from gliaflow.pipeline.io import resources

    ho = resources.get_atlas("harvard-oxford")
    thal = int(ho.labels.loc[ho.labels["name"] == "Left_Thalamus", "index"].iloc[0])
    mni_centroid = coords[dseg == thal].mean(0)
    idx = np.argwhere(ho.data() == thal).mean(0)
    assert np.linalg.norm(mni_centroid - (ho.image.affine[:3, :3] @ idx + ho.image.affine[:3, 3])) < 4.0
