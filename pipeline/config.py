"""Pipeline configuration: one pydantic settings model per stage, composed into PipelineConfig.

Precedence, lowest to highest: built-in defaults < config file (YAML or TOML) < environment
(``GLIAFLOW_<STAGE>__<FIELD>``, e.g. ``GLIAFLOW_KINETICS__TSTAR_MIN=25``) < explicit overrides
(CLI flags, passed as a nested dict or as dotted keys).

Unknown keys and bad values are rejected with every offending field named, as a
:class:`~gliaflow.pipeline.errors.ConfigError`. So are values that could never run: an atlas,
region or reference region that does not exist, a kinetic model or map whose reference region
has no TAC, group statistics on maps or metrics the kinetics stage does not make, and so on
(:func:`unrunnable_settings` lists the rules that involve several sections).
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, FilePath, ValidationError, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gliaflow.pipeline.errors import ConfigError
from gliaflow.pipeline.kinetics.names import (METRIC_COLUMNS, PVC_SUFFIX, REFERENCE_MAPS,
                                              REFERENCE_MODELS)

__all__ = [
    "MotionSettings",
    "RegistrationSettings",
    "SegmentationSettings",
    "AtlasSettings",
    "TACSettings",
    "BloodSettings",
    "KineticsSettings",
    "StatsSettings",
    "ReportSettings",
    "ExecutionSettings",
    "PipelineConfig",
    "STAGE_SETTINGS",
    "load_config",
    "unrunnable_settings",
    "config_hash",
    "stage_hash",
    "stage_settings",
    "write_effective_config",
    "engine_overrides",
]


class _Settings(BaseModel):
    """Base for stage settings: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _invalid(title: str, problems: list[tuple[tuple[str, ...], str, Any]]) -> ValidationError:
    """One validation error naming every problem (location of the setting, reason, value)."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("unrunnable", "{reason}", {"reason": reason}),
                         loc=loc, input=value) for loc, reason, value in problems])


#: iterations of one resolution level of an ANTs optimisation (0 skips the level)
Iterations = Annotated[int, Field(ge=0)]
#: a shrink factor of an ANTs resolution level
ShrinkFactor = Annotated[int, Field(ge=1)]
#: a resolution in mm
Resolution = Annotated[float, Field(gt=0)]


#: toolkits behind the engine seam (gliaflow.pipeline.engines); one per step
EngineName = Literal["ants", "fsl"]
_ENGINE_DOC = ("Toolkit that runs this step (see gliaflow.pipeline.engines): 'ants' (ANTsPy, embedded) or "
               "'fsl' (FSL at $FSLDIR through Nipype).")


class MotionSettings(_Settings):
    """Frame realignment (head-motion correction) of the dynamic PET."""

    enabled: bool = Field(True, description="False: no frame is registered (identity transforms); "
                          "the series is still checked and copied, and the reference is made.")
    engine: EngineName = Field("ants", description=_ENGINE_DOC)
    start_time_s: float = Field(
        120.0, ge=0, description="Frames starting before this time (s from injection) are not "
        "registered; they take the transform of the first registrable frame (PETPrep's rule).")
    min_frame_duration_s: float = Field(
        30.0, ge=0, description="Frames shorter than this are too noisy to register; they take the "
        "transform of the first registrable frame, like frames starting before start_time_s.")
    reference_start_s: float = Field(
        600.0, ge=0, description="The realignment reference is the duration-weighted mean of frames "
        "starting at or after this time (s).")
    smoothing_fwhm_mm: float = Field(4.0, ge=0, description="Gaussian smoothing before registration.")
    fd_radius_mm: float = Field(50.0, gt=0, description="Sphere radius for framewise displacement.")
    iterations: list[Iterations] = Field(default_factory=lambda: [60, 30], min_length=1,
                                         description="Rigid-registration iterations per level.")
    shrink_factors: list[ShrinkFactor] = Field(
        default_factory=lambda: [4, 2], min_length=1, description="Per-level shrink factors of the "
        "rigid registration (4, 2 on 2 mm PET: ~0.5 s per frame, sub-0.1 mm error on the phantom).")
    sampling_rate: float = Field(0.25, gt=0, le=1, description="Fraction of voxels sampled by the "
                                 "Mattes mutual-information metric.")

    @model_validator(mode="after")
    def _levels_match(self) -> "MotionSettings":
        if len(self.iterations) != len(self.shrink_factors):
            raise ValueError("iterations and shrink_factors must have one entry per resolution level")
        return self


class RegistrationSettings(_Settings):
    """Rigid (6 dof) PET-to-T1 registration (mutual information)."""

    engine: EngineName = Field("ants", description=_ENGINE_DOC)
    n_starts: int = Field(4, ge=1, le=32, description="Initialisations tried (rotations about the "
                          "centre of mass); the best mutual information wins.")
    flag_similarity_below: float = Field(
        0.05, description="Flag the registration when the normalised mutual information "
        "2 I / (H_T1 + H_PET) (0..1, 32-bin histogram over the T1 brain) is below this value. On the "
        "phantom: ~0.12-0.15 when correct, ~0.08 at 3 mm off, < 0.03 when unregistered.")
    max_expected_offset_mm: float = Field(
        50.0, gt=0, description="PET and T1 centres further apart than this are reported as a QC flag.")
    start_angle_deg: float = Field(20.0, ge=0, le=90, description="Rotation of the extra starts "
                                   "(multiples of it about x, z, then y).")
    sampling_rate: float = Field(0.25, gt=0, le=1, description="Fraction of voxels sampled by the "
                                 "Mattes metric.")
    coarse_resolution_mm: list[Resolution] = Field(
        default_factory=lambda: [8.0, 4.0], min_length=1,
        description="Resolution levels (mm; shrink factor = value / T1 voxel size) for each start.")
    coarse_iterations: list[Iterations] = Field(default_factory=lambda: [100, 50], min_length=1,
                                                description="Iterations per coarse level.")
    fine_resolution_mm: list[Resolution] = Field(default_factory=lambda: [2.0], min_length=1,
                                                 description="Levels refining the best start (mm).")
    fine_iterations: list[Iterations] = Field(default_factory=lambda: [40], min_length=1,
                                              description="Iterations per fine level.")
    check_step_mm: float = Field(3.0, gt=0, description="Step of the local-optimality check (mm).")
    optimum_tolerance: float = Field(
        0.01, ge=0, description="Relative NMI gain above which a result is not at the optimum.")
    min_brain_coverage: float = Field(
        0.9, ge=0, le=1, description="Flag when less than this fraction of the T1 brain gets PET signal.")

    @model_validator(mode="after")
    def _levels_match(self) -> "RegistrationSettings":
        if len(self.coarse_resolution_mm) != len(self.coarse_iterations):
            raise ValueError("coarse_resolution_mm and coarse_iterations need one entry per level")
        if len(self.fine_resolution_mm) != len(self.fine_iterations):
            raise ValueError("fine_resolution_mm and fine_iterations need one entry per level")
        return self


class SegmentationSettings(_Settings):
    """T1 bias correction, brain extraction, tissue segmentation and normalisation."""

    engine: EngineName = Field("ants", description="Toolkit for bias correction, brain extraction "
                               "and tissue segmentation: 'ants' (N4, template-based mask, Atropos).")
    normalization_engine: EngineName = Field("ants", description="Toolkit for the T1w-to-template "
                                             "registration: 'ants' (affine + SyN).")
    n4: bool = True
    template_resolution_mm: float = Field(2.0, ge=0.5, le=4, description="Resolution (mm) at "
                                          "which the nonlinear T1-to-template registration runs "
                                          "(template grids exist from 0.5 mm).")
    transform: Literal["SyN", "Affine"] = Field(
        "SyN", description="T1w-to-template transform: 'SyN' (affine then nonlinear) or 'Affine' "
        "(12 dof only).")
    syn_iterations: list[Iterations] = Field(default_factory=lambda: [40, 20, 10], min_length=1,
                                      description="SyN iterations per level, shrink factors "
                                      "2^(n-1)..1 of the template_resolution_mm grid.")
    prior_weight: float = Field(0.25, ge=0, le=1, description="Weight of template priors in Atropos.")
    n4_fit_resolution_mm: float = Field(6.0, ge=1, le=12, description="Grid spacing (mm) on which "
                                        "N4 fits the bias field (cost ~ 1/spacing^3).")
    n4_iterations: list[Iterations] = Field(default_factory=lambda: [50, 40], min_length=1,
                                     description="N4 iterations per B-spline fitting level.")
    affine_resolution_mm: float = Field(4.0, ge=0.5, le=8, description="Template resolution (mm) "
                                        "of the initial affine T1-to-template registration.")
    affine_iterations: list[Iterations] = Field(default_factory=lambda: [200, 100], min_length=1,
                                         description="Affine iterations per level (shrink 2^k..1).")
    atropos_iterations: int = Field(3, ge=1, le=50, description="Atropos EM iterations.")
    segmentation_resolution_mm: float | None = Field(
        2.0, gt=0, le=4, description="Atropos runs on the T1w resampled to this (mm) and the "
        "probabilities are brought back linearly; None segments at the native resolution.")
    atropos_mrf: str = Field("[0.1,1x1x1]", pattern=r"^\[\d*\.?\d+,\d+x\d+x\d+\]$",
                             description="Atropos MRF term [smoothing,radius], e.g. [0.1,1x1x1].")


class AtlasSettings(_Settings):
    """Which atlas defines the regions, and the reference regions."""

    name: str = Field("harvard-oxford", description="Embedded atlas name (harvard-oxford, aal, "
                      "desikan-killiany; aliases such as 'ho' or 'dk' are read as these) or "
                      "'custom' with image+labels.")
    image: FilePath | None = Field(None, description="User atlas image in template (MNI152) space.")
    labels: FilePath | None = Field(None, description="TSV with columns index, name for `image`.")
    regions: list[str] | None = Field(None, description="Keep only these regions (names or indices); "
                                      "None keeps all.")
    reference_regions: list[str] = Field(
        default_factory=lambda: ["whole_brain", "cerebellum_gm", "occipital_cortex"],
        description="Pseudo-reference regions whose masks and TACs are made (whole_brain, "
        "cerebellum_gm, occipital_cortex; see gliaflow.pipeline.io.resources).")
    min_region_volume_mm3: float = Field(100.0, ge=0, description="Regions smaller than this in "
                                         "T1w space are flagged (QC).")

    @field_validator("name")
    @classmethod
    def _known_atlas(cls, v: str) -> str:
        from gliaflow.pipeline.io.resources import ATLASES, atlas_key

        if v == "custom":
            return v
        try:
            return atlas_key(v)
        except ConfigError:
            raise ValueError(f"unknown atlas; embedded atlases are {', '.join(ATLASES)}, or 'custom' "
                             "with 'image' and 'labels'") from None

    @field_validator("reference_regions")
    @classmethod
    def _known_reference_regions(cls, v: list[str]) -> list[str]:
        from gliaflow.pipeline.io.resources import REFERENCE_REGION_SOURCES

        bad = [r for r in v if r not in REFERENCE_REGION_SOURCES]
        if bad:
            raise ValueError(f"unknown reference region(s) {bad}; known: "
                             f"{', '.join(REFERENCE_REGION_SOURCES)}")
        return v

    @model_validator(mode="after")
    def _atlas_usable(self) -> "AtlasSettings":
        if (self.image is None) != (self.labels is None):
            missing = "labels" if self.labels is None else "image"
            raise _invalid("AtlasSettings", [((missing,), "a custom atlas needs both 'image' and "
                                              "'labels'", None)])
        if self.image is None and self.name == "custom":
            raise _invalid("AtlasSettings", [(("image",), "atlas 'custom' needs 'image' and "
                                              "'labels'", None)])
        if self.image is not None and self.name != "custom":
            self.__dict__["name"] = "custom"
        if self.name == "custom" or self.regions is not None:
            self.selected_regions()  # the label table is readable and names every selected region
        return self

    def selected_regions(self) -> list[str]:
        """Names of the atlas regions kept by ``regions`` (the region columns of the TAC tables),
        read from the label table only (an embedded atlas may lack a few of them in its image).

        Raises
        ------
        ValidationError
            The label table is unreadable or ``regions`` names a region it does not have.
        """
        from gliaflow.pipeline.io.resources import atlas_label_table, select_regions

        try:
            table = atlas_label_table(self.name, self.labels)
        except ConfigError as exc:
            raise _invalid("AtlasSettings", [(("labels",), str(exc), str(self.labels))]) from None
        try:
            return select_regions(table, self.regions)["name"].tolist()
        except ConfigError as exc:
            raise _invalid("AtlasSettings", [(("regions",), exc.message, self.regions)]) from None


class TACSettings(_Settings):
    """Regional time-activity curves and partial-volume correction."""

    pvc: Literal["none", "gtm", "rbv"] = "gtm"
    psf_fwhm_mm: float | None = Field(
        None, gt=0, le=20, description="Scanner resolution (FWHM, mm); None reads it from the PET "
        "sidecar or falls back to `default_psf_fwhm_mm`.")
    default_psf_fwhm_mm: float = Field(5.0, gt=0, le=20)


class BloodSettings(_Settings):
    """Arterial input function from BIDS blood recordings."""

    parent_fraction_model: Literal["hill", "exponential", "power", "raw", "none"] = "hill"
    plasma_to_blood: Literal["interpolate", "constant", "linear"] = "interpolate"
    dispersion_tau_s: float | None = Field(None, ge=0, description="Dispersion time constant of the "
                                           "autosampler line (s); None: no correction.")
    delay: Literal["fit", "fixed"] = "fit"
    delay_s: float = Field(0.0, ge=-60, le=60, description="Blood delay when `delay` is fixed (s).")
    grid_step_s: float = Field(1.0, gt=0, le=10, description="Fine interpolation grid step (s).")
    delay_range_s: tuple[float, float] = Field(
        (-30.0, 30.0), description="Delays searched when `delay` is fit (s, from the first to the "
        "second; positive: the measured blood curve is moved later).")
    delay_fit_end_min: float = Field(10.0, gt=0, description="Whole-brain TAC frames ending before "
                                     "this time (min) are used to estimate the delay (1TCM + vB).")
    delay_region: str = Field("whole_brain", min_length=1, description="TAC column (region) the "
                              "delay is fitted to when `delay` is fit: a large, high-count region "
                              "that averages arrival times over the brain.")
    negative_tolerance: float = Field(
        0.05, ge=0, le=1, description="Negative concentrations down to this fraction of the "
        "recording's peak are noise and set to 0; larger negatives are an error.")
    max_extrapolation_fraction: float = Field(
        0.5, ge=0, le=1, description="A blood curve ending before the scan end is extrapolated "
        "(mono-exponential tail) when the missing part is at most this fraction of the scan; "
        "otherwise it is an error.")

    @field_validator("delay_range_s")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("delay_range_s must be (lowest, highest) delay, lowest < highest (s)")
        return v


class KineticsSettings(_Settings):
    """Kinetic models applied to regional TACs and voxelwise."""

    models: list[Literal["suv", "suvr", "1tcm", "2tcm", "logan", "ma1", "srtm", "mrtm2"]] = Field(
        default_factory=lambda: ["suv", "suvr", "1tcm", "2tcm", "logan", "ma1"], min_length=1)
    maps: list[Literal["suv", "suvr", "logan", "ma1", "basis1tcm"]] = Field(
        default_factory=lambda: ["suv", "suvr", "logan", "ma1"])
    suvr_window_min: tuple[float, float] = (60.0, 90.0)
    reference_region: str = "whole_brain"
    tstar_min: float = Field(30.0, ge=0, description="Start of the linear phase for Logan and MA1 (min).")
    weights: Literal["uniform", "duration", "counts"] = "duration"
    vb: float | None = Field(0.05, ge=0, le=0.2, description="Blood volume fraction; None fits it.")
    fit_delay: bool = False
    n_starts: int = Field(4, ge=1, le=50)
    max_vt_rel_se: float = Field(0.25, gt=0, description="1TCM/2TCM: largest relative standard "
                                 "error of VT (SE(VT)/VT, delta method from the fit covariance) "
                                 "of a trusted fit; above it the VT metrics are n/a and flagged.")
    chunk_voxels: int = Field(200_000, ge=1000, description="Voxels per chunk for parametric maps.")
    tstar_frames: int | None = Field(None, ge=3, description="Logan/MA1: use the last N frames "
                                     "(overrides tstar_min when set).")
    fit_end_min: float | None = Field(None, gt=0, description="1TCM/2TCM: use only frames ending "
                                      "by this time (min); None uses all frames.")
    half_life_s: float = Field(1221.84, gt=0, description="Radionuclide half-life for counts-based "
                               "weights (s); default carbon-11.")
    graphical_blood_correction: bool = Field(
        True, description="Logan/MA1: remove the fixed blood volume `vb` from the TACs first.")
    k2prime_per_min: float | None = Field(None, gt=0, description="MRTM2 reference efflux k2' "
                                          "(1/min); None estimates it with MRTM.")
    k2prime_region: str | None = Field(None, description="Region whose MRTM k2' feeds MRTM2; None "
                                       "uses the median over all target regions.")
    basis_n: int = Field(64, ge=8, le=1000, description="Basis functions for voxelwise 1TCM VT.")

    @field_validator("suvr_window_min")
    @classmethod
    def _window_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 <= v[0] < v[1]):
            raise ValueError("suvr_window_min must be (start, end) with 0 <= start < end, minutes")
        return v


class StatsSettings(_Settings):
    """Group statistics."""

    group_column: str = "group"
    patient_label: str = "patient"
    control_label: str = "control"
    covariates: list[str] = Field(default_factory=lambda: ["tspo_genotype"])
    clinical_scores: list[str] = Field(default_factory=lambda: ["fatigue"])
    lab_handling: Literal["exclude", "include"] = "exclude"
    metrics: list[str] | None = Field(None, description="Metrics to test; None tests every metric column.")
    fdr_alpha: float = Field(0.05, gt=0, lt=1)
    voxelwise: bool = True
    voxelwise_metrics: list[str] = Field(default_factory=lambda: ["suvr"])
    smoothing_fwhm_mm: float = Field(6.0, ge=0)
    n_permutations: int = Field(1000, ge=0, le=100_000)
    tfce: bool = True
    cluster_forming_z: float = Field(3.1, gt=0)
    seed: int = 0
    genotype_column: str = Field("tspo_genotype", description="rs6971 genotype column (HAB/MAB/LAB).")
    session: str | None = Field(None, description="Session label to analyse when participants have "
                                "several sessions (e.g. 'baseline'); None: one session each required.")
    correlation_groups: list[str] | None = Field(
        None, description="Groups in which clinical correlations are computed; None: the patient group.")
    tail: Literal["two-sided", "greater", "less"] = Field(
        "two-sided", description="Alternative for the patient-minus-control effect.")
    connectivity: Literal[6, 18, 26] = Field(26, description="Voxel neighbourhood for TFCE and clusters.")
    tfce_steps: int = Field(50, ge=5, le=1000, description="Thresholds per map in the TFCE integral.")
    cluster_mass: bool = Field(False, description="Also compute cluster-mass FWER p (voxelwise).")

    @model_validator(mode="after")
    def _design_possible(self) -> "StatsSettings":
        problems = []
        if self.patient_label == self.control_label:
            problems.append((("control_label",), "the patient and control labels must differ",
                             self.control_label))
        if self.group_column in self.covariates:
            problems.append((("covariates",), f"the group column {self.group_column!r} cannot also "
                             "be a covariate", self.covariates))
        if problems:
            raise _invalid("StatsSettings", problems)
        return self


class ReportSettings(_Settings):
    """Per-session and cohort HTML reports."""

    enabled: bool = True
    dpi: int = Field(80, ge=30, le=300)
    outlier_z: float = Field(3.5, gt=0, description="Cohort dashboard: a session's QC value is an "
                             "outlier when its robust z (median/MAD) exceeds this (motion: high "
                             "only; registration similarity: low only).")


class ExecutionSettings(_Settings):
    """Where and how the work runs. Does not change results, so it is not part of the config hash."""

    cluster: str = Field("local", description="Cluster profile: a name in infrastructure/clusters "
                         "(local, address, slurm, pbs, sge, lsf) or a path to a profile YAML.")
    nprocs: int | None = Field(None, ge=1, description="Dask workers; None: one per "
                                  "threads_per_task cores.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per worker (GiB).")
    threads_per_task: int = Field(1, ge=1)
    work_dir: Path | None = None
    max_memory_retries: int = Field(2, ge=0, le=5)
    memory_escalation: float = Field(1.5, gt=1, le=4)


class PipelineConfig(BaseSettings):
    """The whole configuration of a gliaflow run."""

    model_config = SettingsConfigDict(
        env_prefix="GLIAFLOW_", env_nested_delimiter="__", extra="forbid", validate_assignment=True,
        nested_model_default_partial_update=True)

    motion: MotionSettings = Field(default_factory=MotionSettings)
    registration: RegistrationSettings = Field(default_factory=RegistrationSettings)
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    atlas: AtlasSettings = Field(default_factory=AtlasSettings)
    tacs: TACSettings = Field(default_factory=TACSettings)
    blood: BloodSettings = Field(default_factory=BloodSettings)
    kinetics: KineticsSettings = Field(default_factory=KineticsSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)

    @model_validator(mode="before")
    @classmethod
    def _engine_for_all_steps(cls, data: Any) -> Any:
        """A top-level ``engine: NAME`` sets the engine of every step that does not name its own."""
        if not isinstance(data, dict) or "engine" not in data:
            return data
        data = dict(data)
        name = data.pop("engine")
        for section, keys in ENGINE_FIELDS.items():
            sec = data.get(section)
            sec = dict(sec) if isinstance(sec, dict) else ({} if sec is None else sec)
            if isinstance(sec, dict):
                for k in keys:
                    sec.setdefault(k, name)
                data[section] = sec
        return data

    @model_validator(mode="after")
    def _runnable(self) -> "PipelineConfig":
        problems = unrunnable_settings(self)
        if problems:
            raise _invalid("PipelineConfig", problems)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


#: the engine settings of each section (set together by a top-level ``engine:``)
ENGINE_FIELDS: dict[str, tuple[str, ...]] = {
    "motion": ("engine",),
    "registration": ("engine",),
    "segmentation": ("engine", "normalization_engine"),
}

#: the config sections each stage reads (its cache key hashes them, :func:`stage_hash`): a stage
#: reads no other section, so changing one re-runs exactly the stages listed with it. ``anat``
#: does not read the atlas (it is applied by ``labels_tacs``); the session report shows the
#: settings of every session stage; the group step names atlas regions in its cluster tables.
#: ``execution`` changes where and how things run, never results: no stage lists it.
def engine_overrides(name: str) -> dict[str, str]:
    """Dotted overrides that set every step's engine to ``name`` (each step named explicitly, so
    they beat a config file's per-step engines, unlike a top-level ``engine:``)."""
    return {f"{section}.{key}": name for section, keys in ENGINE_FIELDS.items() for key in keys}


STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "anat": ("segmentation",),
    "pet_motion": ("motion",),
    "coreg": ("registration",),
    "labels_tacs": ("atlas", "tacs"),
    "kinetics": ("blood", "kinetics"),
    "report": ("motion", "registration", "segmentation", "atlas", "tacs", "blood", "kinetics",
               "report"),
    "group": ("stats", "atlas"),
}


def unrunnable_settings(cfg: PipelineConfig) -> list[tuple[tuple[str, ...], str, Any]]:
    """Settings of different sections that cannot work together.

    Returns
    -------
    list of (location, reason, value)
        Location as (section, field). Empty when the configuration can run.
    """
    problems: list[tuple[tuple[str, ...], str, Any]] = []
    at, ks, st, bl = cfg.atlas, cfg.kinetics, cfg.stats, cfg.blood
    refs = list(at.reference_regions)
    region_names: list[str] | None = None

    def is_tac_column(name: str) -> bool:
        nonlocal region_names
        if name in refs:
            return True
        if region_names is None:
            region_names = at.selected_regions()
        return name in region_names

    needs_ref = [m for m in ks.models if m in REFERENCE_MODELS] + [
        f"map {m}" for m in ks.maps if m in REFERENCE_MAPS]
    if needs_ref and not is_tac_column(ks.reference_region):
        problems.append((("kinetics", "reference_region"), f"{', '.join(needs_ref)} need the TAC of "
                         "this region, but no TAC has that name: use one of atlas.reference_regions "
                         f"{refs} or a region of the atlas", ks.reference_region))
    if ("mrtm2" in ks.models and ks.k2prime_per_min is None and ks.k2prime_region is not None
            and not is_tac_column(ks.k2prime_region)):
        problems.append((("kinetics", "k2prime_region"), "MRTM2 estimates k2' in this region, but no "
                         "TAC has that name", ks.k2prime_region))
    if bl.delay == "fit" and not is_tac_column(bl.delay_region):
        problems.append((("blood", "delay_region"), f"blood.delay 'fit' estimates the delay on this "
                         f"region's TAC, but no TAC has that name: use one of atlas.reference_regions "
                         f"{refs} or a region of the atlas, or set blood.delay: fixed", bl.delay_region))
    if st.voxelwise:
        missing = [m for m in st.voxelwise_metrics if m not in ks.maps]
        if missing:
            problems.append((("stats", "voxelwise_metrics"), f"maps {missing} are not made: "
                             f"kinetics.maps is {list(ks.maps)}", st.voxelwise_metrics))
    if st.metrics is not None:
        made = [name for (model, _), name in METRIC_COLUMNS.items() if model in ks.models]
        if cfg.tacs.pvc != "none":
            made += [name + PVC_SUFFIX for name in made]
        missing = [m for m in st.metrics if m not in made]
        if missing:
            problems.append((("stats", "metrics"), f"metrics {missing} are not made by kinetics.models "
                             f"{list(ks.models)} (tacs.pvc {cfg.tacs.pvc!r}); made: {made}",
                             st.metrics))
    return problems


_file_data: contextvars.ContextVar[dict] = contextvars.ContextVar("gliaflow_config_file", default={})


class _FileSource(PydanticBaseSettingsSource):
    """Settings source holding the parsed config file (lowest precedence after defaults)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - not used by __call__
        return _file_data.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_data.get())


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML (.yml/.yaml) or TOML (.toml) config file into a dict.

    Raises
    ------
    ConfigError
        If the file is missing, unparsable, or not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", file=path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yml", ".yaml", ".json"):  # JSON is a subset of YAML
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError("unknown config format (use .yaml, .yml, .json or .toml)", file=path)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse: {exc}", file=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of sections", file=path)
    return data


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """Turn {'kinetics.tstar_min': 25} into {'kinetics': {'tstar_min': 25}}; nested dicts pass."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = _deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_keys(env: dict[str, str]) -> set[str]:
    """Dotted setting names set through GLIAFLOW_<SECTION>__<FIELD> environment variables."""
    return {k[len("GLIAFLOW_"):].lower().replace("__", ".") for k in env if k.upper().startswith("GLIAFLOW_")}


def _format_validation_error(exc: ValidationError, source: str | None,
                             over: dict[str, Any], env: dict[str, str]) -> ConfigError:
    """One ConfigError listing every bad setting, each with where its value came from."""
    env_keys = _env_keys(env)
    lines = []
    fields = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        fields.append(loc)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        node: Any = over
        for part in err["loc"]:
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
        if node is not None:
            origin = "command line"
        elif loc in env_keys:
            origin = "environment GLIAFLOW_" + loc.upper().replace(".", "__")
        else:
            origin = source or "defaults"
        lines.append(f"  {loc}: {msg} (got {err.get('input')!r}, from {origin})")
    message = f"{len(lines)} invalid setting(s):\n" + "\n".join(lines)
    return ConfigError(message, file=source, field=", ".join(fields))


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build the effective configuration.

    Parameters
    ----------
    path : path, optional
        YAML or TOML file with one section per stage.
    overrides : dict, optional
        Highest-precedence values (CLI flags), nested (``{"kinetics": {"tstar_min": 25}}``) or
        dotted (``{"kinetics.tstar_min": 25}``). ``None`` values are ignored.

    Raises
    ------
    ConfigError
        Naming every unknown key and bad value (and the file, when one was given).
    """
    file_data = read_config_file(path) if path is not None else {}
    over = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    token = _file_data.set(file_data)
    try:
        return PipelineConfig(**over)
    except ValidationError as exc:
        raise _format_validation_error(exc, str(path) if path else None, over, dict(os.environ)) from None
    finally:
        _file_data.reset(token)


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(cfg: PipelineConfig) -> str:
    """SHA-256 (hex, 16 chars) of every setting that can change results (execution excluded)."""
    data = cfg.model_dump(mode="json", exclude={"execution"})
    return hashlib.sha256(_canonical(data).encode()).hexdigest()[:16]


def stage_settings(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The config sections a processing stage reads (:data:`STAGE_SETTINGS`), as JSON-able dicts."""
    if stage not in STAGE_SETTINGS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_SETTINGS)}")
    return {s: getattr(cfg, s).model_dump(mode="json") for s in STAGE_SETTINGS[stage]}


def stage_hash(cfg: PipelineConfig, stage: str) -> str:
    """SHA-256 (hex, 16 chars) of the config sections a processing stage depends on."""
    return hashlib.sha256(_canonical(stage_settings(cfg, stage)).encode()).hexdigest()[:16]


def write_effective_config(cfg: PipelineConfig, path: str | Path) -> Path:
    """Write the effective configuration as YAML (atomically), with its hash in a comment."""
    from gliaflow.pipeline.io.derivatives import atomic_write_text  # local import: derivatives imports config

    text = f"# gliaflow effective configuration; config hash {config_hash(cfg)}\n" + yaml.safe_dump(
        cfg.model_dump(mode="json"), sort_keys=False)
    return atomic_write_text(Path(path), text)
