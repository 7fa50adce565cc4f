"""Dask worker preload (``--preload gliaflow.workflows.services.worker_setup``).

Toolkit thread counts, the process state a worker sets once, are in :mod:`.threads` (kept apart:
this module imports the task module, which sets them).

Importing Prefect's task engine and gliaflow's task module takes about a second; doing it while
the worker starts, rather than inside its first session task, keeps that second out of the
first session's time (and runs it on all workers at once, while the driver is still starting).
"""
from __future__ import annotations

import prefect.task_engine  # noqa: F401

from gliaflow.workflows import tasks  # noqa: F401


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask calls it with the worker
    """Nothing beyond the imports above."""
