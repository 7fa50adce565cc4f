"""Anatomy on a phantom T1 (template pulled through a known affine + smooth deformation, stored
left-right flipped on an oblique grid): brain mask and tissue classes against truth; bad inputs."""
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from anat_phantom import TEST_PHANTOM, TEST_SETTINGS, run_phantom_anat  # noqa: E402
from gliaflow.pipeline.spatial.anatomy import check_t1  # noqa: E402
from gliaflow.pipeline.errors import ImageError  # noqa: E402

FAST = TEST_SETTINGS
PHANTOM = TEST_PHANTOM


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def anat(tmp_path_factory):
    return run_phantom_anat(tmp_path_factory.mktemp("anat"), **PHANTOM, **FAST)


def test_anat_outputs_and_accuracy_on_flipped_oblique_t1(anat):
    ph, _, res, _ = anat
    assert np.linalg.det(ph["t1"].affine[:3, :3]) < 0  # stored flipped
    o = res.outputs
    for p in (o.t1_preproc, o.brain_mask, o.dseg, o.probseg_gm, o.xfm_affine, o.xfm_warp,
              o.xfm_inverse_warp):
        assert p.exists(), p
    truth_brain = (ph["gm"].get_fdata() + ph["wm"].get_fdata() + ph["csf"].get_fdata()) > 0.5
    mask = nib.load(o.brain_mask).get_fdata() > 0
    assert np.allclose(nib.load(o.brain_mask).affine, ph["t1"].affine, atol=1e-4)
    dseg = nib.load(o.dseg).get_fdata()
    d_mask = _dice(mask, truth_brain)
    d_gm = _dice(dseg == 1, ph["gm"].get_fdata() > 0.5)
    d_wm = _dice(dseg == 2, ph["wm"].get_fdata() > 0.5)
    print(f"anat 2 mm flipped+oblique phantom: brain mask Dice {d_mask:.3f}, GM {d_gm:.3f}, "
          f"WM {d_wm:.3f}; timings {({k: round(v, 1) for k, v in res.timings_s.items()})}")
    assert d_mask > 0.95
    assert d_gm > 0.75 and d_wm > 0.75
    assert 1.2e6 < res.qc["brain_volume_mm3"] < 2.2e6
    assert res.qc["flags"] == []


def test_transforms_that_cannot_run_are_rejected_at_load():
    from gliaflow.pipeline.config import load_config
    from gliaflow.pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="segmentation.transform"):
        load_config(overrides={"segmentation.transform": "ElasticSyN"})


def test_affine_only_normalization_runs_and_gives_one_transform(tmp_path):
    """transform: Affine changes what runs: no warp, a one-file chain both ways, and the
    tissue classes still close to truth (a 12-dof fit of an affine + mildly warped phantom)."""
    ph, _, res, _ = run_phantom_anat(tmp_path, **PHANTOM, **{**FAST, "transform": "Affine"})
    assert len(res.to_template) == 1 and res.to_t1_invert == [True]
    assert not res.outputs.xfm_warp.exists()
    dseg = nib.load(res.outputs.dseg).get_fdata()
    assert _dice(dseg == 2, ph["wm"].get_fdata() > 0.5) > 0.6


def test_bad_t1_inputs(tmp_path):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    zero = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), aff), zero)
    with pytest.raises(ImageError, match="constant"):
        check_t1(zero)
    arr = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    arr[3, 3, 3] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        check_t1(nib.Nifti1Image(arr, aff))
    sheared = aff.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(ImageError, match="shear"):
        check_t1(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), sheared))
    with pytest.raises(ImageError, match="3-D"):
        check_t1(nib.Nifti1Image(np.ones((5, 5, 5, 3), np.float32), aff))
    with pytest.raises(ImageError, match="not found"):
        check_t1(tmp_path / "missing.nii.gz")
    with pytest.raises(ImageError, match="coarse"):
        check_t1(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.diag([4.0, 4, 4, 1.0])))
