"""Inputs are never modified: a full participant run reads its BIDS dataset from a read-only bind
mount (a private mount namespace, as root) and every input file hashes the same afterwards."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GLIAFLOW = Path(sys.executable).with_name("gliaflow")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="a read-only bind mount needs root and unshare (util-linux)"),
]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_on_read_only_input_leaves_it_unchanged(tmp_path):
    from gliaflow.pipeline.simulate.cohort import simulate_cohort

    bids = simulate_cohort(tmp_path / "bids", n_subjects=1, size="small", seed=4)
    shutil.rmtree(bids / "derivatives")  # inputs only: the phantom truth is not part of the dataset
    before = _hashes(bids)
    out = tmp_path / "out"
    script = (f'mount --bind "{bids}" "{bids}" && mount -o remount,ro,bind "{bids}" '
              f'&& ! touch "{bids}/probe" 2>/dev/null '
              f'&& exec "{GLIAFLOW}" run "{bids}" "{out}" participant --nprocs 1')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 done, 0 failed" in r.stdout + r.stderr
    assert _hashes(bids) == before
    assert (out / "ledger.tsv").is_file()
