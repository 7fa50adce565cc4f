"""The wheel, as a container or a site installs it: built from exactly the files the Dockerfile
copies, installed into an empty folder, and imported from there by a fresh interpreter.

Checks that every module of gliaflow.pipeline and gliaflow.workflows imports from the installed
copy (not this source tree), that the wheel holds every source and data file and nothing else,
and that the files the code and the deployment recipes look up (cluster profiles, the Prefect
deployment's entrypoint) resolve inside the installed package. The build runs without build
isolation, offline, with the setuptools of the test environment (the ``test`` extra).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
TOP = ("pipeline", "workflows", "infrastructure")  # install as gliaflow.<name>
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def dockerfile_sources(path: Path) -> list[str]:
    """Source paths of the ``COPY`` instructions of a Dockerfile (relative to the build context)."""
    out = []
    for line in path.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            out += [w for w in words[1:-1] if not w.startswith("--")]
    return out


def apptainer_sources(path: Path) -> list[str]:
    """Source paths of the ``%files`` section of an Apptainer definition file."""
    out, in_files = [], False
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("%"):
            in_files = s == "%files"
        elif in_files and s and not s.startswith("#"):
            out.append(s.split()[0])
    return out


def copy_in(rel: str, dst: Path) -> None:
    """Copy the file or folder ``REPO/rel`` to ``dst/rel`` (without caches and build leftovers)."""
    s, d = REPO / rel, dst / rel
    if s.is_dir():
        shutil.copytree(s, d, ignore=IGNORE)
    else:
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)


def module_name(top: str, rel: str) -> str:
    """``gliaflow.<top>.a.b`` for the file ``<top>/a/b.py`` (a package for ``__init__.py``)."""
    parts = [top, *Path(rel).with_suffix("").parts]
    return "gliaflow." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def missing_build_requirements(pyproject: Path) -> list[str]:
    """[build-system] requirements this environment does not satisfy (the build runs without
    isolation), as ``"setuptools>=77 (have 65.5.0)"``; empty on Python 3.10 (no tomllib)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: `build` reports unmet requirements itself
        return []
    out = []
    for text in tomllib.loads(pyproject.read_text())["build-system"]["requires"]:
        req = Requirement(text)
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            out.append(f"{text} (have {have or 'none'})")
    return out


def tree(root: Path) -> set[str]:
    """Relative paths of the files below ``root`` (without Python caches)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


# what a fresh interpreter reports about the installed package (run with PYTHONPATH=<install>)
PROBE = r"""
import importlib, importlib.metadata, importlib.resources, json, pkgutil, sys
from pathlib import Path

import yaml

install = Path(sys.argv[1])
modules = {}
for top in ("gliaflow.pipeline", "gliaflow.workflows"):
    pkg = importlib.import_module(top)
    modules[top] = pkg.__file__
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        modules[info.name] = importlib.import_module(info.name).__file__

from gliaflow.workflows.services import cluster

profiles = {}
for f in sorted(cluster.PROFILE_DIR.glob("*.yaml")):
    loaded = cluster.load_profile(f.stem)
    profiles[f.stem] = loaded == cluster.ClusterProfile(**yaml.safe_load(f.read_text()))

dist = importlib.metadata.Distribution.at(next(install.glob("gliaflow-*.dist-info")))
scripts = {}
for ep in dist.entry_points:
    if ep.group == "console_scripts":
        obj = ep.load()
        scripts[ep.name] = sys.modules[obj.__module__].__file__ if callable(obj) else None

print(json.dumps({
    "modules": modules,
    "infrastructure": str(importlib.resources.files("gliaflow.infrastructure")),
    "profile_dir": str(cluster.PROFILE_DIR),
    "profiles": profiles,
    "scripts": scripts,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(source copy, wheel, install folder, probe report) for a wheel built from the files the
    Dockerfile copies."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    for rel in dockerfile_sources(REPO / "Dockerfile"):
        copy_in(rel, src)
    missing = missing_build_requirements(src / "pyproject.toml")
    assert not missing, f"the build backend is missing or too old: {missing}; pip install -e '.[test]'"
    dist = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                        str(src)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"wheel build failed (the test extra installs the backend):\n{r.stdout[-3000:]}" \
                              f"\n{r.stderr[-3000:]}"
    (wheel,) = dist.glob("gliaflow-*.whl")
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # only the installed copy on the path: PYTHONPATH=<install>, run from a folder without gliaflow
    env = {**os.environ, "PYTHONPATH": str(target), "MPLBACKEND": "Agg", "NIPYPE_NO_ET": "1"}
    r = subprocess.run([sys.executable, "-c", PROBE, str(target)], capture_output=True, text=True,
                       env=env, cwd=tmp, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    return src, wheel, target, json.loads(r.stdout.splitlines()[-1])


def test_container_recipes_copy_the_same_build_inputs():
    docker = dockerfile_sources(REPO / "Dockerfile")
    assert set(docker) == set(apptainer_sources(REPO / "infrastructure" / "apptainer.def"))
    # what `pip install .` reads: metadata, package discovery, readme, the three folders
    assert {"pyproject.toml", "setup.py", "README.md", *TOP} <= set(docker)


def test_wheel_holds_every_source_and_data_file_and_nothing_else(installed):
    src, wheel, target, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"gliaflow", wheel.name.split("-py3")[0] + ".dist-info"}
    for top in TOP:
        expected = tree(src / top)
        assert tree(target / "gliaflow" / top) == expected, top
        assert {n.split("/", 2)[2] for n in names if n.startswith(f"gliaflow/{top}/")} == expected, top
    assert not (target / "gliaflow" / "__init__.py").exists()  # gliaflow stays a namespace package


def test_every_module_imports_from_the_installed_copy(installed):
    src, _, target, probe = installed
    modules = probe["modules"]
    expected = {module_name(top, rel) for top in ("pipeline", "workflows") for rel in tree(src / top)
                if rel.endswith(".py") and not rel.endswith("__main__.py")}
    assert set(modules) == expected
    outside = {m: f for m, f in modules.items() if not Path(f).is_relative_to(target)}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    assert all(Path(f).is_relative_to(target) for f in probe["scripts"].values())
    assert set(probe["scripts"]) == {"gliaflow"}


def test_code_lookups_resolve_inside_the_installed_package(installed):
    _, _, target, probe = installed
    infra = Path(probe["infrastructure"])
    assert infra == target / "gliaflow" / "infrastructure"
    assert Path(probe["profile_dir"]) == infra / "clusters"
    # every shipped profile is found by name and read from its file (not a built-in default)
    assert probe["profiles"] == {k: True for k in ("address", "local", "lsf", "pbs", "sge", "slurm")}
    # service scripts, and the files they read beside them
    for rel in ("slurm/install.sh", "slurm/start.sh", "slurm/stop.sh", "slurm/slurm.conf.template",
                "sge/install.sh", "sge/start.sh", "sge/stop.sh", "docker-compose.yml", "apptainer.def",
                "prefect/prefect.yaml"):
        assert (infra / rel).is_file(), rel


def test_prefect_deployment_entrypoint_exists(installed):
    """prefect.yaml names its flow by a path relative to a checkout: that file must define the flow,
    and be the module that installs as gliaflow.workflows.services.deployment."""
    src, _, target, _ = installed
    spec = yaml.safe_load((target / "gliaflow" / "infrastructure" / "prefect" / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        assert (src / path).is_file(), dep["entrypoint"]
        assert f"def {func}(" in (src / path).read_text(), dep["entrypoint"]
        top, rest = path.split("/", 1)
        assert (target / "gliaflow" / top / rest).is_file(), dep["entrypoint"]
