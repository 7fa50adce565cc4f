"""Toolkit thread counts of a process (ITK, OpenMP, BLAS), set through environment variables.

Process state, set by the workflow layer, never by science code. ITK reads its variable once, at
its first use in a process, so the counts take effect only when set before the first stage runs;
Dask workers get them through their environment at start (see ``services.cluster``).
"""
from __future__ import annotations

import os

__all__ = ["THREAD_VARIABLES", "thread_environment", "set_process_threads"]

THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def thread_environment(n: int) -> dict[str, str]:
    """The environment variables giving ITK/OpenMP/BLAS ``n`` threads (at least 1)."""
    return {var: str(max(1, int(n))) for var in THREAD_VARIABLES}


def set_process_threads(n: int) -> None:
    """Give ITK/OpenMP/BLAS ``n`` threads in this process (before its first stage)."""
    os.environ.update(thread_environment(n))
