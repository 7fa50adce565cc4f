"""The cohort ledger: OUT_DIR/ledger.tsv (and ledger.json), one row per session.

Status is ``done``, ``failed`` (with the error kind and message) or ``skipped`` (invalid
input, with the reason). Concurrent runs writing the same OUT_DIR (array jobs) merge their rows
under a file lock; every write is atomic.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from gliaflow.pipeline.io.derivatives import atomic_write_json, write_tsv

from gliaflow.workflows.cache import STATE_DIR, FileLock

__all__ = ["LedgerRow", "Ledger", "read_ledger"]

Status = Literal["done", "failed", "skipped", "running"]


class LedgerRow(BaseModel):
    """One session's outcome."""

    session_id: str
    participant_id: str = ""
    status: Status
    error_kind: str = ""
    error: str = ""
    stages_run: str = ""  # comma-separated stages computed in this run
    stages_cached: str = ""  # comma-separated stages reused from the cache
    seconds: float = 0.0  # time spent in the stages computed in this run (s, no queueing)
    attempts: int = 0  # stage executions (crashed ones included)
    updated: str = ""


def read_ledger(out_dir: str | Path) -> dict[str, LedgerRow]:
    """The ledger rows by session_id (empty when there is no ledger yet)."""
    p = Path(out_dir) / "ledger.json"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return {r["session_id"]: LedgerRow(**r) for r in data.get("sessions", [])}


class Ledger:
    """Collects rows during a run and merges them into OUT_DIR/ledger.{tsv,json}.

    Parameters
    ----------
    out_dir : path
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.rows: dict[str, LedgerRow] = {}

    def record(self, session_id: str, status: Status, participant_id: str = "", **fields: Any) -> LedgerRow:
        """Add or replace the row of ``session_id`` (kept in memory until :meth:`write`)."""
        if "error" in fields:  # one line per session in the TSV
            fields["error"] = " | ".join(x.strip() for x in str(fields["error"]).splitlines() if x.strip())
        row = LedgerRow(session_id=session_id, participant_id=participant_id, status=status,
                        updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        **fields)
        self.rows[session_id] = row
        return row

    def write(self) -> Path:
        """Merge this run's rows with the ledger on disk (locked) and write both files."""
        with FileLock(self.out_dir / STATE_DIR / "ledger.lock"):
            merged = read_ledger(self.out_dir)
            merged.update(self.rows)
            rows = [merged[k] for k in sorted(merged)]
            atomic_write_json(self.out_dir / "ledger.json",
                              {"sessions": [r.model_dump() for r in rows]})
            df = pd.DataFrame([r.model_dump() for r in rows], columns=list(LedgerRow.model_fields))
            write_tsv(df, self.out_dir / "ledger.tsv")
        return self.out_dir / "ledger.tsv"

    def counts(self) -> dict[str, int]:
        """Number of sessions per status in this run."""
        out: dict[str, int] = {}
        for r in self.rows.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out
