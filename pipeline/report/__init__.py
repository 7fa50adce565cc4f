"""QC reports: a self-contained HTML report per session and a cohort dashboard.

- :func:`~gliaflow.pipeline.report.session_report.write_session_report`
- :func:`~gliaflow.pipeline.report.dashboard.write_cohort_dashboard` (and
  :func:`~gliaflow.pipeline.report.dashboard.sessions_table` to build its session rows from the
  ledger)

Imported lazily: matplotlib/nilearn load only when a report is written.
"""
from __future__ import annotations

from typing import Any

__all__ = ["write_session_report", "write_cohort_dashboard", "sessions_table"]


def __getattr__(name: str) -> Any:
    if name == "write_session_report":
        from gliaflow.pipeline.report.session_report import write_session_report

        return write_session_report
    if name in ("write_cohort_dashboard", "sessions_table"):
        from gliaflow.pipeline.report import dashboard

        return getattr(dashboard, name)
    raise AttributeError(name)
