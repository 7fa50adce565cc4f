"""BIDS-PET discovery and validation (pipeline/bids.py) and ``gliaflow validate``."""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import bidsfactory as bf

from gliaflow.pipeline.io.bids import (
    BloodRecording,
    SessionSpec,
    discover,
    normalise_labels,
    parse_bids_name,
    read_participants,
)
from gliaflow.pipeline.errors import BIDSError, ConfigError
from gliaflow.workflows.cli.main import main as cli_main

PET02 = "sub-02/pet/sub-02_trc-PBR28_pet"


@pytest.fixture
def ds(tmp_path) -> Path:
    """Three valid subjects (01, 02, 03), one session each, blood + T1w + participants."""
    return bf.make_dataset(tmp_path / "bids")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def _only_02_invalid(disc) -> list:
    """Assert sub-01 and sub-03 still validate and sub-02 does not; return sub-02's issues."""
    assert sorted(s.participant for s in disc.sessions) == ["01", "03"], [str(i) for i in disc.invalid]
    assert disc.invalid_sessions == ["sub-02_trc-PBR28"]
    return disc.issues_for("sub-02_trc-PBR28")


# ------------------------------------------------------------------------------------------
# valid datasets
# ------------------------------------------------------------------------------------------
def test_valid_dataset_specs(ds):
    disc = discover(ds)
    assert disc.invalid == []
    assert disc.ok
    assert [s.session_id for s in disc.sessions] == [
        "sub-01_trc-PBR28", "sub-02_trc-PBR28", "sub-03_trc-PBR28"]
    s = disc.sessions[1]
    assert s.participant == "02" and s.session is None and s.tracer == "PBR28" and s.run is None
    assert s.entities == {"sub": "02", "ses": None, "trc": "PBR28", "run": None}
    assert s.n_frames == 37 and s.pet_shape == (8, 8, 8, 37)
    assert s.pet_zooms_mm == pytest.approx((2.0, 2.0, 2.0))
    starts, durs = bf.frame_schedule(37)
    assert s.frame_start_s == pytest.approx(starts)
    assert s.frame_end_s == pytest.approx(np.add(starts, durs))
    assert s.pet_units_to_bqml == 1000.0          # kBq/mL -> Bq/mL
    assert s.injected_bq == pytest.approx(400e6)  # 400 MBq
    assert s.t1w.name == "sub-02_T1w.nii.gz" and s.t1w.is_absolute()
    assert s.pet.is_absolute() and s.pet_json.name == "sub-02_trc-PBR28_pet.json"
    assert [b.label for b in s.blood] == ["autosampler", "manual"]
    assert s.covariates["group"] == "patient" and s.covariates["tspo_genotype"] == "HAB"
    assert s.covariates["age"] == 31.0 and s.covariates["fatigue"] == 11.0
    # the first participant's fatigue is n/a -> None
    assert disc.sessions[0].covariates["fatigue"] is None
    # picklable and round-trips
    again = pickle.loads(pickle.dumps(s))
    assert isinstance(again, SessionSpec) and again.session_id == s.session_id
    assert again.blood[1].table().equals(s.blood[1].table())


def test_blood_units_converted_once(ds):
    s = discover(ds).sessions[0]
    manual = s.blood_by_label("manual").table()
    assert list(manual.columns) == ["time_s", "plasma_bqml", "whole_blood_bqml", "parent_fraction"]
    cols, _ = bf.manual_blood()
    assert manual["time_s"].tolist() == pytest.approx([t * 60 for t in cols["time"]])  # min -> s
    assert manual["whole_blood_bqml"].tolist() == pytest.approx(
        [w * 1000 for w in cols["whole_blood_radioactivity"]])                         # kBq -> Bq
    assert manual["parent_fraction"].tolist() == pytest.approx(cols["metabolite_parent_fraction"])
    auto = s.blood_by_label("autosampler").table()
    assert auto["parent_fraction"].isna().all()  # column absent -> NaN
    assert auto["time_s"].iloc[-1] == pytest.approx(590.0)


def test_injection_start_shifts_frame_and_blood_times(ds):
    _edit_json(ds / f"{PET02}.json", InjectionStart=30.0,
               FrameTimesStart=[t + 30 for t in bf.frame_schedule()[0]])
    s = {x.participant: x for x in discover(ds).sessions}["02"]
    assert s.frame_start_s[0] == pytest.approx(0.0)
    assert s.blood_by_label("autosampler").table()["time_s"].iloc[0] == pytest.approx(-30.0)


def test_percent_parent_fraction_and_other_units(ds):
    tsv = ds / "sub-02/pet/sub-02_trc-PBR28_recording-manual_blood.tsv"
    cols, meta = bf.manual_blood()
    cols["metabolite_parent_fraction"] = [p * 100 for p in cols["metabolite_parent_fraction"]]
    meta["metabolite_parent_fraction"]["Units"] = "percent"
    meta["plasma_radioactivity"]["Units"] = "nCi/mL"
    bf.write_tsv(tsv, cols)
    bf.write_json(tsv.with_suffix(".json"), meta)
    _edit_json(ds / f"{PET02}.json", Units="Bq/mL", InjectedRadioactivity=10,
               InjectedRadioactivityUnits="mCi")
    s = {x.participant: x for x in discover(ds).sessions}["02"]
    tab = s.blood_by_label("manual").table()
    assert tab["parent_fraction"].max() == pytest.approx(0.98)
    assert tab["plasma_bqml"].iloc[0] == pytest.approx(cols["plasma_radioactivity"][0] * 37.0)
    assert s.pet_units_to_bqml == 1.0
    assert s.injected_bq == pytest.approx(10 * 3.7e7)


def test_sessions_and_subject_level_anat_fallback(tmp_path):
    root = bf.make_dataset(tmp_path / "b", subjects=("01",), sessions=("baseline", "retest"),
                           t1w="subject")
    bf.make_session(root, "02", "baseline", t1w="session")
    bf.write_participants(root, [{"participant_id": "sub-01", "group": "control"},
                                 {"participant_id": "sub-02", "group": "patient"}])
    disc = discover(root)
    assert disc.invalid == []
    by = {s.session_id: s for s in disc.sessions}
    assert set(by) == {"sub-01_ses-baseline_trc-PBR28", "sub-01_ses-retest_trc-PBR28",
                       "sub-02_ses-baseline_trc-PBR28"}
    assert by["sub-01_ses-retest_trc-PBR28"].t1w == root / "sub-01/anat/sub-01_T1w.nii.gz"
    assert by["sub-02_ses-baseline_trc-PBR28"].t1w == (
        root / "sub-02/ses-baseline/anat/sub-02_ses-baseline_T1w.nii.gz")
    assert by["sub-01_ses-retest_trc-PBR28"].session == "retest"


def test_nifti2_and_uncompressed_nii_accepted(ds):
    pet = ds / f"{PET02}.nii.gz"
    pet.unlink()
    data = np.zeros((8, 8, 8, 37), np.float32)
    nib.save(nib.Nifti2Image(data, np.diag([2.5, 2.5, 2.5, 1.0])), str(ds / f"{PET02}.nii"))
    bf.write_nifti(ds / "sub-03/anat/sub-03_T1w.nii.gz", (8, 8, 8), zoom_mm=1.0)
    disc = discover(ds)
    assert disc.invalid == []
    s = {x.participant: x for x in disc.sessions}["02"]
    assert s.pet.name.endswith("_pet.nii") and s.pet_zooms_mm == pytest.approx((2.5,) * 3)


def test_sidecar_inheritance_and_old_field_names(ds):
    # Units moved to a top-level sidecar that applies to every PBR28 PET
    bf.write_json(ds / "trc-PBR28_pet.json", {"Units": "MBq/mL"})
    for sub in ("01", "02", "03"):
        _edit_json(ds / f"sub-{sub}/pet/sub-{sub}_trc-PBR28_pet.json", Units=None)
    # older spellings (as in the kinfitr PBR28 sidecars): Unit, InjectedRadioactivityUnit
    _edit_json(ds / f"{PET02}.json", Unit="kBq/ml", InjectedRadioactivityUnits=None,
               InjectedRadioactivityUnit="MBq")
    disc = discover(ds)
    assert disc.invalid == []
    f = {s.participant: s.pet_units_to_bqml for s in disc.sessions}
    assert f == {"01": 1e6, "02": 1e3, "03": 1e6}


# ------------------------------------------------------------------------------------------
# filters and labels
# ------------------------------------------------------------------------------------------
def test_filters_with_and_without_prefixes(tmp_path):
    root = bf.make_dataset(tmp_path / "b", sessions=("baseline", "retest"))
    bf.make_session(root, "01", "baseline", trc="FLB457")
    d = discover(root, participant_label=["sub-01", "03"], session_label="ses-retest")
    assert [s.session_id for s in d.sessions] == ["sub-01_ses-retest_trc-PBR28",
                                                  "sub-03_ses-retest_trc-PBR28"]
    d = discover(root, participant_label="01", tracer_label="trc-flb457")
    assert [s.session_id for s in d.sessions] == ["sub-01_ses-baseline_trc-FLB457"]
    d = discover(root, tracer_label="PBR28")
    assert len(d.sessions) == 6 and not d.invalid
    # a participant that is not in the dataset is reported, the others still validate
    d = discover(root, participant_label=["01", "99"], session_label="baseline", tracer_label="PBR28")
    assert [s.participant for s in d.sessions] == ["01"]
    assert [(i.session_id, i.field) for i in d.invalid] == [("sub-99", "--participant-label")]


def test_tracer_filter_falls_back_to_tracer_name(tmp_path):
    root = bf.make_dataset(tmp_path / "b", trc=None)
    assert len(discover(root, tracer_label="PBR28").sessions) == 3
    d = discover(root, tracer_label="FLB457")
    assert d.sessions == [] and {i.session_id for i in d.invalid} == {"sub-01", "sub-02", "sub-03"}


@pytest.mark.parametrize("flag,kw,bad", [
    ("--participant-label", "participant_label", "../x"),
    ("--participant-label", "participant_label", "a_b"),
    ("--session-label", "session_label", "a/b"),
    ("--tracer-label", "tracer_label", "PBR-28"),
    ("--session-label", "session_label", ""),
])
def test_label_with_path_characters_refused(ds, flag, kw, bad):
    with pytest.raises(ConfigError) as exc:
        discover(ds, **{kw: ["01", bad]})
    assert exc.value.field == flag and repr(bad) in str(exc.value)


def test_normalise_labels():
    assert normalise_labels(None, "sub", "--x") is None
    assert normalise_labels(["sub-01", "01", "02"], "sub", "--x") == ["01", "02"]
    assert normalise_labels("ses-A1", "ses", "--x") == ["A1"]


def test_parse_bids_name():
    assert parse_bids_name("sub-01_ses-a_trc-PBR28_recording-manual_blood.tsv") == (
        {"sub": "01", "ses": "a", "trc": "PBR28", "recording": "manual"}, "blood", ".tsv")
    with pytest.raises(ValueError):
        parse_bids_name("sub-0_1_pet.nii.gz")


# ------------------------------------------------------------------------------------------
# one bad session among good ones: each problem named by file and field
# ------------------------------------------------------------------------------------------
def test_frame_duration_length_mismatch_message(ds):
    _edit_json(ds / f"{PET02}.json", FrameDuration=bf.frame_schedule()[1][:36])
    issues = _only_02_invalid(discover(ds))
    assert [str(i) for i in issues] == [
        f"{PET02}.json: field 'FrameDuration': has 36 entries but the image has 37 frames"]


def _break(ds: Path, how: str) -> None:
    pet, js = ds / f"{PET02}.nii.gz", ds / f"{PET02}.json"
    starts, durs = bf.frame_schedule()
    if how == "missing_nifti":
        pet.unlink()
    elif how == "zero_byte":
        pet.write_bytes(b"")
    elif how == "html":
        pet.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    elif how == "html_nii":
        pet.unlink()
        (ds / f"{PET02}.nii").write_text("<html><head><title>Login</title></head></html>")
    elif how == "static_3d":
        bf.write_nifti(pet, (8, 8, 8))
    elif how == "negative_duration":
        durs[3] = -10.0
        _edit_json(js, FrameDuration=durs)
    elif how == "negative_start":
        _edit_json(js, FrameTimesStart=[s - 5.0 for s in starts])
    elif how == "overlap":
        starts[5] -= 5.0
        _edit_json(js, FrameTimesStart=starts)
    elif how == "unordered":
        starts[5], starts[6] = starts[6], starts[5]
        _edit_json(js, FrameTimesStart=starts)
    elif how == "null_in_frames":
        durs[2] = None
        _edit_json(js, FrameDuration=durs)
    elif how == "unknown_units":
        _edit_json(js, Units="SUV")
    elif how == "unknown_dose_units":
        _edit_json(js, InjectedRadioactivityUnits="Ci/kg")
    elif how == "missing_frames_field":
        _edit_json(js, FrameTimesStart=None)
    elif how == "missing_sidecar":
        js.unlink()
    elif how == "bad_json":
        js.write_text('{"Units": "kBq/mL",')
    elif how == "tiny_voxels":
        bf.write_nifti(pet, (8, 8, 8, 37), zoom_mm=0.01)
    elif how == "singular_affine":
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        aff[:3, 2] = aff[:3, 1]  # third axis collapsed onto the second
        bf.write_nifti(pet, (8, 8, 8, 37), affine=aff)
    elif how == "nan_affine":
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        aff[0, 3] = np.nan
        img = nib.Nifti1Image(np.zeros((8, 8, 8, 37), np.float32), aff)
        nib.save(img, str(pet))
    elif how == "truncated_nii":
        pet.unlink()
        raw = ds / f"{PET02}.nii"
        bf.write_nifti(raw, (8, 8, 8, 37))
        raw.write_bytes(raw.read_bytes()[:5000])
    elif how == "missing_t1w":
        (ds / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    elif how == "t1w_4d":
        bf.write_nifti(ds / "sub-02/anat/sub-02_T1w.nii.gz", (8, 8, 8, 2))
    elif how in ("blood_no_time", "blood_na_time", "blood_text", "blood_unknown_units",
                 "blood_no_units", "blood_no_json", "blood_percent_as_unitless"):
        tsv = ds / "sub-02/pet/sub-02_trc-PBR28_recording-manual_blood.tsv"
        cols, meta = bf.manual_blood()
        if how == "blood_no_time":
            cols = {("sample_time" if k == "time" else k): v for k, v in cols.items()}
        elif how == "blood_na_time":
            cols["time"][3] = None
        elif how == "blood_text":
            cols["plasma_radioactivity"][2] = "high"
        elif how == "blood_unknown_units":
            meta["plasma_radioactivity"]["Units"] = "counts"
        elif how == "blood_no_units":
            del meta["whole_blood_radioactivity"]["Units"]
        elif how == "blood_no_json":
            tsv.with_suffix(".json").unlink()
        elif how == "blood_percent_as_unitless":
            cols["metabolite_parent_fraction"] = [p * 100 for p in cols["metabolite_parent_fraction"]]
        bf.write_tsv(tsv, cols)
        if how != "blood_no_json":
            bf.write_json(tsv.with_suffix(".json"), meta)
    elif how == "not_in_participants":
        df = pd.read_csv(ds / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
        df[df.participant_id != "sub-02"].to_csv(ds / "participants.tsv", sep="\t", index=False)
    elif how == "bad_entity_name":
        js.rename(ds / "sub-02/pet/sub-02_trc-PBR_28_pet.json")
        pet.rename(ds / "sub-02/pet/sub-02_trc-PBR_28_pet.nii.gz")
    else:  # pragma: no cover
        raise AssertionError(how)


BLOOD_MANUAL = "sub-02/pet/sub-02_trc-PBR28_recording-manual_blood"

# how -> (file, field, words in the message)
CASES = {
    "missing_nifti": (f"{PET02}.nii.gz", None, "not found"),
    "zero_byte": (f"{PET02}.nii.gz", None, "empty file"),
    "html": (f"{PET02}.nii.gz", None, "HTML page"),
    "html_nii": (f"{PET02}.nii", None, "HTML page"),
    "static_3d": (f"{PET02}.nii.gz", "dim", "dynamic 4D PET is needed"),
    "negative_duration": (f"{PET02}.json", "FrameDuration", "frame 3 has a non-positive duration"),
    "negative_start": (f"{PET02}.json", "FrameTimesStart", "negative time"),
    "overlap": (f"{PET02}.json", "FrameDuration", "frames overlap: frame 4 ends at"),
    "unordered": (f"{PET02}.json", "FrameTimesStart", "not in time order"),
    "null_in_frames": (f"{PET02}.json", "FrameDuration", "entry 2"),
    "unknown_units": (f"{PET02}.json", "Units", "unknown activity concentration unit 'SUV'"),
    "unknown_dose_units": (f"{PET02}.json", "InjectedRadioactivityUnits", "unknown radioactivity unit"),
    "missing_frames_field": (f"{PET02}.json", "FrameTimesStart", "required field is missing"),
    "missing_sidecar": (f"{PET02}.json", None, "sidecar not found"),
    "bad_json": (f"{PET02}.json", None, "not valid JSON"),
    "tiny_voxels": (f"{PET02}.nii.gz", "pixdim", "voxel sizes"),
    "singular_affine": (f"{PET02}.nii.gz", "affine", "singular"),
    "nan_affine": (f"{PET02}.nii.gz", "affine", "non-finite"),
    "truncated_nii": (f"{PET02}.nii", None, "truncated"),
    "missing_t1w": ("sub-02/anat", None, "no T1w image found"),
    "t1w_4d": ("sub-02/anat/sub-02_T1w.nii.gz", "dim", "must be 3D"),
    "blood_no_time": (f"{BLOOD_MANUAL}.tsv", "time", "no 'time' column"),
    "blood_na_time": (f"{BLOOD_MANUAL}.tsv", "time", "row 4: time is missing"),
    "blood_text": (f"{BLOOD_MANUAL}.tsv", "plasma_radioactivity", "row 3: 'high' is not a number"),
    "blood_unknown_units": (f"{BLOOD_MANUAL}.json", "plasma_radioactivity.Units", "'counts'"),
    "blood_no_units": (f"{BLOOD_MANUAL}.json", "whole_blood_radioactivity", "no Units"),
    "blood_no_json": (f"{BLOOD_MANUAL}.json", None, "not found"),
    "blood_percent_as_unitless": (f"{BLOOD_MANUAL}.tsv", "metabolite_parent_fraction", "outside 0..1"),
    "not_in_participants": ("participants.tsv", "participant_id", "sub-02 is not listed"),
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_bad_input_named_and_others_still_valid(ds, how):
    _break(ds, how)
    disc = discover(ds)
    issues = _only_02_invalid(disc)
    file, field, words = CASES[how]
    match = [i for i in issues if i.file == file and i.field == field and words in i.message]
    assert match, [str(i) for i in issues]
    # the one-line form names the file and the field
    text = str(match[0])
    assert text.startswith(file) and (field is None or f"field '{field}'" in text)


def test_bad_entity_in_file_name(ds):
    _break(ds, "bad_entity_name")
    disc = discover(ds)
    assert sorted(s.participant for s in disc.sessions) == ["01", "03"]
    (issue,) = disc.invalid
    assert issue.file == "sub-02/pet/sub-02_trc-PBR_28_pet" and "not a BIDS" in issue.message


def test_na_in_blood_values_is_nan(ds):
    tsv = ds / f"{BLOOD_MANUAL}.tsv"
    cols, _ = bf.manual_blood()
    cols["plasma_radioactivity"][1] = None
    cols["metabolite_parent_fraction"][4] = None
    bf.write_tsv(tsv, cols)
    disc = discover(ds)
    assert disc.invalid == []
    tab = {s.participant: s for s in disc.sessions}["02"].blood_by_label("manual").table()
    assert np.isnan(tab["plasma_bqml"].iloc[1]) and np.isnan(tab["parent_fraction"].iloc[4])
    assert np.isfinite(tab["plasma_bqml"].drop(index=1)).all()


def test_several_problems_in_one_session_all_reported(ds):
    _edit_json(ds / f"{PET02}.json", Units="furlongs", FrameDuration=bf.frame_schedule()[1][:30])
    (ds / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    fields = {i.field for i in _only_02_invalid(discover(ds))}
    assert {"Units", "FrameDuration", None} <= fields


def test_static_pet_allowed_when_not_required(ds):
    _break(ds, "static_3d")
    _edit_json(ds / f"{PET02}.json", FrameTimesStart=[3600.0], FrameDuration=[1800.0])
    assert len(discover(ds, require_dynamic=False).sessions) == 3
    # the frame count is still checked against the 3D image (1 frame)
    _edit_json(ds / f"{PET02}.json", FrameTimesStart=[0.0, 3600.0], FrameDuration=[3600.0, 1800.0])
    issues = _only_02_invalid(discover(ds, require_dynamic=False))
    assert any("has 2 entries but the image has 1 frame" in i.message for i in issues)


def test_require_blood(ds):
    # sub-02: no blood at all; sub-03: blood without a parent fraction
    for p in (ds / "sub-02/pet").glob("*_blood.*"):
        p.unlink()
    for p in (ds / "sub-03/pet").glob("*recording-manual_blood.*"):
        p.unlink()
    assert len(discover(ds).sessions) == 3  # blood not asked for
    disc = discover(ds, require_blood=True)
    assert [s.participant for s in disc.sessions] == ["01"]
    i2 = disc.issues_for("sub-02_trc-PBR28")
    assert len(i2) == 1 and "no blood recording found" in i2[0].message
    assert i2[0].file == "sub-02/pet/sub-02_trc-PBR28_recording-<label>_blood.tsv"
    (i3,) = disc.issues_for("sub-03_trc-PBR28")
    assert i3.field == "metabolite_parent_fraction"
    # plasma already metabolite-corrected (parent_fraction_model 'none'): sub-03 is fine
    disc = discover(ds, require_blood=True, require_parent_fraction=False)
    assert [s.participant for s in disc.sessions] == ["01", "03"]


def test_blood_belongs_to_matching_pet_only(ds):
    # a second tracer in sub-01 without blood: the PBR28 recordings must not be attached to it
    bf.make_session(ds, "01", trc="FLB457", blood=False)
    by = {s.session_id: s for s in discover(ds).sessions}
    assert len(by["sub-01_trc-PBR28"].blood) == 2
    assert by["sub-01_trc-FLB457"].blood == []


def test_missing_participants_tsv_invalidates_all_sessions(ds):
    (ds / "participants.tsv").unlink()
    disc = discover(ds)
    assert disc.sessions == [] and len(disc.invalid_sessions) == 3
    assert all(i.file == "participants.tsv" for i in disc.invalid)
    assert len(discover(ds, require_participants=False).sessions) == 3


def test_subject_without_pet_reported(ds):
    (ds / "sub-04/anat").mkdir(parents=True)
    disc = discover(ds)
    assert len(disc.sessions) == 3
    (issue,) = disc.invalid
    assert issue.session_id == "sub-04" and "no PET image" in issue.message


def test_not_a_folder(tmp_path):
    with pytest.raises(BIDSError):
        discover(tmp_path / "nope")


def test_blood_recording_table_direct(tmp_path):
    cols, meta = bf.autosampler_blood()
    tsv = bf.write_tsv(tmp_path / "sub-01_recording-auto_blood.tsv", cols)
    js = bf.write_json(tmp_path / "sub-01_recording-auto_blood.json", meta)
    rec = BloodRecording.from_files(tsv, js, "auto", time_offset_s=10.0)
    tab = rec.table()
    assert tab["time_s"].iloc[0] == -10.0 and rec.has_plasma and not rec.has_parent_fraction
    assert tab["plasma_bqml"].iloc[3] == pytest.approx(cols["plasma_radioactivity"][3] * 1000)


# ------------------------------------------------------------------------------------------
# participants.tsv
# ------------------------------------------------------------------------------------------
def test_read_participants_types(ds):
    df = read_participants(ds)
    assert df["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    assert df["age"].dtype == float and df["fatigue"].isna().tolist() == [True, False, False]
    assert df["group"].tolist() == ["control", "patient", "control"]
    assert "Levels" in df.attrs["sidecar"]["group"]


def test_read_participants_errors(tmp_path):
    bf.write_participants(tmp_path, [{"participant_id": "sub-01", "age": "thirty"}])
    with pytest.raises(BIDSError) as exc:
        read_participants(tmp_path)
    assert exc.value.field == "age" and exc.value.file == "participants.tsv"
    bf.write_participants(tmp_path, [{"participant_id": "01", "age": 3},
                                     {"participant_id": "sub-01", "age": 4}])
    with pytest.raises(BIDSError) as exc:
        read_participants(tmp_path)
    assert exc.value.field == "participant_id" and "more than once" in exc.value.message
    bf.write_participants(tmp_path, [{"subject": "sub-01"}])
    with pytest.raises(BIDSError) as exc:
        read_participants(tmp_path)
    assert exc.value.field == "participant_id"


def test_participants_levels_keep_codes_as_text(tmp_path):
    bf.write_participants(tmp_path, [{"participant_id": "sub-01", "site": "1", "score": "n/a"},
                                     {"participant_id": "sub-02", "site": "2", "score": "7.5"}],
                          sidecar={"site": {"Levels": {"1": "KI", "2": "MGH"}}})
    df = read_participants(tmp_path)
    assert df["site"].tolist() == ["1", "2"]
    assert np.isnan(df["score"].iloc[0]) and df["score"].iloc[1] == 7.5


# ------------------------------------------------------------------------------------------
# read-only input
# ------------------------------------------------------------------------------------------
def test_nothing_written_into_bids_dir(ds, capsys):
    _break(ds, "overlap")
    before = bf.tree_snapshot(ds)
    discover(ds, require_blood=True)
    assert cli_main(["validate", str(ds), "--require-blood"]) == 1
    assert bf.tree_snapshot(ds) == before


def test_read_only_bind_mount(ds, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(ds), str(ro)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount: {exc}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot remount read-only")
        with pytest.raises(OSError):
            (ro / "probe").write_text("x")
        disc = discover(ro)
        assert len(disc.sessions) == 3 and not disc.invalid
        assert cli_main(["validate", str(ro)]) == 0
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


# ------------------------------------------------------------------------------------------
# gliaflow validate
# ------------------------------------------------------------------------------------------
def test_cli_validate_ok(ds, capsys):
    assert cli_main(["validate", str(ds)]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == 3 and "3 valid, 0 invalid" in out


def test_cli_validate_reports_table_and_fails(ds, capsys):
    _break(ds, "unknown_units")
    assert cli_main(["validate", str(ds), "--participant-label", "sub-01", "02"]) == 1
    out = capsys.readouterr().out
    for word in ("sub-02_trc-PBR28", "error", f"{PET02}.json", "Units", "unknown activity"):
        assert word in out
    assert "sub-03" not in out and "1 valid, 1 invalid" in out
    # filtered down to the good subject: exit 0
    assert cli_main(["validate", str(ds), "--participant-label", "01", "03"]) == 0


def test_cli_validate_json_and_bad_label(ds, capsys):
    _break(ds, "zero_byte")
    assert cli_main(["validate", str(ds), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] == ["sub-01_trc-PBR28", "sub-03_trc-PBR28"]
    assert data["invalid"][0]["file"] == f"{PET02}.nii.gz"
    assert cli_main(["validate", str(ds), "--session-label", "a/b"]) == 2
    assert "--session-label" in capsys.readouterr().err


def test_cli_validate_empty_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["validate", str(tmp_path / "empty")]) == 1
    assert "no PET session" in capsys.readouterr().err


def test_fully_inherited_sidecar(ds):
    own = ds / f"{PET02}.json"
    moved = ds / "sub-02" / "sub-02_trc-PBR28_pet.json"
    own.rename(moved)
    s = {x.participant: x for x in discover(ds).sessions}["02"]
    assert s.pet_json == moved and s.sidecar.Units == "kBq/mL"


REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pbr28" / "petinfo"


@pytest.mark.skipif(not REAL.is_dir(), reason="real PBR28 data not present")
def test_real_pbr28_sidecars_validate():
    from gliaflow.pipeline.io.bids import PetSidecar

    files = sorted(REAL.glob("*_pet.json"))
    assert len(files) == 20
    for f in files:
        side = PetSidecar.model_validate(json.loads(f.read_text()), context={"n_frames": 37})
        assert side.units_to_bqml() == 1000.0 and side.injected_bq() > 1e8
        assert len(side.FrameDuration) == 37
