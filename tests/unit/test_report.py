"""HTML helpers, methods boilerplate and robust outlier scoring (fast, no figures)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.report.dashboard import qc_outliers, robust_z
from gliaflow.pipeline.report.html import figure, kv_table, page, table
from gliaflow.pipeline.report.methods import (REFERENCES, group_methods_text, methods_html, methods_text,
                                              stages_from_outputs, tool_versions)


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


def test_stages_from_outputs():
    assert stages_from_outputs({"motion_tsv": 1, "tacs": 1}) == ["pet_motion", "labels_tacs"]
    assert stages_from_outputs({"map_suvr": 1}) == ["kinetics"]
    assert stages_from_outputs({}) == []


def _numbers(paragraphs):
    return [int(n) for p in paragraphs for group in re.findall(r"\[([\d, ]+)\]", p)
            for n in group.split(",")]


def test_methods_follow_what_ran_and_the_settings():
    cfg = PipelineConfig()
    cfg.kinetics.tstar_min = 25
    cfg.tacs.pvc = "none"
    cfg.motion.fd_radius_mm = 65
    paras, cited = methods_text(cfg.model_dump(mode="json"), ["pet_motion", "labels_tacs", "kinetics"],
                                tracer="[11C]PBR28", versions={"gliaflow": "9.9", "ANTsPy": "0.6.3"})
    text = " ".join(paras)
    assert "gliaflow 9.9" in text and "ANTsPy 0.6.3" in text
    assert "t* = 25 min" in text and "radius 65 mm" in text
    assert "No partial-volume correction" in text and "rousset1998" not in cited
    assert "Atropos" not in text and "avants2011" not in cited  # anat did not run
    assert {"logan1990", "ichise2002", "feng1993", "albrecht2019", "power2012"} <= set(cited)
    # citation numbers are 1..n in order of first use, one reference per number
    nums = _numbers(paras)
    assert sorted(set(nums)) == list(range(1, len(cited) + 1))
    assert nums[0] == 1
    html = methods_html(paras, cited)
    assert html.count("<li>") == len(cited)
    assert REFERENCES["albrecht2019"].split(".")[0] in html


def test_methods_full_run_cites_registration_and_segmentation():
    cfg = PipelineConfig().model_dump(mode="json")
    paras, cited = methods_text(cfg, ["anat", "pet_motion", "coreg", "labels_tacs", "kinetics"],
                                tracer="[18F]DPA-714")
    assert {"tustison2010", "avants2011", "avants2008", "rousset1998"} <= set(cited)
    assert "albrecht2019" not in cited  # not a PBR28 study
    assert "geometric transfer matrix" in " ".join(paras)
    gparas, gcited = group_methods_text(cfg["stats"])
    assert "benjamini1995" in gcited and "hedges1981" in gcited and "smith2009" in gcited


def test_tool_versions_reads_installed_distributions():
    v = tool_versions()
    import nibabel
    import numpy

    assert v["NiBabel"] == nibabel.__version__ and v["NumPy"] == numpy.__version__
    assert "gliaflow" in v


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
