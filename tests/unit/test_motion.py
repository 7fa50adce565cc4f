"""Frame realignment on a small phantom with known per-frame rigid motion (4 mm voxels)."""
from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.config import MotionSettings
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.spatial.motion import MOTION_COLUMNS, realign_frames
from gliaflow.pipeline.spatial.transforms import (
    displacement,
    displacement_error,
    mask_world_coords,
    params_to_matrix,
    read_itk_text,
    resample_world,
)

STARTS = np.array([0.0, 30, 60, 120, 300, 600, 900, 1200])
ENDS = np.array([30.0, 60, 120, 300, 600, 900, 1200, 1500])
SETTINGS = MotionSettings(start_time_s=120, min_frame_duration_s=30, reference_start_s=600,
                          smoothing_fwhm_mm=6.0, iterations=[60, 30], shrink_factors=[2, 1])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """4-D PET phantom (4 mm) from the MNI152 GM/WM templates with known motion per frame."""
    from nilearn import datasets
    from scipy import ndimage

    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2)
    sim = ndimage.gaussian_filter(gm.get_fdata(dtype=np.float32) + 0.3 * wm.get_fdata(dtype=np.float32),
                                  5.0 / 2.3548 / 2.0)
    a_pet = np.diag([4.0, 4.0, 4.0, 1.0])
    a_pet[:3, 3] = [-98.0, -134.0, -72.0]
    shape = (50, 59, 48)
    rng = np.random.default_rng(7)
    truth, frames = [], []
    for i, s in enumerate(STARTS):
        # reference window (>= 600 s) still; earlier frames move up to ~3 deg / 4 mm
        p = np.zeros(6) if s >= 600 else np.r_[rng.uniform(-0.05, 0.05, 3), rng.uniform(-4, 4, 3)]
        m = params_to_matrix(p, center=[0.0, -18.0, 18.0])
        truth.append(m)
        # frame_i(y) = sim(M_i^-1 y): M_i maps reference space to frame i (pull convention)
        f = resample_world(sim, gm.affine, shape, a_pet, np.linalg.inv(m))
        scale = 0.6 + 0.1 * i  # activity changes over time
        f = scale * f + rng.normal(0, 0.04 * sim.max(), shape).astype(np.float32)
        frames.append(f)
    folder = tmp_path_factory.mktemp("motion")
    pet = folder / "pet.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(frames, -1).astype(np.float32), a_pet), str(pet))
    coords = mask_world_coords(brain.get_fdata() > 0, brain.affine, step=2)
    return {"pet": pet, "truth": truth, "coords": coords, "folder": folder, "affine": a_pet}


@pytest.fixture(scope="module")
def realigned(phantom):
    f = phantom["folder"]
    res = realign_frames(phantom["pet"], STARTS, ENDS, SETTINGS, f / "hmc.nii.gz", f / "motion.tsv",
                         f / "hmc_xfm.txt", out_ref=f / "ref.nii.gz")
    return res


def test_motion_accuracy_after_start_time(realigned, phantom):
    errors = [displacement_error(np.array(m), t, phantom["coords"])
              for m, t, ok in zip(realigned.matrices, phantom["truth"], realigned.registered) if ok]
    assert len(errors) == 5
    # the motion is real (several mm), the estimate within 0.5 mm averaged over the brain
    moved = [displacement(t, phantom["coords"]).mean() for t in phantom["truth"][3:5]]
    assert min(moved) > 1.5
    assert np.mean(errors) < 0.5
    assert max(errors) < 0.5


def test_early_frames_take_first_registrable_transform(realigned):
    assert realigned.registered == [False, False, False, True, True, True, True, True]
    assert realigned.first_registered_frame == 3
    for i in range(3):
        np.testing.assert_allclose(realigned.matrices[i], realigned.matrices[3])
    assert realigned.reference_frames == [5, 6, 7]


def test_outputs_written(realigned, phantom):
    src = nib.load(str(phantom["pet"]))
    out = nib.load(str(realigned.pet))
    assert out.shape == src.shape
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, src.affine)
    table = pd.read_csv(realigned.motion_tsv, sep="\t")
    assert list(table.columns) == MOTION_COLUMNS
    assert len(table) == 8
    np.testing.assert_allclose(table["frame_start"], STARTS)
    assert table["framewise_displacement"].iloc[0] == 0
    assert table["framewise_displacement"].max() == pytest.approx(realigned.max_fd_mm, rel=1e-4)
    xfms = read_itk_text(realigned.xfm)
    assert len(xfms) == 8
    np.testing.assert_allclose(xfms[4], realigned.matrices[4], atol=1e-6)
    ref = nib.load(str(realigned.reference))
    assert ref.shape == src.shape[:3]


def test_realigned_frames_match_reference_better(realigned, phantom):
    """The moved frame 4 correlates better with the reference after realignment."""
    src = nib.load(str(phantom["pet"])).dataobj
    out = nib.load(str(realigned.pet)).dataobj
    ref = np.asarray(nib.load(str(realigned.reference)).dataobj)
    mask = ref > 0.3 * ref.max()

    def corr(a):
        return np.corrcoef(np.asarray(a)[mask], ref[mask])[0, 1]

    assert corr(out[..., 4]) > corr(src[..., 4]) + 0.05


def _write(tmp_path, data, name="pet.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return path


def _run(tmp_path, path, starts, ends, settings=SETTINGS):
    return realign_frames(path, starts, ends, settings, tmp_path / "o.nii.gz", tmp_path / "m.tsv",
                          tmp_path / "x.txt")


def test_all_zero_pet_is_an_error(tmp_path):
    path = _write(tmp_path, np.zeros((10, 10, 10, 3)))
    with pytest.raises(ImageError, match="zero") as exc:
        _run(tmp_path, path, [0, 600, 900], [600, 900, 1200])
    assert exc.value.file == str(path)


def test_frame_timing_mismatch_is_an_error(tmp_path):
    path = _write(tmp_path, np.ones((10, 10, 10, 3)))
    with pytest.raises(ImageError) as exc:
        _run(tmp_path, path, [0, 600], [600, 900])
    assert exc.value.field == "FrameTimesStart"
    with pytest.raises(ImageError) as exc:
        _run(tmp_path, path, [0, 600, 900], [600, 900, 900])
    assert exc.value.field == "FrameDuration"


def test_single_frame_is_copied_and_flagged(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((12, 12, 12)).astype(np.float32)
    path = _write(tmp_path, data)
    res = _run(tmp_path, path, [0.0], [1200.0])
    assert "single_frame" in res.flags
    assert res.registered == [False]
    np.testing.assert_allclose(res.matrices[0], np.eye(4))
    np.testing.assert_allclose(nib.load(str(res.pet)).get_fdata(), data, rtol=1e-6)


def test_nan_voxels_replaced_and_flagged(phantom, tmp_path):
    data = np.asarray(nib.load(str(phantom["pet"])).dataobj)[..., 4:8].copy()
    data[10:14, 10:14, 10:14, 1] = np.nan
    data[..., 0] = 0.0  # an empty frame too
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, phantom["affine"]), str(path))
    quick = SETTINGS.model_copy(update={"iterations": [20, 10]})
    res = _run(tmp_path, path, STARTS[4:8], ENDS[4:8], quick)
    assert res.nonfinite_frames == [1]
    assert res.empty_frames == [0]
    assert "nonfinite_values_replaced" in res.flags and "empty_frames" in res.flags
    assert res.registered == [False, True, True, True]
    out = nib.load(str(res.pet)).get_fdata()
    assert np.isfinite(out).all()


@pytest.mark.fsl
def test_fsl_mcflirt_accuracy_and_provenance(phantom, tmp_path):
    """The FSL engine (MCFLIRT through Nipype) on the same phantom: same accuracy target, the
    command line recorded. The phantom's affine has a positive determinant, so FSL's flipped
    scaled-voxel convention is exercised."""
    from engine_support import fsl_or_skip

    engine = fsl_or_skip()
    res = realign_frames(phantom["pet"], STARTS, ENDS, SETTINGS, tmp_path / "hmc.nii.gz",
                         tmp_path / "motion.tsv", tmp_path / "hmc_xfm.txt", out_ref=tmp_path / "ref.nii.gz",
                         work_dir=tmp_path, engine=engine)
    errors = [displacement_error(np.array(m), t, phantom["coords"])
              for m, t, ok in zip(res.matrices, phantom["truth"], res.registered) if ok]
    print(f"FSL MCFLIRT motion error: mean {np.mean(errors):.3f} mm, max {max(errors):.3f} mm")
    assert len(errors) == 5 and np.mean(errors) < 0.5 and max(errors) < 0.5
    calls = engine.provenance()
    assert any(c.tool == "FSL" and c.command and c.command.split()[0].endswith("mcflirt") for c in calls)
    assert any(c.tool == "Nipype" and c.interface == "nipype.interfaces.fsl.MCFLIRT" for c in calls)
