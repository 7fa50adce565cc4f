"""Engines for tests: the embedded ANTs engine always; FSL when an FSL build is at $FSLDIR.

``tests/run.sh`` builds FSL from ../shared/fsl into a cache folder outside the repository and
exports FSLDIR. Where FSL cannot be had, FSL tests skip with the reason; tests that use FSL carry the ``fsl``
marker, so where the test command requires its services (GLIAFLOW_REQUIRE_SERVICES=1, as root on
Debian) that skip is a failure (tests/service_policy.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def fsl_or_skip():
    """An :class:`~gliaflow.pipeline.engines.fsl.FslEngine`, or skip/fail with the reason."""
    d = os.environ.get("FSLDIR")
    reason = None
    if not d:
        reason = "FSLDIR is not set (tests/run.sh builds FSL from ../shared/fsl and sets it)"
    elif not (Path(d) / "bin" / "mcflirt").exists():
        reason = f"FSLDIR={d} has no bin/mcflirt"
    if reason:
        pytest.skip(reason)
    from gliaflow.pipeline.engines.fsl import FslEngine

    return FslEngine(fsl_dir=d)
