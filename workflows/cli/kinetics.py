"""``gliaflow kinetics``: fit kinetic models to an existing regional TAC table.

For users who already have TACs (from gliaflow or PETPrep)::

    gliaflow kinetics --tacs sub-01_seg-x_tacs.tsv --blood sub-01_recording-autosampler_blood.tsv \\
        --blood sub-01_recording-manual_blood.tsv --model 2tcm --model logan --out params.tsv

TACS.tsv: ``frame_start``, ``frame_end`` (s) and one column per region; the units come from a
JSON sidecar next to it (``"Units": "kBq/mL"``) or ``--tac-units``. Blood: BIDS ``*_blood.tsv``
with their JSON sidecars (column units). Output: one row per region, one column per parameter
(``<model>_<parameter>`` when several models are asked for), and a JSON sidecar with the settings
and the blood-processing notes.

It runs the kinetics stage's regional path
(:func:`gliaflow.pipeline.kinetics.quantify.quantify_regional`) with the defaults of the same
settings models, the flags overriding fields: the same TACs and blood give the same table as
``desc-fits_kinetics.tsv``. Models whose inputs are missing (SUV without ``--dose`` and
``--body-weight``, plasma models without ``--blood``) are skipped with a message; it is an error
when none is left. Blood times are read as seconds from injection.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from gliaflow.pipeline.blood.input import read_blood_recordings
from gliaflow.pipeline.config import BloodSettings, KineticsSettings
from gliaflow.pipeline.io.derivatives import atomic_write_json, write_tsv
from gliaflow.pipeline.errors import ConfigError, ModelError
from gliaflow.pipeline.kinetics.quantify import quantify_regional
from gliaflow.pipeline.kinetics.regional import results_table, split_tac_table, table_weights
from gliaflow.pipeline.io.units import activity_concentration_factor, radioactivity_factor

MODELS = ["suv", "suvr", "1tcm", "2tcm", "logan", "ma1", "srtm", "mrtm2"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "kinetics", help="fit kinetic models to a regional TAC table",
        description="Fit kinetic models (SUV, SUVR, 1TCM, 2TCM, Logan, MA1, SRTM, MRTM2) to a "
                    "regional TAC table (frame_start, frame_end, one column per region).")
    p.add_argument("--tacs", required=True, type=Path, help="TAC table (TSV), frame times in s")
    p.add_argument("--tac-units", help="TAC units when there is no JSON sidecar (e.g. kBq/mL)")
    p.add_argument("--blood", action="append", type=Path, default=[],
                   help="BIDS blood TSV (with its JSON sidecar); repeat for several recordings")
    p.add_argument("--model", action="append", choices=MODELS, required=True,
                   help="model to fit; repeat for several")
    p.add_argument("--out", required=True, type=Path, help="output TSV (one row per region)")
    g = p.add_argument_group("model options")
    g.add_argument("--reference-region", help="reference region column (SUVR, SRTM, MRTM2)")
    g.add_argument("--window", nargs=2, type=float, metavar=("START", "END"),
                   help="SUV/SUVR window (min), default 60 90")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--tstar", type=float, help="Logan/MA1 t* (min)")
    t.add_argument("--tstar-frames", type=int, help="Logan/MA1: use the last N frames")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--vb", type=float, help="fixed blood volume fraction (default 0.05)")
    v.add_argument("--fit-vb", action="store_true", help="fit the blood volume (1TCM/2TCM)")
    g.add_argument("--fit-delay", action="store_true", help="fit the delay in 1TCM/2TCM")
    g.add_argument("--fit-end", type=float, help="1TCM/2TCM: use frames ending by this time (min)")
    g.add_argument("--n-starts", type=int, help="starting points for 1TCM/2TCM")
    g.add_argument("--weights", choices=["uniform", "duration", "counts", "column"],
                   help="frame weights; 'column' uses a 'weights' column of the TAC table")
    g.add_argument("--k2prime", type=float, help="MRTM2 k2' (1/min); default: estimated by MRTM")
    g.add_argument("--dose", type=float, help="injected dose for SUV")
    g.add_argument("--dose-units", default="MBq", help="units of --dose (default MBq)")
    g.add_argument("--body-weight", type=float, help="body weight for SUV (kg)")
    b = p.add_argument_group("blood options")
    b.add_argument("--parent-fraction-model", choices=["hill", "exponential", "power", "raw", "none"])
    b.add_argument("--plasma-to-blood", choices=["interpolate", "constant", "linear"])
    b.add_argument("--dispersion-tau", type=float,
                   help="dispersion constant (s) of continuous data; default: a blood sidecar's "
                   "DispersionConstant when it says DispersionCorrected: false, else none")
    b.add_argument("--blood-delay", type=float,
                   help="fixed blood delay (s); default: estimated against --delay-region")
    b.add_argument("--delay-region", help="region TAC used to estimate the delay (default: "
                   "whole_brain)")
    return p


def _tac_units(tacs: Path, flag: str | None) -> tuple[float, str]:
    side = _sidecar(tacs)
    unit, src = flag, "--tac-units"
    if unit is None and side.exists():
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read sidecar: {exc}", file=side) from None
        unit = meta.get("Units") or meta.get("units") or meta.get("Unit")
        src = str(side)
    if unit is None:
        raise ModelError("TAC units unknown: add a JSON sidecar with \"Units\" (e.g. \"kBq/mL\") or "
                         "pass --tac-units", file=tacs, field="Units")
    try:
        return activity_concentration_factor(unit), unit
    except ValueError as exc:
        raise ModelError(str(exc), file=src, field="Units") from None


def _settings(args) -> tuple[KineticsSettings, BloodSettings]:
    """The settings models' defaults with the command-line flags applied (validated)."""
    kin = {"models": args.model, "reference_region": args.reference_region,
           "suvr_window_min": tuple(args.window) if args.window else None,
           "tstar_min": args.tstar, "tstar_frames": args.tstar_frames,
           "vb": args.vb, "fit_delay": True if args.fit_delay else None,
           "fit_end_min": args.fit_end, "n_starts": args.n_starts,
           "weights": args.weights if args.weights != "column" else None,
           "k2prime_per_min": args.k2prime}
    kin = {k: v for k, v in kin.items() if v is not None}
    if args.fit_vb:
        kin["vb"] = None
    blood = {"parent_fraction_model": args.parent_fraction_model,
             "plasma_to_blood": args.plasma_to_blood, "dispersion_tau_s": args.dispersion_tau,
             "delay_region": args.delay_region}
    blood = {k: v for k, v in blood.items() if v is not None}
    if args.blood_delay is not None:
        blood.update(delay="fixed", delay_s=args.blood_delay)
    try:
        return (KineticsSettings(**{**KineticsSettings().model_dump(), **kin}),
                BloodSettings(**{**BloodSettings().model_dump(), **blood}))
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        raise ConfigError(f"bad option: {exc}") from None


def _read_tacs(args) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """The TAC table in Bq/mL (frame_start, frame_end, regions), the frame weights of its
    ``weights`` column when ``--weights column``, and the units it was written in."""
    try:
        raw = pd.read_csv(args.tacs, sep="\t", na_values=["n/a"])
    except (OSError, pd.errors.ParserError) as exc:
        raise ModelError(f"cannot read: {exc}", file=args.tacs) from None
    factor, unit = _tac_units(args.tacs, args.tac_units)
    weights = None
    if args.weights == "column":
        weights = table_weights(raw)
        if weights is None:
            raise ModelError("--weights column needs a 'weights' column", file=args.tacs, field="weights")
    frames, vals = split_tac_table(raw, str(args.tacs))
    table = pd.concat([pd.DataFrame({"frame_start": frames.start_s, "frame_end": frames.end_s}),
                       vals * factor], axis=1)
    return table, weights, unit


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name[: -len(".tsv")] + ".json") if path.name.endswith(".tsv") \
        else path.with_suffix(".json")


def run(args) -> int:
    ks, bs = _settings(args)
    table, weights, unit = _read_tacs(args)
    dose = radioactivity_factor(args.dose_units) * args.dose if args.dose else None
    reg = quantify_regional(table, read_blood_recordings(args.blood), bs, ks, injected_bq=dose,
                            body_weight_kg=args.body_weight, weights=weights, source=str(args.tacs))
    for m, why in reg.skipped.items():
        print(f"gliaflow kinetics: model {m} skipped: {why}", file=sys.stderr)
    out = results_table(reg.results, prefix=len(args.model) > 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(out, args.out)
    meta = {"Sources": [str(args.tacs)] + [str(b) for b in args.blood], "TACUnits": unit,
            "Models": reg.models, "ModelsSkipped": reg.skipped,
            "KineticsSettings": ks.model_dump(mode="json"),
            "Units": {"VT": "mL/cm3", "K1": "mL/cm3/min", "k2": "1/min", "k3": "1/min",
                      "k4": "1/min", "SUV": "g/mL", "delay_s": "s"}}
    if reg.plasma is not None:
        meta["Blood"] = {"settings": reg.blood_settings.model_dump(mode="json"),
                         "delay_s": reg.plasma.delay_s, "delay_fit": reg.delay_fit,
                         "parent_fraction_params": reg.plasma.parent_fraction_params,
                         "notes": reg.plasma.notes}
    atomic_write_json(_sidecar(args.out), meta)
    n_fail = int(sum(not r.converged for per in reg.results.values() for r in per.values()))
    print(f"gliaflow kinetics: {len(out)} regions x {len(reg.models)} model(s) -> {args.out}"
          + (f" ({n_fail} fit(s) failed: see the 'reason' column)" if n_fail else ""))
    return 0
