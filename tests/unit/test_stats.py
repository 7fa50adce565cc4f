"""The group step end to end: run_group_stats writes the tables, maps, sidecars and design."""
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gliaflow.pipeline.config import StatsSettings  # noqa: E402
from gliaflow.pipeline.io.derivatives import write_tsv  # noqa: E402
from gliaflow.pipeline.errors import StatsError  # noqa: E402
from gliaflow.pipeline.stats.group import run_group_stats  # noqa: E402

from test_stats_regional import AFFECTED, REGIONS, cohort  # noqa: E402
from test_stats_voxelwise import AFF, blob, phantom  # noqa: E402


def test_run_group_stats_writes_everything(tmp_path):
    out = tmp_path / "derivatives"
    df = cohort(0, n_lab=2, n_per_group=9)
    df["participant_id"] = df["participant_id"].str.replace("sub-", "", regex=False)  # ids without prefix
    regional = out / "group" / "regional.tsv"
    write_tsv(df, regional)
    (tmp_path / "maps").mkdir()
    maps, mpath, subj = phantom(tmp_path / "maps", n_per_group=9)
    atlas_img = np.where(blob(), 7, 0).astype(np.int16)
    atlas = (nib.Nifti1Image(atlas_img, AFF), pd.DataFrame({"index": [7], "name": ["Blobus"]}))
    s = StatsSettings(covariates=["tspo_genotype", "age"], n_permutations=49, seed=4,
                      smoothing_fwhm_mm=0, tfce=True)
    res = run_group_stats(regional, out, s, maps={"suvr": maps}, mask=mpath, atlas=atlas)
    # one subject without a map: left out of the voxelwise design and counted
    from gliaflow.pipeline.stats.group import voxelwise_group_stats
    from gliaflow.pipeline.stats.design import subject_table
    subjects, _ = subject_table(df, s)
    vr = voxelwise_group_stats(maps[1:], mpath, subjects, s.model_copy(update={"tfce": False}), "suvr")
    assert vr["summary"]["n_missing_map"] == 1 and vr["summary"]["n"] == 15
    g = out / "group"
    paths = res["paths"]
    for name in ("stats_regional.tsv", "stats_correlation.tsv", "stats_design.tsv", "stats_summary.json",
                 "stats_regional.json", "stats_design.json"):
        assert (g / name).is_file(), name
    reg = pd.read_csv(g / "stats_regional.tsv", sep="\t", na_values="n/a")
    assert len(reg) == 2 * len(REGIONS)
    assert (reg["n_excluded_lab"] == 2).all() and (reg["n"] == 16).all()
    assert set(reg.loc[reg["significant"], "region"]) == AFFECTED
    corr = pd.read_csv(g / "stats_correlation.tsv", sep="\t")
    assert set(corr["score"]) == {"fatigue"} and len(corr) == 2 * len(REGIONS)
    design = pd.read_csv(g / "stats_design.tsv", sep="\t", dtype={"participant_id": str})
    assert list(design.columns) == ["participant_id", "group_label", "intercept", "group[patient]",
                                    "tspo_genotype[MAB]", "age"]
    assert len(design) == 16
    # voxelwise maps, sidecars and cluster table
    vdir = g / "voxelwise"
    t_path = vdir / "meas-suvr_contrast-patientGtControl_stat-t_statmap.nii.gz"
    assert t_path == paths["suvr:t"] and t_path.is_file()
    for stat in ("z", "effect", "pfwe", "logpfwe", "tfce", "tfcepfwe", "logtfcepfwe"):
        assert paths[f"suvr:{stat}"].is_file()
    side = json.loads(t_path.with_name(t_path.name.replace(".nii.gz", ".json")).read_text())
    assert side["DesignColumns"] == ["intercept", "group[patient]", "tspo_genotype[MAB]", "age"]
    assert side["Contrast"] == {"group[patient]": 1.0}
    assert side["Inference"]["NPermutations"] == 49 and side["Inference"]["Seed"] == 4
    assert side["Inference"]["NuisanceColumns"] == ["intercept", "tspo_genotype[MAB]", "age"]
    assert side["Statistic"] == "t" and side["NExcludedLAB"] == 2
    tmap = nib.load(t_path)
    assert tmap.shape == blob().shape and np.allclose(tmap.affine, AFF)
    cl = pd.read_csv(paths["suvr:clusters"], sep="\t", na_values="n/a", keep_default_na=False)
    assert cl.iloc[0]["peak_label"] == "Blobus"
    vdesign = pd.read_csv(paths["suvr:design"], sep="\t")
    assert len(vdesign) == 16
    summ = json.loads((g / "stats_summary.json").read_text())
    assert summ["n_excluded_lab"] == 2 and sorted(summ["significant_fdr"]["suvr"]) == sorted(AFFECTED)
    assert summ["voxelwise"]["suvr"]["n"] == 16 and summ["voxelwise"]["suvr"]["n_missing_map"] == 0
    assert res["summary"] == summ
    # no temporary files left behind
    assert not [p for p in g.rglob("*") if ".tmp" in p.name]


def test_run_group_stats_bad_input(tmp_path):
    df = cohort(0)
    df.loc[df["participant_id"] == "sub-03", "tspo_genotype"] = "HXB"
    regional = tmp_path / "group" / "regional.tsv"
    write_tsv(df, regional)
    with pytest.raises(StatsError) as ei:
        run_group_stats(regional, tmp_path, StatsSettings(n_permutations=0))
    assert ei.value.field == "tspo_genotype" and "HXB" in str(ei.value)
    assert str(regional) in str(ei.value)
    with pytest.raises(StatsError):
        run_group_stats(tmp_path / "missing.tsv", tmp_path, StatsSettings())
    df = cohort(0)
    write_tsv(df, regional)
    with pytest.raises(StatsError) as ei:
        run_group_stats(regional, tmp_path, StatsSettings(n_permutations=0), maps={"suvr": []})
    assert ei.value.field == "mask"


def test_missing_clinical_score_skips_correlations_only(tmp_path):
    df = cohort(0).drop(columns="fatigue")
    regional = tmp_path / "group" / "regional.tsv"
    write_tsv(df, regional)
    res = run_group_stats(regional, tmp_path, StatsSettings(n_permutations=0))
    assert (tmp_path / "group" / "stats_regional.tsv").is_file()
    assert not (tmp_path / "group" / "stats_correlation.tsv").exists()
    (w,) = res["summary"]["warnings"]
    assert w["step"] == "correlation" and w["field"] == "fatigue"
