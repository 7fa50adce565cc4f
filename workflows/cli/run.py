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

__all__ = ["add_parser", "run", "load_stages", "load_group_step", "common_run_args", "stats_args",
           "analysis_args", "setting_overrides", "setting_argv", "build_config", "check_settings"]

#: parametric maps that belong to a model of another name (``--models`` keeps maps of its models)
_MAP_MODEL = {"basis1tcm": "1tcm"}


def _literal_choices(model, field: str) -> list[str]:
    """The values a ``Literal`` (or ``list[Literal]``) setting accepts."""
    from typing import Literal, get_args, get_origin

    ann = model.model_fields[field].annotation
    while get_origin(ann) is not Literal:
        ann = get_args(ann)[0]
    return list(get_args(ann))


def stats_args(p: argparse.ArgumentParser) -> None:
    """The group-statistics flags (shared by ``run``, ``submit`` and ``validate``)."""
    g = p.add_argument_group("group statistics (override the config file and GLIAFLOW_STATS__*)")
    g.add_argument("--group-column", metavar="COLUMN",
                   help="participants.tsv column holding the groups (stats.group_column)")
    g.add_argument("--group-labels", nargs=2, metavar=("PATIENT", "CONTROL"),
                   help="the two levels of the group column compared, patient first "
                        "(stats.patient_label, stats.control_label), e.g. --group-labels FM HC")


def analysis_args(p: argparse.ArgumentParser) -> None:
    """The processing flags of ``run`` and ``submit``; each overrides one setting."""
    from gliaflow.pipeline.config import KineticsSettings, TACSettings
    from gliaflow.pipeline.engines import ENGINE_NAMES

    g = p.add_argument_group("analysis (override the config file and GLIAFLOW_* variables)")
    g.add_argument("--atlas", metavar="NAME_OR_IMG",
                   help="embedded atlas (harvard-oxford, aal, desikan-killiany; atlas.name) or a "
                        "label image in MNI152 template space (atlas.image; needs --atlas-labels)")
    g.add_argument("--atlas-labels", type=Path, metavar="TSV",
                   help="labels of a custom --atlas image: TSV with columns index, name (atlas.labels)")
    g.add_argument("--reference-region", metavar="NAME",
                   help="reference region of SUVR, SRTM and MRTM2 (kinetics.reference_region), e.g. "
                        "whole_brain, cerebellum_gm, occipital_cortex or an atlas region")
    g.add_argument("--pvc", choices=_literal_choices(TACSettings, "pvc"),
                   help="partial-volume correction of the regional TACs (tacs.pvc)")
    g.add_argument("--psf-fwhm", type=float, metavar="MM",
                   help="scanner resolution, FWHM in mm, for the PVC (tacs.psf_fwhm_mm; default: "
                        "the PET sidecar, else tacs.default_psf_fwhm_mm)")
    g.add_argument("--models", nargs="+", metavar="MODEL",
                   choices=_literal_choices(KineticsSettings, "models"),
                   help="kinetic models to fit (kinetics.models; one or more of %(choices)s); "
                        "parametric maps of the other models are not made (kinetics.maps)")
    g.add_argument("--engine", choices=list(ENGINE_NAMES),
                   help="toolkit of every step (motion.engine, registration.engine, "
                        "segmentation.engine, segmentation.normalization_engine)")
    stats_args(p)


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
    analysis_args(p)


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


def _is_image_path(value: str) -> bool:
    """An ``--atlas`` value naming a file rather than an embedded atlas."""
    return Path(value).is_file() or value.endswith((".nii", ".nii.gz")) or "/" in value or os.sep in value


def _atlas_overrides(atlas: str | None, labels: Path | None) -> dict:
    if atlas is None:
        if labels is not None:
            raise ConfigError("--atlas-labels needs --atlas IMAGE (a label image in MNI152 "
                              "template space)", file=labels, field="atlas.labels")
        return {}
    if _is_image_path(atlas):
        if labels is None:
            raise ConfigError("a custom atlas image needs its labels: add --atlas-labels TSV "
                              "(columns index, name)", file=atlas, field="atlas.labels")
        return {"atlas": {"name": "custom", "image": str(Path(atlas).absolute()),
                          "labels": str(Path(labels).absolute())}}
    if labels is not None:
        raise ConfigError(f"--atlas-labels is for a custom atlas image, and '{atlas}' names an "
                          "embedded atlas", file=labels, field="atlas.labels")
    return {"atlas": {"name": atlas, "image": None, "labels": None}}  # drops a file's custom atlas


def setting_overrides(args) -> dict:
    """The settings the analysis and statistics flags set, as ``load_config`` overrides
    (dotted keys; flags not given are absent). Unset attributes count as not given."""
    from gliaflow.pipeline.config import engine_overrides

    def get(name):
        return getattr(args, name, None)

    over: dict = _atlas_overrides(get("atlas"), get("atlas_labels"))
    for flag, key in (("reference_region", "kinetics.reference_region"), ("pvc", "tacs.pvc"),
                      ("psf_fwhm", "tacs.psf_fwhm_mm"), ("models", "kinetics.models"),
                      ("group_column", "stats.group_column")):
        if get(flag) is not None:
            over[key] = list(get(flag)) if isinstance(get(flag), (list, tuple)) else get(flag)
    if get("group_labels") is not None:
        over["stats.patient_label"], over["stats.control_label"] = get("group_labels")
    if get("engine") is not None:  # each step named, so the flag beats a file's per-step engine
        over.update(engine_overrides(get("engine")))
    return over


def setting_argv(args) -> list[str]:
    """The analysis and statistics flags given, as ``gliaflow run`` arguments (paths absolute),
    for the jobs ``gliaflow submit`` writes."""
    out: list[str] = []
    for flag in ("atlas", "atlas_labels", "reference_region", "pvc", "psf_fwhm", "models",
                 "engine", "group_column", "group_labels"):
        v = getattr(args, flag, None)
        if v is None:
            continue
        if flag == "atlas_labels" or (flag == "atlas" and _is_image_path(v)):
            v = Path(v).absolute()
        out += ["--" + flag.replace("_", "-")] + [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return out


def build_config(args) -> "PipelineConfig":  # noqa: F821 - imported below
    """The effective configuration: defaults < ``--config`` file < environment < flags."""
    from gliaflow.pipeline.config import load_config

    over = {}
    for flag, key in (("cluster", "execution.cluster"), ("nprocs", "execution.nprocs"),
                      ("mem", "execution.mem_gb"), ("work_dir", "execution.work_dir")):
        v = getattr(args, flag, None)
        if v is not None:
            over[key] = str(v) if isinstance(v, Path) else v
    over.update(setting_overrides(args))
    cfg = load_config(getattr(args, "config", None), over)
    models = getattr(args, "models", None)
    if models:
        cfg.kinetics.maps = [m for m in cfg.kinetics.maps if _MAP_MODEL.get(m, m) in models]
    return cfg


def check_settings(cfg, bids_dir: Path, sessions, strict_group: bool, warn=None) -> None:
    """Check the settings against the machine and the dataset before any work: the selected
    engines can run (FSLDIR and the FSL binaries, when FSL is selected), the atlas (an embedded
    name, or a custom image and labels that load), and the statistics settings against
    participants.tsv.

    Parameters
    ----------
    cfg : PipelineConfig
    bids_dir : path
    sessions : list of SessionSpec
        The sessions to process; their participants are the cohort of the group step.
    strict_group : bool
        The group statistics will run: a cohort problem is a ConfigError (naming participants.tsv
        and the settings). Otherwise problems are passed to ``warn``.
    warn : callable, optional
        ``warn(text)`` for problems that do not stop the run (default: print to stderr).

    Raises
    ------
    ConfigError
        An engine that cannot run here, unknown atlas, unusable custom atlas, or
        (``strict_group``) statistics settings that do not fit participants.tsv.
    """
    from gliaflow.pipeline.engines import check_engines

    from gliaflow.pipeline.errors import BIDSError
    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.io.bids import read_participants
    from gliaflow.pipeline.regions.atlas import load_atlas
    from gliaflow.pipeline.stats.checks import check_cohort_settings, cohort_error
    from gliaflow.pipeline.stats.design import MIN_PER_GROUP

    warn = warn or (lambda text: print(text, file=sys.stderr))
    check_engines(cfg)
    if cfg.atlas.name == "custom":
        load_atlas(cfg.atlas)  # a missing or unusable image or label table, named
    else:
        resources.atlas_key(cfg.atlas.name)
    source = Path(bids_dir) / "participants.tsv"
    try:
        participants = read_participants(bids_dir)
    except BIDSError:
        if strict_group:
            raise
        return  # discovery reports it for every session
    subjects = sorted({f"sub-{s.participant}" for s in sessions})
    problems = check_cohort_settings(participants, cfg.stats, source, subjects=subjects,
                                     min_per_group=MIN_PER_GROUP if strict_group and subjects else None)
    if strict_group and (err := cohort_error(problems, source)) is not None:
        raise err
    for p in problems:
        tail = " (the group level would fail)" if p.severity == "error" else ""
        warn(f"gliaflow run: {'warning' if p.severity == 'error' else p.severity}: {p.message}{tail}")


def run(args) -> int:
    from gliaflow.pipeline.io.bids import discover

    cfg = build_config(args)
    stages = load_stages(args.stages)
    needs_blood = any(m in cfg.kinetics.models for m in ("1tcm", "2tcm", "logan", "ma1"))
    t0 = time.perf_counter()
    disc = discover(args.bids_dir, participant_label=args.participant_label,
                    session_label=args.session_label, require_blood=needs_blood)
    t_disc = time.perf_counter() - t0
    # the statistics settings are those of the default group step; a plugin step has its own
    default_group = not (args.group_step or os.environ.get("GLIAFLOW_GROUP_STEP"))
    check_settings(cfg, args.bids_dir, disc.sessions,
                   strict_group=args.analysis_level in ("group", "all") and default_group)
    from gliaflow.workflows.flows import plan_sessions, run_cohort

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
