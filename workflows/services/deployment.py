"""Entry point for Prefect deployments (infrastructure/prefect/prefect.yaml).

A deployment's flow run happens in a work-pool process that already talks to a shared Prefect
server (``PREFECT_API_URL``), so :func:`gliaflow_cohort` simply runs ``gliaflow run`` there, in
the same process: ``gliaflow run`` sees ``PREFECT_API_URL`` and uses that server (no private
one), and its cohort flow run (``gliaflow-cohort``) becomes a subflow of the deployment's run.

Prefect loads this file by path (``workflows/services/deployment.py:gliaflow_cohort``), not
as ``gliaflow.workflows.services.deployment``, so it must use absolute imports only.
"""
from __future__ import annotations

import contextlib
import io
import sys
import threading
from typing import Literal

from prefect import flow, get_run_logger

__all__ = ["gliaflow_cohort"]


class _LogLines(io.TextIOBase):
    """A text stream that sends each complete line to ``log`` and keeps the last lines.

    Stands in for stdout/stderr while ``gliaflow run`` runs, so its messages reach the flow
    run's log (the Prefect UI) and the failure message. A line written while ``log`` itself is
    writing (a console handler on this stream) goes to ``stream`` instead.
    """

    def __init__(self, log, stream, keep: int = 50):
        self.log, self.stream, self.keep = log, stream, keep
        self.lines: list[str] = []
        self._part = ""
        self._busy = threading.local()

    def write(self, s: str) -> int:
        if getattr(self._busy, "on", False):
            return self.stream.write(s)
        *done, self._part = (self._part + s).split("\n")
        for line in done:
            self._emit(line)
        return len(s)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self.lines = (self.lines + [line.rstrip()])[-self.keep:]
        self._busy.on = True
        try:
            self.log(line.rstrip())
        finally:
            self._busy.on = False

    def flush(self) -> None:
        if self._part:
            part, self._part = self._part, ""
            self._emit(part)


def _failure(rc: int, err_lines: list[str], out_dir: str) -> str:
    """Why ``gliaflow run`` failed: its error lines, then the failed sessions of the ledger."""
    from pathlib import Path

    from gliaflow.workflows.ledger import read_ledger

    parts = [x.strip().removeprefix("gliaflow run: ") for x in err_lines[-5:]]
    failed = [r for r in read_ledger(out_dir).values() if r.status == "failed"]
    if failed:
        parts.append(f"{len(failed)} session(s) failed: " + "; ".join(
            f"{r.session_id} ({r.error_kind}: {r.error})" for r in failed[:5])
            + (" ..." if len(failed) > 5 else ""))
    ledger = Path(out_dir) / "ledger.tsv"
    if ledger.is_file():
        parts.append(f"ledger {ledger}")
    return f"gliaflow run exited with {rc}: " + ("; ".join(parts) or "no error message")


@flow(name="gliaflow-deployment")
def gliaflow_cohort(bids_dir: str, out_dir: str,
                    analysis_level: Literal["participant", "group", "all"] = "all",
                    cluster: str = "local", config: str | None = None, nprocs: int | None = None,
                    stages: str | None = None, group_step: str | None = None) -> int:
    """Run ``gliaflow run BIDS_DIR OUT_DIR LEVEL --cluster CLUSTER [options]`` in this flow run.

    Each parameter maps 1:1 onto a ``gliaflow run`` argument; ``None`` leaves the option out.

    Parameters
    ----------
    bids_dir : str
        BIDS-PET dataset, as seen from the worker (``BIDS_DIR``).
    out_dir : str
        Derivatives folder, as seen from the worker (``OUT_DIR``).
    analysis_level : {"participant", "group", "all"}
        ``LEVEL``.
    cluster : str
        ``--cluster``: profile name (local, address, slurm, pbs, sge, lsf) or YAML path.
    config : str, optional
        ``--config``: pipeline YAML/TOML configuration file.
    nprocs : int, optional
        ``--nprocs``: Dask workers (or batch jobs).
    stages : str, optional
        ``--stages module:ATTR``: replacement session stages (plugins, tests); the module must
        be importable by the flow run and the Dask workers (PYTHONPATH).
    group_step : str, optional
        ``--group-step module:ATTR``: replacement group step.

    Returns
    -------
    int
        0. A non-zero exit of ``gliaflow run`` raises RuntimeError, so the flow run ends FAILED
        with a message naming the problem (its error lines and the failed sessions).
    """
    from gliaflow.workflows.cli.main import main

    argv = ["run", bids_dir, out_dir, analysis_level, "--cluster", cluster, "--quiet"]
    for flag, value in (("--config", config), ("--nprocs", nprocs), ("--stages", stages),
                        ("--group-step", group_step)):
        if value is not None and value != "":
            argv += [flag, str(value)]
    log = get_run_logger()
    log.info("gliaflow %s", " ".join(argv))
    out, err = _LogLines(log.info, sys.stdout), _LogLines(log.warning, sys.stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse rejected an argument
            rc = exc.code if isinstance(exc.code, int) else 2
        finally:
            out.flush()
            err.flush()
    if rc != 0:
        raise RuntimeError(_failure(rc, err.lines, out_dir))
    return rc
