"""Configuration loading, precedence, errors and hashes (pipeline/config.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gliaflow.pipeline.config import (
    PipelineConfig,
    config_hash,
    load_config,
    stage_hash,
    write_effective_config,
)
from gliaflow.pipeline.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("GLIAFLOW_"):
            monkeypatch.delenv(k)


YAML = """
kinetics:
  tstar_min: 10
  weights: uniform
  models: [suv, logan]
motion:
  fd_radius_mm: 60
"""

TOML = """
[kinetics]
tstar_min = 10
weights = "uniform"
models = ["suv", "logan"]

[motion]
fd_radius_mm = 60
"""


@pytest.fixture
def yaml_file(tmp_path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(YAML)
    return p


@pytest.fixture
def toml_file(tmp_path) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(TOML)
    return p


def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.kinetics.tstar_min == PipelineConfig().kinetics.tstar_min


@pytest.mark.parametrize("which", ["yaml_file", "toml_file"])
def test_file_loading(which, request):
    cfg = load_config(request.getfixturevalue(which))
    assert cfg.kinetics.tstar_min == 10.0
    assert cfg.kinetics.weights == "uniform"
    assert cfg.kinetics.models == ["suv", "logan"]
    assert cfg.motion.fd_radius_mm == 60.0
    # untouched settings in a partially given section keep their defaults
    assert cfg.kinetics.n_starts == PipelineConfig().kinetics.n_starts


def test_yaml_and_toml_same_hash(yaml_file, toml_file):
    assert config_hash(load_config(yaml_file)) == config_hash(load_config(toml_file))


def test_env_override(monkeypatch, yaml_file):
    monkeypatch.setenv("GLIAFLOW_KINETICS__TSTAR_MIN", "25")
    cfg = load_config(yaml_file)
    assert cfg.kinetics.tstar_min == 25.0          # env beats file
    assert cfg.kinetics.weights == "uniform"       # the rest of the file's section survives
    monkeypatch.setenv("GLIAFLOW_KINETICS__MODELS", '["suv", "ma1"]')
    assert load_config().kinetics.models == ["suv", "ma1"]


@pytest.mark.parametrize("key", ["kinetics.tstar_min", "nested"])
def test_cli_overrides_beat_env_beat_file(monkeypatch, yaml_file, key):
    monkeypatch.setenv("GLIAFLOW_KINETICS__TSTAR_MIN", "25")
    monkeypatch.setenv("GLIAFLOW_KINETICS__N_STARTS", "7")
    over = {"kinetics.tstar_min": 40} if key != "nested" else {"kinetics": {"tstar_min": 40}}
    cfg = load_config(yaml_file, overrides=over | {"motion.enabled": None})
    assert cfg.kinetics.tstar_min == 40.0          # CLI beats env
    assert cfg.kinetics.n_starts == 7              # env beats default
    assert cfg.kinetics.weights == "uniform"       # file beats default
    assert cfg.motion.enabled is True              # None overrides are ignored


def test_unknown_keys_and_bad_values_named_at_once(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[kinetics]\ntstar_min = -3\nbogus_key = 1\n[motion]\nfd_radius_mm = 'far'\n"
                 "[nosuchsection]\nx = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    err = exc.value
    assert err.file == str(p)
    for field in ("kinetics.tstar_min", "kinetics.bogus_key", "motion.fd_radius_mm", "nosuchsection"):
        assert field in err.field and field in err.message
    assert "4 invalid setting(s)" in err.message and "unknown key" in err.message


def test_bad_env_value_named(monkeypatch):
    monkeypatch.setenv("GLIAFLOW_KINETICS__TSTAR_MIN", "abc")
    with pytest.raises(ConfigError) as exc:
        load_config()
    assert exc.value.field == "kinetics.tstar_min" and "'abc'" in exc.value.message


def test_bad_override_and_cross_field_rules():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides={"kinetics.suvr_window_min": [90, 60], "kinetics.models": ["nope"]})
    assert "kinetics.suvr_window_min" in exc.value.field and "kinetics.models" in exc.value.field
    with pytest.raises(ConfigError):
        load_config(overrides={"motion.iterations": [10, 10, 10], "motion.shrink_factors": [2]})


@pytest.mark.parametrize("text,suffix,words", [
    ("kinetics: [unclosed", ".yaml", "cannot parse"),
    ("[kinetics\n", ".toml", "cannot parse"),
    ("- a\n- b\n", ".yaml", "mapping"),
    ("x = 1", ".ini", "unknown config format"),
])
def test_unreadable_files(tmp_path, text, suffix, words):
    p = tmp_path / f"c{suffix}"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert words in exc.value.message and exc.value.file == str(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_stable_and_sensitive():
    base = config_hash(load_config())
    assert base == config_hash(load_config())
    assert len(base) == 16 and int(base, 16) >= 0
    # a science setting changes it
    assert config_hash(load_config(overrides={"kinetics.tstar_min": 31})) != base
    assert config_hash(load_config(overrides={"tacs.pvc": "none"})) != base
    # execution settings do not
    assert config_hash(load_config(overrides={"execution.nprocs": 3, "execution.cluster": "slurm",
                                              "execution.mem_gb": 8})) == base


def test_config_hash_stable_across_processes():
    code = ("from gliaflow.pipeline.config import load_config, config_hash;"
            "print(config_hash(load_config(overrides={'kinetics.tstar_min': 20})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == config_hash(load_config(overrides={"kinetics.tstar_min": 20}))


def test_stage_hash_depends_on_own_sections_only():
    a = load_config()
    b = load_config(overrides={"kinetics.tstar_min": 31})
    assert stage_hash(a, "kinetics") != stage_hash(b, "kinetics")
    assert stage_hash(a, "anat") == stage_hash(b, "anat")
    assert stage_hash(a, "pet_motion") == stage_hash(b, "pet_motion")
    with pytest.raises(KeyError):
        stage_hash(a, "nope")


def test_write_effective_config_roundtrip(tmp_path):
    cfg = load_config(overrides={"kinetics.tstar_min": 22, "stats.seed": 5})
    p = write_effective_config(cfg, tmp_path / "out" / "config.yaml")
    assert p.read_text().startswith(f"# gliaflow effective configuration; config hash {config_hash(cfg)}")
    again = load_config(p)
    assert config_hash(again) == config_hash(cfg) and again.stats.seed == 5
    assert [x.name for x in p.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_bad_env_value_blames_the_environment_not_the_file(monkeypatch, tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("kinetics:\n  n_starts: 3\n")
    monkeypatch.setenv("GLIAFLOW_KINETICS__TSTAR_MIN", "abc")
    with pytest.raises(ConfigError) as exc:
        load_config(p, overrides={"motion.fd_radius_mm": -1})
    msg = exc.value.message
    assert "from environment GLIAFLOW_KINETICS__TSTAR_MIN" in msg
    assert "motion.fd_radius_mm" in msg and "from command line" in msg
