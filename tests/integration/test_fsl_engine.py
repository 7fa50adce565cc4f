"""The FSL engine's anatomical steps against real FSL binaries (built by tests/run.sh from
../shared/fsl): BET + FAST segmentation of the flipped, oblique anatomical phantom, and FLIRT +
FNIRT normalization whose warps, converted to the seam's ITK convention, must reproduce FNIRT's
own resampling and pull the template brain mask onto the subject's true brain.

Motion (MCFLIRT) and PET-to-T1w (FLIRT) are tested in tests/unit/test_motion.py and
test_registration.py next to the ANTs engine on the same phantoms."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from anat_phantom import TEST_PHANTOM, TEST_SETTINGS, make_subject, run_phantom_anat
from engine_support import fsl_or_skip

pytestmark = pytest.mark.fsl


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _truth_brain(ph):
    return (ph["gm"].get_fdata() + ph["wm"].get_fdata() + ph["csf"].get_fdata()) > 0.5


def test_bet_and_fast_segment_the_phantom(tmp_path):
    fsl_or_skip()
    ph, _, res, _ = run_phantom_anat(tmp_path, **TEST_PHANTOM, **{**TEST_SETTINGS, "engine": "fsl"})
    o = res.outputs
    mask = nib.load(o.brain_mask).get_fdata() > 0
    dseg = nib.load(o.dseg).get_fdata()
    d_mask = _dice(mask, _truth_brain(ph))
    d_gm = _dice(dseg == 1, ph["gm"].get_fdata() > 0.5)
    d_wm = _dice(dseg == 2, ph["wm"].get_fdata() > 0.5)
    print(f"FSL BET/FAST on the flipped oblique phantom: mask Dice {d_mask:.3f}, GM {d_gm:.3f}, WM {d_wm:.3f}")
    assert d_mask > 0.95 and d_gm > 0.75 and d_wm > 0.75
    assert res.qc["flags"] == []


@pytest.fixture(scope="module")
def subject():
    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.spatial.anatomy import template_images

    ph = make_subject(2.0, seed=1, atlas_img=resources.get_atlas("harvard-oxford").image,
                      rot_deg=(12.0, 0.0, 8.0), flip_x=True)
    t1 = nib.Nifti1Image(np.asarray(ph["t1"].dataobj, np.float32), ph["t1"].affine)
    return ph, t1, {"affine": template_images(4.0), "nonlinear": template_images(3.0)}


@pytest.mark.parametrize("transform", ["Affine", "SyN"])
def test_flirt_fnirt_normalization_in_the_seam_convention(subject, transform, tmp_path):
    from gliaflow.pipeline.engines.ants import AntsEngine

    engine = fsl_or_skip()
    ph, t1, tpl = subject
    norm = engine.normalize(t1, tpl, transform=transform, affine_iterations=[1], syn_iterations=[1],
                            work_dir=tmp_path)
    ants = AntsEngine()
    ref, m = tpl["nonlinear"]["t1"], tpl["nonlinear"]["mask"].get_fdata() > 0.5
    warped = np.asarray(ants.resample(t1, ref, norm.to_template).dataobj)
    corr = np.corrcoef(ref.get_fdata()[m], warped[m])[0, 1]
    back = np.asarray(ants.resample(tpl["nonlinear"]["mask"], t1, norm.to_t1, norm.to_t1_invert).dataobj) > 0.5
    dice = _dice(back, _truth_brain(ph))
    print(f"FSL {transform}: template vs normalised T1 r = {corr:.3f}; template mask on T1 Dice {dice:.3f}")
    assert dice > 0.95 and corr > 0.9
    if transform == "SyN":  # the converted warp resamples exactly as FNIRT does
        own = nib.load(str(tmp_path / "fsl_norm" / "warped.nii.gz")).get_fdata()
        assert np.corrcoef(own[m], warped[m])[0, 1] > 0.995
        assert corr > 0.97
        cmds = [c.command for c in engine.provenance() if c.tool == "FSL"]
        assert any(c.split()[0].endswith("fnirt") for c in cmds) and any("invwarp" in c for c in cmds)
