"""PET-to-T1 rigid registration on a phantom with a known T1 -> PET transform."""
from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pytest

from gliaflow.pipeline.config import RegistrationSettings
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.spatial.registration import assess_coregistration, register_pet_to_t1
from gliaflow.pipeline.spatial.transforms import (
    displacement_error,
    mask_world_coords,
    params_to_matrix,
    read_itk_text,
    resample_world,
)

CENTER = [0.0, -18.0, 18.0]  # about the brain centre of MNI152
SETTINGS = RegistrationSettings(n_starts=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """T1 = MNI152 2 mm template (+ brain mask); PET = GM/WM-weighted, 5 mm FWHM, 3 mm voxels."""
    from nilearn import datasets
    from scipy import ndimage

    folder = tmp_path_factory.mktemp("coreg")
    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    brain = datasets.load_mni152_brain_mask(resolution=2)
    nib.save(t1, str(folder / "t1.nii.gz"))
    nib.save(brain, str(folder / "mask.nii.gz"))
    sim = ndimage.gaussian_filter(gm.get_fdata(dtype=np.float32) + 0.3 * wm.get_fdata(dtype=np.float32),
                                  5.0 / 2.3548 / 2.0)
    coords = mask_world_coords(brain.get_fdata() > 0, brain.affine, step=2)
    return {"folder": folder, "sim": sim, "sim_affine": gm.affine, "coords": coords,
            "t1": folder / "t1.nii.gz", "mask": folder / "mask.nii.gz"}


def make_pet(data, params, name, noise=0.03, seed=0):
    """PET in its own 3 mm grid, centred on where the brain lands; truth maps T1 -> PET."""
    m = params_to_matrix(params, center=CENTER)
    shape = (70, 76, 60)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    centre_pet = m[:3, :3] @ np.array(CENTER) + m[:3, 3]
    aff[:3, 3] = centre_pet - aff[:3, :3] @ (np.array(shape) / 2.0)
    pet = resample_world(data["sim"], data["sim_affine"], shape, aff, np.linalg.inv(m))
    pet += np.random.default_rng(seed).normal(0, noise * pet.max(), shape).astype(np.float32)
    path = data["folder"] / name
    nib.save(nib.Nifti1Image(pet, aff), str(path))
    return path, m


def test_registration_accuracy(data, tmp_path):
    pet, truth = make_pet(data, [0.08, -0.05, 0.1, 8.0, -6.0, 5.0], "pet_small.nii.gz")
    out = tmp_path / "sub-01_from-petref_to-T1w_mode-image_xfm.txt"
    res = register_pet_to_t1(pet, data["t1"], SETTINGS, t1_mask=data["mask"], out_xfm=out)
    err = displacement_error(np.array(res.matrix), truth, data["coords"])
    assert err < 1.5
    assert res.likely_wrong is False and res.flags == []
    assert res.similarity > SETTINGS.flag_similarity_below
    assert res.optimum_gain <= SETTINGS.optimum_tolerance
    assert res.brain_coverage > 0.95
    assert len(res.start_similarity) == 2
    # the ITK text file is what the result says
    np.testing.assert_allclose(read_itk_text(out)[0], res.matrix, atol=1e-6)
    assert out.read_text().startswith("#Insight Transform File V1.0")


def test_far_apart_registers_and_is_flagged(data, tmp_path):
    """PET and T1 headers ~7 cm apart: the COM start recovers it; the offset is reported."""
    pet, truth = make_pet(data, [0.1, 0.05, -0.1, 40.0, 50.0, -20.0], "pet_far.nii.gz", seed=1)
    quick = RegistrationSettings(n_starts=1, fine_resolution_mm=[4.0], fine_iterations=[40])
    res = register_pet_to_t1(pet, data["t1"], quick, t1_mask=data["mask"], out_xfm=tmp_path / "x.txt")
    assert res.initial_offset_mm > 50
    assert "large_initial_offset" in res.flags
    assert displacement_error(np.array(res.matrix), truth, data["coords"]) < 1.5
    assert res.likely_wrong is False


def test_off_by_more_than_3mm_is_flagged(data):
    pet, truth = make_pet(data, [0.08, -0.05, 0.1, 8.0, -6.0, 5.0], "pet_small.nii.gz")
    ok = assess_coregistration(pet, data["t1"], truth, SETTINGS, t1_mask=data["mask"])
    assert ok["flags"] == []
    for wrong in (truth @ params_to_matrix([0, 0, 0, 3.2, 0, 0]),
                  truth @ params_to_matrix([0, 0, 0, 0, 0, -3.2]),
                  truth @ params_to_matrix([0.07, 0, 0, 0, 0, 0], center=CENTER)):
        assert displacement_error(wrong, truth, data["coords"]) > 3.0
        q = assess_coregistration(pet, data["t1"], wrong, SETTINGS, t1_mask=data["mask"])
        assert "not_at_optimum" in q["flags"], q
    ident = assess_coregistration(pet, data["t1"], np.eye(4), SETTINGS, t1_mask=data["mask"])
    assert "low_similarity" in ident["flags"]


def test_pet_missing_the_brain_is_flagged(data):
    pet, truth = make_pet(data, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "pet_id.nii.gz")
    far = truth @ params_to_matrix([0, 0, 0, 0, 0, 150.0])  # PET placed 15 cm away
    q = assess_coregistration(pet, data["t1"], far, SETTINGS, t1_mask=data["mask"])
    assert "pet_not_covering_brain" in q["flags"]


def test_bad_inputs(data, tmp_path):
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), aff), str(zero))
    with pytest.raises(ImageError, match="zero") as exc:
        register_pet_to_t1(zero, data["t1"], SETTINGS, out_xfm=tmp_path / "x.txt")
    assert exc.value.file == str(zero)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 3), np.float32), aff), str(four))
    with pytest.raises(ImageError, match="3-D") as exc:
        register_pet_to_t1(four, data["t1"], SETTINGS, out_xfm=tmp_path / "x.txt")
    assert exc.value.field == "dim"
    small_mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), aff), str(small_mask))
    with pytest.raises(ImageError, match="does not match"):
        register_pet_to_t1(data["t1"], data["t1"], SETTINGS, t1_mask=small_mask, out_xfm=tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_nan_voxels_replaced_and_flagged(data, tmp_path):
    pet, truth = make_pet(data, [0.0, 0.0, 0.05, 3.0, 2.0, -2.0], "pet_nan.nii.gz", seed=2)
    img = nib.load(str(pet))
    arr = np.asarray(img.dataobj).copy()
    arr[:5, :5, :5] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    q = assess_coregistration(path, data["t1"], truth, SETTINGS, t1_mask=data["mask"])
    assert q["flags"] == ["nonfinite_values_replaced"]
    assert np.isfinite(q["similarity"])


@pytest.mark.fsl
def test_fsl_flirt_registration_accuracy_oblique_flipped_pet(data, tmp_path):
    """The FSL engine (FLIRT, mutual information) on a PET stored with an oblique, x-flipped
    affine: FSL's scaled-voxel matrices must be converted right for the error to be small."""
    from engine_support import fsl_or_skip

    from gliaflow.pipeline.spatial.transforms import rotation_matrix

    engine = fsl_or_skip()
    m = params_to_matrix([0.06, -0.04, 0.08, 6.0, -5.0, 4.0], center=CENTER)
    shape = (70, 76, 60)
    rot = np.eye(4)
    rot[:3, :3] = rotation_matrix(0.15, 0.0, -0.1)
    aff = rot @ np.diag([-3.0, 3.0, 3.0, 1.0])  # oblique and x-flipped (negative determinant)
    centre_pet = m[:3, :3] @ np.array(CENTER) + m[:3, 3]
    aff[:3, 3] = centre_pet - aff[:3, :3] @ (np.array(shape) / 2.0)
    pet = resample_world(data["sim"], data["sim_affine"], shape, aff, np.linalg.inv(m))
    pet += np.random.default_rng(3).normal(0, 0.03 * pet.max(), shape).astype(np.float32)
    path = tmp_path / "pet_oblique.nii.gz"
    nib.save(nib.Nifti1Image(pet, aff), str(path))
    res = register_pet_to_t1(path, data["t1"], SETTINGS, t1_mask=data["mask"],
                             out_xfm=tmp_path / "xfm.txt", work_dir=tmp_path, engine=engine)
    err = displacement_error(np.array(res.matrix), m, data["coords"])
    print(f"FSL FLIRT PET-to-T1 error (oblique, flipped PET): {err:.3f} mm")
    assert err < 1.5
    assert any(c.tool == "FSL" and c.command and "flirt" in c.command.split()[0] for c in engine.provenance())
