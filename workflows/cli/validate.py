"""``gliaflow validate BIDS_DIR``: check a BIDS-PET dataset before running anything.

Prints one table row per valid session and one per problem (session, status, file, field,
message), then the problems between participants.tsv and the group-statistics settings (group
column and labels, genotype, covariates, clinical scores; see
:func:`gliaflow.pipeline.stats.checks.check_cohort_settings`). Exit code 0 when every session is
valid and the statistics settings fit participants.tsv, 1 when any session is invalid, none was
found or a statistics setting does not fit, 2 for bad flags or settings (raised as ConfigError
and reported by the dispatcher). Read only: nothing is written into BIDS_DIR.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gliaflow.pipeline.errors import BIDSError
from gliaflow.pipeline.io.bids import discover, read_participants

from gliaflow.workflows.cli.run import build_config, stats_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "validate", help="check a BIDS-PET dataset (frames, units, images, blood, participants)",
        description="Discover and validate every PET session of a BIDS dataset without processing "
                    "it. Exits non-zero when any session is invalid.")
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS-PET dataset (read only)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these participants (with or without 'sub-')")
    p.add_argument("--session-label", nargs="+", metavar="LABEL",
                   help="only these sessions (with or without 'ses-')")
    p.add_argument("--tracer-label", nargs="+", metavar="LABEL",
                   help="only these tracers (the trc entity, or the sidecar's TracerName)")
    p.add_argument("--require-blood", action="store_true",
                   help="plasma-input models will be run: require blood recordings with plasma "
                        "and parent fraction")
    p.add_argument("--allow-static", action="store_true",
                   help="accept 3D (single-frame) PET images (SUV/SUVR only)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON instead of a table")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="YAML/TOML configuration whose statistics settings are checked")
    from gliaflow.pipeline.engines import ENGINE_NAMES

    p.add_argument("--engine", choices=list(ENGINE_NAMES),
                   help="check that this toolkit can run every step here (e.g. fsl: FSLDIR and its "
                        "binaries); the config file's engines are checked too")
    stats_args(p)
    return p


def cohort_problems(args: argparse.Namespace, disc) -> list:
    """The statistics settings (config file < environment < flags) checked against
    participants.tsv for the participants of the sessions found; [] when participants.tsv is
    unreadable (discovery already reports it for every session)."""
    from gliaflow.pipeline.stats.checks import check_cohort_settings

    cfg = build_config(args)
    try:
        participants = read_participants(disc.bids_dir)
    except BIDSError:
        return []
    subjects = {f"sub-{s.participant}" for s in disc.sessions}
    subjects |= {i.session_id.split("_")[0] for i in disc.invalid if i.session_id.startswith("sub-")}
    return check_cohort_settings(participants, cfg.stats, disc.bids_dir / "participants.tsv",
                                 subjects=sorted(subjects))


def run(args: argparse.Namespace) -> int:
    from gliaflow.pipeline.engines import check_engines

    check_engines(build_config(args))  # FSLDIR / a missing binary named before anything else
    disc = discover(args.bids_dir, participant_label=args.participant_label,
                    session_label=args.session_label, tracer_label=args.tracer_label,
                    require_blood=args.require_blood, require_dynamic=not args.allow_static)
    n_bad = len(disc.invalid_sessions)
    problems = cohort_problems(args, disc)
    n_cohort = sum(p.severity == "error" for p in problems)
    if getattr(args, "json", False):
        print(json.dumps({
            "bids_dir": str(disc.bids_dir),
            "valid": [s.session_id for s in disc.sessions],
            "invalid": [i.model_dump() for i in disc.invalid],
            "statistics": [p.as_record() for p in problems],
        }, indent=2))
    else:
        _print_table(disc)
        _print_cohort(disc, problems)
    if not disc.sessions and not disc.invalid:
        print(f"gliaflow validate: no PET session found in {disc.bids_dir}", file=sys.stderr)
        return 1
    return 1 if (n_bad or n_cohort) else 0


def _print_table(disc) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"BIDS-PET validation: {disc.bids_dir}", show_lines=False)
    for col in ("session", "status", "file", "field", "message"):
        table.add_column(col, overflow="fold")
    rows = []
    for s in disc.sessions:
        msg = f"{s.n_frames} frames, {len(s.blood)} blood recording(s)"
        rows.append((s.session_id, Text("ok", style="green"), _rel(disc, s.pet), "", msg))
    for i in disc.invalid:
        rows.append((i.session_id, Text("error", style="red"), i.file or "", i.field or "", i.message))
    for r in sorted(rows, key=lambda r: r[0]):  # stable: a session's issues stay in order
        table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in r))
    console.print(table)
    n_bad = len(disc.invalid_sessions)
    colour = "red" if n_bad else "green"
    console.print(f"[{colour}]{len(disc.sessions)} valid, {n_bad} invalid session(s)[/{colour}]")


def _print_cohort(disc, problems: list) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not problems:
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"participants.tsv and the group-statistics settings: "
                        f"{disc.bids_dir / 'participants.tsv'}")
    for col in ("status", "column", "setting", "message"):
        table.add_column(col, overflow="fold")
    style = {"error": "red", "warning": "yellow", "note": "blue"}
    for p in problems:
        table.add_row(Text(p.severity, style=style[p.severity]), Text(p.column), Text(p.setting),
                      Text(p.message))
    console.print(table)
    n = sum(p.severity == "error" for p in problems)
    if n:
        console.print(f"[red]{n} statistics setting problem(s): the group level would fail[/red]")


def _rel(disc, path) -> str:
    try:
        return str(path.relative_to(disc.bids_dir))
    except ValueError:
        return str(path)
