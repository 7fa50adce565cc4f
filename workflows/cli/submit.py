"""``gliaflow submit BIDS_DIR OUT_DIR --scheduler slurm``: array-job mode.

Writes one batch script per session (each runs ``gliaflow run ... participant`` for that
session) and a group job depending on all of them, submits them with sbatch and prints the
job ids. ``--no-submit`` only writes the scripts. The analysis and statistics flags are passed
to every job; they and participants.tsv are checked against each other before anything is
written.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from gliaflow.pipeline.errors import ConfigError

from gliaflow.workflows.cli.run import build_config, check_settings, common_run_args, setting_argv

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("submit", help="array-job mode: one batch job per session + a group job",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    common_run_args(p)
    p.add_argument("--scheduler", choices=["slurm"], default="slurm")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--cpus", type=int, default=1, help="CPUs per session job")
    p.add_argument("--mem", type=float, default=4.0, metavar="GB", help="memory per session job (GiB)")
    p.add_argument("--walltime", default="04:00:00", help="time limit per job (HH:MM:SS)")
    p.add_argument("--prologue", action="append", default=[], metavar="LINE",
                   help="shell line run before the command (repeatable), e.g. 'module load x'")
    p.add_argument("--jobs-dir", type=Path, help="where scripts and job logs go")
    p.add_argument("--no-submit", action="store_true", help="only write the scripts")
    return p


def run(args) -> int:
    from gliaflow.pipeline.io.bids import discover

    from gliaflow.workflows.submit import JobSettings, submit_array_jobs, write_array_jobs

    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError("config file not found", file=args.config)
    cfg = build_config(args)  # bad settings or flags fail here, not in every job
    disc = discover(args.bids_dir, participant_label=args.participant_label,
                    session_label=args.session_label)
    for i in disc.invalid:
        print(f"skip {i.session_id}: {i.file or ''} {i.message}")
    # the group job runs the statistics (unless a plugin group step replaces them)
    check_settings(cfg, args.bids_dir, disc.sessions,
                   strict_group=not (args.group_step or os.environ.get("GLIAFLOW_GROUP_STEP")))
    extra = setting_argv(args)
    if args.stages:
        extra += ["--stages", args.stages]
    if args.group_step:
        extra += ["--group-step", args.group_step]
    job = JobSettings(partition=args.partition, account=args.account, cpus=args.cpus,
                      mem_gb=args.mem, walltime=args.walltime, prologue=args.prologue)
    plan = write_array_jobs(args.bids_dir, args.out_dir, disc.sessions, jobs_dir=args.jobs_dir,
                            work_dir=args.work_dir, config=args.config, job=job, extra_args=extra)
    print(f"wrote {len(plan.session_scripts)} session jobs and a group job in {plan.jobs_dir}")
    if args.no_submit:
        return 0
    plan = submit_array_jobs(plan)
    for name, jid in plan.job_ids.items():
        print(f"{name}\t{jid}")
    print(f"group\t{plan.group_job_id}")
    return 0
