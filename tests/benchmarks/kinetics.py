"""Kinetic-model speed benchmark: regional fits per second per model, and voxelwise voxels per
second per map type on a 1M-voxel x 37-frame array (with a per-voxel Python loop measured side by
side for Logan and MA1).

Run: ``python tests/benchmarks/kinetics.py [--voxels 1000000] [--threads 2]``.
Prints one line per figure: ``name<TAB>value<TAB>unit``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--voxels", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loop-voxels", type=int, default=3000)
    ap.add_argument("--regional-repeats", type=int, default=3)
    a = ap.parse_args(argv)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)

    import numpy as np
    import pandas as pd

    from gliaflow.pipeline.blood.tables import PlasmaInput
    from gliaflow.pipeline.config import KineticsSettings
    from gliaflow.pipeline.kinetics.base import Frames, frame_weights
    from gliaflow.pipeline.kinetics.forward import feng_input, tcm_tac
    from gliaflow.pipeline.kinetics.graphical import (GraphicalDesign, blood_corrected, logan_vt, ma1_vt,
                                                      tstar_mask)
    from gliaflow.pipeline.kinetics.parametric import parametric_maps
    from gliaflow.pipeline.kinetics.regional import fit_regional

    def out(name, value, unit):
        print(f"{name}\t{value:.4g}\t{unit}", flush=True)

    dur = [10] * 8 + [20] * 5 + [30] * 4 + [60] * 4 + [180] * 4 + [360] * 12
    fe = np.cumsum(dur) * 1.0
    fs = fe - np.array(dur)
    frames = Frames.from_arrays(fs, fe)
    t = np.arange(0.0, fe[-1] + 2.0, 1.0)
    cp = feng_input(t, 4.0e5, 2.5e3, 1.5e3, 4.0, 0.25, 0.008, 15.0)
    cb = 1.2 * cp
    plasma = PlasmaInput(t_s=t, parent_bqml=cp, whole_blood_bqml=cb)
    rng = np.random.default_rng(0)

    # ---------------------------------------------------------------- regional
    n_reg = 10
    params = [(rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.14), rng.uniform(0.03, 0.08),
               rng.uniform(0.03, 0.07)) for _ in range(n_reg)]
    tab = pd.DataFrame({"frame_start": fs, "frame_end": fe})
    for i, p in enumerate(params):
        y = tcm_tac(fs, fe, t, cp, cb, *p, 0.05)
        tab[f"r{i}"] = y * (1 + rng.normal(0, 0.02, y.size))
    tab["ref"] = tcm_tac(fs, fe, t, cp, cb, 0.1, 0.1, 0, 0, 0.05)
    s = KineticsSettings(reference_region="ref", vb=0.05)
    for model in ["suv", "suvr", "1tcm", "2tcm", "logan", "ma1", "srtm", "mrtm2"]:
        t0 = time.perf_counter()
        for _ in range(a.regional_repeats):
            res = fit_regional(tab, plasma, s, models=[model], injected_bq=3.7e8, body_weight_kg=70)
        dt = time.perf_counter() - t0
        out(f"regional_{model}_fits_per_s", a.regional_repeats * len(res) / dt, "fits/s")
    ten = tab[["frame_start", "frame_end"] + [f"r{i}" for i in range(10)]]
    times, cpu = [], []
    for _ in range(a.regional_repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fit_regional(ten, plasma, KineticsSettings(models=["2tcm"], vb=0.05))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out("regional_2tcm_10_regions_s", min(times), "s")
    out("regional_2tcm_10_regions_median_s", float(np.median(times)), "s")
    out("regional_2tcm_10_regions_cpu_s", min(cpu), "s")
    out("regional_2tcm_fitted_vb_10_regions_s", _timed(lambda: fit_regional(
        ten, plasma, KineticsSettings(models=["2tcm"], vb=None))), "s")

    # ---------------------------------------------------------------- voxelwise
    base = np.stack([tcm_tac(fs, fe, t, cp, cb, *p, 0.05) for p in params])      # (10, 37)
    V = a.voxels
    data = np.empty((V, frames.n), dtype=np.float32)
    step = 100_000
    for i in range(0, V, step):
        n = min(step, V - i)
        data[i:i + n] = (base[rng.integers(0, n_reg, n)] * rng.uniform(0.7, 1.3, (n, 1))
                         + rng.normal(0, 30.0, (n, frames.n))).astype(np.float32)
    out("voxelwise_array_voxels", V, "voxels")
    out("voxelwise_array_MB", data.nbytes / 1e6, "MB")
    ks = KineticsSettings(vb=0.05, chunk_voxels=200_000)
    kw = dict(plasma=plasma, ref_tac=tab["ref"].to_numpy(), injected_bq=3.7e8, body_weight_kg=70)
    for m in ["suv", "suvr", "logan", "ma1", "basis1tcm"]:
        parametric_maps(data[:20000], frames, ks, maps=[m], **kw)  # warm up
        runs = [_timed2(lambda: parametric_maps(data, frames, ks, maps=[m], **kw)) for _ in range(2)]
        out(f"voxelwise_{m}_voxels_per_s", V / min(r[0] for r in runs), "voxels/s")
        out(f"voxelwise_{m}_voxels_per_cpu_s", V / min(r[1] for r in runs), "voxels/cpu-s")
    parametric_maps(data[:20000], frames, ks, maps=["logan"], threads=a.threads, **kw)  # warm up
    best = min(_timed(lambda: parametric_maps(data, frames, ks, maps=["logan"], threads=a.threads, **kw))
               for _ in range(2))
    out("voxelwise_logan_threadpool_voxels_per_s", V / best, "voxels/s")
    allm = _timed(lambda: parametric_maps(data, frames, ks, maps=["suv", "suvr", "logan", "ma1", "basis1tcm"], **kw))
    out("voxelwise_all5_maps_s", allm, "s")

    # per-voxel Python loop on a subset, same numerics (the single-TAC path of the same kernel)
    w = frame_weights(frames, "duration")
    use = tstar_mask(frames, ks.tstar_min)
    design = GraphicalDesign(frames, plasma, use, w, np.float64)
    sub = blood_corrected(data[: a.loop_voxels].astype(np.float64), frames, plasma, ks.vb)
    vec = {}
    for name, fn in (("logan", logan_vt), ("ma1", ma1_vt)):
        t0 = time.perf_counter()
        loop = np.array([fn(y, design=design)[0] for y in sub])
        dt_loop = time.perf_counter() - t0
        vec_rate = V / min(_timed(lambda: parametric_maps(data, frames, ks, maps=[name], **kw)) for _ in range(2))
        loop_rate = sub.shape[0] / dt_loop
        vmap = parametric_maps(data[: a.loop_voxels], frames, ks, maps=[name], dtype=np.float64, **kw)[name]
        vec[name] = float(np.nanmax(np.abs(vmap - loop) / np.abs(loop)))
        out(f"voxelwise_{name}_loop_voxels_per_s", loop_rate, "voxels/s")
        out(f"voxelwise_{name}_speedup_vs_loop", vec_rate / loop_rate, "x")
        out(f"voxelwise_{name}_max_rel_diff_vs_loop", vec[name], "fraction")
    out("peak_rss_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB")
    out("load_average_1min", os.getloadavg()[0], "")
    return 0


def _timed2(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
