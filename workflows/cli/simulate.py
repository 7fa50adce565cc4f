"""``gliaflow simulate OUT --subjects N [--seed S] [--size SIZE]``: write a phantom BIDS-PET cohort.

The phantom has known truth (regional VT/SUVR, motion, misalignment, labels) under
OUT/derivatives/phantom-truth; see gliaflow.pipeline.simulate.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from gliaflow.pipeline.simulate.cohort import SIZES

    p = subparsers.add_parser(
        "simulate", help="write a phantom [11C]PBR28 BIDS-PET cohort with known truth",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="output BIDS folder (created; must be empty)")
    p.add_argument("--subjects", type=int, default=4, metavar="N", help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--size", choices=list(SIZES), default="default",
                   help="image sizes: tiny (4 mm), small (3 mm T1w / 4 mm PET), default (2 mm T1w / "
                        "3 mm PET), realistic (1 mm T1w / 2 mm PET)")
    p.add_argument("--atlas", default="harvard-oxford", help="atlas carrying the regional kinetics")
    p.add_argument("--no-motion", action="store_true", help="no head motion")
    p.add_argument("--no-misalign", action="store_true", help="no PET-to-T1w misalignment")
    p.add_argument("--noise-scale", type=float, default=1.0, metavar="X",
                   help="multiply the PET noise variance (0 = noise-free)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def run(args) -> int:
    from gliaflow.pipeline.simulate.cohort import simulate_cohort

    t0 = time.perf_counter()

    def progress(done: int, total: int, sub: str) -> None:
        if not args.quiet:
            print(f"[{done}/{total}] {sub} written ({time.perf_counter() - t0:.1f} s)", flush=True)

    out = simulate_cohort(args.out_dir, n_subjects=args.subjects, seed=args.seed, size=args.size,
                          atlas=args.atlas, motion=not args.no_motion, misalign=not args.no_misalign,
                          noise_scale=args.noise_scale, overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        print(f"phantom cohort: {out} ({args.subjects} subjects, size {args.size}, seed {args.seed}) "
              f"in {time.perf_counter() - t0:.1f} s; truth in {out / 'derivatives' / 'phantom-truth'}")
    return 0
