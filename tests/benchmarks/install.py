"""Benchmark: install gliaflow as a new user would (new venv, ``pip install .``).

    python tests/benchmarks/install.py [--no-cache]

Prints name<TAB>value<TAB>unit lines: install wall time, venv size, CLI start time.
``--no-cache`` makes pip download every wheel again (a truly fresh machine).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gliaflow-install-bench-"))
    venv = tmp / "venv"
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        cmd = [str(venv / "bin" / "pip"), "install", "--quiet", str(REPO)]
        if args.no_cache:
            cmd.insert(3, "--no-cache-dir")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        emit("install_wall", time.perf_counter() - t0, "s")
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
        emit("venv_size", size / 2**20, "MiB")
        t0 = time.perf_counter()
        subprocess.run([str(venv / "bin" / "gliaflow"), "--version"], check=True, stdout=subprocess.DEVNULL)
        emit("cli_start", time.perf_counter() - t0, "s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
