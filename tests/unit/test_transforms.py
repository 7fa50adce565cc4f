"""Rigid-transform helpers: conventions, ITK files, displacement measures."""
from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.engines.ants import ants_to_affine, nifti_to_ants
from gliaflow.pipeline.spatial.transforms import (
    crop_and_block,
    bounding_box,
    displacement,
    displacement_error,
    framewise_displacement,
    is_rigid,
    lps_to_ras,
    mask_world_coords,
    matrix_to_params,
    params_to_matrix,
    ras_to_lps,
    read_itk_text,
    resample_world,
    rotation_matrix,
    write_itk_text,
)


def test_params_matrix_roundtrip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = np.r_[rng.uniform(-0.5, 0.5, 3), rng.uniform(-20, 20, 3)]
        m = params_to_matrix(p)
        assert is_rigid(m)
        np.testing.assert_allclose(matrix_to_params(m), p, atol=1e-10)


def test_rotation_about_center_keeps_center():
    c = np.array([10.0, -20.0, 5.0])
    m = params_to_matrix([0.2, -0.1, 0.3, 0, 0, 0], center=c)
    np.testing.assert_allclose(m[:3, :3] @ c + m[:3, 3], c, atol=1e-12)


def test_reflection_rejected():
    with pytest.raises(ValueError):
        matrix_to_params(np.diag([-1.0, 1.0, 1.0, 1.0]))


def test_ras_lps_involution():
    m = params_to_matrix([0.1, 0.2, 0.3, 1, 2, 3])
    np.testing.assert_allclose(lps_to_ras(ras_to_lps(m)), m)
    # a +x (RAS) translation is -x in LPS
    assert ras_to_lps(params_to_matrix([0, 0, 0, 5, 0, 0]))[0, 3] == -5


def test_framewise_displacement_power():
    p = np.zeros((3, 6))
    p[1, 3] = 1.0          # 1 mm translation
    p[2, 3] = 1.0
    p[2, 0] = 0.01         # 0.01 rad -> 0.5 mm on a 50 mm sphere
    fd = framewise_displacement(p, 50.0)
    np.testing.assert_allclose(fd, [0.0, 1.0, 0.5])


def test_displacement_error_translation_and_rotation():
    coords = np.random.default_rng(0).normal(0, 30, (500, 3))
    t = params_to_matrix([0, 0, 0, 3, 4, 0])
    assert displacement_error(t, np.eye(4), coords) == pytest.approx(5.0)
    np.testing.assert_allclose(displacement(t, coords), 5.0)
    r = params_to_matrix([0, 0, 0.1, 0, 0, 0])
    expected = np.mean(2 * np.sin(0.05) * np.linalg.norm(coords[:, :2], axis=1))
    assert displacement_error(r, np.eye(4), coords) == pytest.approx(expected)


def test_mask_world_coords_and_empty_mask():
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 2, 3] = True
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-10, -10, -10]
    np.testing.assert_allclose(mask_world_coords(mask, aff), [[-8, -6, -4]])
    with pytest.raises(ImageError):
        mask_world_coords(np.zeros((3, 3, 3)), aff)


def test_itk_text_roundtrip_and_ants_agree(tmp_path):
    import ants

    m = params_to_matrix([0.05, -0.1, 0.2, 3, -4, 5], center=[10, 20, 30])
    path = write_itk_text([m, np.eye(4)], tmp_path / "x.txt")
    back = read_itk_text(path)
    assert len(back) == 2
    np.testing.assert_allclose(back[0], m, atol=1e-8)
    # ANTs reads the same file; a point maps to the same place (ANTs works in LPS)
    single = write_itk_text(m, tmp_path / "one.txt")
    tx = ants.read_transform(str(single))
    x_ras = np.array([12.0, -7.0, 40.0])
    y_lps = np.array(tx.apply_to_point(tuple(x_ras * [-1, -1, 1])))
    np.testing.assert_allclose(y_lps * [-1, -1, 1], m[:3, :3] @ x_ras + m[:3, 3], atol=1e-4)


def test_read_itk_text_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("#Insight Transform File V1.0\n")
    with pytest.raises(ImageError):
        read_itk_text(bad)
    bad.write_text("Transform: BSplineTransform_double_3_3\nParameters: 1 2\nFixedParameters: 0\n")
    with pytest.raises(ImageError, match="unsupported"):
        read_itk_text(bad)


def test_nifti_ants_geometry_and_resample_agree():
    """ANTs resampling through a written transform equals resample_world (pull convention)."""
    import ants

    rng = np.random.default_rng(1)
    from scipy import ndimage

    data = ndimage.gaussian_filter(rng.random((30, 32, 28)).astype(np.float32), 2)
    aff = np.array([[0, -3.0, 0, 40], [3.0, 0, 0, -50], [0, 0, 3.0, -30], [0, 0, 0, 1]])  # rotated axes
    img = nifti_to_ants(data, aff)
    np.testing.assert_allclose(ants_to_affine(img), aff, atol=1e-5)
    m = params_to_matrix([0.05, 0.02, -0.04, 2.0, -1.5, 1.0], center=aff[:3, 3] + 40)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        x = write_itk_text(m, os.path.join(d, "m.txt"))
        out_ants = ants.apply_transforms(img, img, [str(x)], interpolator="linear").numpy()
    out_np = resample_world(data, aff, data.shape, aff, m)
    inner = (slice(4, -4),) * 3
    np.testing.assert_allclose(out_ants[inner], out_np[inner], atol=1e-4)


def test_crop_and_block_affine():
    data = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    mask = np.zeros(data.shape, bool)
    mask[2:6, 1:5, 0:4] = True
    box = bounding_box(mask, margin=0, block=2)
    d, a = crop_and_block(data, aff, box, 2)
    assert d.shape == (2, 2, 2)
    # block (0,0,0) averages voxels [2:4, 1:3, 0:2]: centre world = (2.5, 1.5, 0.5)
    np.testing.assert_allclose(a[:3, 3], [2.5, 1.5, 0.5])
    assert d[0, 0, 0] == pytest.approx(data[2:4, 1:3, 0:2].mean())


@pytest.mark.parametrize("det_sign", [1.0, -1.0])
def test_fsl_matrix_of_a_translation(det_sign):
    """Worked by hand: FSL scaled-voxel x runs opposite to RAS x for either storage order (FSL
    flips neurological images), y and z run with RAS. A pull translation t (reference point x ->
    input point x + t) on one grid is therefore the FSL push matrix translation (+tx, -ty, -tz)."""
    from gliaflow.pipeline.spatial.transforms import ras_to_fsl

    aff = np.diag([det_sign * 2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-90.0, -120.0, -70.0]
    shape = (91, 109, 91)
    m = np.eye(4)
    m[:3, 3] = [6.0, -4.0, 3.0]
    f = ras_to_fsl(m, shape, aff, shape, aff)
    np.testing.assert_allclose(f[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(f[:3, 3], [6.0, 4.0, -3.0], atol=1e-9)


def test_fsl_matrix_round_trip_oblique_and_flipped():
    from gliaflow.pipeline.spatial.transforms import fsl_to_ras, ras_to_fsl

    rot = np.eye(4)
    rot[:3, :3] = rotation_matrix(0.2, -0.1, 0.3)
    a_in = rot @ np.diag([2.0, 2.0, 2.5, 1.0])        # oblique, neurological
    a_ref = np.diag([-1.0, 1.2, 1.0, 1.0])             # radiological, anisotropic
    a_in[:3, 3], a_ref[:3, 3] = [80.0, -100.0, -60.0], [90.0, -110.0, -80.0]
    m = params_to_matrix([0.1, -0.05, 0.2, 3.0, -4.0, 5.0])
    f = ras_to_fsl(m, (64, 64, 40), a_in, (181, 150, 160), a_ref)
    np.testing.assert_allclose(fsl_to_ras(f, (64, 64, 40), a_in, (181, 150, 160), a_ref), m, atol=1e-9)
