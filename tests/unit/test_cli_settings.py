"""BIDS-App analysis flags of ``gliaflow run``/``submit``, and the statistics settings checked
against participants.tsv by ``gliaflow validate``, ``run`` and ``submit`` before any work."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bidsfactory as bf  # noqa: E402

from gliaflow.pipeline.config import load_config, stage_hash  # noqa: E402
from gliaflow.pipeline.errors import ConfigError  # noqa: E402
from gliaflow.workflows.cli.main import build_parser, main as cli_main  # noqa: E402
from gliaflow.workflows.cli.run import build_config, check_settings, setting_overrides  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("GLIAFLOW_"):
            monkeypatch.delenv(k)


def fm_hc_dataset(root: Path, n: int = 6, **kw) -> Path:
    """A BIDS-PET dataset whose participants.tsv groups are FM (patients) and HC (controls)."""
    root = bf.make_dataset(root, subjects=tuple(f"{i:02d}" for i in range(1, n + 1)), **kw)
    df = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    df["group"] = df["group"].map({"patient": "FM", "control": "HC"})
    rows = [{k: (None if v == "n/a" else v) for k, v in r.items()} for r in df.to_dict("records")]
    bf.write_participants(root, rows, sidecar={"group": {"Levels": {"FM": "fibromyalgia",
                                                                    "HC": "healthy control"}}})
    return root


def parsed(*argv):
    return build_parser().parse_args(list(argv))


def run_args(tmp_path, *flags):
    return parsed("run", str(tmp_path / "bids"), str(tmp_path / "out"), "all", *flags)


DEFAULT = load_config()

# flag -> (the effective setting it reaches, the value, the stage whose cache key it changes)
FLAGS = [
    (["--atlas", "aal"], lambda c: c.atlas.name, "aal", "labels_tacs"),
    (["--reference-region", "cerebellum_gm"], lambda c: c.kinetics.reference_region,
     "cerebellum_gm", "kinetics"),
    (["--pvc", "rbv"], lambda c: c.tacs.pvc, "rbv", "labels_tacs"),
    (["--psf-fwhm", "4.5"], lambda c: c.tacs.psf_fwhm_mm, 4.5, "labels_tacs"),
    (["--models", "suv", "suvr", "srtm"], lambda c: c.kinetics.models, ["suv", "suvr", "srtm"],
     "kinetics"),
    (["--group-column", "diagnosis"], lambda c: c.stats.group_column, "diagnosis", "group"),
    (["--group-labels", "FM", "HC"], lambda c: (c.stats.patient_label, c.stats.control_label),
     ("FM", "HC"), "group"),
]


@pytest.mark.parametrize("argv,get,value,stage", FLAGS, ids=[f[0][0] for f in FLAGS])
def test_flag_reaches_effective_config_and_cache_key(tmp_path, argv, get, value, stage):
    cfg = build_config(run_args(tmp_path, *argv))
    assert get(cfg) == value
    assert get(DEFAULT) != value
    # the stage that uses the setting is not taken from the cache of a default run
    assert stage_hash(cfg, stage) != stage_hash(DEFAULT, stage)


def test_models_flag_keeps_only_maps_of_those_models(tmp_path):
    assert DEFAULT.kinetics.maps == ["suv", "suvr", "logan", "ma1"]
    assert build_config(run_args(tmp_path, "--models", "suvr", "2tcm")).kinetics.maps == ["suvr"]
    assert build_config(run_args(tmp_path, "--models", "logan", "1tcm")).kinetics.maps == ["logan"]
    with pytest.raises(SystemExit):
        run_args(tmp_path, "--models", "nonsense")


def test_models_flag_changes_which_sessions_are_valid(tmp_path, capsys):
    """Without blood recordings, only models without plasma input can run."""
    ds = bf.make_dataset(tmp_path / "bids", subjects=("01", "02"), blood=False)
    out = str(tmp_path / "out")
    assert cli_main(["run", str(ds), out, "participant", "--dry-run"]) == 0
    assert "0 sessions valid, 2 invalid" in capsys.readouterr().out
    assert cli_main(["run", str(ds), out, "participant", "--dry-run", "--models", "suv", "suvr"]) == 0
    assert "2 sessions valid, 0 invalid" in capsys.readouterr().out


def test_engine_flag_names_every_step(tmp_path):
    over = setting_overrides(run_args(tmp_path, "--engine", "ants"))
    assert over == {"motion.engine": "ants", "registration.engine": "ants",
                    "segmentation.engine": "ants", "segmentation.normalization_engine": "ants"}
    cfg = build_config(run_args(tmp_path, "--engine", "ants"))
    assert (cfg.motion.engine, cfg.registration.engine, cfg.segmentation.engine,
            cfg.segmentation.normalization_engine) == ("ants",) * 4
    with pytest.raises(SystemExit):
        run_args(tmp_path, "--engine", "fsl-not-installed")


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("tacs:\n  pvc: none\nstats:\n  patient_label: from_file\n")
    assert build_config(run_args(tmp_path, "--config", str(cfg_file))).tacs.pvc == "none"
    monkeypatch.setenv("GLIAFLOW_TACS__PVC", "rbv")
    assert build_config(run_args(tmp_path, "--config", str(cfg_file))).tacs.pvc == "rbv"
    cfg = build_config(run_args(tmp_path, "--config", str(cfg_file), "--pvc", "gtm",
                                "--group-labels", "FM", "HC"))
    assert cfg.tacs.pvc == "gtm" and cfg.stats.patient_label == "FM"


def write_custom_atlas(tmp_path) -> tuple[Path, Path]:
    """A custom atlas in template space: the embedded AAL written as a user's files."""
    from gliaflow.pipeline.io import resources

    aal = resources.get_atlas("aal")
    img, tsv = tmp_path / "myatlas.nii.gz", tmp_path / "myatlas.tsv"
    nib.save(aal.image, str(img))
    aal.labels[["index", "name"]].to_csv(tsv, sep="\t", index=False)
    return img, tsv


def test_custom_atlas_flags(tmp_path, monkeypatch):
    img, tsv = write_custom_atlas(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = build_config(run_args(tmp_path, "--atlas", img.name, "--atlas-labels", tsv.name))
    assert cfg.atlas.name == "custom"
    assert cfg.atlas.image == img and cfg.atlas.labels == tsv  # absolute, for jobs elsewhere
    assert stage_hash(cfg, "labels_tacs") != stage_hash(DEFAULT, "labels_tacs")
    check_settings(cfg, bf.make_dataset(tmp_path / "bids"), [], strict_group=False)  # it loads
    # an embedded atlas named on the command line replaces a file's custom atlas
    f = tmp_path / "c.yaml"
    f.write_text(f"atlas:\n  image: {img}\n  labels: {tsv}\n  regions: [Precentral_L]\n")
    assert build_config(run_args(tmp_path, "--config", str(f))).atlas.name == "custom"
    cfg = build_config(run_args(tmp_path, "--config", str(f), "--atlas", "aal"))
    assert (cfg.atlas.name, cfg.atlas.image, cfg.atlas.labels) == ("aal", None, None)
    assert cfg.atlas.regions == ["Precentral_L"]  # the file's other atlas settings stay


@pytest.mark.parametrize("flags,words", [
    (["--atlas", "missing.nii.gz"], ["--atlas-labels"]),
    (["--atlas-labels", "x.tsv"], ["needs --atlas IMAGE"]),
    (["--atlas", "aal", "--atlas-labels", "x.tsv"], ["embedded atlas"]),
])
def test_bad_atlas_flags(tmp_path, flags, words):
    with pytest.raises(ConfigError) as exc:
        build_config(run_args(tmp_path, *flags))
    assert all(w in str(exc.value) for w in words) and exc.value.field == "atlas.labels"


def test_bad_atlas_fails_before_any_work(tmp_path, capsys):
    ds = bf.make_dataset(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    assert cli_main(["run", str(ds), str(out), "participant", "--atlas", "nonexistent-atlas"]) == 2
    err = capsys.readouterr().err
    assert "unknown atlas" in err and "nonexistent-atlas" in err and "atlas.name" in err
    assert cli_main(["run", str(ds), str(out), "participant", "--atlas", str(tmp_path / "no.nii.gz"),
                     "--atlas-labels", str(tmp_path / "no.tsv")]) == 2
    assert "no.nii.gz" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# statistics settings against participants.tsv
# ---------------------------------------------------------------------------------------------

MESSAGE = "participants.tsv column 'group' has levels FM, HC"


def test_validate_reports_group_labels_and_passes_with_flag_or_config(tmp_path, capsys):
    ds = fm_hc_dataset(tmp_path / "bids")
    assert cli_main(["validate", str(ds)]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the table wraps long messages
    assert MESSAGE in out and "--group-labels FM HC" in out and "stats.patient_label" in out
    assert cli_main(["validate", str(ds), "--group-labels", "FM", "HC"]) == 0
    assert MESSAGE not in " ".join(capsys.readouterr().out.split())
    cfg = tmp_path / "stats.yaml"
    cfg.write_text("stats:\n  patient_label: FM\n  control_label: HC\n")
    assert cli_main(["validate", str(ds), "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert cli_main(["validate", str(ds), "--json"]) == 1
    assert MESSAGE in capsys.readouterr().out


def test_validate_reports_missing_genotype_column(tmp_path, capsys):
    ds = bf.make_dataset(tmp_path / "bids")
    df = pd.read_csv(ds / "participants.tsv", sep="\t").drop(columns="tspo_genotype")
    df.to_csv(ds / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    assert cli_main(["validate", str(ds)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "no column 'tspo_genotype'" in out and "stats.genotype_column" in out


def test_run_all_fails_before_processing_when_labels_do_not_fit(tmp_path, capsys):
    ds = fm_hc_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    for level in ("all", "group"):
        assert cli_main(["run", str(ds), str(out), level, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert str(ds / "participants.tsv") in err and "stats.patient_label/control_label" in err
        assert MESSAGE in err and "--group-labels FM HC" in err
    # a real run stops at the same point: nothing is processed or written
    assert cli_main(["run", str(ds), str(out), "all", "--quiet"]) == 2
    assert MESSAGE in capsys.readouterr().err and not out.exists()
    assert cli_main(["run", str(ds), str(out), "all", "--dry-run", "--group-labels", "FM", "HC"]) == 0
    assert "6 sessions valid" in capsys.readouterr().out
    # the participant level only warns
    assert cli_main(["run", str(ds), str(out), "participant", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and MESSAGE in err and "the group level would fail" in err


def test_run_all_fails_early_when_a_group_is_too_small(tmp_path, capsys):
    ds = bf.make_dataset(tmp_path / "bids", subjects=("01", "02", "03", "04", "05", "06"))
    out = str(tmp_path / "out")
    assert cli_main(["run", str(ds), out, "all", "--dry-run"]) == 0
    capsys.readouterr()
    # the sessions selected are the cohort: two of them cannot make two groups of three
    assert cli_main(["run", str(ds), out, "all", "--dry-run", "--participant-label", "01", "02"]) == 2
    assert "group 'patient'" in capsys.readouterr().err
    # a plugin group step does not use the statistics settings
    assert cli_main(["run", str(ds), out, "all", "--dry-run", "--participant-label", "01", "02",
                     "--group-step", "gliaflow.pipeline.group:group_step"]) == 0


def test_submit_checks_first_and_passes_flags_to_every_job(tmp_path, capsys):
    ds = fm_hc_dataset(tmp_path / "bids", n=6)
    out = tmp_path / "out"
    assert cli_main(["submit", str(ds), str(out), "--no-submit"]) == 2
    assert MESSAGE in capsys.readouterr().err and not out.exists()
    img, tsv = write_custom_atlas(tmp_path)
    assert cli_main(["submit", str(ds), str(out), "--no-submit", "--group-labels", "FM", "HC",
                     "--pvc", "none", "--models", "suv", "suvr", "--atlas", str(img),
                     "--atlas-labels", str(tsv)]) == 0
    jobs = sorted((out / ".gliaflow" / "jobs").glob("*.sbatch"))
    assert len(jobs) == 7
    for job in jobs:
        text = job.read_text()
        assert "--group-labels FM HC" in text and "--pvc none" in text
        assert "--models suv suvr" in text and f"--atlas {img} --atlas-labels {tsv}" in text
    # the line each job runs parses back to the same settings
    line = next(ln for ln in (out / ".gliaflow" / "jobs" / "sub-01.sbatch").read_text().splitlines()
                if "gliaflow.workflows run" in ln)
    argv = line.split("gliaflow.workflows ", 1)[1].split(" ||")[0].split()
    cfg = build_config(parsed(*argv))
    assert (cfg.tacs.pvc, cfg.kinetics.models, cfg.atlas.image, cfg.stats.patient_label) == \
        ("none", ["suv", "suvr"], img, "FM")
