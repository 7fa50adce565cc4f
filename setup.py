"""Package discovery for the design card's folder layout (metadata lives in pyproject.toml).

``pipeline/``, ``workflows/`` and ``infrastructure/`` install as ``gliaflow.pipeline``,
``gliaflow.workflows`` and ``gliaflow.infrastructure``; every folder with an ``__init__.py``
below them is a sub-package, found here rather than listed by hand.
"""
from setuptools import find_packages, setup

TOP = ("pipeline", "workflows", "infrastructure")

setup(
    packages=[f"gliaflow.{p}" for p in find_packages(include=[f"{t}" for t in TOP] + [f"{t}.*" for t in TOP])],
    package_dir={f"gliaflow.{t}": t for t in TOP},
)
