"""Regional TACs: means per region and frame, streaming from a 4D NIfTI, TSV+JSON writer, QC."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.regions.tacs import regional_tacs, tac_sanity, write_tacs


def _phantom(tmp_path, n_frames=5, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, size=(12, 10, 8)).astype(np.int16)
    vals = rng.uniform(100, 1000, size=(4, n_frames))  # per label (0..3) and frame, Bq/mL
    pet = vals[lab]  # (X, Y, Z, T)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    p = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(pet.astype(np.float32), aff), p)
    lp = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), lp)
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"]})
    return p, lp, lab, vals, table


def test_regional_means_match_truth_and_units(tmp_path):
    p, lp, lab, vals, table = _phantom(tmp_path)
    fs = np.arange(5) * 60.0
    fe = fs + 60.0
    mask = lab == 2
    df = regional_tacs(p, lp, table, fs, fe, masks={"b_again": mask}, units_to_bqml=2.0)
    assert list(df.columns) == ["frame_start", "frame_end", "a", "b", "c", "b_again"]
    np.testing.assert_allclose(df[["a", "b", "c"]].to_numpy(), 2.0 * vals[1:].T, rtol=1e-5)
    np.testing.assert_allclose(df["b_again"], df["b"], rtol=1e-6)
    np.testing.assert_allclose(df["frame_end"], fe)


def test_write_tacs_tsv_and_sidecar(tmp_path):
    p, lp, lab, vals, table = _phantom(tmp_path)
    fs = np.arange(5) * 60.0
    df = regional_tacs(p, lp, table, fs, fs + 60)
    tsv, js = write_tacs(df, tmp_path / "sub-01_seg-test_tacs.tsv", sources=[p],
                         extra={"PVC": "none"})
    back = pd.read_csv(tsv, sep="\t")
    assert list(back.columns[:2]) == ["frame_start", "frame_end"]
    np.testing.assert_allclose(back["a"], df["a"], rtol=1e-5)
    meta = json.loads(js.read_text())
    assert js.name == "sub-01_seg-test_tacs.json"
    assert meta["a"]["Units"] == "Bq/mL" and meta["frame_start"]["Units"] == "s"
    assert meta["Sources"] == [str(p)] and meta["PVC"] == "none"


def test_bad_inputs(tmp_path):
    p, lp, lab, vals, table = _phantom(tmp_path)
    with pytest.raises(ImageError, match="frame"):
        regional_tacs(p, lp, table, [0, 60], [60, 120])
    pet = np.asarray(nib.load(p).dataobj).copy()
    pet[0, 0, 0, 2] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        regional_tacs(pet, lab, table, np.arange(5) * 60.0, np.arange(1, 6) * 60.0)
    with pytest.raises(ImageError, match="shape"):
        regional_tacs(pet, lab[:-1], table, np.arange(5) * 60.0, np.arange(1, 6) * 60.0)
    other = nib.Nifti1Image(lab, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ImageError, match="different grids"):
        regional_tacs(p, other, table, np.arange(5) * 60.0, np.arange(1, 6) * 60.0)


def test_tac_sanity_flags_negatives_and_peak():
    df = pd.DataFrame({"frame_start": [0.0, 60, 120], "frame_end": [60.0, 120, 180],
                       "a": [1.0, 5.0, 2.0], "b": [-3.0, 1.0, 0.5], "c": [np.nan] * 3})
    qc = tac_sanity(df)
    assert qc["negative_values"] == 1 and qc["regions_with_negatives"] == ["b"]
    assert qc["peak_time_s"]["a"] == 90.0 and qc["peak_time_s"]["c"] is None
    assert qc["nan_regions"] == ["c"] and len(qc["flags"]) == 2


@pytest.mark.parametrize("pvc", ["none", "gtm", "rbv"])
def test_session_tacs_writes_raw_and_pvc(tmp_path, pvc):
    from scipy import ndimage

    from gliaflow.pipeline.regions.atlas import SessionLabels, add_tissue_labels

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    lab = np.zeros((24, 24, 24), np.int32)
    lab[4:12, 4:20, 4:20] = 1
    lab[12:20, 4:20, 4:20] = 2
    dseg = np.where(lab > 0, 1, 0).astype(np.int32)
    dseg[2:22, 2:22, 2:4] = 2  # a WM slab, unlabelled in the atlas
    table = pd.DataFrame({"index": [1, 2], "name": ["a", "b"]})
    part, ptable = add_tissue_labels(nib.Nifti1Image(lab, aff), table, nib.Nifti1Image(dseg, aff))
    pa = np.asarray(part.dataobj)
    truth = {1: 100.0, 2: 300.0, 9002: 50.0}
    act = np.zeros(lab.shape, np.float32)
    for k, v in truth.items():
        act[pa == k] = v
    sig = 6.0 / 2.3548 / 2.0
    pet = np.stack([ndimage.gaussian_filter(act, sig, mode="constant") * f for f in (1.0, 2.0)], -1)
    p = tmp_path / "pet.nii.gz"
    nib.save(nib.Nifti1Image(pet, aff), p)
    ref = nib.Nifti1Image((lab > 0).astype(np.uint8), aff)
    labels = SessionLabels(table=table, labels_pet=nib.Nifti1Image(lab, aff), partition_pet=part,
                           partition_table=ptable, refs_pet={"whole_brain": ref})
    out = session_tacs_call(p, labels, pvc, tmp_path)
    assert out["paths"]["tacs"].exists()
    raw_b = out["tacs"]["b"].to_numpy()
    assert raw_b[0] < 300 * 0.97  # partial-volume loss without correction
    if pvc == "none":
        assert "tacs_pvc" not in out
        return
    corr = out["tacs_pvc"]
    assert out["paths"]["tacs_pvc"].name.endswith(f"desc-pvc{pvc}_tacs.tsv")
    assert list(corr.columns) == ["frame_start", "frame_end", "a", "b", "whole_brain"]
    np.testing.assert_allclose(corr["b"], [300.0, 600.0], rtol=0.02)
    np.testing.assert_allclose(corr["a"], [100.0, 200.0], rtol=0.02)
    meta = json.loads(out["paths"]["tacs_pvc"].with_suffix(".json").read_text())
    assert meta["PartialVolumeCorrection"] == pvc.upper() and meta["PSFFWHM"] == 6.0


def session_tacs_call(p, labels, pvc, tmp_path):
    from gliaflow.pipeline.regions.measure import session_tacs

    return session_tacs(p, labels, [0.0, 60.0], [60.0, 120.0], pvc, 6.0,
                        tmp_path / "sub-01_seg-x_tacs.tsv",
                        tmp_path / f"sub-01_seg-x_desc-pvc{pvc}_tacs.tsv")


def test_tac_sanity_ignores_noise_around_zero_before_the_bolus():
    df = pd.DataFrame({"frame_start": [0.0, 10, 20, 60], "frame_end": [10.0, 20, 60, 120],
                       "a": [-20.0, 3.0, 4000.0, 3000.0],    # -0.5% of peak: noise
                       "b": [0.0, -900.0, 4000.0, 3000.0]})  # -22% of peak: a real problem
    qc = tac_sanity(df)
    assert qc["regions_with_negatives"] == ["b"] and qc["negative_values"] == 1
