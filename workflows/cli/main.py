"""The ``gliaflow`` command line.

Each subcommand lives in its own module ``workflows/cli/<name>.py`` exposing
``add_parser(subparsers)`` (registers the subcommand and its flags) and ``run(args) -> int``
(the exit code). This file only dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gliaflow.pipeline import __version__
from gliaflow.pipeline.errors import GliaflowError

# subcommand name -> module (in gliaflow.workflows.cli)
COMMANDS = {
    "demo": "demo",
    "simulate": "simulate",
    "validate": "validate",
    "run": "run",
    "submit": "submit",
    "kinetics": "kinetics",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliaflow",
        description="TSPO PET (glial activation) pipeline for BIDS-PET cohorts, from a laptop to a cluster.")
    parser.add_argument("--version", action="version", version=f"gliaflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(f"gliaflow.workflows.cli.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gliaflow.workflows.cli.{modname}":
                continue  # subcommand not available in this build
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no etelemetry network call from nipype
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except GliaflowError as exc:
        print(f"gliaflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gliaflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
