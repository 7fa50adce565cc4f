"""Required services: with ``GLIAFLOW_REQUIRE_SERVICES=1`` a test that needs a system service
(marked ``slurm``, ``sge``, ``browser`` or ``fsl``) fails when it would skip.

``tests/run.sh`` sets the variable after it installed and started SLURM, Grid Engine and Chromium and built FSL
(as root on Debian), so a service that is down cannot turn a CI run green by skipping. The tests
keep their own skip conditions (``skipif`` marks, ``pytest.skip`` in fixtures); this pytest plugin
turns such a skip into a failure that names the service and the skip reason. ``tests/conftest.py``
registers it; ``pytest -p service_policy`` loads it in other trees.
"""
from __future__ import annotations

import os

import pytest

#: pytest marker -> the service it stands for
SERVICES = {"slurm": "SLURM", "sge": "Grid Engine", "browser": "Chromium", "fsl": "FSL"}
ENV = "GLIAFLOW_REQUIRE_SERVICES"


def services_required() -> bool:
    """True when ``GLIAFLOW_REQUIRE_SERVICES`` is ``1`` (set by tests/run.sh as root on Debian)."""
    return os.environ.get(ENV, "0") == "1"


def required_service(item: pytest.Item) -> str | None:
    """The service a test item is marked as needing (``slurm``/``sge``/``browser``; the closest mark
    when several apply), else None."""
    for mark in item.iter_markers():  # closest first: function, class, module
        if mark.name in SERVICES:
            return SERVICES[mark.name]
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # (path, line, "Skipped: reason")
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Turn the skip of a service test into a failure when the services are required."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and services_required()) or hasattr(report, "wasxfail"):
        return
    service = required_service(item)
    if service is None:
        return
    report.outcome = "failed"
    report.longrepr = (f"{service} is required ({ENV}=1, set by tests/run.sh after starting the "
                       f"services) but the test would skip: {_skip_reason(report)}")
