"""Per-session report: every section drawn from real files; missing and broken inputs degrade."""
from __future__ import annotations

import base64
import io
import json
import os
import re

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib.image as mpimg  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gliaflow.pipeline.config import PipelineConfig  # noqa: E402
from gliaflow.pipeline.report import figures as F  # noqa: E402
from gliaflow.pipeline.report.sample import SAMPLE_SIDECAR, sample_provenance, sample_session  # noqa: E402
from gliaflow.pipeline.report.session_report import reference_masks, write_session_report  # noqa: E402

SECTIONS = ["summary", "qc", "motion", "coreg", "segmentation", "atlas", "refmasks", "tacs", "fits",
            "metrics", "maps", "provenance", "methods", "errors"]


def _images(html: str) -> list[np.ndarray]:
    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        out.append(mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png"))
    return out


def _section(html: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert m, anchor
    return m.group(1)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return sample_session(tmp_path_factory.mktemp("ses") / "pet")


@pytest.fixture(scope="module")
def full_report(outputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "sub-01_report.html"
    cfg = PipelineConfig()
    cfg.report.dpi = 50
    path = write_session_report(out, session_id="sub-01_ses-baseline", sidecar=SAMPLE_SIDECAR,
                                outputs=outputs, qc={"mean_fd_mm": 0.31, "anat": {"gm_mm3": 6.1e5}},
                                flags=["coreg_suspect"], config=cfg.model_dump(mode="json"),
                                errors=[], warnings=["tacs: <region> small"],
                                provenance=[c.model_dump() for c in sample_provenance()])
    return path, path.read_text()


def test_full_report_has_every_section_with_a_figure(full_report):
    path, html = full_report
    assert [a for a in SECTIONS if f'<section id="{a}">' not in html] == []
    assert "not available" not in html
    imgs = _images(html)
    assert len(imgs) == 9  # motion, coreg, seg, atlas, refs, TACs, fits, Logan, maps
    assert all(i.ndim == 3 and i.shape[0] > 50 and i.shape[1] > 100 for i in imgs)
    # figures are not blank: real pixel variation
    assert all(float(i[..., :3].std()) > 0.02 for i in imgs)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert path.stat().st_size < 1_500_000
    # no temp files left next to the report (atomic write)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_full_report_content(full_report, outputs):
    _, html = full_report
    summary = _section(html, "summary")
    assert "[11C]PBR28" in summary and "370.5 MBq" in summary and "<td>15</td>" in summary
    assert "coreg_suspect" in _section(html, "qc") and "anat.gm_mm3" in _section(html, "qc")
    assert "&lt;region&gt; small" in _section(html, "errors")  # warnings are escaped
    # motion summary numbers come from the motion table
    fd = pd.read_csv(outputs["motion_tsv"], sep="\t")["framewise_displacement"]
    assert f"{fd.max():.4g}" in _section(html, "motion")
    # the PET was resampled through the transform, not overlaid by header
    assert "resampled with from-petref_to-T1w" in _section(html, "coreg")
    # regional metrics table lists every region of the TSV
    metrics = pd.read_csv(outputs["regional_metrics"], sep="\t")
    sec = _section(html, "metrics")
    assert all(f"<td>{r}</td>" in sec for r in metrics["region"])
    # reference-region volumes: whole brain larger than the others
    refs = _section(html, "refmasks")
    assert "whole_brain (mL)" in refs and "cerebellum_gm (mL)" in refs
    methods = _section(html, "methods")
    assert "Rousset" in methods and "Logan" in methods and "Albrecht" in methods
    assert "t* = 30 min" in methods and "ANTs (ANTsPy 0.6.3)" in methods
    assert "Nipype" not in methods and "FSL" not in methods and "statsmodels" not in methods
    ran = _section(html, "provenance")
    assert "ants.n4_bias_field_correction" in ran and "scipy.optimize.least_squares" in ran
    assert ran.count("<tr>") == len(sample_provenance()) + 1  # header + one row per record


def test_missing_and_broken_inputs_degrade(outputs, tmp_path):
    bad_fits = tmp_path / "fits.tsv"
    bad_fits.write_text("a\tb\n1\t2\n")
    bad_nii = tmp_path / "broken.nii.gz"
    bad_nii.write_bytes(b"not a nifti")
    outs = {"motion_tsv": outputs["motion_tsv"], "fits_tsv": bad_fits, "petref": bad_nii,
            "t1w_preproc": outputs["t1w_preproc"], "tacs": tmp_path / "absent.tsv"}
    out = write_session_report(tmp_path / "r" / "report.html", session_id="sub-02", sidecar={},
                               outputs=outs, qc={}, flags=[], config={},
                               errors=["ImageError: <petref> is empty"])
    html = out.read_text()
    assert len(_images(html)) == 1  # only the motion plot can be drawn
    assert "fit table columns not recognised" in _section(html, "fits")
    assert "not available" in _section(html, "coreg")  # unreadable PET: a note, not a crash
    assert "missing tacs" in _section(html, "tacs")
    assert "missing regional_metrics" in _section(html, "metrics")
    assert "no provenance records" in _section(html, "provenance")
    assert "no provenance records" in _section(html, "methods")  # no text about what did not run
    errs = _section(html, "errors")
    assert "&lt;petref&gt; is empty" in errs and "Kinetic model fits" in errs
    assert '<section id="failure">' in html
    assert ">NO<" in _section(html, "summary")  # the absent file is marked


def test_pet_in_t1_applies_the_transform(outputs):
    """The overlay uses the rigid transform: the resampled PET centre moves by the translation."""
    with_xfm, note = F.pet_in_t1(outputs["petref"], outputs["t1w_preproc"], outputs["xfm_petref_to_t1w"])
    header, note2 = F.pet_in_t1(outputs["petref"], outputs["t1w_preproc"], None)
    assert "resampled" in note and "scanner coordinates" in note2

    def com_x(img):
        d = np.asarray(img.dataobj, float)
        ijk = np.argwhere(d > d.max() * 0.3).mean(axis=0)
        return nib.affines.apply_affine(img.affine, ijk)[0]

    # the sample PET brain sits 2 mm to +x; the ITK transform maps T1 points to PET points
    # (x_pet = x_t1 - 2 mm); resampling with it moves the brain by 2 mm relative to the header overlay
    shift = com_x(with_xfm) - com_x(header)
    assert abs(abs(shift) - 2.0) < 0.5


def test_reference_masks_forms(tmp_path, outputs):
    per_key = reference_masks(outputs)  # ref_<name> keys of the labels_tacs stage
    assert sorted(per_key) == ["cerebellum_gm", "occipital_cortex", "whole_brain"]
    o4 = sample_session(tmp_path / "four", ref_masks_4d=True)
    four_d = reference_masks({"ref_masks": o4["ref_masks"]})
    assert list(four_d) == ["whole_brain", "occipital_cortex", "cerebellum_gm"]
    for name in four_d:
        np.testing.assert_array_equal(np.asarray(four_d[name].dataobj),
                                      np.asarray(per_key[name].dataobj))
    aff = np.eye(4)
    lab = np.zeros((8, 8, 8), np.int16)
    lab[1:3], lab[5:7] = 1, 2
    p = tmp_path / "desc-ref_dseg.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), p)
    (tmp_path / "desc-ref_dseg.json").write_text(json.dumps({"labels": {"1": "wb", "2": "cb"}}))
    m = reference_masks({"ref_masks": p, "ref_mask_extra": p})
    assert sorted(m) == ["cb", "extra", "wb"]
    assert int(np.asarray(m["wb"].dataobj).sum()) == 2 * 64
    d = tmp_path / "masks"
    d.mkdir()
    nib.save(nib.Nifti1Image((lab == 1).astype(np.uint8), aff), d / "sub-01_label-occipital_mask.nii.gz")
    assert list(reference_masks({"ref_masks": d})) == ["occipital"]


def test_model_curves_recomputed_from_parameters(full_report, outputs):
    """The report rebuilds the 1TCM curves from the parameter table and the plasma input: with the
    generating parameters the residual is the 3% measurement noise, not a unit or timing error."""
    from gliaflow.pipeline.report.curves import logan_points, tcm_curves

    params = pd.read_csv(outputs["fits_tsv"], sep="\t")
    tacs = pd.read_csv(outputs["tacs"], sep="\t")
    plasma = pd.read_csv(outputs["plasma_tsv"], sep="\t")
    curves = tcm_curves(params, tacs, plasma)
    one = curves[curves.model == "1tcm"]
    rel = (one.measured - one.fitted) / one.fitted
    late = one.frame_start >= 600
    assert 0.01 < float(rel[late].std()) < 0.05 and abs(float(rel[late].mean())) < 0.03
    # the 2TCM fit that did not converge (thalamus) draws no curve
    assert set(curves[curves.model == "2tcm"].region) == set(params.region) - {"thalamus"}
    # Logan: late points lie on the line VT x + intercept of the 1TCM truth
    pts = logan_points(params, tacs, plasma, tstar_min=30)
    used = pts[pts.used]
    assert float(((used.y - used.line).abs() / used.y.abs()).median()) < 0.1
    _, html = full_report
    fits = _section(html, "fits")
    assert "recomputed from the fitted parameters" in fits and "k4 at bound" in fits


def test_fits_long_accepts_common_layouts():
    df = pd.DataFrame({"Model": ["1tcm"] * 2, "Region": ["a", "a"], "time_s": [60.0, 120.0],
                       "observed": [1.0, 2.0], "predicted": [1.1, 1.9]})
    long = F.fits_long(df)
    assert list(long.columns) == ["model", "region", "t_min", "measured", "fitted"]
    np.testing.assert_allclose(long["t_min"], [1.0, 2.0])
    with pytest.raises(ValueError, match="no time column"):
        F.fits_long(df.drop(columns="time_s"))


def test_fit_curves_file_is_used_when_given(outputs, tmp_path):
    """A long curve table (fit_curves_tsv) is drawn as given; the parameter table still feeds the
    Logan plot and the outcome table."""
    from gliaflow.pipeline.io.derivatives import write_tsv

    tacs = pd.read_csv(outputs["tacs"], sep="\t")
    region = "frontal"
    curves = pd.DataFrame({"model": "1tcm", "region": region, "frame_start": tacs.frame_start,
                           "frame_end": tacs.frame_end, "measured": tacs[region], "fitted": tacs[region] * 0.5})
    outs = dict(outputs, fit_curves_tsv=write_tsv(curves, tmp_path / "curves.tsv"))
    html = write_session_report(tmp_path / "r.html", session_id="s", sidecar={}, outputs=outs, qc={},
                                flags=[], config={"report": {"dpi": 40}}, errors=[]).read_text()
    fits = _section(html, "fits")
    assert "as written by the kinetics stage" in fits and "Logan plots" in fits
    # RMS of measured - 0.5 measured over the frames, reported for the one region and model
    rms = float(np.sqrt(np.mean((0.5 * tacs[region]) ** 2)))
    assert f"{rms:.4g}" in fits


def test_what_ran_shows_fsl_command_lines_and_methods_cite_fsl(tmp_path):
    from gliaflow.pipeline.provenance import ToolCall

    cmd = "mcflirt -in frames.nii.gz -reffile reference.nii.gz -cost normmi -dof 6 -mats"
    calls = [ToolCall(step="frame realignment", tool="FSL", version="6.0.7.9", interface="mcflirt", command=cmd),
             ToolCall(step="frame realignment", tool="Nipype", version="1.8.6",
                      interface="nipype.interfaces.fsl.MCFLIRT")]
    html = write_session_report(tmp_path / "r.html", session_id="s", sidecar={}, outputs={}, qc={},
                                flags=[], config={"report": {"dpi": 40}}, errors=[],
                                provenance=calls).read_text()
    assert cmd in _section(html, "provenance")
    methods = _section(html, "methods")
    assert "MCFLIRT" in methods and "Jenkinson M, Bannister P" in methods and "Nipype: a flexible" in methods
