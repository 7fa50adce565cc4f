"""Benchmark: time and size of `gliaflow simulate` (run as a script, not collected by pytest).

    python tests/benchmarks/simulate.py [--size default] [--subjects 4]

Prints one line per figure: name<TAB>value<TAB>unit.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="default")
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()
    from gliaflow.pipeline.simulate.cohort import simulate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bids"
        c0, t0 = time.process_time(), time.perf_counter()
        simulate_cohort(out, n_subjects=args.subjects, seed=0, size=args.size)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tag = f"simulate_{args.size}_{args.subjects}subj"
    print(f"{tag}_wall\t{wall:.1f}\ts")
    print(f"{tag}_cpu\t{cpu:.1f}\ts")
    print(f"{tag}_disk\t{size_mb:.0f}\tMB")
    print(f"{tag}_maxrss\t{rss_mb:.0f}\tMB")


if __name__ == "__main__":
    main()
