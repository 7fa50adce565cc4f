"""Cohort dashboard after a run: gathers the ledger, the stage manifests (QC values and flags)
and the group results, and hands them to :mod:`gliaflow.pipeline.report.dashboard`.

This is orchestration glue (it knows where the workflows keep their state); the figures and
HTML are built in ``pipeline/report``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gliaflow.pipeline.config import PipelineConfig

from gliaflow.workflows.cache import STATE_DIR

__all__ = ["collect_stage_records", "write_dashboard", "DASHBOARD_QC"]

# Session-level QC values scored on the dashboard (robust z across sessions), per stage. Per-region
# values (peak times, volumes of each region) stay in the session reports: scored one by one
# across a cohort they raise chance outliers in every session.
DASHBOARD_QC: dict[str, tuple[str, ...]] = {
    "anat": ("brain_volume_mm3", "gm_volume_mm3", "wm_volume_mm3", "csf_volume_mm3"),
    "pet_motion": ("mean_fd_mm", "max_fd_mm", "max_displacement_mm"),
    "coreg": ("similarity", "brain_coverage"),
    "kinetics": ("blood_delay_s",),
}


def collect_stage_records(out_dir: Path) -> tuple[dict[str, dict], dict[str, list[str]], dict[str, Path]]:
    """QC values, flags and report paths per session from ``OUT_DIR/.gliaflow/stages``.

    Returns
    -------
    qc : dict
        session_id -> {stage: the session-level QC values of :data:`DASHBOARD_QC`}.
    flags : dict
        session_id -> QC flags raised by any stage.
    reports : dict
        session_id -> session report HTML.
    """
    qc: dict[str, dict] = {}
    flags: dict[str, list[str]] = {}
    reports: dict[str, Path] = {}
    root = out_dir / STATE_DIR / "stages"
    for manifest in sorted(root.glob("*/*.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        sid, stage = manifest.parent.name, manifest.stem
        stage_qc = data.get("qc") or {}
        picked = {k: stage_qc[k] for k in DASHBOARD_QC.get(stage, ()) if k in stage_qc}
        if stage == "kinetics" and isinstance(stage_qc.get("fits_not_converged"), dict):
            picked["fits_not_converged"] = sum(stage_qc["fits_not_converged"].values())
        if picked:
            qc.setdefault(sid, {})[stage] = picked
        flags.setdefault(sid, []).extend(data.get("flags") or [])
        html = (data.get("outputs") or {}).get("report_html")
        if html:
            reports[sid] = Path(html)
    return qc, flags, reports


def write_dashboard(out_dir: str | Path, config: PipelineConfig, group_result: Any = None) -> Path | None:
    """Write ``OUT_DIR/group/dashboard.html`` from the ledger and what the stages recorded.

    Returns the dashboard path, or None when there is no ledger yet or reports are disabled.
    """
    from gliaflow.pipeline.report.dashboard import sessions_table, write_cohort_dashboard

    out_dir = Path(out_dir)
    ledger = out_dir / "ledger.tsv"
    if not config.report.enabled or not ledger.is_file():
        return None
    qc, flags, reports = collect_stage_records(out_dir)
    sessions = sessions_table(ledger, qc=qc, flags=flags, reports=reports)
    group = out_dir / "group"
    paths = (group_result or {}).get("paths", {}) if isinstance(group_result, dict) else {}
    voxelwise = {k: v for k, v in paths.items() if ":" in str(k)} or None

    def existing(name: str) -> Path | None:
        p = group / name
        return p if p.is_file() else None

    return write_cohort_dashboard(
        group / "dashboard.html", sessions=sessions, regional=existing("regional.tsv"),
        stats_regional=existing("stats_regional.tsv"),
        stats_correlation=existing("stats_correlation.tsv"), voxelwise=voxelwise,
        stats_settings=config.stats.model_dump(mode="json"), dpi=config.report.dpi,
        threshold=config.report.outlier_z)
