"""pytest set-up shared by tests/unit and tests/integration.

Helper modules (``bidsfactory``, ``anat_phantom``, ``test_orchestration_stages``...) are importable
by name because ``[tool.pytest.ini_options] pythonpath`` in pyproject.toml puts tests/,
tests/unit and tests/integration on ``sys.path``; no test edits ``sys.path`` itself.
"""
from __future__ import annotations

import service_policy


def pytest_configure(config):
    # required services: a SLURM/Grid Engine/Chromium test fails instead of skipping when
    # GLIAFLOW_REQUIRE_SERVICES=1 (tests/run.sh as root on Debian)
    if not config.pluginmanager.is_registered(service_policy):
        config.pluginmanager.register(service_policy, "service_policy")
