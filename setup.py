"""Package discovery for the design card's folder layout (metadata lives in pyproject.toml).

``pipeline/``, ``workflows/`` and ``infrastructure/`` install as ``gliaflow.pipeline``,
``gliaflow.workflows`` and ``gliaflow.infrastructure``. Every folder with an ``__init__.py``
below the code folders is a sub-package, found here rather than listed by hand; every folder
below ``infrastructure/`` is a (namespace) package of data files (cluster profiles, service
scripts, container files) selected by the package-data globs in pyproject.toml.
tests/unit/test_packaging.py builds the wheel and checks both.
"""
from setuptools import find_namespace_packages, find_packages, setup

CODE = ("pipeline", "workflows")
DATA = "infrastructure"

packages = find_packages(include=list(CODE) + [f"{t}.*" for t in CODE])
packages += find_namespace_packages(include=[DATA, f"{DATA}.*"])

setup(
    packages=[f"gliaflow.{p}" for p in packages],
    package_dir={f"gliaflow.{t}": t for t in CODE + (DATA,)},
)
