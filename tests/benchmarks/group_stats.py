"""Benchmark of the group statistics (pipeline/stats*.py).

Run: ``python tests/benchmarks/group_stats.py [--quick] [--threads 2] [--part speed ...]``.
Prints one line per figure: ``name<TAB>value<TAB>unit``. Wall times depend on what else runs
on the machine, so process CPU times are printed too.

Figures
-------
1. Speed: 5,000 Freedman-Lane permutations (max-T), 40 subjects, MNI152 2 mm brain mask
   (nilearn package data, ~235k voxels), design intercept + group + genotype + age (p = 4).
2. TFCE cost on the same whole-brain grid: seconds per relabelling (two-sided, 50 steps,
   26-connectivity), measured on a few relabellings and extrapolated to 5,000 (stated as such).
3. Null calibration (no group effect): over 200 null phantoms, the family-wise false-positive
   rate of voxelwise max-T (whole-brain MNI mask at 4 mm, 40 subjects, smooth noise FWHM 8 mm,
   genotype scaling binding ~2x: heteroscedastic; age and genotype handled by Freedman-Lane),
   and of the regional permutation max-T / BH-FDR over 12 regions (16 subjects).
4. Detection: over phantoms with a planted 20 % patient effect (16 subjects, 8 vs 8): regional
   detection of 3 of 12 regions (two noise levels) and false regions; voxelwise detection of a
   12 mm-radius blob (any blob voxel FWER < 0.05, max-T over 100 phantoms; TFCE over 10),
   and voxels flagged far (> 24 mm) from it. Peak memory (max RSS) at the end.
"""
from __future__ import annotations

import argparse
import os
import sys


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts for a smoke run")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--part", action="append", choices=["speed", "null", "regional", "detection"],
                    help="run only these parts (repeatable; default all)")
    return ap.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.stats.regional import regional_group_stats  # noqa: E402
from gliaflow.pipeline.stats.voxelwise import permutation_glm  # noqa: E402


def emit(name, value, unit):
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}\t{value}\t{unit}", flush=True)


def mni_mask(resolution_mm: int) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 brain mask from nilearn's package data (offline); 4 mm by 2x subsampling of 2 mm."""
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=2)
    m = np.asarray(img.dataobj) > 0
    aff = img.affine.copy()
    if resolution_mm == 4:
        m = m[::2, ::2, ::2]
        aff[:3, :3] *= 2
    return m, aff


def design(n, rng, n_patient=None):
    n_patient = n // 2 if n_patient is None else n_patient
    group = np.r_[np.ones(n_patient), np.zeros(n - n_patient)]
    mab = np.tile([0.0, 1.0], n // 2 + 1)[:n]
    age = rng.uniform(20, 70, n)
    X = np.column_stack([np.ones(n), group, mab, age - age.mean()])
    return X, np.array([0, 1.0, 0, 0]), mab


def smooth_noise(rng, n, mask, fwhm_vox):
    """n smooth Gaussian noise maps (unit variance inside the mask) -> (n, V)."""
    sig = fwhm_vox / 2.3548
    out = np.empty((n, int(mask.sum())))
    for i in range(n):
        v = ndimage.gaussian_filter(rng.standard_normal(mask.shape), sig)
        out[i] = v[mask] / v[mask].std()
    return out


def bench_speed(rng, n_perm):
    mask, _ = mni_mask(2)
    n = 40
    X, c, mab = design(n, rng)
    Y = (1.0 - 0.45 * mab)[:, None] * (1 + 0.1 * smooth_noise(rng, n, mask, 3.0))
    emit("speed_voxels", int(mask.sum()), "voxels")
    emit("speed_subjects", n, "subjects")
    t0, c0 = time.perf_counter(), time.process_time()
    res = permutation_glm(Y, X, c, n_permutations=n_perm, seed=1)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    emit(f"maxT_{n_perm}perm_40subj_2mm_wholebrain_wall", el, "s")
    emit(f"maxT_{n_perm}perm_40subj_2mm_wholebrain_cpu", cpu, "s (process CPU time, all threads)")
    emit("maxT_batch_size", res.info["batch"], "permutations")
    emit("load_average_1min", os.getloadavg()[0], "(machine shared with other jobs)")
    # TFCE: a few relabellings on the same grid, extrapolated
    k = 2 if ARGS.quick else 6
    t0, c0 = time.perf_counter(), time.process_time()
    permutation_glm(Y, X, c, n_permutations=k - 1, seed=1, mask=mask, tfce_on=True)
    per, per_cpu = (time.perf_counter() - t0) / k, (time.process_time() - c0) / k
    emit("tfce_per_permutation_2mm_wholebrain_wall", per, "s (two-sided, 50 steps, 26-conn, 1 process)")
    emit("tfce_per_permutation_2mm_wholebrain_cpu", per_cpu, "s")
    emit(f"tfce_{n_perm}perm_extrapolated_cpu", per_cpu * (n_perm + 1) / 60,
         "min of CPU (1 process; extrapolated, not measured)")
    return res


def bench_null_voxelwise(rng, n_datasets, n_perm):
    mask, _ = mni_mask(4)
    n = 40
    hits = 0
    t0 = time.perf_counter()
    for _ in range(n_datasets):
        X, c, mab = design(n, rng)
        Y = (1.0 - 0.45 * mab)[:, None] * (1 + 0.1 * smooth_noise(rng, n, mask, 2.0))
        Y += 0.002 * X[:, [3]]  # age effect (nuisance)
        r = permutation_glm(Y, X, c, n_permutations=n_perm, seed=int(rng.integers(1 << 31)))
        hits += bool((r.p_fwer < 0.05).any())
    rate = hits / n_datasets
    se = np.sqrt(0.05 * 0.95 / n_datasets)
    emit("null_voxelwise_datasets", n_datasets, f"datasets (40 subj, 4 mm whole brain {int(mask.sum())} vox, {n_perm} perms)")
    emit("null_voxelwise_fwer_maxT", rate, f"fraction (target 0.05 +/- 0.03; binomial SE {se:.3f})")
    emit("null_voxelwise_seconds", time.perf_counter() - t0, "s")


REGIONS = [f"ctx_{i:02d}" for i in range(12)]
AFFECTED = {"ctx_01", "ctx_05", "ctx_09"}


def regional_cohort(rng, effect, n_per_group=8, cv_subject=0.06, cv_region=0.05):
    n = 2 * n_per_group
    group = np.array(["patient"] * n_per_group + ["control"] * n_per_group)
    geno = np.array(["HAB", "MAB"] * n_per_group)
    scale = np.where(geno == "HAB", 1.0, 0.55)
    subj = scale * np.exp(rng.normal(0, cv_subject, n))
    rows = []
    for i in range(n):
        for r in REGIONS:
            v = subj[i] * np.exp(rng.normal(0, cv_region))
            if group[i] == "patient" and r in AFFECTED:
                v *= effect
            rows.append({"participant_id": f"sub-{i:02d}", "region": r, "vt": 3 * v,
                         "group": group[i], "tspo_genotype": geno[i]})
    return pd.DataFrame(rows)


def bench_regional(rng, n_datasets, n_perm):
    s = StatsSettings(n_permutations=n_perm, clinical_scores=[])
    fp_perm = fp_fdr = 0
    for k in range(n_datasets):
        s.seed = k
        tab, _ = regional_group_stats(regional_cohort(rng, 1.0), s)
        fp_perm += bool((tab["p_fwer_perm"] < 0.05).any())
        fp_fdr += bool((tab["p_fdr"] < 0.05).any())
    emit("null_regional_datasets", n_datasets, "datasets (16 subj, 12 regions)")
    emit("null_regional_fwer_perm", fp_perm / n_datasets, "fraction (any region p_fwer_perm<0.05)")
    emit("null_regional_any_fdr", fp_fdr / n_datasets, "fraction (any region p_fdr<0.05; = FWER under the global null)")
    for cvs, cvr in ((0.06, 0.05), (0.10, 0.10)):
        det = np.zeros(len(AFFECTED))
        all3 = false_region = 0
        for k in range(n_datasets):
            s.seed = k
            tab, _ = regional_group_stats(regional_cohort(rng, 1.20, cv_subject=cvs, cv_region=cvr), s)
            hit = tab[tab["region"].isin(sorted(AFFECTED))].sort_values("region")
            miss = tab[~tab["region"].isin(AFFECTED)]
            det += (hit["p_fwer_perm"] < 0.05).to_numpy()
            all3 += bool((hit["p_fwer_perm"] < 0.05).all())
            false_region += bool((miss["p_fwer_perm"] < 0.05).any())
        tag = f"cv{int(cvs * 100)}_{int(cvr * 100)}"
        emit(f"regional_20pct_{tag}_detection_per_region", float(det.mean() / n_datasets),
             f"fraction (p_fwer_perm<0.05; 16 subj 8v8; between-subject CV {cvs:.0%}, region CV {cvr:.0%})")
        emit(f"regional_20pct_{tag}_all_three_detected", all3 / n_datasets, "fraction")
        emit(f"regional_20pct_{tag}_any_false_region", false_region / n_datasets, "fraction (p_fwer_perm<0.05 outside)")


def bench_detection_voxelwise(rng, n_datasets, n_perm, n_tfce, n_perm_tfce):
    mask, aff = mni_mask(4)
    n = 16
    ijk = np.indices(mask.shape)
    centre = np.array([30, 34, 24])  # voxel of the 4 mm grid (left parietal)
    dist = np.sqrt((((ijk - centre[:, None, None, None]) * 4.0) ** 2).sum(0))
    blob = (dist <= 12.0)[mask]
    far = (dist > 24.0)[mask]
    det = det_tfce = false_vox = false_tfce = 0
    frac, frac_tfce = [], []
    t_tfce = 0.0
    for k in range(n_datasets):
        X, c, mab = design(n, rng)
        noise = smooth_noise(rng, n, mask, 2.0)
        Y = (1.0 - 0.45 * mab)[:, None] * (1 + 0.08 * noise) * (1 + 0.20 * X[:, [1]] * blob[None, :])
        seed = int(rng.integers(1 << 31))
        r = permutation_glm(Y, X, c, n_permutations=n_perm, seed=seed)
        sig = r.p_fwer < 0.05
        det += bool(sig[blob].any())
        frac.append(sig[blob].mean())
        false_vox += int(sig[far].sum())
        if k < n_tfce:
            t0 = time.perf_counter()
            rt = permutation_glm(Y, X, c, n_permutations=n_perm_tfce, seed=seed, mask=mask, tfce_on=True)
            t_tfce += time.perf_counter() - t0
            st = rt.p_fwer_tfce < 0.05
            det_tfce += bool(st[blob].any())
            frac_tfce.append(st[blob].mean())
            false_tfce += int(st[far].sum())
    emit("voxelwise_20pct_datasets", n_datasets, f"datasets (16 subj 8v8, 4 mm whole brain {int(mask.sum())} vox, "
         f"blob r=12 mm {int(blob.sum())} vox, noise CV 8% FWHM 8 mm, {n_perm} perms)")
    emit("voxelwise_20pct_detection_maxT", det / n_datasets, "fraction (any blob voxel FWER<0.05)")
    emit("voxelwise_20pct_blob_fraction_maxT", float(np.mean(frac)), "mean fraction of blob voxels FWER<0.05")
    emit("voxelwise_20pct_voxels_far_flagged_maxT", false_vox, "voxels >24 mm from blob with FWER<0.05 (all datasets)")
    if n_tfce:
        emit("voxelwise_20pct_tfce_datasets", n_tfce, f"datasets ({n_perm_tfce} perms, TFCE two-sided)")
        emit("voxelwise_20pct_detection_tfce", det_tfce / n_tfce, "fraction (any blob voxel TFCE FWER<0.05)")
        emit("voxelwise_20pct_blob_fraction_tfce", float(np.mean(frac_tfce)), "mean fraction of blob voxels")
        emit("voxelwise_20pct_voxels_far_flagged_tfce", false_tfce, "voxels >24 mm from blob (all TFCE datasets)")
        emit("tfce_per_permutation_4mm_wholebrain_wall", t_tfce / (n_tfce * (n_perm_tfce + 1)), "s")


def main():
    rng = np.random.default_rng(ARGS.seed)
    quick = ARGS.quick
    emit("threads", ARGS.threads, "BLAS threads")
    t0 = time.perf_counter()
    parts = set(ARGS.part or ["speed", "null", "regional", "detection"])
    if "speed" in parts:
        bench_speed(rng, 200 if quick else 5000)
    if "null" in parts:
        bench_null_voxelwise(rng, 10 if quick else 200, 99 if quick else 999)
    if "regional" in parts:
        bench_regional(rng, 10 if quick else 200, 199 if quick else 999)
    if "detection" in parts:
        bench_detection_voxelwise(rng, 5 if quick else 100, 99 if quick else 999, 2 if quick else 10,
                                  49 if quick else 99)
    emit("peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")
    emit("total_seconds", time.perf_counter() - t0, "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
