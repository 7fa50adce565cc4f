"""Terminal progress for cohort runs (rich): sessions done/failed, running stages, summary."""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["CohortProgress", "summary_table"]


class CohortProgress:
    """A progress bar over sessions plus a line naming the stages running now.

    Parameters
    ----------
    total : int
        Sessions to process.
    enabled : bool
        False: print nothing (tests, benchmarks).
    """

    def __init__(self, total: int, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.running: dict[str, str] = {}
        self.done = self.failed = 0
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]sessions"), BarColumn(), MofNCompleteColumn(),
                TextColumn("done {task.fields[done]} failed {task.fields[failed]}"),
                TimeElapsedColumn(), TextColumn("{task.fields[stages]}"),
                console=self.console, transient=False, disable=not self.console.is_terminal)
            self._task = self._progress.add_task("sessions", total=total, done=0, failed=0, stages="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def print(self, *args: Any) -> None:
        """Print a line above the bar (or plainly when not a terminal)."""
        if self.enabled:
            self.console.print(*args, highlight=False)

    def stage_started(self, session_id: str, stage: str) -> None:
        self.running[session_id] = stage
        self._refresh()

    def session_finished(self, session_id: str, ok: bool) -> None:
        self.running.pop(session_id, None)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._progress is not None:
            self._progress.advance(self._task)
        self._refresh()
        if self.enabled and not self.console.is_terminal:
            print(f"gliaflow: {session_id} {'done' if ok else 'FAILED'} "
                  f"({self.done} done, {self.failed} failed)", file=sys.stderr)

    def _refresh(self) -> None:
        if self._progress is None:
            return
        items = list(self.running.items())
        text = ", ".join(f"{s}:{st}" for s, st in items[:3]) + (" ..." if len(items) > 3 else "")
        self._progress.update(self._task, done=self.done, failed=self.failed, stages=text)


def summary_table(rows: list[Any]) -> Table:
    """A rich table of ledger rows (session, status, computed/cached stages, time, error)."""
    t = Table(title="gliaflow run summary")
    for col in ("session", "status", "computed", "cached", "seconds", "error"):
        t.add_column(col)
    for r in rows:
        style = {"done": "green", "failed": "red", "skipped": "yellow"}.get(r.status, "")
        t.add_row(r.session_id, f"[{style}]{r.status}[/{style}]" if style else r.status,
                  r.stages_run, r.stages_cached, f"{r.seconds:.1f}", (r.error or "")[:120])
    return t
