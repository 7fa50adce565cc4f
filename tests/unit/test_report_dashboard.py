"""Cohort dashboard: sessions to look at, failures with reasons, group results, graceful gaps."""
from __future__ import annotations

import base64
import io
import os
import re

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gliaflow.pipeline.io.derivatives import write_tsv  # noqa: E402
from gliaflow.pipeline.report.dashboard import sessions_table, write_cohort_dashboard  # noqa: E402
from gliaflow.pipeline.report.sample import sample_cohort, sample_provenance, sample_voxelwise  # noqa: E402

from test_report import _calls  # noqa: E402  (records as data)

GROUP_RECORDS = _calls(
    ("regional group comparison", "gliaflow", "9.9", "gliaflow.pipeline.stats.design.fit_ols"),
    ("regional group comparison", "SciPy", "1.13.1", "scipy.stats.t"),
    ("clinical correlation", "gliaflow", "9.9", "gliaflow.pipeline.stats.regional.partial_correlation"),
    ("voxelwise group comparison", "gliaflow", "9.9",
     "gliaflow.pipeline.stats.voxelwise.permutation_glm(n_permutations=1000, tfce=True)"))


def _section(html: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert m, anchor
    return m.group(1)


def _n_images(html: str) -> int:
    n = 0
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        img = mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png")
        assert img.shape[0] > 50 and img.shape[1] > 50
        n += 1
    return n


@pytest.fixture(scope="module")
def cohort():
    return sample_cohort(n_per_group=6, seed=1)


@pytest.fixture(scope="module")
def dashboard(cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    sess = cohort["sessions"].copy()
    (root / "sub-01").mkdir()
    (root / "sub-01" / "report.html").write_text("<html></html>")
    sess["report"] = ""
    sess.loc[0, "report"] = str(root / "sub-01" / "report.html")  # absolute -> relative link
    sess.loc[1, "report"] = "sub-02/report.html"  # does not exist
    out = write_cohort_dashboard(root / "group" / "dashboard.html", sessions=sess, regional=cohort["regional"],
                                 stats_regional=cohort["stats_regional"],
                                 stats_correlation=cohort["stats_correlation"],
                                 voxelwise=sample_voxelwise(root / "group"), dpi=50,
                                 stats_settings={"fdr_alpha": 0.05, "group_column": "group"},
                                 provenance=sample_provenance() + GROUP_RECORDS)
    return out, out.read_text(), sess


def test_sessions_needing_a_look(dashboard):
    _, html, sess = dashboard
    ov = _section(html, "overview")
    look = re.search(r"Sessions that need a look</h3><ul>(.*?)</ul>", ov, re.S).group(1)
    listed = set(re.findall(r"<b>(sub-\d+_ses-baseline)</b>", look))
    # the sample cohort has a moving session (index 3), a poor registration (5), a failure, a skip
    expected = {sess.session_id[3], sess.session_id[5]} | set(sess.session_id[sess.status != "done"])
    assert listed == expected
    assert "BloodDataError: plasma.tsv: column &#x27;time&#x27; missing" in look
    assert "motion outlier: mean_fd_mm = 2.9" in look
    table = _section(html, "sessions")
    assert table.count('class="num bad"') >= 3  # mean_fd, max_fd, similarity cells
    failed = _section(html, "failed")
    assert "skipped" in failed and "BIDSError: no T1w image" in failed


def test_links_to_session_reports(dashboard):
    out, html, _ = dashboard
    hrefs = re.findall(r'<a href="([^"#][^"]*)">', html)
    assert hrefs == ["../sub-01/report.html"]
    assert (out.parent / hrefs[0]).resolve().exists()
    assert "sub-02/report.html (not found)" in html


def test_group_result_headline_matches_stats(dashboard, cohort):
    _, html, _ = dashboard
    st = cohort["stats_regional"]
    for metric, sub in st.groupby("metric"):
        top = sub.loc[sub["hedges_g"].abs().idxmax()]
        nsig = int((sub["p_fdr"] < 0.05).sum())
        assert (f"<b>{metric}</b>: {nsig} of {len(sub)} regions with p_fdr &lt; 0.05; largest effect in "
                f"<b>{top['region']}</b>: Hedges' g = {top['hedges_g']:.2f}") in html
    corr = cohort["stats_correlation"]
    best = corr.loc[corr["p"].idxmin()]
    assert f"with fatigue: r = {best['r']:.2f}" in html and f"<b>{best['region']}</b>" in html


def test_figures_and_tables(dashboard):
    _, html, _ = dashboard
    # outliers, effect sizes, 2 metrics by group x genotype, clinical scatter, voxelwise
    assert _n_images(html) == 6
    assert "Frontal Pole" in _section(html, "voxelwise")
    assert "not available" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    methods = _section(html, "methods")
    # the cohort's methods: the sessions' steps and the group step's, from the union of records
    assert "Benjamini" in methods and "N4" in methods and "Partial correlations" in methods
    assert "threshold-free cluster enhancement" in methods and "Smith SM, Nichols TE" in methods
    assert "Nipype" not in methods and "statsmodels" not in methods
    assert "partial_correlation" in methods  # the What ran table


def test_minimal_inputs_and_group_step_layout(cohort, tmp_path):
    # only a ledger: every group section says not available, nothing crashes
    sess = pd.DataFrame({"session_id": ["a", "b"], "status": ["done", "failed"], "error": ["", "x"]})
    html = write_cohort_dashboard(tmp_path / "d1.html", sessions=sess).read_text()
    for anchor in ("effects", "genotype", "clinical", "voxelwise", "methods"):
        assert "not available" in _section(html, anchor)
    assert "<b>b</b>: failed: x" in html
    # tables as TSV paths and the flat voxelwise mapping written by pipeline.stats
    reg = write_tsv(cohort["regional"], tmp_path / "regional.tsv")
    st = write_tsv(cohort["stats_regional"], tmp_path / "stats_regional.tsv")
    vox = sample_voxelwise(tmp_path)
    flat = {"suvr:z": vox["maps"]["suvr patient > control (z)"],
            "suvr:clusters": vox["clusters"]["suvr patient > control (z)"],
            "suvr:t": tmp_path / "ignored_t.nii.gz"}
    html = write_cohort_dashboard(tmp_path / "d2.html", sessions=cohort["sessions"], regional=reg,
                                  stats_regional=st, stats_correlation=None, voxelwise=flat,
                                  dpi=40).read_text()
    vsec = _section(html, "voxelwise")
    assert "suvr:z" in vsec and "ignored_t" not in vsec and "Frontal Pole" in vsec
    assert "not available" in _section(html, "clinical")
    assert "not available" not in _section(html, "effects")


def test_uptake_outlier_from_regional_table(cohort, tmp_path):
    reg = cohort["regional"].copy()
    sid = reg["session_id"].iloc[0]
    reg.loc[(reg.session_id == sid) & (reg.region == "thalamus"), "suvr"] *= 3
    html = write_cohort_dashboard(tmp_path / "d.html", sessions=cohort["sessions"], regional=reg,
                                  stats_regional=None, stats_correlation=None, voxelwise=None).read_text()
    look = _section(html, "overview")
    assert re.search(rf"<b>{sid}</b>: [^<]*suvr in thalamus: robust z \+\d", look)
    assert np.isfinite(reg["suvr"]).all()


def test_sessions_table_from_ledger(tmp_path):
    ledger = pd.DataFrame({"session_id": ["a", "b", "c"], "participant_id": ["1", "2", "3"],
                           "status": ["done", "done", "failed"], "error_kind": ["", "", "ImageError"],
                           "error": ["", "", "empty PET"], "seconds": [10.0, 12.0, 1.0]})
    path = write_tsv(ledger, tmp_path / "ledger.tsv")
    qc = {"a": {"pet_motion": {"mean_fd_mm": 0.3, "n_frames_registered": 20}, "coreg": {"similarity": 0.4},
                "anat": {"volumes": {"gm": 6e5}}, "labels_tacs": {"volumes": {"gm": 5e5}}},
          "b": {"pet_motion": {"mean_fd_mm": 0.5, "note": "text"}, "coreg": {"similarity": 0.2}}}
    s = sessions_table(path, qc, flags={"b": ["coreg_suspect"]}, reports={"a": "a.html"})
    row_a = s.set_index("session_id").loc["a"]
    assert row_a["mean_fd_mm"] == 0.3 and row_a["similarity"] == 0.4
    assert row_a["anat.volumes.gm"] == 6e5 and row_a["labels_tacs.volumes.gm"] == 5e5  # same leaf: dotted
    assert "note" not in s.columns
    assert list(s["flags"]) == ["", "coreg_suspect", ""] and list(s["report"]) == ["a.html", "", ""]
    assert s.set_index("session_id").loc["c", "error"] == "ImageError: empty PET"
    html = write_cohort_dashboard(tmp_path / "d.html", sessions=s).read_text()
    assert "<b>b</b>: flags: coreg_suspect" in html and "<b>c</b>: failed: ImageError: empty PET" in html
