"""Atlas regions in T1w space against the truth of a deformed phantom; reference regions;
T1w -> PET resampling direction; region selection and volumes."""
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from anat_phantom import TEST_PHANTOM, TEST_SETTINGS, run_phantom_anat  # noqa: E402
from gliaflow.pipeline.regions import atlas as A  # noqa: E402
from gliaflow.pipeline.io import resources  # noqa: E402
from gliaflow.pipeline.errors import ConfigError  # noqa: E402
from gliaflow.pipeline.spatial.transforms import params_to_matrix, write_itk_text  # noqa: E402


@pytest.fixture(scope="module")
def anat(tmp_path_factory):
    return run_phantom_anat(tmp_path_factory.mktemp("anat"), **TEST_PHANTOM, **TEST_SETTINGS)


def test_atlas_regions_in_t1_dice(anat):
    ph, atlas, res, _ = anat
    o = res.outputs
    lab = A.labels_to_t1(atlas.image, o.t1_preproc, res.to_t1, res.to_t1_invert, atlas.labels)
    est = np.asarray(lab.dataobj)
    truth = np.asarray(ph["atlas"].dataobj)
    vox = abs(np.linalg.det(ph["t1"].affine[:3, :3]))
    dice = {}
    for i, n in zip(atlas.labels["index"], atlas.labels["name"]):
        t = truth == i
        if t.sum() * vox > 5000:  # regions > 5 cm3
            e = est == i
            dice[n] = 2.0 * (t & e).sum() / (t.sum() + e.sum())
    worst = sorted(dice.items(), key=lambda kv: kv[1])[:3]
    print(f"atlas Dice in T1 space, {len(dice)} regions > 5 cm3: min {worst[0][1]:.3f} "
          f"median {np.median(list(dice.values())):.3f}; worst {worst}")
    assert len(dice) > 40
    assert min(dice.values()) >= 0.80


def test_reference_regions_and_tissue_partition(anat):
    ph, atlas, res, _ = anat
    o = res.outputs
    refs_tpl = resources.reference_regions(atlas, 2)
    refs = A.reference_masks_t1(refs_tpl, o.t1_preproc, res.to_t1, res.to_t1_invert,
                                o.probseg_gm, o.brain_mask)
    assert set(refs) >= {"whole_brain", "cerebellum_gm", "occipital_cortex"}
    vols = A.region_volumes(nib.load(o.brain_mask), pd.DataFrame({"index": [1], "name": ["b"]}),
                            masks=refs)
    v = dict(zip(vols["name"], vols["volume_mm3"]))
    assert v["cerebellum_gm"] > 40e3 and v["occipital_cortex"] > 20e3
    assert v["whole_brain"] == pytest.approx(v["b"])
    # Truth: the template-space cerebellum mask sampled through the known mapping.
    w = ph["world_to_template"]
    from anat_phantom import _sample, grid_world

    truth = _sample(refs_tpl["cerebellum_gm"], w(grid_world(ph["shape"], ph["affine"])), 1) >= 0.5
    est = np.asarray(refs["cerebellum_gm"].dataobj) > 0
    overlap = (truth & est).sum() / est.sum()
    print(f"cerebellum_gm: {overlap:.3f} of the estimated mask inside the true cerebellum")
    assert overlap > 0.85
    lab = A.labels_to_t1(atlas.image, o.t1_preproc, res.to_t1, res.to_t1_invert, atlas.labels)
    gm_lab = A.gm_mask_labels(lab, o.probseg_gm, atlas.labels, o.brain_mask)
    part, table = A.add_tissue_labels(gm_lab, atlas.labels, o.dseg)
    brain = nib.load(o.brain_mask).get_fdata() > 0
    assert np.all(np.asarray(part.dataobj)[brain] > 0)  # the partition covers the brain
    assert set(A.TISSUE_LABELS) <= set(table["name"])


def test_t1_to_pet_direction_and_itk_file(tmp_path):
    """A sphere at world point c in T1 space appears at M c in PET space."""
    t1_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    t1_aff[:3, 3] = -40
    ijk = np.indices((80, 80, 80)).reshape(3, -1).T
    world = ijk + t1_aff[:3, 3]
    c = np.array([10.0, -5.0, 3.0])
    sphere = (np.linalg.norm(world - c, axis=1) < 8).reshape(80, 80, 80).astype(np.int32) * 7
    t1_img = nib.Nifti1Image(sphere, t1_aff)
    m = params_to_matrix([0.1, -0.05, 0.2, 4.0, -6.0, 2.0])
    pet_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    pet_aff[:3, 3] = -50
    pet_ref = nib.Nifti1Image(np.zeros((50, 50, 50), np.float32), pet_aff)
    xfm_file = write_itk_text(m, tmp_path / "from-petref_to-T1w_xfm.txt")
    for xfm in (m, xfm_file):
        out = A.labels_to_pet(t1_img, pet_ref, xfm)
        pts = np.argwhere(np.asarray(out.dataobj) == 7)
        centre = (pts @ pet_aff[:3, :3].T + pet_aff[:3, 3]).mean(0)
        np.testing.assert_allclose(centre, m[:3, :3] @ c + m[:3, 3], atol=0.6)
    masks = A.masks_to_pet({"s": nib.Nifti1Image((sphere > 0).astype(np.uint8), t1_aff)},
                           pet_ref, m)
    vol = np.asarray(masks["s"].dataobj).sum() * 8.0
    assert vol == pytest.approx(4 / 3 * np.pi * 8 ** 3, rel=0.15)


def test_region_selection_and_qc():
    table = pd.DataFrame({"index": [3, 5, 9], "name": ["Left_Frontal_Pole", "Right_Thalamus",
                                                       "Left_Insula"]})
    sel = A.select_regions(table, ["right_thalamus", 9, "3"])
    assert sel["index"].tolist() == [5, 9, 3]
    assert A.select_regions(table, None)["name"].tolist() == table["name"].tolist()
    with pytest.raises(ConfigError, match="Nowhere"):
        A.select_regions(table, ["Nowhere", 4])
    assert A.is_cortical("Left_Frontal_Pole") and not A.is_cortical("Right_Thalamus")
    assert A.atlas_entity("harvard-oxford") == "harvardoxford"
    lab = np.zeros((10, 10, 10), np.int32)
    lab[:2] = 3
    lab[5, 5, 5] = 5
    vols = A.region_volumes(nib.Nifti1Image(lab, np.diag([2.0, 2, 2, 1])), table)
    np.testing.assert_allclose(vols["volume_mm3"], [200 * 8.0, 8.0, 0.0])
    qc = A.labels_qc(vols, min_volume_mm3=100)
    assert qc["empty_regions"] == ["Left_Insula"] and qc["small_regions"] == ["Right_Thalamus"]
