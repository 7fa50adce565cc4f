"""Voxelwise GLM, Freedman-Lane permutations, max-T, TFCE and clusters (pipeline/stats_voxelwise.py)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.errors import ImageError  # noqa: E402
from gliaflow.pipeline.stats.group import voxelwise_group_stats  # noqa: E402
from gliaflow.pipeline.stats.design import fit_ols  # noqa: E402
from gliaflow.pipeline.stats.voxelwise import (  # noqa: E402
    atlas_lookup, cluster_table, combine_chunks, fwhm_to_sigma_vox, load_maps, permutation_glm,
    smooth_masked, tfce)

SHAPE = (20, 24, 20)
AFF = np.array([[4.0, 0, 0, -40], [0, 4, 0, -48], [0, 0, 4, -40], [0, 0, 0, 1]])
BLOB_CENTRE = (6, 8, 10)


def brain():
    ii = np.indices(SHAPE).astype(float)
    c = (np.array(SHAPE) - 1) / 2
    r = np.array(SHAPE) / 2.3
    return (((ii - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1


def blob(radius2=4):
    ii = np.indices(SHAPE)
    return ((ii - np.array(BLOB_CENTRE)[:, None, None, None]) ** 2).sum(0) <= radius2


def phantom(tmp, seed=0, n_per_group=8, effect=1.25, smooth_noise=1.0):
    """Write a 16-subject SUVR phantom (4 mm grid): spatially smooth noise (CV ~8 %), MAB = 0.6 x
    HAB, patients x ``effect`` in a 33-voxel blob. Returns (maps, mask path, subjects table)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    group = ["patient"] * n_per_group + ["control"] * n_per_group
    geno = ["HAB", "MAB"] * n_per_group
    mask = brain()
    mpath = tmp / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFF), mpath)
    b = blob()
    maps = []
    for i in range(n):
        noise = rng.standard_normal(SHAPE)
        if smooth_noise:
            noise = ndimage.gaussian_filter(noise, smooth_noise)
            noise /= noise.std()
        v = (1.0 if geno[i] == "HAB" else 0.6) * (1 + 0.08 * noise)
        if group[i] == "patient":
            v = v * np.where(b, effect, 1.0)
        p = tmp / f"sub-{i:02d}_suvr.nii.gz"
        nib.save(nib.Nifti1Image(v.astype(np.float32), AFF), p)
        maps.append((f"sub-{i:02d}", p))
    subj = pd.DataFrame({"group": group, "tspo_genotype": geno, "age": rng.uniform(20, 60, n)},
                        index=[f"sub-{i:02d}" for i in range(n)])
    return maps, mpath, subj


def far_from_blob(mm):
    """Voxels farther than ``mm`` from the blob."""
    d = ndimage.distance_transform_edt(~blob(), sampling=(4, 4, 4))
    return d > mm


def test_observed_t_matches_ols_and_fl_permutation_matches_explicit_refit():
    rng = np.random.default_rng(0)
    n, V = 14, 50
    X = np.column_stack([np.ones(n), np.r_[np.ones(7), np.zeros(7)], rng.integers(0, 2, n),
                         rng.normal(size=n)])
    c = np.array([0, 1.0, 0, 0])
    Y = rng.normal(size=(n, V)) + np.outer(X[:, 3], rng.normal(size=V))
    res = permutation_glm(Y, X, c, n_permutations=5, seed=3, dtype=np.float64)
    np.testing.assert_allclose(res.t, fit_ols(X, Y, c).t, rtol=1e-10)
    # explicit Freedman-Lane for the permutations the seed draws
    rng2 = np.random.default_rng(3)
    perms = [np.arange(n)] + [rng2.permutation(n) for _ in range(5)]
    Z = X[:, [0, 2, 3]]
    H = Z @ np.linalg.pinv(Z)
    R = Y - H @ Y
    for k, pi in enumerate(perms):
        Ystar = H @ Y + R[pi]
        tk = fit_ols(X, Ystar, c).t
        np.testing.assert_allclose(res.max_null[k], np.abs(tk).max(), rtol=1e-9)
    # float32 product: same to single precision
    r32 = permutation_glm(Y, X, c, n_permutations=5, seed=3)
    np.testing.assert_allclose(r32.max_null, res.max_null, rtol=1e-4)


def test_permutations_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    X = np.column_stack([np.ones(12), np.r_[np.ones(6), np.zeros(6)]])
    Y = rng.normal(size=(12, 300))
    a = permutation_glm(Y, X, np.array([0, 1.0]), 200, seed=5)
    b = permutation_glm(Y, X, np.array([0, 1.0]), 200, seed=5, batch_bytes=10_000)  # other batching
    c = permutation_glm(Y, X, np.array([0, 1.0]), 200, seed=6)
    np.testing.assert_array_equal(a.p_fwer, b.p_fwer)
    np.testing.assert_allclose(a.max_null, b.max_null, rtol=1e-6)
    assert not np.array_equal(a.max_null, c.max_null)
    assert a.p_fwer.min() >= 1 / 201


def test_chunks_combine_to_the_single_run():
    rng = np.random.default_rng(4)
    mask = np.zeros((8, 9, 7), bool)
    mask[1:7, 1:8, 1:6] = True
    n = 12
    X = np.column_stack([np.ones(n), np.r_[np.ones(6), np.zeros(6)], np.tile([0.0, 1], 6)])
    c = np.array([0, 1.0, 0])
    Y = rng.normal(size=(n, int(mask.sum())))
    kw = dict(n_permutations=30, seed=9, mask=mask, tfce_on=True, cluster_forming_z=2.0)
    whole = permutation_glm(Y, X, c, **kw)
    parts = [permutation_glm(Y, X, c, chunk=ch, **kw) for ch in [(11, 31), (0, 5), (5, 11)]]
    merged = combine_chunks(parts)
    # float32 products over differently sized permutation batches may differ in the last bit
    np.testing.assert_allclose(merged.max_null, whole.max_null, rtol=1e-5)
    np.testing.assert_allclose(merged.max_null_tfce, whole.max_null_tfce, rtol=1e-5)
    np.testing.assert_allclose(merged.max_null_mass, whole.max_null_mass, rtol=1e-5)
    np.testing.assert_array_equal(merged.p_fwer, whole.p_fwer)
    np.testing.assert_array_equal(merged.p_fwer_tfce, whole.p_fwer_tfce)
    from gliaflow.pipeline.errors import StatsError
    with pytest.raises(StatsError):
        combine_chunks(parts[:2])
    with pytest.raises(StatsError):
        permutation_glm(Y, X, c, chunk=(5, 40), **kw)


def test_tfce_analytic_and_connectivity():
    # a single isolated voxel of height 2: TFCE = sum_k 1^E (k dh)^H dh with dh = 2/steps
    vol = np.zeros((7, 7, 7))
    vol[3, 3, 3] = 2.0
    steps = 50
    dh = 2.0 / steps
    expect = sum((k * dh) ** 2 * dh for k in range(1, steps + 1))
    assert tfce(vol, steps=steps)[3, 3, 3] == pytest.approx(expect, rel=1e-12)
    # a 2x2x2 cube of constant height: extent 8 at every height
    vol = np.zeros((7, 7, 7))
    vol[2:4, 2:4, 2:4] = 2.0
    assert tfce(vol, steps=steps)[2, 2, 2] == pytest.approx(8 ** 0.5 * expect, rel=1e-12)
    # two diagonal voxels: one cluster with 26-connectivity, two with 6
    vol = np.zeros((7, 7, 7))
    vol[2, 2, 2] = vol[3, 3, 3] = 1.0
    t26 = tfce(vol, connectivity=26)[2, 2, 2]
    t6 = tfce(vol, connectivity=6)[2, 2, 2]
    assert t26 == pytest.approx(np.sqrt(2) * t6, rel=1e-12)
    # two-sided: negative values enhanced with negative sign
    assert tfce(-vol, two_sided=True)[2, 2, 2] == pytest.approx(-t26)
    assert tfce(-vol)[2, 2, 2] == 0


def test_tfce_loop_equals_stacked_labelling():
    rng = np.random.default_rng(2)
    v = ndimage.gaussian_filter(rng.standard_normal((18, 20, 16)), 1.5)
    v /= v.std()
    for conn in (6, 26):
        a = tfce(v, connectivity=conn, two_sided=True, method="loop")
        b = tfce(v, connectivity=conn, two_sided=True, method="stack")
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_smoothing_fwhm_from_affine():
    aff = np.diag([2.0, 3.0, 2.0, 1.0])
    sig = fwhm_to_sigma_vox(aff, 6.0)
    np.testing.assert_allclose(sig, [6 / 2.3548200450309493 / 2, 6 / 2.3548200450309493 / 3, 6 / 2.3548200450309493 / 2])
    vol = np.zeros((41, 41, 41))
    vol[20, 20, 20] = 1.0
    mask = np.ones_like(vol, bool)
    out = smooth_masked(vol, mask, fwhm_to_sigma_vox(np.diag([1.0, 1, 1, 1]), 8.0))
    prof = out[20, 20, :] / out[20, 20, 20]
    above = np.flatnonzero(prof >= 0.5)
    # FWHM measured by linear interpolation at half maximum
    x = np.arange(41)
    left = np.interp(0.5, prof[:21], x[:21])
    assert 2 * (20 - left) == pytest.approx(8.0, abs=0.15) and above.size in (7, 8, 9)
    # normalised convolution keeps a constant image constant up to the mask edge
    m = np.zeros_like(mask)
    m[5:30, 5:30, 5:30] = True
    const = smooth_masked(np.full(vol.shape, 3.0), m, np.array([2.0, 2, 2]))
    np.testing.assert_allclose(const[m], 3.0, rtol=1e-9)
    assert (const[~m] == 0).all()


def test_planted_blob_detected_not_elsewhere(tmp_path):
    maps, mpath, subj = phantom(tmp_path, seed=0)
    s = StatsSettings(covariates=["tspo_genotype"], n_permutations=99, seed=1, smoothing_fwhm_mm=0,
                      tfce=True, cluster_mass=True, cluster_forming_z=3.1)
    vr = voxelwise_group_stats(maps, mpath, subj, s, "suvr")
    p = np.asarray(vr["images"]["pfwe"].dataobj)
    ptf = np.asarray(vr["images"]["tfcepfwe"].dataobj)
    b, far = blob(), far_from_blob(8.0)
    # max-T (voxel-level, 8 vs 8, d ~ 3 per voxel) finds the core of the blob, TFCE nearly all of it
    assert ((p < 0.05) & b).sum() >= b.sum() / 3
    assert ((p < 0.05) & ~b).sum() == 0
    assert ((ptf < 0.05) & b).sum() >= 0.9 * b.sum()
    assert ((ptf < 0.05) & far & brain()).sum() == 0
    cl = vr["clusters"]
    top = cl.iloc[0]
    assert top["sign"] == "+" and top["peak_p_fwer"] < 0.05 and top["p_fwer_cluster_mass"] < 0.05
    peak_ijk = np.linalg.solve(AFF, [top["peak_x_mm"], top["peak_y_mm"], top["peak_z_mm"], 1])[:3]
    assert b[tuple(np.rint(peak_ijk).astype(int))]
    assert (cl.iloc[1:]["p_fwer_cluster_mass"] >= 0.05).all()
    assert cl["p_fwer_cluster_mass"].min() >= 1 / 100
    assert vr["summary"]["n"] == 16 and vr["sidecar"]["Inference"]["NPermutations"] == 99


def test_planted_blob_with_smoothing(tmp_path):
    maps, mpath, subj = phantom(tmp_path, seed=3, smooth_noise=0)
    s = StatsSettings(n_permutations=99, seed=2, smoothing_fwhm_mm=6.0, tfce=False)
    vr = voxelwise_group_stats(maps, mpath, subj, s, "suvr")
    p = np.asarray(vr["images"]["pfwe"].dataobj)
    assert ((p < 0.05) & blob()).sum() >= 20
    assert ((p < 0.05) & far_from_blob(12.0)).sum() == 0


def test_null_calibration_small():
    """20 small null datasets x 99 permutations: family-wise false positives stay rare (the
    100-dataset calibration is in tests/benchmarks/group_stats.py)."""
    mask = brain()
    rng = np.random.default_rng(11)
    n = 16
    X = np.column_stack([np.ones(n), np.r_[np.ones(8), np.zeros(8)], np.tile([0.0, 1.0], 8)])
    c = np.array([0, 1.0, 0])
    hits = 0
    for _ in range(20):
        Y = rng.standard_normal((n, int(mask.sum()))) + 2 * X[:, [2]]
        r = permutation_glm(Y, X, c, n_permutations=99, seed=int(rng.integers(1 << 30)))
        hits += bool((r.p_fwer < 0.05).any())
    assert hits <= 4  # P(>= 5 | rate 0.05, 20 datasets) = 0.016


def test_maps_on_a_different_grid_rejected(tmp_path):
    maps, mpath, subj = phantom(tmp_path)
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), AFF), bad)
    with pytest.raises(ImageError) as ei:
        load_maps([maps[0][1], bad], mpath)
    assert ei.value.file == str(bad)


def test_cluster_table_coordinates_and_atlas_labels():
    mask = brain()
    z = np.zeros(SHAPE)
    b = blob()
    z[b] = 4.0
    z[BLOB_CENTRE] = 5.0
    z[14, 16, 10] = -3.5
    atlas_img = np.zeros(SHAPE, np.int16)
    atlas_img[:10] = 1
    atlas_img[10:] = 2
    labels = pd.DataFrame({"index": [1, 2], "name": ["Left thing", "Right thing"]})
    atlas = (nib.Nifti1Image(atlas_img, AFF), labels)
    cl = cluster_table(z, z, mask, AFF, 3.1, 26, atlas=atlas)
    assert list(cl["sign"]) == ["+", "-"]
    top = cl.iloc[0]
    np.testing.assert_allclose([top["peak_x_mm"], top["peak_y_mm"], top["peak_z_mm"]],
                               (AFF @ np.r_[BLOB_CENTRE, 1])[:3])
    assert top["n_voxels"] == b.sum() and top["volume_mm3"] == pytest.approx(b.sum() * 64)
    assert top["peak_label"] == "Left thing" and top["labels"].startswith("Left thing (100%)")
    assert cl.iloc[1]["peak_label"] == "Right thing"
    assert atlas_lookup(atlas, [[1000.0, 0, 0]]) == [""]
    one_sided = cluster_table(z, z, mask, AFF, 3.1, 26, tail="greater")
    assert list(one_sided["sign"]) == ["+"]


def test_load_maps_drops_nonfinite_and_constant_voxels(tmp_path):
    maps, mpath, subj = phantom(tmp_path, n_per_group=3)
    img = nib.load(maps[0][1])
    d = np.asarray(img.dataobj).copy()
    inside = np.argwhere(brain())
    d[tuple(inside[0])] = np.nan
    nib.save(nib.Nifti1Image(d, AFF), maps[0][1])
    for _, p in maps:  # a voxel constant across subjects
        v = np.asarray(nib.load(p).dataobj).copy()
        v[tuple(inside[1])] = 1.0
        nib.save(nib.Nifti1Image(v, AFF), p)
    Y, mask, aff, _, excluded = load_maps([p for _, p in maps], mpath, fwhm_mm=0)
    assert Y.shape == (6, brain().sum() - 2) and np.isfinite(Y).all()
    assert not mask[tuple(inside[0])] and not mask[tuple(inside[1])] and mask[tuple(inside[2])]
    assert excluded == {"nonfinite": 1, "constant": 1}
    Ys, mask_s, _, _, excluded_s = load_maps([p for _, p in maps], mpath, fwhm_mm=8.0)
    assert np.isfinite(Ys).all() and not mask_s[tuple(inside[0])]
    assert excluded_s["nonfinite"] == 1  # the smoothed constant voxel varies: kept


def test_untestable_voxels_left_out_counted_and_silent(tmp_path, caplog):
    """Voxels outside one subject's field of view (NaN), zero in every map, or fitted exactly by
    the design are left out before the GLM, counted, logged, and raise no numpy warning."""
    import logging
    import warnings

    maps, mpath, subj = phantom(tmp_path, n_per_group=4)
    inside = np.argwhere(brain())
    nan_vox, exact_vox = tuple(inside[0]), tuple(inside[1])
    zero_slab = brain() & (np.indices(SHAPE)[2] == 3)  # a slice outside every map's field of view
    for i, (pid, p) in enumerate(maps):
        v = np.asarray(nib.load(p).dataobj).copy()
        if i == 0:
            v[nan_vox] = np.nan
        v[zero_slab] = 0.0
        v[exact_vox] = 1.2 if subj.loc[pid, "group"] == "patient" else 1.0
        nib.save(nib.Nifti1Image(v, AFF), p)
    s = StatsSettings(n_permutations=19, seed=1, smoothing_fwhm_mm=0, tfce=True, cluster_mass=True)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="gliaflow"):
        warnings.simplefilter("error")
        vr = voxelwise_group_stats(maps, mpath, subj, s, "suvr")
    n_zero = int(zero_slab.sum())
    expect = {"nonfinite": 1, "constant": n_zero, "exact_fit": 1}
    assert vr["summary"]["n_voxels_excluded"] == expect
    assert vr["sidecar"]["NVoxelsExcluded"] == expect
    assert vr["summary"]["n_voxels"] == brain().sum() - n_zero - 2
    analysed = np.asarray(vr["images"]["mask"].dataobj).astype(bool)
    assert analysed.sum() == vr["summary"]["n_voxels"]
    assert not analysed[nan_vox] and not analysed[exact_vox] and not analysed[zero_slab].any()
    for stat in ("t", "z", "pfwe", "tfce"):
        assert np.isfinite(np.asarray(vr["images"][stat].dataobj)).all(), stat
    assert any(f"{n_zero + 2} brain-mask voxels left out" in r.getMessage() for r in caplog.records)


def test_permutation_glm_refuses_untestable_columns():
    from gliaflow.pipeline.errors import StatsError
    from gliaflow.pipeline.stats.voxelwise import screen_columns

    rng = np.random.default_rng(0)
    n = 12
    X = np.column_stack([np.ones(n), np.r_[np.ones(6), np.zeros(6)]])
    Y = rng.standard_normal((n, 5))
    Y[:, 1] = 1.0  # constant (a reference region's SUVR)
    Y[:, 2] = 2.0 + 0.5 * X[:, 1]  # fitted exactly by the design
    Y[3, 3] = np.inf
    sc = screen_columns(Y, X)
    assert [np.flatnonzero(sc[k]).tolist() for k in ("nonfinite", "constant", "exact_fit")] == [[3], [1], [2]]
    with pytest.raises(StatsError, match="3 of 5 columns cannot be tested"):
        permutation_glm(Y, X, np.array([0, 1.0]), n_permutations=9)
    ok = ~np.logical_or.reduce(list(sc.values()))
    r = permutation_glm(Y[:, ok], X, np.array([0, 1.0]), n_permutations=9)
    assert np.isfinite(r.t).all() and np.isfinite(r.max_null).all()


def test_several_sessions_need_a_session_choice(tmp_path):
    maps, mpath, subj = phantom(tmp_path, n_per_group=3)
    two = []
    for pid, p in maps:
        for ses in ("a", "b"):
            q = p.with_name(f"{pid}_ses-{ses}_suvr.nii.gz")
            q.write_bytes(p.read_bytes())
            two.append((pid, q))
    from gliaflow.pipeline.errors import StatsError
    s = StatsSettings(n_permutations=9, tfce=False, smoothing_fwhm_mm=0)
    with pytest.raises(StatsError) as ei:
        voxelwise_group_stats(two, mpath, subj, s, "suvr")
    assert ei.value.field == "session_id"
    vr = voxelwise_group_stats(two, mpath, subj, s.model_copy(update={"session": "b"}), "suvr")
    assert vr["summary"]["n"] == 6 and all("ses-b" in x for x in vr["sidecar"]["Sources"][:-1])
