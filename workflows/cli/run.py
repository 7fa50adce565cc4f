"""``gliaflow run BIDS_DIR OUT_DIR participant|group``: the BIDS-App entry point.

participant: process the selected sessions (Prefect flow on Dask, resumable);
group: build OUT_DIR/group/regional.tsv from finished sessions and run the group step;
all: both, in one run.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from gliaflow.pipeline.errors import ConfigError

__all__ = ["add_parser", "run", "load_stages", "load_group_step", "common_run_args", "build_config"]


def common_run_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``run`` and ``submit``."""
    p.add_argument("bids_dir", type=Path, help="BIDS-PET dataset (read only)")
    p.add_argument("out_dir", type=Path, help="output (BIDS derivatives) folder")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="subjects to process (without or with 'sub-')")
    p.add_argument("--session-label", nargs="+", metavar="LABEL",
                   help="sessions to process (without or with 'ses-')")
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML/TOML configuration")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="scratch folder (default OUT_DIR/.gliaflow/work)")
    p.add_argument("--stages", default=None, help=argparse.SUPPRESS)  # module:attr (tests, plugins)
    p.add_argument("--group-step", default=None, help=argparse.SUPPRESS)  # module:attr


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="run the pipeline on a BIDS-PET cohort (participant or group level)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_run_args(p)
    p.add_argument("analysis_level", choices=["participant", "group", "all"],
                   help="participant: sessions; group: cohort table and statistics; all: both")
    p.add_argument("--cluster", metavar="PROFILE",
                   help="cluster profile name (local, address, slurm, pbs, sge, lsf) or YAML path")
    p.add_argument("--nprocs", type=int, metavar="N", help="Dask workers (or batch jobs)")
    p.add_argument("--mem", type=float, metavar="GB", help="memory per worker (GiB)")
    p.add_argument("--dry-run", action="store_true",
                   help="discover and plan only: print what would run, write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _import_attr(ref: str, what: str):
    mod, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(mod)
        return getattr(obj, attr) if attr else obj
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {what} {ref!r}: {exc}", field=what) from exc


def load_stages(ref: str | None = None) -> list:
    """The session stages: ``module:attr`` (or GLIAFLOW_STAGES), default SESSION_STAGES."""
    ref = ref or os.environ.get("GLIAFLOW_STAGES")
    if ref:
        stages = list(_import_attr(ref, "stages"))
    else:
        from gliaflow.pipeline.session import SESSION_STAGES

        stages = list(SESSION_STAGES)
    if not stages:
        raise ConfigError("no processing stages are registered (gliaflow.pipeline.session."
                          "SESSION_STAGES is empty)", field="stages")
    return stages


def load_group_step(ref: str | None = None):
    """The group step callable ``(table_path, config, out_dir)``, or None."""
    ref = ref or os.environ.get("GLIAFLOW_GROUP_STEP")
    if ref:
        return _import_attr(ref, "group step")
    try:
        from gliaflow.pipeline import session

        return getattr(session, "GROUP_STEP", None)
    except ImportError:
        return None


def build_config(args) -> "PipelineConfig":  # noqa: F821 - imported below
    from gliaflow.pipeline.config import load_config

    over = {}
    for flag, key in (("cluster", "execution.cluster"), ("nprocs", "execution.nprocs"),
                      ("mem", "execution.mem_gb"), ("work_dir", "execution.work_dir")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = str(v) if isinstance(v, Path) else v
    return load_config(args.config, over)


def run(args) -> int:
    from gliaflow.pipeline.io.bids import discover

    from gliaflow.workflows.flows import plan_sessions, run_cohort

    cfg = build_config(args)
    stages = load_stages(args.stages)
    needs_blood = any(m in cfg.kinetics.models for m in ("1tcm", "2tcm", "logan", "ma1"))
    t0 = time.perf_counter()
    disc = discover(args.bids_dir, participant_label=args.participant_label,
                    session_label=args.session_label, require_blood=needs_blood)
    t_disc = time.perf_counter() - t0
    out_dir = args.out_dir.absolute()
    bids = args.bids_dir.absolute()
    if out_dir == bids or bids in out_dir.parents:
        raise ConfigError("OUT_DIR must not be inside the BIDS dataset", file=out_dir)
    if args.dry_run:
        work = cfg.execution.work_dir or out_dir / ".gliaflow" / "work"
        plans = plan_sessions(disc.sessions, stages, cfg, out_dir,
                              work if Path(work).exists() else None, save_hashes=False)
        n_run = sum(len(p.to_run(stages)) for p in plans)
        n_cached = sum(len(p.cached) for p in plans)
        print(f"gliaflow run (dry run): {len(plans)} sessions valid, {len(disc.invalid)} invalid; "
              f"{n_run} session-stages to run, {n_cached} cached "
              f"(discovery {t_disc:.2f} s, plan {time.perf_counter() - t0 - t_disc:.2f} s)")
        for p in plans:
            todo = p.to_run(stages)
            print(f"  {p.session_id}: run {','.join(todo) or '-'}; cached {','.join(p.cached) or '-'}")
        for i in disc.invalid:
            print(f"  {i.session_id}: SKIP {i.file or ''} {i.field or ''} {i.message}")
        return 0
    if not disc.sessions and args.analysis_level != "group":
        print("gliaflow run: no valid session to process", file=sys.stderr)
        for i in disc.invalid:
            print(f"  {i.session_id}: {i.file or ''}: {i.message}", file=sys.stderr)
    outcome = run_cohort(disc.sessions, stages=stages, config=cfg, out_dir=out_dir,
                         work_dir=cfg.execution.work_dir, level=args.analysis_level,
                         invalid=disc.invalid, group_step=load_group_step(args.group_step),
                         show_progress=not args.quiet)
    tm = outcome.timings
    print(f"gliaflow run: {len(outcome.done)} done, {len(outcome.failed)} failed, "
          f"{len(disc.invalid)} skipped in {tm.get('total_s', 0):.1f} s"
          + (f" (Prefect server start {tm['prefect_start_s']:.1f} s)" if "prefect_start_s" in tm else "")
          + (f"; ledger {outcome.ledger_path}" if outcome.ledger_path else "")
          + (f"; table {outcome.table_path}" if outcome.table_path else "")
          + (f"; dashboard {outcome.dashboard_path}" if outcome.dashboard_path else "")
          + (f"; library warnings in {outcome.log_path}" if outcome.log_path else ""))
    if outcome.group_error:
        print(f"gliaflow run: group step failed: {outcome.group_error}", file=sys.stderr)
    return 1 if (outcome.failed or outcome.group_error) else 0
