"""``gliaflow demo``: simulate a small phantom cohort and process it end to end on this machine.

Writes OUT/bids (the phantom BIDS-PET dataset with its truth), OUT/derivatives (per-session
derivatives, reports, the cohort ledger, OUT/derivatives/group with the tidy table, group
statistics and the cohort dashboard). Rerunning resumes: finished stages are not recomputed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "run", "truth_check"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="simulate a small phantom cohort and process it end to end",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gliaflow-demo"),
                   help="demo folder (default ./gliaflow-demo)")
    p.add_argument("--subjects", type=int, default=6, metavar="N",
                   help="phantom subjects, patients and controls alternating (default 6)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "default", "realistic"],
                   help="phantom image size (default small: 3 mm T1w, 4 mm PET, 37 frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nprocs", type=int, default=None, metavar="N", help="Dask workers")
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML/TOML configuration")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    from gliaflow.pipeline.engines import ENGINE_NAMES

    p.add_argument("--engine", choices=list(ENGINE_NAMES), default=None,
                   help="toolkit of every image step (default ants, embedded; fsl needs FSLDIR)")
    return p


def truth_check(bids_dir: Path, table: Path) -> list[tuple[str, float, int]]:
    """Median absolute % error of regional metrics against the phantom truth (regions > 5 mL).

    Returns ``(metric, median_abs_pct_error, n_region_values)`` rows for the metrics the truth
    has: ``vt_2tcm``/``vt_logan``/``vt_ma1`` against the region's true VT and ``suvr`` against the
    true SUVR (whole-brain reference).
    """
    import pandas as pd

    truth_path = bids_dir / "derivatives" / "phantom-truth" / "regional_truth.tsv"
    if not truth_path.is_file() or not table.is_file():
        return []
    truth = pd.read_csv(truth_path, sep="\t", na_values="n/a")
    truth = truth[(truth["class"] == "gm") & (truth["volume_ml"] > 5)]
    got = pd.read_csv(table, sep="\t", na_values="n/a")
    m = got.merge(truth, left_on=["participant_id", "region"], right_on=["participant_id", "name"])
    rows = []
    for metric, ref in (("vt_2tcm", "VT_region"), ("vt_logan", "VT_region"), ("vt_ma1", "VT_region"),
                        ("suvr", "SUVR_wb")):
        if metric in m and ref in m:
            err = (100 * (m[metric] / m[ref] - 1)).abs().dropna()
            if len(err):
                rows.append((metric, float(err.median()), int(len(err))))
    return rows


def run(args) -> int:
    from rich.console import Console

    from gliaflow.workflows.runlog import run_log, run_log_path

    console = Console(stderr=True, quiet=args.quiet)
    out = args.out.absolute()
    bids, deriv = out / "bids", out / "derivatives"
    with run_log(run_log_path(deriv)) as log_file:  # library warnings: the log, not the terminal
        return _demo(args, console, bids, deriv, log_file)


def _demo(args, console, bids: Path, deriv: Path, log_file: Path) -> int:
    """The demo's three steps (see :func:`run`); warnings are routed to ``log_file``."""
    from rich.table import Table

    from gliaflow.pipeline.config import engine_overrides, load_config
    from gliaflow.pipeline.engines import check_engines
    from gliaflow.pipeline.io.bids import discover
    from gliaflow.pipeline.session import GROUP_STEP, SESSION_STAGES
    from gliaflow.pipeline.simulate.cohort import simulate_cohort
    from gliaflow.workflows.flows import run_cohort

    overrides = {"execution.nprocs": args.nprocs}
    if args.engine is not None:
        overrides.update(engine_overrides(args.engine))
    if args.config is None:  # demo-sized group statistics unless the user configured them
        overrides["stats.n_permutations"] = 500
        overrides["stats.tfce"] = False  # max-T only: TFCE costs ~0.8 CPU-s per permutation at 2 mm
    cfg = load_config(args.config, overrides=overrides)
    check_engines(cfg)
    t0 = time.perf_counter()
    console.rule("gliaflow demo")
    console.print("This demo runs every stage on a simulated [11C]PBR28 cohort with known truth: "
                  "frame realignment, PET-to-T1w registration, T1w segmentation and template "
                  "normalisation, atlas regions in PET space, regional TACs with GTM partial-volume "
                  "correction, arterial input, kinetic models (SUV, SUVR, 1TCM, 2TCM, Logan, MA1), "
                  "parametric maps, QC reports, group statistics and the cohort dashboard.")
    if (bids / "dataset_description.json").is_file():
        console.print(f"1/3 phantom cohort: reusing {bids}")
    else:
        console.print(f"1/3 simulating {args.subjects} subjects ({args.size}) into {bids}")

        def progress(done: int, total: int, sub: str) -> None:
            console.print(f"    [{done}/{total}] {sub} ({time.perf_counter() - t0:.0f} s)")

        simulate_cohort(bids, n_subjects=args.subjects, seed=args.seed, size=args.size,
                        progress=progress)
    t_sim = time.perf_counter() - t0

    disc = discover(bids, require_blood=True)
    console.print(f"2/3 processing {len(disc.sessions)} sessions into {deriv} "
                  f"({len(disc.invalid)} invalid)")
    outcome = run_cohort(disc.sessions, stages=SESSION_STAGES, config=cfg, out_dir=deriv,
                         level="all", invalid=disc.invalid, group_step=GROUP_STEP,
                         show_progress=not args.quiet)
    console.print("3/3 summary")
    table = Table(title="Accuracy against the phantom truth (regions > 5 mL, no PVC)")
    table.add_column("metric")
    table.add_column("median |error| %", justify="right")
    table.add_column("n", justify="right")
    checks = truth_check(bids, outcome.table_path) if outcome.table_path else []
    for metric, err, n in checks:
        table.add_row(metric, f"{err:.1f}", str(n))
    if checks:
        console.print(table)
    dashboard = outcome.dashboard_path
    tm = outcome.timings
    console.print(f"Sessions: {len(outcome.done)} done, {len(outcome.failed)} failed, "
                  f"{len(disc.invalid)} skipped; total {time.perf_counter() - t0:.0f} s "
                  f"(simulation {t_sim:.0f} s, group statistics {tm.get('group_s', 0):.0f} s, "
                  f"dashboard {tm.get('dashboard_s', 0):.0f} s).")
    console.print(f"Outputs:   {deriv}")
    console.print(f"Ledger:    {outcome.ledger_path}")
    if outcome.table_path:
        console.print(f"Table:     {outcome.table_path}")
    if outcome.group_error:
        console.print(f"Group step: failed: {outcome.group_error}")
    if dashboard is not None:
        console.print(f"Dashboard: {dashboard}")
    for p in sorted(deriv.glob("sub-*.html"))[:3]:
        console.print(f"Report:    {p}")
    if log_file.is_file():
        console.print(f"Log:       {log_file} (library warnings)")
    return 1 if outcome.failed else 0
