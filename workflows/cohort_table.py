"""The tidy cohort table OUT_DIR/group/regional.tsv.

One row per participant x session x region: ``participant_id``, ``session_id``, ``region``,
one column per metric (whatever the per-session tables hold: ``suvr``, ``vt_logan``, ...),
then the participants.tsv covariates of that participant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from gliaflow.pipeline.io.derivatives import write_tsv
from gliaflow.pipeline.errors import OutputError

__all__ = ["build_regional_table", "ID_COLUMNS"]

ID_COLUMNS = ["participant_id", "session_id", "region"]


def build_regional_table(sessions: Iterable[tuple[Any, str | Path]], out_path: str | Path) -> pd.DataFrame:
    """Stack per-session regional metric tables into the tidy cohort table and write it.

    Parameters
    ----------
    sessions : iterable of (SessionSpec, path)
        Each session with its regional metrics TSV (columns ``region`` + one per metric).
    out_path : path
        Where to write (atomically), normally ``OUT_DIR/group/regional.tsv``.

    Returns
    -------
    pandas.DataFrame
        The table written (sorted by participant, session, region).

    Raises
    ------
    OutputError
        A per-session table is unreadable or has no ``region`` column.
    """
    frames = []
    cov_cols: list[str] = []
    for spec, path in sessions:
        path = Path(path)
        try:
            df = pd.read_csv(path, sep="\t", na_values=["n/a"])
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read the regional metrics table: {exc}", file=path) from exc
        if "region" not in df.columns:
            raise OutputError("regional metrics table has no 'region' column", file=path,
                              field="region")
        df.insert(0, "session_id", spec.session_id)
        df.insert(0, "participant_id", f"sub-{spec.participant}")
        for k, v in (spec.covariates or {}).items():
            if k == "participant_id" or k in df.columns:
                continue
            df[k] = v
            if k not in cov_cols:
                cov_cols.append(k)
        frames.append(df)
    if frames:
        table = pd.concat(frames, ignore_index=True, sort=False)
    else:
        table = pd.DataFrame(columns=ID_COLUMNS)
    metric_cols = [c for c in table.columns if c not in ID_COLUMNS and c not in cov_cols]
    table = table[ID_COLUMNS + metric_cols + cov_cols]
    table = table.sort_values(ID_COLUMNS, kind="stable").reset_index(drop=True)
    write_tsv(table, out_path)
    return table
