"""Values that can never run are rejected when the configuration is loaded, naming the field."""
from __future__ import annotations

import pytest

from gliaflow.pipeline.config import PipelineConfig, load_config, unrunnable_settings
from gliaflow.pipeline.errors import ConfigError
from gliaflow.pipeline.io import resources


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("GLIAFLOW_"):
            monkeypatch.delenv(k)


def _rejected(overrides: dict, field: str, words: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    err = info.value
    assert field in (err.field or "").split(", "), (err.field, str(err))
    assert words.lower() in str(err).lower(), str(err)
    return err


def test_defaults_can_run():
    assert unrunnable_settings(PipelineConfig()) == []


# --------------------------------------------------------------------------- atlas

def test_atlas_name_must_be_embedded_or_custom():
    _rejected({"atlas.name": "talairach"}, "atlas.name", "embedded atlases are harvard-oxford")
    assert load_config(overrides={"atlas.name": "ho"}).atlas.name == "harvard-oxford"  # an alias
    assert load_config(overrides={"atlas.name": "aal"}).atlas.name == "aal"


def test_custom_atlas_needs_existing_files(tmp_path):
    _rejected({"atlas.name": "custom"}, "atlas.image", "needs 'image' and 'labels'")
    _rejected({"atlas.image": tmp_path / "none.nii.gz", "atlas.labels": tmp_path / "none.tsv"},
              "atlas.image", "does not point to a file")
    img, tsv = tmp_path / "a.nii.gz", tmp_path / "a.tsv"
    img.write_bytes(b"x")
    _rejected({"atlas.image": img}, "atlas.labels", "needs both")
    tsv.write_text("label\tregion\n1\tx\n")
    _rejected({"atlas.image": img, "atlas.labels": tsv}, "atlas.labels", "columns 'index' and 'name'")
    tsv.write_text("index\tname\n1\tleft\n2\tright\n")
    cfg = load_config(overrides={"atlas.image": img, "atlas.labels": tsv, "atlas.regions": ["right"]})
    assert cfg.atlas.name == "custom" and cfg.atlas.selected_regions() == ["right"]


def test_atlas_regions_must_exist():
    names = resources.atlas_label_table("harvard-oxford")["name"].tolist()
    _rejected({"atlas.regions": [names[0], "Nowhere"]}, "atlas.regions", "['Nowhere']")
    cfg = load_config(overrides={"atlas.regions": [names[3].lower(), "2"]})  # case-insensitive, index
    assert cfg.atlas.selected_regions() == [names[3], names[1]]


def test_reference_regions_must_be_known():
    _rejected({"atlas.reference_regions": ["whole_brain", "pons"]}, "atlas.reference_regions",
              "unknown reference region(s) ['pons']")


# --------------------------------------------------------------------------- kinetics

def test_reference_region_must_be_a_tac_column():
    over = {"atlas.reference_regions": ["whole_brain", "occipital_cortex"],
            "kinetics.reference_region": "cerebellum_gm"}
    err = _rejected(over, "kinetics.reference_region", "suvr, map suvr need the TAC")
    assert "whole_brain" in str(err)
    # an atlas region is a TAC column too
    load_config(overrides={**over, "kinetics.reference_region": "Left_Thalamus"})
    # with no reference model or map the region is not read
    load_config(overrides={**over, "kinetics.models": ["1tcm"], "kinetics.maps": ["logan"],
                           "stats.voxelwise_metrics": ["logan"]})
    _rejected({**over, "kinetics.models": ["srtm"], "kinetics.maps": []}, "kinetics.reference_region",
              "srtm need")


def test_reference_region_must_be_among_the_selected_regions():
    over = {"atlas.regions": ["Left_Thalamus"], "kinetics.reference_region": "Right_Thalamus"}
    _rejected(over, "kinetics.reference_region")
    load_config(overrides={**over, "kinetics.reference_region": "Left_Thalamus"})


def test_k2prime_region_must_be_a_tac_column():
    over = {"kinetics.models": ["mrtm2"], "kinetics.k2prime_region": "nowhere"}
    _rejected(over, "kinetics.k2prime_region", "MRTM2")
    load_config(overrides={**over, "kinetics.k2prime_region": "cerebellum_gm"})
    load_config(overrides={**over, "kinetics.k2prime_per_min": 0.1})  # k2' given: region unused


def test_blood_delay_fit_needs_a_tac_of_the_delay_region():
    over = {"atlas.reference_regions": ["cerebellum_gm"], "kinetics.reference_region": "cerebellum_gm"}
    _rejected(over, "blood.delay_region", "no TAC has that name")
    load_config(overrides={**over, "blood.delay": "fixed"})
    load_config(overrides={**over, "blood.delay_region": "cerebellum_gm"})


def test_blood_delay_range_ordered():
    _rejected({"blood.delay_range_s": [10, -10]}, "blood.delay_range_s", "lowest < highest")


# --------------------------------------------------------------------------- stats

def test_voxelwise_metrics_must_be_maps_made():
    _rejected({"kinetics.maps": ["suv", "logan"]}, "stats.voxelwise_metrics", "maps ['suvr'] are not made")
    load_config(overrides={"kinetics.maps": ["suv", "logan"], "stats.voxelwise": False})
    load_config(overrides={"kinetics.maps": ["logan"], "stats.voxelwise_metrics": ["logan"]})


def test_metrics_must_be_made_by_the_models():
    _rejected({"stats.metrics": ["suvr", "bpnd_srtm"]}, "stats.metrics", "['bpnd_srtm']")
    load_config(overrides={"stats.metrics": ["suvr", "vt_2tcm_pvc"]})
    _rejected({"stats.metrics": ["vt_2tcm_pvc"], "tacs.pvc": "none"}, "stats.metrics", "tacs.pvc")


def test_labels_and_group_column_consistent():
    _rejected({"stats.control_label": "patient"}, "stats.control_label", "must differ")
    _rejected({"stats.covariates": ["group", "age"]}, "stats.covariates", "cannot also be a covariate")


# --------------------------------------------------------------------------- registration/segmentation

def test_resolutions_and_levels_that_cannot_run():
    _rejected({"segmentation.template_resolution_mm": 0.3}, "segmentation.template_resolution_mm")
    _rejected({"segmentation.affine_resolution_mm": 0.2}, "segmentation.affine_resolution_mm")
    _rejected({"motion.shrink_factors": [0, 1]}, "motion.shrink_factors.0")
    _rejected({"segmentation.syn_iterations": [40, -1, 10]}, "segmentation.syn_iterations.1")
    _rejected({"registration.fine_resolution_mm": [0.0]}, "registration.fine_resolution_mm.0")
    _rejected({"segmentation.atropos_mrf": "[0.1,1x1]"}, "segmentation.atropos_mrf", "pattern")


def test_every_problem_is_listed_with_its_origin(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stats:\n  control_label: patient\nkinetics:\n  maps: [logan]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"atlas.name": "nope"})
    err = info.value
    assert err.file == str(path)
    assert set(err.field.split(", ")) == {"atlas.name", "stats.control_label"}
    assert "from command line" in str(err) and f"from {path}" in str(err)
    # cross-section rules run once the sections are valid
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"stats.control_label": "control"})
    assert info.value.field == "stats.voxelwise_metrics"
