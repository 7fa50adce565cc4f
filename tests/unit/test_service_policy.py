"""GLIAFLOW_REQUIRE_SERVICES (tests/service_policy.py): a service test that would skip fails when
tests/run.sh requires the services, and still skips otherwise; other skips are left alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest

pytestmark = pytest.mark.slurm

@pytest.mark.skipif(True, reason="SLURM has no idle node")
def test_marked_skipif():
    pass

@pytest.fixture
def queue():
    pytest.skip("Grid Engine cannot run jobs in all.q")

@pytest.mark.sge
def test_fixture_skip(queue):
    pass

@pytest.mark.browser
def test_runs():
    assert True
'''

UNMARKED = '''
import pytest

def test_not_a_service_test():
    pytest.skip("mounting a small tmpfs needs root")
'''


def _run(tmp_path: Path, required: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_unmarked.py").write_text(UNMARKED)
    env = {k: v for k, v in os.environ.items() if k != "GLIAFLOW_REQUIRE_SERVICES"}
    if required is not None:
        env["GLIAFLOW_REQUIRE_SERVICES"] = required
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "service_policy", "-p", "no:cacheprovider",
                           "-rA", "-W", "ignore::pytest.PytestUnknownMarkWarning", "--rootdir", str(tmp_path),
                           str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("required", [None, "0"])
def test_service_tests_skip_when_not_required(tmp_path, required):
    r = _run(tmp_path, required)
    assert r.returncode == 0, r.stdout
    assert "1 passed, 3 skipped" in r.stdout, r.stdout


def test_service_tests_fail_when_required(tmp_path):
    r = _run(tmp_path, "1")
    assert r.returncode == 1, r.stdout
    assert "1 passed, 1 skipped, 2 errors" in r.stdout, r.stdout
    assert ("SLURM is required (GLIAFLOW_REQUIRE_SERVICES=1, set by tests/run.sh after starting the "
            "services) but the test would skip: SLURM has no idle node") in r.stdout
    assert "Grid Engine is required" in r.stdout and "Grid Engine cannot run jobs in all.q" in r.stdout
    # a skip of a test that needs no service stays a skip
    assert "SKIPPED [1] test_unmarked.py" in r.stdout, r.stdout
