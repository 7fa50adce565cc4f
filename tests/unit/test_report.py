"""HTML helpers, methods boilerplate and robust outlier scoring (fast, no figures)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.report.dashboard import qc_outliers, robust_z
from gliaflow.pipeline.report.html import figure, kv_table, page, table
from gliaflow.pipeline.kinetics.regional import MODEL_INTERFACES
from gliaflow.pipeline.provenance import (STEP_GROUP_REGIONAL, STEP_GROUP_VOXELWISE, STEP_KINETICS,
                                          STEP_PVC, ToolCall)
from gliaflow.pipeline import __version__
from gliaflow.pipeline.report.methods import methods_html, methods_text, provenance_table
from gliaflow.pipeline.report.sample import sample_provenance


def test_table_and_page_escape_text_and_load_nothing_external():
    df = pd.DataFrame({"name": ["<script>alert(1)</script>", "a&b"], "value": [1.23456789, np.nan]})
    html = page("t <x>", table(df) + kv_table({"k": "<b>"}))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "a&amp;b" in html and "&lt;b&gt;" in html
    assert "1.235" in html  # 4 significant digits
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert 'rel="icon" href="data:,"' in html  # no favicon request


def test_figure_embeds_png_as_data_uri():
    html = figure(b"\x89PNG\r\n\x1a\nfake", "alt <text>", "cap")
    assert html.startswith('<figure><img src="data:image/png;base64,iVBORw0KG')
    assert 'alt="alt &lt;text&gt;"' in html


ANTSPY = "ANTsPy 0.6.3"


def _numbers(paragraphs):
    return [int(n) for p in paragraphs for group in re.findall(r"\[([\d, ]+)\]", p)
            for n in group.split(",")]


def _calls(*rows):
    """ToolCall records given as data (step, tool, version, interface[, command])."""
    return [ToolCall(step=r[0], tool=r[1], version=r[2], interface=r[3],
                     command=r[4] if len(r) > 4 else None) for r in rows]


def test_methods_from_ants_records_name_only_what_ran():
    paras, cited = methods_text(sample_provenance(), PipelineConfig().model_dump(mode="json"),
                                tracer="[18F]DPA-714")
    text = " ".join(paras)
    assert f"gliaflow {__version__}" in text and "ANTs (ANTsPy 0.6.3)" in text and "SciPy 1.13.1" in text
    assert "N4" in text and "Atropos" in text and "SyN" in text
    assert {"tustison2010", "avants2011", "avants2008", "avants2011metric", "tustison2021",
            "rousset1998", "logan1990", "virtanen2020"} <= set(cited)
    for absent in ("Nipype", "FSL", "statsmodels", "NiBabel", "Nilearn", "Prefect", "Dask", "NumPy"):
        assert absent not in text, absent
    assert not {"gorgolewski2011", "jenkinson2012", "harris2020", "feng1993"} & set(cited)
    assert "geometric transfer matrix" in text and "2TCM" in text and "Logan" in text
    assert "MA1" not in text and "SRTM" not in text  # models that did not run
    assert "albrecht2019" not in cited  # not a PBR28 study
    # citation numbers are 1..n in order of first use, one reference per number
    nums = _numbers(paras)
    assert list(dict.fromkeys(nums)) == list(range(1, len(cited) + 1))
    html = methods_html(paras, cited)
    assert html.count("<li>") == len(cited)


def test_methods_cite_fsl_and_nipype_only_when_they_ran():
    cmd = "mcflirt -in /w/pet.nii.gz -reffile /w/ref.nii.gz -mats -plots"
    calls = _calls(("frame realignment", "FSL", "6.0.7.9", "nipype.interfaces.fsl.MCFLIRT", cmd),
                   ("frame realignment", "Nipype", "1.8.6", "nipype.interfaces.fsl.MCFLIRT"),
                   ("PET-to-T1w registration", "ANTs", ANTSPY,
                    "ants.registration(type_of_transform='Rigid', aff_metric='mattes')"))
    paras, cited = methods_text(calls, {})
    text = " ".join(paras)
    assert "MCFLIRT" in text and "FSL 6.0.7.9" in text and "Nipype 1.8.6" in text
    assert {"jenkinson2002", "jenkinson2012", "gorgolewski2011", "avants2011metric"} <= set(cited)
    assert "Atropos" not in text and "avants2011" not in cited  # anat did not run
    table = provenance_table(calls)
    assert list(table.columns) == ["step", "tool", "version", "interface", "count", "command"]
    assert table.loc[table["tool"] == "FSL", "command"].item() == cmd
    # a Nipype interface without a Nipype record still cites Nipype, without a version
    paras, cited = methods_text(calls[:1], {})
    assert "gorgolewski2011" in cited and "Software that ran: FSL 6.0.7.9 [" in paras[-1]


def test_methods_follow_the_settings_of_the_recorded_steps():
    cfg = PipelineConfig()
    cfg.kinetics.tstar_min = 25
    cfg.motion.fd_radius_mm = 65
    calls = [c for c in sample_provenance() if c.step != STEP_PVC] + _calls(
        (STEP_KINETICS, "gliaflow", "9.9", MODEL_INTERFACES["ma1"]))
    paras, cited = methods_text(calls, cfg.model_dump(mode="json"), tracer="[11C]PBR28")
    text = " ".join(paras)
    assert "t* = 25 min" in text and "radius 65 mm" in text
    assert "No partial-volume correction" in text and "rousset1998" not in cited
    assert {"ichise2002", "albrecht2019", "power2012"} <= set(cited)
    assert methods_text([], cfg.model_dump(mode="json")) == ([], [])


def test_group_methods_from_group_records():
    cfg = PipelineConfig().model_dump(mode="json")
    calls = _calls((STEP_GROUP_REGIONAL, "gliaflow", "9.9", "gliaflow.pipeline.stats.design.fit_ols"),
                   (STEP_GROUP_VOXELWISE, "gliaflow", "9.9",
                    "gliaflow.pipeline.stats.voxelwise.permutation_glm(n_permutations=1000, tfce=True)"))
    paras, cited = methods_text(calls, cfg)
    assert {"benjamini1995", "hedges1981", "smith2009", "winkler2014"} <= set(cited)
    assert "Partial correlations" not in " ".join(paras)  # no correlation record
    paras, cited = methods_text(calls[:1], cfg)
    assert "smith2009" not in cited and "Voxelwise" not in " ".join(paras)


def test_robust_z_matches_definition():
    x = np.array([1.0, 2, 3, 4, 100])
    z = robust_z(x)
    med, mad = 3.0, 1.0
    np.testing.assert_allclose(z, 0.6745 * (x - med) / mad)
    # MAD of 0: mean absolute deviation fallback
    y = np.array([5.0, 5, 5, 5, 9])
    zy = robust_z(y)
    np.testing.assert_allclose(zy[-1], 4 / (1.253314 * 0.8))
    assert np.all(zy[:4] == 0)
    assert np.all(robust_z(np.ones(6)) == 0)
    zn = robust_z([1.0, np.nan, 2, 3, 4])
    assert np.isnan(zn[1]) and np.isfinite(zn[[0, 2, 3, 4]]).all()
    assert np.isnan(robust_z([1.0, 2.0])).all()  # too few values to judge


def test_qc_outliers_reasons():
    rng = np.random.default_rng(3)
    n = 12
    spread = np.linspace(-1, 1, n)  # evenly spread values: no accidental outliers

    s = pd.DataFrame({"session_id": [f"s{i}" for i in range(n)], "status": "done", "error": "",
                      "mean_fd_mm": 0.3 + 0.03 * rng.permutation(spread),
                      "coreg_similarity": 0.45 + 0.01 * rng.permutation(spread),
                      "seconds": 500 + 400 * spread})
    s.loc[2, "mean_fd_mm"] = 3.0  # large motion
    s.loc[3, "mean_fd_mm"] = 0.01  # very still: not a reason to look
    s.loc[4, "coreg_similarity"] = 0.1  # poor registration
    s.loc[5, "seconds"] = 1e6  # housekeeping column: never scored
    s.loc[len(s)] = {"session_id": "bad", "status": "failed", "error": "ModelError: no fit"}
    regional = pd.DataFrame([{"session_id": f"s{i}", "region": r, "suvr": 1.0 + 0.02 * spread[(i + k) % n]}
                             for i in range(n) for k, r in enumerate(("a", "b"))])
    regional.loc[(regional.session_id == "s7") & (regional.region == "b"), "suvr"] = 3.0
    z, reasons = qc_outliers(s, regional)
    assert "bad" not in z.index and list(z.columns) == ["mean_fd_mm", "coreg_similarity", "mean suvr"]
    assert any("mean_fd_mm" in r for r in reasons["s2"])
    assert reasons["s3"] == []
    assert any("coreg_similarity" in r for r in reasons["s4"])
    assert reasons["s5"] == []
    assert any("suvr in b" in r for r in reasons["s7"])
    assert reasons["bad"] == ["failed: ModelError: no fit"]
    flagged = {k for k, v in reasons.items() if v}
    assert flagged == {"s2", "s4", "s7", "bad"}


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_qc_outliers_without_qc_columns(status):
    s = pd.DataFrame({"session_id": ["a", "b"], "status": ["done", status], "error": ["", "why"]})
    z, reasons = qc_outliers(s)
    assert z.shape == (1, 0)
    assert reasons == {"a": [], "b": [f"{status}: why"]}


def _fsl_records():
    """Records as the FSL engine writes them: FSL with the binary and its command line, and the
    Nipype interface that ran it."""
    rows = [("frame realignment", "mcflirt", "MCFLIRT", "mcflirt -in frames.nii.gz -reffile ref.nii.gz -mats"),
            ("PET-to-T1w registration", "flirt", "FLIRT", "flirt -in pet.nii.gz -ref t1.nii.gz -dof 6"),
            ("brain extraction", "bet", "BET", "bet t1.nii.gz t1_brain.nii.gz -R -m"),
            ("tissue segmentation", "fast", "FAST", "fast -t 1 -n 3 t1_brain.nii.gz"),
            ("template normalization", "fnirt", "FNIRT", "fnirt --in=t1.nii.gz --ref=mni.nii.gz")]
    calls = []
    for step, binary, iface, cmd in rows:
        calls += _calls((step, "FSL", "6.0.7.9", binary, cmd),
                        (step, "Nipype", "1.8.6", f"nipype.interfaces.fsl.{iface}"))
    return calls


def test_methods_cite_fsl_tools_and_nipype_from_engine_records():
    paras, cited = methods_text(_fsl_records(), PipelineConfig().model_dump(mode="json"))
    text = " ".join(paras)
    assert {"jenkinson2012", "jenkinson2002", "smith2002", "zhang2001", "andersson2007",
            "gorgolewski2011"} <= set(cited)
    for name in ("MCFLIRT", "FLIRT", "BET", "FAST", "FNIRT"):
        assert f"{name} [" in text
    # the Nipype record is said as the wrapper, not as a method of its own
    assert "through Nipype 1.8.6" in text and "nipype.interfaces.fsl" not in text
    # without FNIRT records, no FNIRT citation
    _, cited = methods_text(_fsl_records()[:8], {})
    assert "andersson2007" not in cited and "zhang2001" in cited


def test_what_ran_table_shows_fsl_command_lines():
    df = provenance_table(_fsl_records())
    fsl = df[df["tool"] == "FSL"].set_index("interface")
    assert fsl.loc["mcflirt", "command"].startswith("mcflirt -in frames.nii.gz")
    assert (df[df["tool"] == "Nipype"]["command"] == "").all()
