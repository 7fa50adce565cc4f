"""``gliaflow kinetics``: fit kinetic models to an existing regional TAC table.

For users who already have TACs (from gliaflow or PETPrep)::

    gliaflow kinetics --tacs sub-01_seg-x_tacs.tsv --blood sub-01_recording-autosampler_blood.tsv \\
        --blood sub-01_recording-manual_blood.tsv --model 2tcm --model logan --out params.tsv

TACS.tsv: ``frame_start``, ``frame_end`` (s) and one column per region; the units come from a
JSON sidecar next to it (``"Units": "kBq/mL"``) or ``--tac-units``. Blood: BIDS ``*_blood.tsv``
with their JSON sidecars (column units). Output: one row per region, one column per parameter
(``<model>_<parameter>`` when several models are fitted), and a JSON sidecar with the settings
and the blood-processing notes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gliaflow.pipeline.blood.delay import apply_delay
from gliaflow.pipeline.blood.input import plasma_input_from_files
from gliaflow.pipeline.config import BloodSettings, KineticsSettings
from gliaflow.pipeline.io.derivatives import atomic_write_json, write_tsv
from gliaflow.pipeline.errors import ConfigError, ModelError
from gliaflow.pipeline.kinetics.regional import (PLASMA_MODELS, fit_regional_results, results_table,
                                                  split_tac_table, table_weights)
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
    b.add_argument("--dispersion-tau", type=float, help="dispersion constant (s) of continuous data")
    b.add_argument("--blood-delay", type=float,
                   help="fixed blood delay (s); default: estimated against --delay-region")
    b.add_argument("--delay-region", help="region TAC used to estimate the delay (default: "
                   "reference region, else the mean of all regions)")
    return p


def _tac_units(tacs: Path, flag: str | None) -> tuple[float, str]:
    side = tacs.with_name(tacs.name[: -len(".tsv")] + ".json") if tacs.name.endswith(".tsv") else tacs.with_suffix(".json")
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


def run(args) -> int:
    try:
        ks = KineticsSettings()
        upd = {"models": args.model}
        if args.reference_region:
            upd["reference_region"] = args.reference_region
        if args.window:
            upd["suvr_window_min"] = tuple(args.window)
        if args.tstar is not None:
            upd["tstar_min"] = args.tstar
        if args.tstar_frames is not None:
            upd["tstar_frames"] = args.tstar_frames
        if args.fit_vb:
            upd["vb"] = None
        elif args.vb is not None:
            upd["vb"] = args.vb
        if args.fit_delay:
            upd["fit_delay"] = True
        if args.fit_end is not None:
            upd["fit_end_min"] = args.fit_end
        if args.n_starts is not None:
            upd["n_starts"] = args.n_starts
        if args.weights and args.weights != "column":
            upd["weights"] = args.weights
        if args.k2prime is not None:
            upd["k2prime_per_min"] = args.k2prime
        ks = KineticsSettings(**{**ks.model_dump(), **upd})
        bs = BloodSettings()
        bupd = {}
        if args.parent_fraction_model:
            bupd["parent_fraction_model"] = args.parent_fraction_model
        if args.plasma_to_blood:
            bupd["plasma_to_blood"] = args.plasma_to_blood
        if args.dispersion_tau is not None:
            bupd["dispersion_tau_s"] = args.dispersion_tau
        if args.blood_delay is not None:
            bupd.update(delay="fixed", delay_s=args.blood_delay)
        bs = BloodSettings(**{**bs.model_dump(), **bupd})
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        raise ConfigError(f"bad option: {exc}") from None

    try:
        raw = pd.read_csv(args.tacs, sep="\t", na_values=["n/a"])
    except (OSError, pd.errors.ParserError) as exc:
        raise ModelError(f"cannot read: {exc}", file=args.tacs) from None
    factor, unit = _tac_units(args.tacs, args.tac_units)
    col_weights = None
    if args.weights == "column":
        col_weights = table_weights(raw)
        if col_weights is None:
            raise ModelError("--weights column needs a 'weights' column", file=args.tacs, field="weights")
    frames, vals = split_tac_table(raw, str(args.tacs))
    vals = vals * factor
    table = pd.concat([pd.DataFrame({"frame_start": frames.start_s, "frame_end": frames.end_s}), vals], axis=1)

    plasma, delay_info = None, {}
    if args.blood:
        plasma = plasma_input_from_files(args.blood, bs, scan_end_s=float(frames.end_s[-1]))
        y = None
        if bs.delay == "fit":
            region = args.delay_region or (ks.reference_region if ks.reference_region in vals else None)
            if region is not None and region not in vals:
                raise ModelError(f"delay region {region!r} is not a column", file=args.tacs,
                                 field="delay_region")
            y = vals[region].to_numpy(float) if region else vals.mean(axis=1).to_numpy(float)
            delay_info["region"] = region or "mean of all regions"
        plasma, fit_info = apply_delay(plasma, bs, frames.start_s, frames.end_s, y)
        delay_info.update(fit_info)
    elif any(m in PLASMA_MODELS for m in args.model):
        raise ModelError(f"models {', '.join(m for m in args.model if m in PLASMA_MODELS)} need "
                         "--blood", field="blood")
    dose = radioactivity_factor(args.dose_units) * args.dose if args.dose else None
    weights = None
    if col_weights is not None:
        weights = col_weights
    results = fit_regional_results(table, plasma, ks, injected_bq=dose,
                                   body_weight_kg=args.body_weight, source=str(args.tacs),
                                   weights=weights)
    out = results_table(results, prefix=len(args.model) > 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(out, args.out)
    side = args.out.with_name(args.out.name[: -len(".tsv")] + ".json") if args.out.name.endswith(".tsv") else args.out.with_suffix(".json")
    meta = {"Sources": [str(args.tacs)] + [str(b) for b in args.blood], "TACUnits": unit,
            "Models": args.model, "KineticsSettings": ks.model_dump(mode="json"),
            "Units": {"VT": "mL/cm3", "K1": "mL/cm3/min", "k2": "1/min", "k3": "1/min",
                      "k4": "1/min", "SUV": "g/mL", "delay_s": "s"}}
    if plasma is not None:
        meta["Blood"] = {"settings": bs.model_dump(mode="json"), "delay_s": plasma.delay_s,
                         "delay_fit": {k: float(v) if isinstance(v, (int, float, np.floating)) else v
                                       for k, v in delay_info.items()},
                         "parent_fraction_params": plasma.parent_fraction_params,
                         "notes": plasma.notes}
    atomic_write_json(side, meta)
    n_fail = int(sum(not r.converged for per in results.values() for r in per.values()))
    print(f"gliaflow kinetics: {len(out)} regions x {len(args.model)} model(s) -> {args.out}"
          + (f" ({n_fail} fit(s) failed: see the 'reason' column)" if n_fail else ""))
    return 0
