"""Cohort dashboard and provenance after a run: gathers the ledger, the stage manifests (QC
values, flags, provenance records) and the group results, and hands them to
:mod:`gliaflow.pipeline.report.dashboard`.

This is orchestration glue (it knows where the workflows keep their state); the figures and
HTML are built in ``pipeline/report``.

Provenance file ``OUT_DIR/.gliaflow/provenance.json`` (:data:`PROVENANCE_FILE`): what produced
the derivatives, from the stage manifests (so a cached rerun still knows what ran) and the
group step. ``calls``: the union over sessions and the group step (counts summed, the first
command line kept); ``sessions``: session_id -> that session's records (its command lines);
``group``: the group step's records. ``dataset_description.json`` names the tools of
``calls`` in GeneratedBy and points to this file (``ProvenanceFile``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.provenance import ToolCall, as_calls, merge_calls

from gliaflow.workflows.cache import STATE_DIR

__all__ = ["collect_stage_records", "write_dashboard", "DASHBOARD_QC", "collect_provenance",
           "cohort_provenance", "write_run_provenance", "PROVENANCE_FILE"]

PROVENANCE_FILE = f"{STATE_DIR}/provenance.json"  # relative to OUT_DIR

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
    for sid, stage, data in _manifests(out_dir):
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


def _manifests(out_dir: Path):
    """(session_id, stage, manifest dict) of every readable stage manifest."""
    for manifest in sorted((Path(out_dir) / STATE_DIR / "stages").glob("*/*.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        yield manifest.parent.name, manifest.stem, data


def collect_provenance(out_dir: str | Path) -> dict[str, list[ToolCall]]:
    """session_id -> the provenance records of its finished stages (from the manifests)."""
    calls: dict[str, list[ToolCall]] = {}
    for sid, _, data in _manifests(Path(out_dir)):
        calls.setdefault(sid, []).extend(as_calls(data.get("provenance")))
    return {sid: merge_calls(c) for sid, c in calls.items()}


def _previous_group_calls(out_dir: Path) -> list[ToolCall]:
    try:
        return as_calls(json.loads((out_dir / PROVENANCE_FILE).read_text()).get("group"))
    except (OSError, ValueError, TypeError):
        return []


def cohort_provenance(out_dir: str | Path, group_calls: list | None = None) -> dict[str, Any]:
    """Sessions' records, the group step's and their union (see the module docstring).

    ``group_calls`` None keeps the group records of the previous provenance file (the group
    outputs of an earlier run are still in OUT_DIR).
    """
    out_dir = Path(out_dir)
    sessions = collect_provenance(out_dir)
    group = as_calls(group_calls) if group_calls is not None else _previous_group_calls(out_dir)
    union = merge_calls([c for cs in sessions.values() for c in cs] + group)
    return {"calls": union, "sessions": sessions, "group": merge_calls(group)}


def write_run_provenance(out_dir: str | Path, group_calls: list | None = None) -> list[ToolCall]:
    """Write ``OUT_DIR/.gliaflow/provenance.json``; returns the union of the records."""
    from gliaflow.pipeline.io.derivatives import atomic_write_json

    out_dir = Path(out_dir)
    prov = cohort_provenance(out_dir, group_calls)
    atomic_write_json(out_dir / PROVENANCE_FILE, {
        "calls": [c.model_dump() for c in prov["calls"]],
        "sessions": {sid: [c.model_dump() for c in cs] for sid, cs in prov["sessions"].items()},
        "group": [c.model_dump() for c in prov["group"]],
    })
    return prov["calls"]


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

    group_calls = group_result.get("provenance") if isinstance(group_result, dict) else None
    return write_cohort_dashboard(
        group / "dashboard.html", sessions=sessions, regional=existing("regional.tsv"),
        stats_regional=existing("stats_regional.tsv"),
        stats_correlation=existing("stats_correlation.tsv"), voxelwise=voxelwise,
        stats_settings=config.stats.model_dump(mode="json"), dpi=config.report.dpi,
        threshold=config.report.outlier_z,
        provenance=cohort_provenance(out_dir, group_calls)["calls"],
        config=config.model_dump(mode="json"))
