"""No network access: resources, the phantom and validation run with sockets blocked in-process.

The ``no_network`` fixture makes every outgoing connection and name lookup raise. The lead extends
this test to the whole demo.
"""
from __future__ import annotations

import os
import socket

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


class NetworkAccess(AssertionError):
    pass


@pytest.fixture()
def no_network(monkeypatch):
    """Block outgoing network use in this process (connect, connect_ex, DNS lookups)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise NetworkAccess(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


def test_fixture_blocks_sockets(no_network):
    with pytest.raises(NetworkAccess):
        socket.getaddrinfo("example.org", 443)
    with pytest.raises(NetworkAccess):
        socket.create_connection(("127.0.0.1", 9))
    no_network.clear()  # the attempts above were deliberate


def test_resources_simulate_validate_offline(no_network, tmp_path):
    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.simulate import cohort as simulate
    from gliaflow.workflows.cli.main import main

    simulate.clear_cache()  # re-read all package data with the network blocked
    for name in resources.ATLASES:
        resources.reference_regions(resources.get_atlas(name), 4)
    resources.template_t1(2)
    resources.tissue_priors(2)
    out = tmp_path / "bids"
    # two subjects: a patient and a control, so the statistics settings fit participants.tsv
    assert main(["simulate", str(out), "--subjects", "2", "--size", "tiny", "--quiet"]) == 0
    assert (out / "derivatives" / "phantom-truth" / "regional_truth.tsv").is_file()
    try:
        import gliaflow.workflows.cli.validate  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("gliaflow validate not available in this build")
    assert main(["validate", str(out), "--require-blood"]) == 0
