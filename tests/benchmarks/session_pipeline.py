"""Whole-session benchmark: every stage of gliaflow.pipeline.session on one phantom session.

Run: ``python tests/benchmarks/session_pipeline.py [--size realistic] [--threads 2]``; prints
``name<TAB>value<TAB>unit`` lines: wall time per stage and for the session, peak RSS of the
process, the 4D PET size, and the accuracy of regional VT/SUVR against the phantom truth.
Unlike subject_processing.py (which times the science functions), this runs the stage functions
the workflows run, kinetics, maps and report included.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["small", "default", "realistic"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before the first ITK use in this process

    import numpy as np
    import pandas as pd

    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.config import load_config
    from gliaflow.pipeline.session import SESSION_STAGES, StageContext

    work = args.work or Path(tempfile.mkdtemp(prefix="gliaflow_bench_session_"))
    bids = work / "bids"
    t0 = time.perf_counter()
    if not (bids / "dataset_description.json").exists():
        # in a child process, so this process's peak RSS measures the session alone
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", "import sys; from gliaflow.pipeline.simulate.cohort import "
                        "simulate_cohort; simulate_cohort(sys.argv[1], n_subjects=1, seed=int(sys.argv[2]), "
                        "size=sys.argv[3])", str(bids), str(args.seed), args.size], check=True)
        emit(f"simulate_{args.size}_1subject", time.perf_counter() - t0, "s")
    spec = discover(bids, require_blood=True).sessions[0]
    emit("pet_4d_float32", int(np.prod(spec.pet_shape)) * 4 / 2**20, "MiB")
    emit("pet_frames", spec.n_frames, "frames")
    ctx = StageContext(spec=spec, config=load_config(), out_dir=work / "derivatives",
                       work_dir=work / "scratch")
    results = {}
    t_session = time.perf_counter()
    for st in SESSION_STAGES:
        t = time.perf_counter()
        results[st.name] = st.func(ctx, {r: results[r] for r in st.requires})
        emit(f"{st.name}_wall", time.perf_counter() - t, "s")
        emit(f"{st.name}_peak_rss_so_far", peak_rss_mib(), "MiB")
    emit("session_wall", time.perf_counter() - t_session, "s")
    emit("session_peak_rss", peak_rss_mib(), "MiB")
    emit("memory_budget_1p5x_pet_plus_1gib", 1.5 * int(np.prod(spec.pet_shape)) * 4 / 2**20 + 1024, "MiB")

    metrics = pd.read_csv(results["kinetics"].outputs["regional_metrics"], sep="\t", na_values="n/a")
    truth = pd.read_csv(bids / "derivatives" / "phantom-truth" / "regional_truth.tsv", sep="\t",
                        na_values="n/a")
    truth = truth[(truth["class"] == "gm") & (truth["volume_ml"] > 5)]
    m = metrics.merge(truth, left_on="region", right_on="name")
    for col, ref in (("vt_2tcm", "VT_region"), ("vt_logan", "VT_region"), ("vt_ma1", "VT_region"),
                     ("vt_2tcm_pvc", "VT_region"), ("vt_2tcm_pvc", "VT_tissue"), ("suvr", "SUVR_wb")):
        if col in m:
            err = 100 * (m[col] / m[ref] - 1)
            emit(f"{col}_vs_{ref}_median_bias", float(err.median()), "%")
            emit(f"{col}_vs_{ref}_median_abs_error", float(err.abs().median()), "%")
    emit("regions_compared", len(m), "regions>5mL")
    emit("coreg_similarity", results["coreg"].qc["similarity"], "NMI")
    emit("motion_mean_fd", results["pet_motion"].qc["mean_fd_mm"], "mm")


if __name__ == "__main__":
    main()
