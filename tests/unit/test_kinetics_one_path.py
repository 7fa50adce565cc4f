"""The kinetics stage and ``gliaflow kinetics`` are one path: same TACs + blood -> same tables.

A tiny BIDS session (tests/bidsfactory.py: autosampler + manual blood with parent fractions, a
dispersion constant in the autosampler sidecar) gives the SessionSpec; regional TACs (whole brain
and two regions, with and without PVC) are made with the forward model from the session's own
blood curve. The stage reads them as the labels_tacs stage's outputs (no voxelwise maps), the
command reads the same files; their fit tables must be identical.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bidsfactory as bf  # noqa: E402

from gliaflow.pipeline.config import BloodSettings, KineticsSettings, PipelineConfig  # noqa: E402
from gliaflow.pipeline.errors import ModelError  # noqa: E402
from gliaflow.pipeline.io.bids import discover  # noqa: E402
from gliaflow.pipeline.io.derivatives import write_tsv  # noqa: E402
from gliaflow.pipeline.kinetics.forward import tcm_tac  # noqa: E402
from gliaflow.pipeline.kinetics.quantify import quantify_regional  # noqa: E402
from gliaflow.pipeline.session import StageContext, StageResult, stage_kinetics  # noqa: E402
from gliaflow.workflows.cli.main import main  # noqa: E402

MODELS = ["suv", "suvr", "1tcm", "2tcm", "logan", "ma1"]  # the stage's default models
DISPERSION_S = 3.0
WEIGHT_KG = 72.0
# K1 (mL/cm3/min), k2, k3, k4 (1/min)
REGIONS = {"whole_brain": (0.10, 0.08, 0.05, 0.06), "frontal": (0.12, 0.09, 0.06, 0.05),
           "cerebellum_gm": (0.09, 0.08, 0.04, 0.06)}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """(SessionSpec, TAC file, PVC TAC file, blood TSVs) of one phantom session."""
    tmp = tmp_path_factory.mktemp("one_path")
    root = bf.make_dataset(tmp / "bids", subjects=("01",),
                           sidecar=bf.pet_sidecar(BodyWeight=WEIGHT_KG))
    pet_dir = root / "sub-01" / "pet"
    auto_json = pet_dir / "sub-01_trc-PBR28_recording-autosampler_blood.json"
    meta = json.loads(auto_json.read_text())
    auto_json.write_text(json.dumps({**meta, "DispersionConstant": DISPERSION_S}))
    spec = discover(root, require_blood=True).sessions[0]
    assert spec.blood and spec.blood[0].meta.get("DispersionConstant") == DISPERSION_S

    # a parent plasma curve from the session's samples (Bq/mL on a 1 s grid)
    auto, manual = bf.autosampler_blood()[0], bf.manual_blood()[0]
    t_s = np.concatenate([auto["time"], np.asarray(manual["time"]) * 60.0])
    parent = 1000.0 * np.concatenate([auto["plasma_radioactivity"],
                                      np.asarray(manual["plasma_radioactivity"])
                                      * np.asarray(manual["metabolite_parent_fraction"])])
    order = np.argsort(t_s)
    fs, fe = np.asarray(spec.frame_start_s), np.asarray(spec.frame_end_s)
    grid = np.arange(0.0, fe[-1] + 2.0)
    cp = np.interp(grid, t_s[order], parent[order])
    tacs = pd.DataFrame({"frame_start": fs, "frame_end": fe})
    for name, p in REGIONS.items():
        tacs[name] = tcm_tac(fs, fe, grid, cp, cp, *p, 0.05)
    pvc = tacs.copy()
    for name in REGIONS:
        pvc[name] = tacs[name] * 1.15
    deriv = tmp / "tacs"
    tac_tsv = write_tsv(tacs, deriv / "sub-01_trc-PBR28_seg-test_tacs.tsv")
    pvc_tsv = write_tsv(pvc, deriv / "sub-01_trc-PBR28_seg-test_desc-pvcrbv_tacs.tsv")
    for p in (tac_tsv, pvc_tsv):
        p.with_suffix(".json").write_text(json.dumps({"Units": "Bq/mL"}))
    blood = [r.tsv for r in spec.blood]
    return spec, tac_tsv, pvc_tsv, blood


def run_stage(spec, tmp_path, tacs: dict[str, Path], pvc_method: str = "rbv", **kinetics):
    """The kinetics stage on TAC files given as the labels_tacs stage's outputs (no maps)."""
    cfg = PipelineConfig.model_validate({"kinetics": {"maps": [], **kinetics},
                                         "stats": {"voxelwise": False}})
    ctx = StageContext(spec=spec, config=cfg, out_dir=tmp_path / "derivatives",
                       work_dir=tmp_path / "work")
    labels = StageResult(stage="labels_tacs", outputs=tacs, qc={"pvc": {"method": pvc_method}})
    return stage_kinetics(ctx, {"labels_tacs": labels})


def run_cli(tac_tsv: Path, blood: list[Path], out: Path, *extra: str) -> dict:
    args = ["kinetics", "--tacs", str(tac_tsv), "--out", str(out), "--dose", "400",
            "--dose-units", "MBq", "--body-weight", str(WEIGHT_KG), *extra]
    for m in MODELS:
        args += ["--model", m]
    for b in blood:
        args += ["--blood", str(b)]
    assert main(args) == 0
    return json.loads(out.with_suffix(".json").read_text())


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a")


def test_stage_and_cli_write_identical_fit_tables(session, tmp_path):
    spec, tac_tsv, pvc_tsv, blood = session
    res = run_stage(spec, tmp_path, {"tacs": tac_tsv, "tacs_pvc": pvc_tsv})
    assert res.values["models"] == MODELS
    assert res.qc["blood_dispersion_tau_s"] == DISPERSION_S  # from the autosampler sidecar
    assert res.qc["blood_delay_fit"]["region"] == "whole_brain"

    meta = run_cli(tac_tsv, blood, tmp_path / "cli" / "fits.tsv")
    stage_fits, cli_fits = read(res.outputs["fits_tsv"]), read(tmp_path / "cli" / "fits.tsv")
    assert cli_fits["2tcm_converged"].all() and stage_fits.shape == (3, cli_fits.shape[1])
    pd.testing.assert_frame_equal(stage_fits, cli_fits, check_exact=True)
    assert meta["Blood"]["settings"]["dispersion_tau_s"] == DISPERSION_S
    assert meta["Blood"]["delay_s"] == res.values["delay_s"]
    assert meta["Blood"]["delay_fit"] == res.qc["blood_delay_fit"]
    assert meta["Models"] == MODELS and meta["ModelsSkipped"] == {}

    # the PVC fits use the plasma input of the uncorrected TACs: the command with that delay fixed
    cli_pvc = tmp_path / "cli" / "fits_pvc.tsv"
    run_cli(pvc_tsv, blood, cli_pvc, "--blood-delay", repr(res.values["delay_s"]))
    pd.testing.assert_frame_equal(read(res.outputs["fits_pvc_tsv"]), read(cli_pvc), check_exact=True)


@pytest.mark.parametrize("method", ["gtm", "rbv"])
def test_pvc_fits_are_named_after_the_method_that_ran(session, tmp_path, method):
    spec, tac_tsv, pvc_tsv, _ = session
    res = run_stage(spec, tmp_path, {"tacs": tac_tsv, "tacs_pvc": pvc_tsv}, pvc_method=method,
                    models=["suvr"])
    path = res.outputs["fits_pvc_tsv"]
    assert path.name == f"sub-01_trc-PBR28_desc-fitspvc{method}_kinetics.tsv"
    assert sorted(p.name for p in path.parent.glob("*_kinetics.tsv")) == sorted(
        [path.name, "sub-01_trc-PBR28_desc-fits_kinetics.tsv", "sub-01_trc-PBR28_desc-curves_kinetics.tsv"])
    metrics = read(res.outputs["regional_metrics"]).set_index("region")
    assert metrics.loc["frontal", "suvr_pvc"] == pytest.approx(metrics.loc["frontal", "suvr"])


def test_models_skipped_without_blood_or_weight(session):
    spec, tac_tsv, _, _ = session
    tacs = read(tac_tsv)
    reg = quantify_regional(tacs, (), BloodSettings(), KineticsSettings(models=MODELS),
                            injected_bq=4e8, body_weight_kg=None)
    assert reg.models == ["suvr"] and reg.plasma is None
    assert set(reg.skipped) == {"suv", "1tcm", "2tcm", "logan", "ma1"}
    assert reg.flags == ["no_blood_data"] and reg.qc["models_skipped"] == reg.skipped
    assert list(reg.metrics.columns) == ["region", "suvr"]
    with pytest.raises(ModelError, match="no kinetic model can run") as exc:
        quantify_regional(tacs, (), BloodSettings(), KineticsSettings(models=["2tcm", "suv"]),
                          source=str(tac_tsv))
    assert exc.value.file == str(tac_tsv) and exc.value.field == "kinetics.models"
    assert "2tcm: no arterial blood" in str(exc.value) and "suv: no injected dose" in str(exc.value)


def test_delay_region_must_be_a_column(session, tmp_path, capsys):
    spec, tac_tsv, _, blood = session
    tacs = read(tac_tsv).drop(columns="whole_brain")
    with pytest.raises(ModelError, match="blood.delay_region"):
        quantify_regional(tacs, spec.blood, BloodSettings(), KineticsSettings(models=["logan"]))
    reg = quantify_regional(tacs, spec.blood, BloodSettings(delay_region="frontal"),
                            KineticsSettings(models=["logan"]))
    assert reg.delay_fit["region"] == "frontal" and abs(reg.plasma.delay_s) <= 30
    # the command: --delay-region overrides the same setting
    no_wb = tmp_path / "no_wb_tacs.tsv"
    write_tsv(tacs, no_wb)
    no_wb.with_suffix(".json").write_text(json.dumps({"Units": "Bq/mL"}))
    args = ["kinetics", "--tacs", str(no_wb), "--model", "logan", "--out", str(tmp_path / "x.tsv")]
    for b in blood:
        args += ["--blood", str(b)]
    assert main(args) == 2
    assert "--delay-region" in capsys.readouterr().err
    assert main(args + ["--delay-region", "frontal"]) == 0
    meta = json.loads((tmp_path / "x.json").read_text())
    assert meta["Blood"]["delay_s"] == reg.plasma.delay_s


def test_stage_returns_what_the_fits_and_the_plasma_input_ran(session, tmp_path):
    """quantify_regional carries the plasma input's and the fits' records (with and without
    PVC); the stage returns them."""
    from gliaflow.pipeline.provenance import STEP_DELAY, STEP_KINETICS, STEP_PLASMA

    spec, tac_tsv, pvc_tsv, _ = session
    tacs = read(tac_tsv)
    reg = quantify_regional(tacs, spec.blood, BloodSettings(delay="fit"), KineticsSettings(models=["1tcm"]),
                            tacs_pvc=read(pvc_tsv))
    by = {(c.step, c.interface): c for c in reg.provenance}
    n_regions = len(REGIONS)
    fit = by[(STEP_KINETICS, "gliaflow.pipeline.kinetics.compartment.fit_tcm(n_tissue=1)")]
    assert fit.count == 2 * n_regions  # without and with PVC
    assert (STEP_PLASMA, "gliaflow.pipeline.blood.input.plasma_input_from_tables") in by
    assert (STEP_DELAY, "scipy.optimize.nnls") in by
    assert by[(STEP_KINETICS, "scipy.optimize.least_squares(method='trf')")].tool == "SciPy"
    res = run_stage(spec, tmp_path, {"tacs": tac_tsv}, models=["1tcm"])
    assert {(c.step, c.interface) for c in res.provenance} >= {
        (STEP_PLASMA, "gliaflow.pipeline.blood.input.plasma_input_from_tables"),
        (STEP_KINETICS, "gliaflow.pipeline.kinetics.compartment.fit_tcm(n_tissue=1)")}
