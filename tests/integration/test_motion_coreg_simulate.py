"""Frame realignment and PET-to-T1 registration on a `gliaflow simulate` session (tiny, 4 mm).

The simulator's truth (derivatives/phantom-truth): H_f maps the reference head pose to frame f
(PET world RAS mm, same pull convention as gliaflow.pipeline.spatial.transforms) and ``inverse`` of
_from-pet_to-T1w_xfm.json maps T1w points to PET points in the reference pose. Our realignment
reference is the mean of late frames, so estimated transforms equal H_f K for an unknown common K;
frame-to-frame transforms (M_f M_g^-1 vs H_f H_g^-1) and the PET->T1 result corrected by K are
compared with the truth.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pytest

from gliaflow.pipeline.config import MotionSettings, RegistrationSettings
from gliaflow.pipeline.spatial.motion import realign_frames
from gliaflow.pipeline.spatial.registration import register_pet_to_t1
from gliaflow.pipeline.spatial.transforms import displacement, displacement_error, mask_world_coords

pytestmark = pytest.mark.slow


def test_simulated_session(tmp_path):
    from gliaflow.pipeline.simulate.cohort import simulate_cohort

    root = simulate_cohort(tmp_path / "bids", n_subjects=1, size="tiny", seed=3)
    ses = root / "sub-01" / "ses-baseline"
    truth = root / "derivatives" / "phantom-truth" / "sub-01" / "ses-baseline"
    pet = ses / "pet" / "sub-01_ses-baseline_trc-PBR28_pet.nii.gz"
    side = json.loads(pet.with_name(pet.name.replace(".nii.gz", ".json")).read_text())
    starts = np.asarray(side["FrameTimesStart"], float)
    ends = starts + np.asarray(side["FrameDuration"], float)
    motion_h = [np.array(m) for m in
                json.loads((truth / "sub-01_ses-baseline_desc-motion_xfms.json").read_text())["matrices"]]

    out = tmp_path / "out"
    res = realign_frames(pet, starts, ends, MotionSettings(), out / "hmc.nii.gz", out / "motion.tsv",
                         out / "hmc_xfm.txt", out_ref=out / "ref.nii.gz")
    ref_img = nib.load(str(out / "ref.nii.gz"))
    ref = ref_img.get_fdata()
    head = mask_world_coords(ref > 0.3 * ref.max(), ref_img.affine)
    g = res.first_registered_frame
    mg, hg = np.array(res.matrices[g]), motion_h[g]
    errors = [displacement_error(np.array(m) @ np.linalg.inv(mg), h @ np.linalg.inv(hg), head)
              for m, h, ok in zip(res.matrices, motion_h, res.registered) if ok]
    assert max(displacement(h, head).mean() for h in motion_h) > 2.0  # there is motion to find
    assert np.mean(errors) < 0.5

    t1 = ses / "anat" / "sub-01_ses-baseline_T1w.nii.gz"
    mask = truth / "sub-01_ses-baseline_space-T1w_desc-wholebrain_mask.nii.gz"
    inverse = np.array(json.loads((truth / "sub-01_ses-baseline_from-pet_to-T1w_xfm.json").read_text())["inverse"])
    k = np.linalg.inv(hg) @ mg  # our reference space -> true reference pose
    expected = np.linalg.inv(k) @ inverse
    co = register_pet_to_t1(out / "ref.nii.gz", t1, RegistrationSettings(), t1_mask=mask,
                            out_xfm=out / "from-petref_to-T1w_mode-image_xfm.txt")
    m = nib.load(str(mask))
    brain = mask_world_coords(m.get_fdata() > 0, m.affine)
    assert displacement_error(np.array(co.matrix), expected, brain) < 1.5
    assert not co.likely_wrong
