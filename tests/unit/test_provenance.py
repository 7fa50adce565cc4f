"""Provenance: the science records what it ran; records survive manifests; the cohort's
dataset_description and provenance file are written from them."""
from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gliaflow.pipeline.blood.delay import apply_delay  # noqa: E402
from gliaflow.pipeline.config import BloodSettings, KineticsSettings, PipelineConfig, StatsSettings  # noqa: E402
from gliaflow.pipeline.io.derivatives import write_tsv  # noqa: E402
from gliaflow.pipeline.kinetics.regional import (MODEL_INTERFACES, fit_regional_results,  # noqa: E402
                                                 results_provenance)
from gliaflow.pipeline.provenance import (STEP_DELAY, STEP_PVC, STEP_TACS,  # noqa: E402
                                          ToolCall, merge_calls, package_version, software_used)
from gliaflow.pipeline.regions.atlas import SessionLabels  # noqa: E402
from gliaflow.pipeline.regions.measure import session_tacs  # noqa: E402
from gliaflow.pipeline.report.methods import methods_text  # noqa: E402
from gliaflow.pipeline.session import StageResult  # noqa: E402
from gliaflow.pipeline.stats.group import run_group_stats  # noqa: E402
from gliaflow.workflows.cache import load_manifest, write_manifest  # noqa: E402
from gliaflow.workflows.flows import write_provenance  # noqa: E402
from gliaflow.workflows.reporting import PROVENANCE_FILE, collect_provenance  # noqa: E402

from test_kinetics import FE, FS, PLASMA, REGIONS, phantom  # noqa: E402
from gliaflow.pipeline.report.sample import sample_provenance  # noqa: E402
from test_report import _calls  # noqa: E402
from test_stats_regional import cohort  # noqa: E402


def _by_interface(calls: list[ToolCall]) -> dict[str, ToolCall]:
    return {c.interface: c for c in merge_calls(calls)}


def _tac_table() -> pd.DataFrame:
    df = pd.DataFrame({"frame_start": FS, "frame_end": FE})
    for name, k in REGIONS.items():
        df[name] = phantom(*k)
    return df


def test_regional_fits_record_what_they_called():
    tacs = _tac_table()
    ks = KineticsSettings(reference_region="cerebellum", n_starts=3)
    res = fit_regional_results(tacs, PLASMA, ks, models=["2tcm", "logan", "srtm", "suvr"])
    calls = _by_interface(results_provenance(res))
    n = len(REGIONS)
    assert calls[MODEL_INTERFACES["2tcm"]].count == n and calls[MODEL_INTERFACES["srtm"]].count == n
    assert calls[MODEL_INTERFACES["logan"]].tool == "gliaflow"
    ls = calls["scipy.optimize.least_squares(method='trf')"]
    assert ls.tool == "SciPy" and ls.version == package_version("scipy") and ls.count == 3 * n
    lstsq = calls["numpy.linalg.lstsq"]
    assert lstsq.version == package_version("numpy") and lstsq.count == 200 * n  # SRTM basis grid
    # models that need no library record only gliaflow's function; no optimiser without a TCM
    res = fit_regional_results(tacs, PLASMA, ks, models=["logan", "suvr"])
    tools = {c.tool for c in results_provenance(res)}
    assert tools == {"gliaflow"}
    text = " ".join(methods_text(results_provenance(res), {})[0])
    assert "Logan" in text and "SciPy" not in text and "2TCM" not in text


def test_fitted_blood_delay_is_recorded():
    y = phantom(0.1, 0.08)
    fitted, _ = apply_delay(PLASMA, BloodSettings(delay="fit", delay_range_s=(-10, 10)), FS, FE, y)
    calls = _by_interface(fitted.provenance)
    assert calls["scipy.optimize.nnls"].step == STEP_DELAY
    assert calls["scipy.optimize.nnls"].count == 21 * 40  # delays (1 s grid) x k2 grid
    fixed, _ = apply_delay(PLASMA, BloodSettings(delay="fixed", delay_s=3.0))
    assert fixed.provenance == []


def _labels(shape=(12, 12, 12)) -> SessionLabels:
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    lab = np.zeros(shape, np.int32)
    lab[2:6, 2:10, 2:10], lab[6:10, 2:10, 2:10] = 1, 2
    img = nib.Nifti1Image(lab, aff)
    table = pd.DataFrame({"index": [1, 2], "name": ["a", "b"]})
    ref = nib.Nifti1Image((lab == 2).astype(np.uint8), aff)
    return SessionLabels(table=table, labels_pet=img, partition_pet=img, partition_table=table,
                         refs_pet={"ref_b": ref})


def test_tacs_and_pvc_record_their_calls(tmp_path):
    labels = _labels()
    rng = np.random.default_rng(0)
    pet = nib.Nifti1Image(rng.uniform(1e3, 2e3, (12, 12, 12, 4)).astype(np.float32), labels.labels_pet.affine)
    fs, fe = [0, 60, 120, 180], [60, 120, 180, 240]
    out = session_tacs(pet, labels, fs, fe, "none", 6.0, tmp_path / "t.tsv")
    assert [c.interface for c in out["provenance"]] == ["gliaflow.pipeline.regions.tacs.regional_tacs"]
    assert out["provenance"][0].step == STEP_TACS
    out = session_tacs(pet, labels, fs, fe, "rbv", 6.0, tmp_path / "t.tsv", tmp_path / "p.tsv")
    calls = _by_interface(out["provenance"])
    assert "provenance" not in out["qc"]["pvc"]
    assert calls["gliaflow.pipeline.regions.pvc.gtm_pvc"].step == STEP_PVC
    assert calls["gliaflow.pipeline.regions.pvc.rbv_frames"].count == 1
    # GTM: one blur per region present (a, b and the background); RBV: one per frame
    assert calls["scipy.ndimage.gaussian_filter"].count == 3 + 4
    assert calls["numpy.linalg.solve"].tool == "NumPy"
    text = " ".join(methods_text(out["provenance"], {})[0])
    assert "region-based voxelwise correction" in text and "SciPy" in text


def test_group_step_records(tmp_path):
    df = cohort(0, n_lab=2, n_per_group=9)
    df.loc[df["region"] == "ctx_00", "suvr"] = 1.0  # a reference region's SUVR: not testable
    regional = write_tsv(df, tmp_path / "group" / "regional.tsv")
    res = run_group_stats(regional, tmp_path, StatsSettings(n_permutations=0, voxelwise=False))
    calls = _by_interface(res["provenance"])
    reg = pd.read_csv(tmp_path / "group" / "stats_regional.tsv", sep="\t", na_values="n/a")
    assert res["summary"]["regions_not_tested"] == {"suvr": {"ctx_00": "constant"}}
    assert calls["gliaflow.pipeline.stats.design.fit_ols"].count == int(reg["t"].notna().sum()) == 2 * 12 - 1
    assert calls["gliaflow.pipeline.stats.voxelwise.screen_columns"].count == 2  # per metric
    assert "could not be tested" in " ".join(methods_text(res["provenance"], {})[0])
    assert "gliaflow.pipeline.stats.regional.partial_correlation" in calls  # fatigue is a column
    assert not any("permutation_glm" in i for i in calls)  # n_permutations=0
    paras, cited = methods_text(res["provenance"], {"stats": {"n_permutations": 0}})
    assert "benjamini1995" in cited and "winkler2014" not in cited


def test_manifest_round_trip_keeps_provenance(tmp_path):
    rec = sample_provenance()[:3] + _calls(("frame realignment", "FSL", "6.0.7.9", "mcflirt",
                                            "mcflirt -in a.nii.gz"))
    res = StageResult(stage="anat", outputs={}, provenance=rec)
    write_manifest(tmp_path, "sub-01", "k1", res.model_dump(mode="json"))
    back = StageResult(**load_manifest(tmp_path, "sub-01", "anat", "k1"))
    assert back.provenance == rec and back.provenance[-1].command == "mcflirt -in a.nii.gz"
    assert collect_provenance(tmp_path) == {"sub-01": merge_calls(rec)}


def test_dataset_description_and_provenance_file_from_manifests(tmp_path):
    cmd = "mcflirt -in /w/sub-02/pet.nii.gz -reffile /w/sub-02/ref.nii.gz -mats"
    fsl = _calls(("frame realignment", "FSL", "6.0.7.9", "mcflirt", cmd),
                 ("frame realignment", "Nipype", "1.8.6", "nipype.interfaces.fsl.MCFLIRT"))
    for sid, calls in (("sub-01", sample_provenance()), ("sub-02", fsl)):
        res = StageResult(stage="pet_motion", provenance=calls)
        write_manifest(tmp_path, sid, "k", res.model_dump(mode="json"))
    group = _calls(("regional group comparison", "gliaflow", "9.9", "gliaflow.pipeline.stats.design.fit_ols"))
    cfg = PipelineConfig()
    write_provenance(tmp_path, cfg, [], group_calls=group)
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    gen = desc["GeneratedBy"]
    assert gen[0]["Name"] == "gliaflow" and gen[0]["ProvenanceFile"] == PROVENANCE_FILE
    assert {(g["Name"], g.get("Version")) for g in gen[1:]} == {
        ("ANTs", "ANTsPy 0.6.3"), ("SciPy", "1.13.1"), ("FSL", "6.0.7.9"), ("Nipype", "1.8.6")}
    prov = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert [c["command"] for c in prov["sessions"]["sub-02"]] == [cmd, None]
    assert any(c["command"] == cmd for c in prov["calls"])
    assert prov["group"] == [c.model_dump() for c in group]
    # a later participant-level run (no group step) keeps the group's records
    write_provenance(tmp_path, cfg, [])
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text())["group"] == prov["group"]
    # the cohort's methods from the union cite FSL and Nipype because sub-02 ran them
    union = [ToolCall(**c) for c in prov["calls"]]
    paras, cited = methods_text(union, cfg.model_dump(mode="json"))
    assert {"gorgolewski2011", "jenkinson2012", "jenkinson2002", "avants2011metric",
            "benjamini1995"} <= set(cited)
    assert software_used(union)[0] == ("ANTs", "ANTsPy 0.6.3")
