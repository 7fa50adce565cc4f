"""Per-stage wall time and peak RSS of one phantom PET session at realistic size.

Run: ``python tests/benchmarks/subject_processing.py [--threads 2] [--work DIR]``
(with ``--work``, a phantom already built there is reused).

Phantom: 1 mm T1w (MNI152 2009 template through a random affine + smooth deformation, bias,
noise; tests/unit/anat_phantom.py), PET on a 2 mm grid (128 x 128 x 80) with 37 frames over
94 min, made from GM/WM/CSF and a hot cortical region with 1TCM-like TAC shapes, a known rigid
T1w -> PET offset, Gaussian PSF (5 mm FWHM) and noise.

Each stage runs in a fresh child process (as a worker task would), so its peak RSS is its own.
Stages: anat (process_anat), pet_motion (realign_frames) and coreg (register_pet_to_t1) when
those modules are importable (the true rigid transform is used otherwise), labels (atlas ->
T1w -> PET, reference regions), tacs (raw + GTM PVC, written). Prints ``name<TAB>value<TAB>unit``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))

PET_SHAPE = (128, 128, 80)
PET_VOX = 2.0
PSF_FWHM = 5.0
DURATIONS = [15.0] * 8 + [30.0] * 4 + [60.0] * 5 + [120.0] * 5 + [300.0] * 15  # 37 frames


def _frames():
    d = np.array(DURATIONS)
    start = np.concatenate([[0.0], np.cumsum(d)[:-1]])
    return start, start + d


def _tac(t_s, amp, k1, k2):
    t = t_s / 60.0
    return amp * (np.exp(-k2 * t) - np.exp(-k1 * t))


def _truth(fs, fe) -> dict:
    """Frame-mean activity (Bq/mL) of each phantom compartment."""
    params = {"gm": (30e3, 1.2, 0.04), "wm": (18e3, 0.8, 0.03), "csf": (5e3, 0.5, 0.05),
              "hot": (42e3, 1.2, 0.03)}
    tgrid = np.linspace(0, fe[-1], 20000)
    truth = {}
    for k, (a, k1, k2) in params.items():
        c = _tac(tgrid, a, k1, k2)
        truth[k] = np.array([c[(tgrid >= s) & (tgrid < e)].mean() for s, e in zip(fs, fe)])
    return truth


def make_session(work: Path, seed: int = 7) -> dict:
    """Write the phantom T1w and 4D PET; return paths, frame times and truth."""
    import nibabel as nib
    from scipy import ndimage

    from anat_phantom import make_subject
    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.spatial.transforms import params_to_matrix

    atlas = resources.get_atlas("harvard-oxford")
    ph = make_subject(1.0, seed=seed, atlas_img=atlas.image)
    t1_path = work / "sub-bench_T1w.nii.gz"
    nib.save(ph["t1"], t1_path)
    hot_idx = [int(i) for i, n in zip(atlas.labels["index"], atlas.labels["name"])
               if "Precentral" in n]
    hot = np.isin(np.asarray(ph["atlas"].dataobj), hot_idx) * np.asarray(ph["gm"].dataobj)
    basis_t1 = {"gm": np.asarray(ph["gm"].dataobj) - hot, "wm": np.asarray(ph["wm"].dataobj),
                "csf": np.asarray(ph["csf"].dataobj), "hot": hot}
    for k, b in basis_t1.items():  # true tissue fractions on the T1w grid (for the truth)
        nib.save(nib.Nifti1Image(b.astype(np.float32), ph["affine"]), work / f"truth_{k}.nii.gz")
    m = params_to_matrix([0.03, -0.02, 0.05, 4.0, -3.0, 6.0])  # T1w point -> PET point
    pet_aff = np.diag([PET_VOX] * 3 + [1.0])
    pet_aff[:3, 3] = np.array([0.0, -18.0, 10.0]) - PET_VOX * (np.array(PET_SHAPE) - 1) / 2
    vox = np.linalg.inv(ph["affine"]) @ np.linalg.inv(m) @ pet_aff
    sigma = PSF_FWHM / 2.3548 / PET_VOX
    basis = {}
    for k, b in basis_t1.items():
        # average 1 mm -> 2 mm by pre-smoothing, then sample on the PET grid and blur with the PSF
        bs = ndimage.gaussian_filter(b.astype(np.float32), 0.8)
        r = ndimage.affine_transform(bs, vox[:3, :3], vox[:3, 3], output_shape=PET_SHAPE, order=1)
        basis[k] = ndimage.gaussian_filter(r, sigma)
    fs, fe = _frames()
    truth = _truth(fs, fe)
    rng = np.random.default_rng(seed)
    pet = np.zeros(PET_SHAPE + (len(fs),), np.float32)
    for t in range(len(fs)):
        img = sum(truth[k][t] * basis[k] for k in basis)
        noise_sd = 0.05 * np.sqrt(np.maximum(img, 0) * 300.0 / DURATIONS[t] * 1e3)
        pet[..., t] = img + noise_sd * rng.standard_normal(PET_SHAPE).astype(np.float32)
    pet_path = work / "sub-bench_pet.nii.gz"
    img = nib.Nifti1Image(pet, pet_aff)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, pet_path)
    return {"t1": t1_path, "pet": pet_path, "fs": fs, "fe": fe, "xfm_true": m,
            "pet_nbytes_f32": int(np.prod(PET_SHAPE) * len(fs) * 4)}


# --------------------------------------------------------------------------- stages (children)

def _stage_anat(work: Path, sess: dict, threads: int) -> dict:
    from gliaflow.pipeline.spatial.anatomy import AnatOutputs, process_anat
    from gliaflow.pipeline.config import SegmentationSettings

    out = AnatOutputs.bids(work / "anat", {"sub": "bench"})
    res = process_anat(sess["t1"], SegmentationSettings(), out)
    return {"anat": res.model_dump(mode="json"), "timings": res.timings_s}


def _stage_motion(work: Path, sess: dict, threads: int) -> dict:
    from gliaflow.pipeline.config import MotionSettings
    from gliaflow.pipeline.spatial.motion import realign_frames

    r = realign_frames(sess["pet"], sess["fs"], sess["fe"], MotionSettings(),
                       out_pet=work / "pet_hmc.nii.gz", out_motion_tsv=work / "motion.tsv",
                       out_xfm_file=work / "hmc_xfm.txt", out_ref=work / "petref.nii.gz")
    return {"pet": str(r.pet), "ref": str(work / "petref.nii.gz")}


def _stage_coreg(work: Path, sess: dict, threads: int, anat: dict, ref: str) -> dict:
    from gliaflow.pipeline.config import RegistrationSettings
    from gliaflow.pipeline.spatial.registration import register_pet_to_t1
    from gliaflow.pipeline.spatial.transforms import displacement_error, mask_world_coords
    import nibabel as nib

    o = anat["outputs"]
    r = register_pet_to_t1(ref, o["t1_preproc"], RegistrationSettings(), t1_mask=o["brain_mask"],
                           out_xfm=work / "from-petref_to-T1w_mode-image_xfm.txt")
    mask = nib.load(o["brain_mask"])
    coords = mask_world_coords(np.asarray(mask.dataobj), mask.affine, step=4)
    err = displacement_error(np.asarray(r.matrix), sess["xfm_true"], coords)
    return {"xfm": str(r.xfm), "error_mm": err}


def _stage_labels_tacs(work: Path, sess: dict, threads: int, anat: dict, pet: str, xfm) -> dict:
    import nibabel as nib

    from gliaflow.pipeline.spatial.anatomy import AnatResult
    from gliaflow.pipeline.regions.atlas import load_atlas, session_labels
    from gliaflow.pipeline.config import AtlasSettings, TACSettings
    from gliaflow.pipeline.regions.pvc import resolve_psf_fwhm
    from gliaflow.pipeline.regions.tacs import session_tacs

    t = time.perf_counter()
    a = AnatResult.model_validate(anat)
    settings = AtlasSettings()
    atlas = load_atlas(settings)
    pet_img = nib.load(pet)
    ref = pet_img.slicer[..., 0]
    labs = session_labels(a, atlas, ref, xfm, settings)
    t_labels = time.perf_counter() - t
    t = time.perf_counter()
    fwhm, _ = resolve_psf_fwhm(TACSettings(psf_fwhm_mm=PSF_FWHM), None)
    out = session_tacs(pet, labs, sess["fs"], sess["fe"], "gtm", fwhm,
                       work / "sub-bench_seg-harvardoxford_tacs.tsv",
                       work / "sub-bench_seg-harvardoxford_desc-pvcgtm_tacs.tsv")
    t_tacs = time.perf_counter() - t
    # Accuracy: late-frame (60-90 min) mean of cortical regions > 5 cm3 (T1w volume) against the
    # phantom's GM TAC (precentral gyri: the hot TAC). Labels are GM-masked, but phantom voxels
    # carry soft GM/WM/CSF fractions, so this is a realistic (not exact) test of the GTM.
    from gliaflow.pipeline.regions.atlas import is_cortical

    truth = _truth(sess["fs"], sess["fe"])
    mid = 0.5 * (sess["fs"] + sess["fe"])
    late = (mid >= 3600) & (mid <= 5400)
    vol = dict(zip(labs.volumes_t1["name"], labs.volumes_t1["volume_mm3"]))
    # Second truth: the region mean of the true (unblurred) activity over the region's T1w voxels
    # (tissue fractions x compartment TACs): what a GTM on these labels can recover at best.
    frac = {k: np.asarray(nib.load(work / f"truth_{k}.nii.gz").dataobj)
            for k in ("gm", "wm", "csf", "hot")}
    late_act = sum(frac[k] * truth[k][late].mean() for k in frac)
    lab_t1 = np.asarray(labs.labels_t1.dataobj)
    err_raw, err_pvc, err_mix = [], [], []
    for idx, name in zip(labs.table["index"], labs.table["name"]):
        if not is_cortical(name) or vol.get(name, 0) <= 5000:
            continue
        tr = truth["hot" if "Precentral" in name else "gm"][late].mean()
        err_raw.append(out["tacs"][name].to_numpy()[late].mean() / tr - 1)
        err_pvc.append(out["tacs_pvc"][name].to_numpy()[late].mean() / tr - 1)
        err_mix.append(out["tacs_pvc"][name].to_numpy()[late].mean()
                       / late_act[lab_t1 == idx].mean() - 1)
    err_raw, err_pvc, err_mix = np.array(err_raw), np.array(err_pvc), np.array(err_mix)
    return {"labels_s": t_labels, "tacs_s": t_tacs, "n_regions": int(len(labs.table)),
            "cond": out["qc"]["pvc"]["condition_number"], "n_eval": int(err_pvc.size),
            "raw_bias_mean": float(err_raw.mean()), "raw_abs_max": float(np.abs(err_raw).max()),
            "pvc_bias_mean": float(err_pvc.mean()), "pvc_abs_max": float(np.abs(err_pvc).max()),
            "pvc_abs_median": float(np.median(np.abs(err_pvc))),
            "pvc_within5": float(np.mean(np.abs(err_pvc) <= 0.05)),
            "mix_abs_median": float(np.median(np.abs(err_mix))),
            "mix_abs_max": float(np.abs(err_mix).max()),
            "mix_within5": float(np.mean(np.abs(err_mix) <= 0.05))}


def _vmhwm_bytes() -> int:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited across
    exec from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(work: Path) -> dict:
    import pickle

    cache = work / "session.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    sess = make_session(work)
    cache.write_bytes(pickle.dumps(sess))
    return sess


def _child(q, name, args):
    th = args[2] if len(args) > 2 else 1
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(th)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(th)
    sys.path.insert(0, str(HERE.parent / "unit"))
    t = time.perf_counter()
    try:
        res = globals()[name](*args[:1]) if name == "_build" else globals()[name](*args)
        err = None
    except Exception:  # report and continue with the other stages
        import traceback

        res, err = None, traceback.format_exc()
    wall = time.perf_counter() - t
    rss = _vmhwm_bytes()
    q.put((res, err, wall, rss))


def run_stage(name, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, name, args))
    p.start()
    res, err, wall, rss = q.get()
    p.join()
    if err:
        print(f"# stage {name} failed:\n{err}", file=sys.stderr)
    return res, wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="gliaflow_bench_")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sess, _, _ = run_stage("_build", work, None, 1)  # in a child: keeps this process small
    print(f"phantom_build\t{time.perf_counter() - t:.1f}\ts")
    print(f"pet_4d_float32\t{sess['pet_nbytes_f32'] / 2**20:.1f}\tMiB")
    budget = 1.5 * sess["pet_nbytes_f32"] + 2**30
    print(f"memory_budget\t{budget / 2**20:.1f}\tMiB")
    th = args.threads
    walls, rsss = {}, {}

    res, walls["anat"], rsss["anat"] = run_stage("_stage_anat", work, sess, th)
    if res is None:
        return 1
    anat = res["anat"]
    for k, v in res["timings"].items():
        print(f"anat_{k}\t{v:.1f}\ts")

    pet, ref, xfm = str(sess["pet"]), None, sess["xfm_true"]
    try:
        import gliaflow.pipeline.spatial.motion  # noqa: F401
        r, walls["pet_motion"], rsss["pet_motion"] = run_stage("_stage_motion", work, sess, th)
        if r is not None:
            pet, ref = r["pet"], r["ref"]
    except ImportError:
        print("# pipeline.motion not importable: motion stage skipped", file=sys.stderr)
    try:
        import gliaflow.pipeline.spatial.registration  # noqa: F401
        if ref is not None:
            r, walls["coreg"], rsss["coreg"] = run_stage("_stage_coreg", work, sess, th, anat, ref)
            if r is not None:
                xfm = r["xfm"]
                print(f"coreg_error_vs_truth\t{r['error_mm']:.2f}\tmm")
    except ImportError:
        print("# pipeline.registration not importable: true transform used", file=sys.stderr)

    r, walls["labels_tacs"], rsss["labels_tacs"] = run_stage("_stage_labels_tacs", work, sess, th,
                                                             anat, pet, xfm)
    if r is not None:
        print(f"labels_wall\t{r['labels_s']:.1f}\ts")
        print(f"tacs_gtm_wall\t{r['tacs_s']:.1f}\ts")
        print(f"gtm_regions\t{r['n_regions']}\tcount")
        print(f"gtm_condition_number\t{r['cond']:.1f}\t1")
        print(f"late_eval_cortical_regions\t{r['n_eval']}\tcount")
        print(f"late_bias_nopvc_mean\t{100 * r['raw_bias_mean']:+.1f}\t%")
        print(f"late_abs_error_nopvc_max\t{100 * r['raw_abs_max']:.1f}\t%")
        print(f"late_bias_gtm_mean\t{100 * r['pvc_bias_mean']:+.1f}\t%")
        print(f"late_abs_error_gtm_median\t{100 * r['pvc_abs_median']:.1f}\t%")
        print(f"late_abs_error_gtm_max\t{100 * r['pvc_abs_max']:.1f}\t%")
        print(f"late_gtm_within_5pct\t{100 * r['pvc_within5']:.0f}\t%")
        print(f"late_abs_error_gtm_vs_region_truth_median\t{100 * r['mix_abs_median']:.1f}\t%")
        print(f"late_abs_error_gtm_vs_region_truth_max\t{100 * r['mix_abs_max']:.1f}\t%")
        print(f"late_gtm_vs_region_truth_within_5pct\t{100 * r['mix_within5']:.0f}\t%")
    for k in walls:
        print(f"{k}_wall\t{walls[k]:.1f}\ts")
        print(f"{k}_peak_rss\t{rsss[k] / 2**20:.0f}\tMiB")
    print(f"session_wall\t{sum(walls.values()):.1f}\ts")
    peak = max(rsss.values())
    print(f"session_peak_rss\t{peak / 2**20:.0f}\tMiB")
    print(f"peak_rss_within_budget\t{int(peak <= budget)}\tbool")
    print(f"load_average_1min\t{os.getloadavg()[0]:.1f}\t1")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
