"""Benchmark: frame realignment and PET-to-T1 registration at realistic size.

Wall times depend on the machine's load (printed as load_average_1min); ``*_process_cpu_s`` is
the CPU time (user + system, all threads, including the ANTsPy import) of the stage's process.

PET: 2 mm voxels, 128 x 128 x 90 grid, 37 frames (94 min), known rigid motion in frames before
10 min. T1w: 1 mm MNI152 template. Each stage runs in a fresh process (spawn) so its peak RSS is
its own; the ANTsPy import time is reported separately.

Run: ``python tests/benchmarks/motion_coreg.py [--threads N]``. Prints ``name<TAB>value<TAB>unit``.
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

DURATIONS = [15] * 8 + [30] * 4 + [60] * 5 + [120] * 5 + [300] * 15  # 37 frames, 94 min


def _emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


def _sim_images(res: int):
    from nilearn import datasets
    from scipy import ndimage

    gm = datasets.load_mni152_gm_template(resolution=res)
    wm = datasets.load_mni152_wm_template(resolution=res)
    g = ndimage.gaussian_filter(gm.get_fdata(dtype=np.float32), 5 / 2.355 / res)
    w = ndimage.gaussian_filter(wm.get_fdata(dtype=np.float32), 5 / 2.355 / res)
    return g, w, gm.affine


def make_phantom(folder: Path, seed: int = 0):
    """Write pet.nii.gz (4-D), petref.nii.gz, t1.nii.gz, mask.nii.gz; return truth."""
    import nibabel as nib
    from nilearn import datasets

    from gliaflow.pipeline.spatial.transforms import params_to_matrix, resample_world

    rng = np.random.default_rng(seed)
    g, w, a1 = _sim_images(1)
    shape = (128, 128, 90)
    a_pet = np.diag([2.0, 2.0, 2.0, 1.0])
    a_pet[:3, 3] = [-127.0, -145.0, -75.0]
    starts = np.concatenate([[0.0], np.cumsum(DURATIONS)[:-1]])
    ends = starts + np.asarray(DURATIONS, float)
    truth = []
    data = np.zeros(shape + (len(DURATIONS),), np.float32)
    for i, (s, e) in enumerate(zip(starts, ends)):
        p = np.zeros(6) if s >= 600 else np.r_[rng.uniform(-0.04, 0.04, 3), rng.uniform(-4, 4, 3)]
        m = params_to_matrix(p, center=[0, -18, 18])
        truth.append(m)
        tmid = 0.5 * (s + e) / 60.0
        gm_act, wm_act = 10 * (1 - np.exp(-tmid / 3)) * np.exp(-tmid / 80), 4 * (1 - np.exp(-tmid / 6))
        img = resample_world(gm_act * g + wm_act * w, a1, shape, a_pet, np.linalg.inv(m))
        sd = 0.03 * 10 * np.sqrt(300.0 / (e - s))
        data[..., i] = img + rng.normal(0, sd, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, a_pet), str(folder / "pet.nii.gz"))
    del data
    t1 = datasets.load_mni152_template(resolution=1)
    nib.save(t1, str(folder / "t1.nii.gz"))
    nib.save(datasets.load_mni152_brain_mask(resolution=1), str(folder / "mask.nii.gz"))
    # PET reference in its own (scanner) space: late-frame contrast, T1->PET offset known
    m_coreg = params_to_matrix([0.06, -0.04, 0.08, 6.0, -5.0, 4.0], center=[0, -18, 18])
    ref = resample_world(8 * g + 4 * w, a1, shape, a_pet, np.linalg.inv(m_coreg))
    ref += rng.normal(0, 0.1, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(ref, a_pet), str(folder / "petref.nii.gz"))
    return starts, ends, truth, m_coreg


def _vm_hwm() -> int:
    """Peak resident set size of this process, bytes (VmHWM; ru_maxrss would include the parent's
    peak, which Linux carries across fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _stage(name: str, folder: str, threads: int, args: tuple, queue) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    import ants  # noqa: F401

    t_import = time.perf_counter() - t0
    rss_import = _vm_hwm()
    folder = Path(folder)
    t0 = time.perf_counter()
    if name == "motion":
        from gliaflow.pipeline.config import MotionSettings
        from gliaflow.pipeline.spatial.motion import realign_frames

        starts, ends = args
        res = realign_frames(folder / "pet.nii.gz", starts, ends, MotionSettings(), folder / "hmc.nii.gz",
                             folder / "motion.tsv", folder / "hmc_xfm.txt", out_ref=folder / "ref.nii.gz")
        out = {"matrices": res.matrices, "registered": res.registered}
    else:
        from gliaflow.pipeline.config import RegistrationSettings
        from gliaflow.pipeline.spatial.registration import register_pet_to_t1

        res = register_pet_to_t1(folder / "petref.nii.gz", folder / "t1.nii.gz", RegistrationSettings(),
                                 t1_mask=folder / "mask.nii.gz", out_xfm=folder / "coreg_xfm.txt")
        out = {"matrix": res.matrix, "similarity": res.similarity, "flags": res.flags}
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    queue.put({"import": t_import, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
               "peak": _vm_hwm(), "import_rss": rss_import, **out})


def _run(name: str, folder: Path, threads: int, args: tuple) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_stage, args=(name, str(folder), threads, args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ns = ap.parse_args(argv)
    import nibabel as nib
    from nilearn import datasets

    from gliaflow.pipeline.spatial.transforms import displacement_error, mask_world_coords

    with tempfile.TemporaryDirectory(prefix="gliaflow_bench_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        starts, ends, truth, m_coreg = make_phantom(folder)
        _emit("phantom_build_s", time.perf_counter() - t0, "s")
        pet_bytes = int(np.prod(nib.load(str(folder / "pet.nii.gz")).shape)) * 4
        _emit("pet_4d_float32_size", pet_bytes / 2**20, "MiB")
        _emit("load_average_1min", os.getloadavg()[0], "processes")
        brain = datasets.load_mni152_brain_mask(resolution=1)
        coords = mask_world_coords(brain.get_fdata() > 0, brain.affine, 2)

        mo = _run("motion", folder, ns.threads, (starts.tolist(), ends.tolist()))
        _emit("ants_import_s", mo["import"], "s")
        _emit("ants_import_peak_rss", mo["import_rss"] / 2**20, "MiB")
        _emit("motion_wall_s", mo["wall"], "s")
        _emit("motion_process_cpu_s", mo["cpu"], "s")
        _emit("motion_peak_rss", mo["peak"] / 2**20, "MiB")
        errs = [displacement_error(np.array(m), t, coords)
                for m, t, r in zip(mo["matrices"], truth, mo["registered"]) if r]
        _emit("motion_mean_abs_displacement_error", float(np.mean(errs)), "mm")
        _emit("motion_max_displacement_error", float(np.max(errs)), "mm")

        co = _run("coreg", folder, ns.threads, ())
        _emit("coreg_wall_s", co["wall"], "s")
        _emit("coreg_process_cpu_s", co["cpu"], "s")
        _emit("coreg_peak_rss", co["peak"] / 2**20, "MiB")
        _emit("coreg_mean_displacement_error", displacement_error(np.array(co["matrix"]), m_coreg, coords), "mm")
        _emit("coreg_similarity_nmi", co["similarity"], "NMI")
        _emit("coreg_flagged", float(bool(co["flags"])), "bool")
        _emit("load_average_1min_end", os.getloadavg()[0], "processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
