"""Dask worker preload (``--preload gliaflow.workflows.services.worker_setup``) and the process
state a worker sets once (toolkit thread counts).

Importing Prefect's task engine and gliaflow's task module takes about a second; doing it while
the worker starts, rather than inside its first session task, keeps that second out of the
first session's time (and runs it on all workers at once, while the driver is still starting).
"""
from __future__ import annotations

import os

import prefect.task_engine  # noqa: F401

from gliaflow.workflows import tasks  # noqa: F401


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask calls it with the worker
    """Nothing beyond the imports above."""


THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def set_process_threads(n: int) -> None:
    """Thread counts of ITK/OpenMP/BLAS for this process (environment variables).

    Process state, set by the workflow layer, never by science code: ITK reads its variable once,
    at its first use in a process, so this takes effect only before the first stage runs (workers
    get the same values through the Nanny environment at start; see ``services.cluster``).
    """
    for var in THREAD_VARIABLES:
        os.environ[var] = str(max(1, int(n)))
