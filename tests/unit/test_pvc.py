"""GTM partial-volume correction on a blurred piecewise-constant phantom built from the MNI
template's tissue classes and the Harvard-Oxford atlas (3 mm)."""
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from gliaflow.pipeline.io import resources
from gliaflow.pipeline.config import TACSettings
from gliaflow.pipeline.errors import ImageError
from gliaflow.pipeline.regions.pvc import FWHM_TO_SIGMA, gtm_pvc, rbv_frames, resolve_psf_fwhm

os.environ.setdefault("OMP_NUM_THREADS", "1")
RES = 3.0
FWHM = 6.0


@pytest.fixture(scope="module")
def phantom():
    """Partition (atlas GM labels + WM + CSF), truth per region and frame, blurred PET."""
    atlas = resources.get_atlas("harvard-oxford")
    tpl = resources.template_t1(RES)
    pri = resources.tissue_priors(RES)
    inv = np.linalg.inv(atlas.image.affine) @ tpl.affine
    lab = ndimage.affine_transform(np.asarray(atlas.image.dataobj), inv[:3, :3], inv[:3, 3],
                                   output_shape=tpl.shape, order=0)
    gm, wm, csf = (np.asarray(pri[k].dataobj) for k in ("gm", "wm", "csf"))
    brain = (gm + wm + csf) > 0.5
    tissue = np.argmax(np.stack([gm, wm, csf]), axis=0)
    lab = np.where(brain & (tissue == 0), lab, 0)  # GM-masked atlas labels
    lab = np.where(brain & (lab == 0) & (tissue == 1), 9002, lab)
    lab = np.where(brain & (lab == 0) & (tissue == 2), 9003, lab)
    lab = np.where(brain & (lab == 0), 9001, lab)
    idx = [int(i) for i in atlas.labels["index"]] + [9001, 9002, 9003]
    names = list(atlas.labels["name"]) + ["other_gm", "white_matter", "csf"]
    table = pd.DataFrame({"index": idx, "name": names})
    rng = np.random.default_rng(3)
    n_frames = 6
    truth = rng.uniform(5e3, 20e3, size=(len(idx), n_frames))  # Bq/mL
    truth[idx.index(9002)] *= 0.5  # WM lower
    truth[idx.index(9003)] *= 0.1  # CSF low
    lut = {i: k for k, i in enumerate(idx)}
    comp = np.vectorize(lambda v: lut.get(int(v), -1))(lab)
    sig = FWHM * FWHM_TO_SIGMA / RES
    pet = np.zeros(lab.shape + (n_frames,), np.float32)
    for t in range(n_frames):
        img = np.where(comp >= 0, truth[np.clip(comp, 0, None), t], 0.0)
        pet[..., t] = ndimage.gaussian_filter(img, sig, mode="constant")
    return {"lab": lab, "table": table, "truth": truth, "pet": pet, "affine": tpl.affine}


def test_gtm_recovers_truth_and_reports_uncorrected_bias(phantom):
    from gliaflow.pipeline.regions.tacs import regional_tacs

    lab, table, truth, pet = phantom["lab"], phantom["table"], phantom["truth"], phantom["pet"]
    aff = phantom["affine"]
    n = pet.shape[3]
    fs, fe = np.arange(n) * 600.0, np.arange(1, n + 1) * 600.0
    pet_img = nib.Nifti1Image(pet, aff)
    lab_img = nib.Nifti1Image(lab.astype(np.int32), aff)
    corr, info = gtm_pvc(pet_img, lab_img, table, FWHM, fs, fe,
                         masks={"whole": (lab > 0)})
    raw = regional_tacs(pet_img, lab_img, table, fs, fe)
    vol = np.array([(lab == i).sum() for i in table["index"]]) * RES ** 3
    big = vol > 5000  # > 5 cm3
    assert big.sum() > 30
    late = slice(n - 2, n)  # "late frames": mean of the last two
    names = table["name"].to_numpy()
    t_late = truth[:, late].mean(1)
    c_late = corr[names].to_numpy()[late].mean(0)
    r_late = raw[names].to_numpy()[late].mean(0)
    err_pvc = np.abs(c_late / t_late - 1)[big]
    bias_raw = (r_late / t_late - 1)[big]
    print(f"GTM late-frame abs error, regions > 5 cm3: max {err_pvc.max():.4f} "
          f"mean {err_pvc.mean():.4f}; without PVC: mean bias {bias_raw.mean():+.3f}, "
          f"range {bias_raw.min():+.3f}..{bias_raw.max():+.3f}; cond {info['condition_number']:.1f}")
    assert err_pvc.max() < 0.05
    assert np.abs(bias_raw).mean() > 0.05  # the phantom really has partial-volume effects
    # The overlapping mask (whole brain) is the volume-weighted mean of corrected regions.
    expected = (truth * vol[:, None]).sum(0) / vol.sum()
    np.testing.assert_allclose(corr["whole"], expected, rtol=0.02)


def test_rbv_regional_means_close_to_truth(phantom):
    lab, table, truth, pet = phantom["lab"], phantom["table"], phantom["truth"], phantom["pet"]
    frames = list(rbv_frames(pet[..., -1:], lab, truth[:, -1:], table["index"], FWHM,
                             voxel_size_mm=(RES,) * 3))
    rbv = frames[0]
    k = int(np.argmax([(lab == i).sum() for i in table["index"]]))
    region = lab == table["index"][k]
    assert abs(rbv[region].mean() / truth[k, -1] - 1) < 0.02


def test_psf_resolution_and_bad_input(phantom):
    assert resolve_psf_fwhm(TACSettings(psf_fwhm_mm=4.0), {"PSFFWHM": 6}) == (4.0, "config")
    assert resolve_psf_fwhm(TACSettings(), {"PSFFWHM": [5, 5, 6]}) == (pytest.approx(16 / 3),
                                                                        "sidecar:PSFFWHM")
    assert resolve_psf_fwhm(TACSettings(default_psf_fwhm_mm=7.0), {}) == (7.0, "default")
    with pytest.raises(ImageError):
        resolve_psf_fwhm(TACSettings(), {"PSFFWHM": "wide"})
    lab, table = phantom["lab"], phantom["table"]
    pet = np.zeros(lab.shape + (2,), np.float32)
    with pytest.raises(ImageError, match="FWHM"):
        gtm_pvc(pet, lab, table, 0.0, [0, 1], [1, 2], voxel_size_mm=(3, 3, 3))
    # All-zero PET: defined (zero) output, not NaN garbage.
    corr, _ = gtm_pvc(pet, lab, table, 6.0, [0, 1], [1, 2], voxel_size_mm=(3, 3, 3))
    assert np.allclose(corr.iloc[:, 2:].to_numpy(), 0.0)
