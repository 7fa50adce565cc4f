"""Benchmark: discovery + validation time for a large BIDS-PET cohort (headers only).

Run: python tests/benchmarks/bids_discover.py [N_SUBJECTS] (default 500 subjects x 2 sessions).
Prints ``name<TAB>value<TAB>unit`` lines.
"""
from __future__ import annotations

import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bidsfactory as bf  # noqa: E402

from gliaflow.pipeline.io.bids import discover  # noqa: E402


def main() -> None:
    n_sub = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bids"
        t0 = time.perf_counter()
        subs = [f"{i:04d}" for i in range(n_sub)]
        bf.make_dataset(root, subjects=subs, sessions=("baseline", "retest"))
        t_write = time.perf_counter() - t0
        n = 2 * n_sub
        t0 = time.perf_counter()
        disc = discover(root, require_blood=True)
        t_cold = time.perf_counter() - t0
        assert len(disc.sessions) == n and not disc.invalid, disc.invalid[:3]
        t0 = time.perf_counter()
        disc = discover(root, require_blood=True)
        t_warm = time.perf_counter() - t0
        spec_bytes = len(pickle.dumps(disc.sessions))
        t0 = time.perf_counter()
        discover(root, participant_label=subs[:10])
        t_filtered = time.perf_counter() - t0
    print(f"bids_sessions\t{n}\tsessions")
    print(f"bids_write_dataset\t{t_write:.2f}\ts")
    print(f"bids_discover_first\t{t_cold:.2f}\ts")
    print(f"bids_discover_repeat\t{t_warm:.2f}\ts")
    print(f"bids_discover_per_session\t{1000 * t_warm / n:.2f}\tms")
    print(f"bids_specs_pickled\t{spec_bytes / n / 1024:.1f}\tKiB_per_session")
    print(f"bids_process_max_rss\t{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}\tMiB")
    print(f"bids_discover_10_participants\t{t_filtered:.3f}\ts")


if __name__ == "__main__":
    main()
