"""The processing stages of one PET session, as plain functions the workflows run.

A stage is the unit of scheduling and caching (subject x stage granularity, see DESIGN.md): it
takes a :class:`StageContext` (the session, the config, where to write) and the results of the
stages it requires, writes its outputs as BIDS derivatives, and returns a :class:`StageResult`
(paths + small values). Nothing here knows about Prefect or Dask; a notebook user can run a
session with :func:`run_session`.

Outputs by stage (keys of ``StageResult.outputs``; the reports and the cohort table read them):

* anat: t1w_preproc, brain_mask, dseg (1 GM, 2 WM, 3 CSF), probseg_gm/_wm/_csf, xfm_affine,
  xfm_warp, xfm_inverse_warp;
* pet_motion: pet_hmc (realigned 4-D), petref, motion_tsv (rot_x/y/z rad, trans_x/y/z mm,
  framewise_displacement mm), xfm_hmc;
* coreg: xfm_petref_to_t1w (ITK text, T1w point -> PET point);
* labels_tacs: dseg_t1w, dseg_pet, labels_tsv, ref_<region> masks, volumes_tsv, tacs, tacs_pvc
  (frame_start, frame_end, one column per region, Bq/mL);
* kinetics: plasma_tsv, fits_tsv, fit_curves_tsv, fits_pvc_tsv (``desc-fitspvc<method>``),
  regional_metrics (region + suv, suvr, vt_1tcm, vt_2tcm, vt_logan, vt_ma1, ... and ``_pvc``
  variants), map_<name> (PET space) and map_<name>_mni (template space, 2 mm);
* report: report_html.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from gliaflow.pipeline.config import STAGE_SETTINGS, PipelineConfig, stage_settings
from gliaflow.pipeline.engines import get_engine
from gliaflow.pipeline.io.bids import SessionSpec
from gliaflow.pipeline.io.derivatives import Derivatives
from gliaflow.pipeline.kinetics.metrics import tidy_metrics
from gliaflow.pipeline.kinetics.names import METRIC_COLUMNS, PLASMA_MAPS
from gliaflow.pipeline.provenance import ToolCall, merge_calls

if TYPE_CHECKING:
    from gliaflow.pipeline.kinetics.quantify import RegionalKinetics

__all__ = ["StageContext", "StageResult", "Stage", "SESSION_STAGES", "stage_by_name", "run_session",
           "tidy_metrics", "METRIC_COLUMNS", "GROUP_STEP"]


class StageContext(BaseModel):
    """Everything a stage needs besides its upstream results."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: SessionSpec
    config: PipelineConfig
    out_dir: Path = Field(description="Derivatives root (BIDS derivatives dataset).")
    work_dir: Path = Field(description="Scratch folder for this session.")

    @property
    def derivatives(self) -> Derivatives:
        return Derivatives(self.out_dir)

    def path(self, suffix: str, extension: str, datatype: str = "pet", **entities: str | None) -> Path:
        """Derivative path for this session with extra entities (e.g. desc='preproc')."""
        ents = dict(self.spec.entities)
        if datatype == "anat":  # anatomical derivatives are shared by the PET runs of a session
            ents = {k: v for k, v in ents.items() if k in ("sub", "ses")}
        ents.update({k.replace("from_", "from"): v for k, v in entities.items()})
        return self.derivatives.path(ents, suffix, extension, datatype=datatype)


class StageResult(BaseModel):
    """What a stage produced: output paths, small JSON-able values, QC record, flags, and the
    tools it called (the only source of the methods text)."""

    stage: str
    outputs: dict[str, Path] = Field(default_factory=dict)
    values: dict[str, Any] = Field(default_factory=dict)
    qc: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    provenance: list[ToolCall] = Field(default_factory=list)


StageFunc = Callable[[StageContext, dict[str, StageResult]], StageResult]


@dataclass(frozen=True)
class Stage:
    """A processing stage: its function, what it needs, and what its cache key depends on."""

    name: str
    func: StageFunc
    requires: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    input_files: Callable[[SessionSpec], list[Path]] = field(default=lambda spec: [])
    memory_bytes: Callable[[SessionSpec], int] = field(default=lambda spec: 1 << 30)


# --------------------------------------------------------------------------- helpers

def _header_bytes(path: Path) -> int:
    """Size in bytes of an image as float32, from its header (no voxel data read)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - unreadable inputs are reported by the stage itself
        return 0
    return int(np.prod(shape)) * 4


def _pet_bytes(spec: SessionSpec) -> int:
    return int(np.prod(spec.pet_shape)) * 4


def _body_weight_kg(spec: SessionSpec) -> float | None:
    """Body weight (kg) from the PET sidecar (BodyWeight) or participants.tsv (weight)."""
    extra = spec.sidecar.model_dump()
    for value in (extra.get("BodyWeight"), spec.covariates.get("weight"),
                  spec.covariates.get("body_weight")):
        try:
            w = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(w) and w > 0:
            return w
    return None


def _work(ctx: StageContext, stage: str) -> Path:
    """The stage's scratch folder (created)."""
    d = ctx.work_dir / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- stages

def stage_anat(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """T1w: bias correction, brain mask, GM/WM/CSF segmentation, registration to the template."""
    from gliaflow.pipeline.spatial.anatomy import AnatOutputs, process_anat

    spec, seg = ctx.spec, ctx.config.segmentation
    anat_dir = ctx.path("T1w", ".nii.gz", datatype="anat").parent
    outs = AnatOutputs.bids(anat_dir, spec.entities)
    engine = get_engine(seg.engine)
    norm_engine = engine if seg.normalization_engine == seg.engine else get_engine(seg.normalization_engine)
    res = process_anat(spec.t1w, seg, outs, work_dir=_work(ctx, "anat"), engine=engine,
                       normalization_engine=norm_engine)
    o = res.outputs
    outputs = {"t1w_preproc": o.t1_preproc, "brain_mask": o.brain_mask, "dseg": o.dseg,
               "probseg_gm": o.probseg_gm, "probseg_wm": o.probseg_wm, "probseg_csf": o.probseg_csf,
               "xfm_affine": o.xfm_affine}
    if len(res.to_template) > 1:  # a nonlinear normalization (transform SyN) wrote its warps
        outputs.update({"xfm_warp": o.xfm_warp, "xfm_inverse_warp": o.xfm_inverse_warp})
    return StageResult(
        stage="anat",
        outputs=outputs,
        values={"anat_result": res.model_dump(mode="json"),
                "to_template": [str(p) for p in res.to_template], "template": res.template},
        qc=res.qc, flags=list(res.qc.get("flags", [])),
        provenance=engine.provenance() + (norm_engine.provenance() if norm_engine is not engine else []))


def stage_pet_motion(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """Frame realignment to a late-frame reference; motion table and per-frame transforms."""
    from gliaflow.pipeline.spatial.motion import realign_frames

    spec = ctx.spec
    engine = get_engine(ctx.config.motion.engine)
    res = realign_frames(
        spec.pet, spec.frame_start_s, spec.frame_end_s, ctx.config.motion,
        out_pet=ctx.path("pet", ".nii.gz", desc="preproc"),
        out_motion_tsv=ctx.path("timeseries", ".tsv", desc="hmc"),
        out_xfm_file=ctx.path("xfm", ".txt", from_="orig", to="petref", mode="image", desc="hmc"),
        out_ref=ctx.path("petref", ".nii.gz"),
        work_dir=_work(ctx, "motion"), engine=engine)
    return StageResult(
        stage="pet_motion",
        outputs={"pet_hmc": res.pet, "petref": res.reference, "motion_tsv": res.motion_tsv,
                 "xfm_hmc": res.xfm},
        values={"registered": res.registered, "reference_frames": res.reference_frames},
        qc={"mean_fd_mm": res.mean_fd_mm, "max_fd_mm": res.max_fd_mm,
            "max_displacement_mm": res.max_displacement_mm,
            "n_frames_registered": int(sum(res.registered)), "n_frames": res.n_frames,
            "nonfinite_frames": res.nonfinite_frames, "empty_frames": res.empty_frames},
        flags=list(res.flags), provenance=engine.provenance())


def stage_coreg(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """Rigid PET-reference to T1w registration (mutual information), with a QC score and flag."""
    from gliaflow.pipeline.spatial.registration import register_pet_to_t1

    anat, motion = upstream["anat"], upstream["pet_motion"]
    engine = get_engine(ctx.config.registration.engine)
    res = register_pet_to_t1(
        motion.outputs["petref"], anat.outputs["t1w_preproc"], ctx.config.registration,
        t1_mask=anat.outputs["brain_mask"],
        out_xfm=ctx.path("xfm", ".txt", from_="petref", to="T1w", mode="image"),
        work_dir=_work(ctx, "coreg"), engine=engine)
    flags = list(res.flags) + (["coreg_suspect"] if res.likely_wrong else [])
    return StageResult(
        stage="coreg", outputs={"xfm_petref_to_t1w": res.xfm},
        values={"similarity": res.similarity, "matrix": res.matrix},
        qc={"similarity": res.similarity, "brain_coverage": res.brain_coverage,
            "initial_offset_mm": res.initial_offset_mm, "likely_wrong": res.likely_wrong,
            "seconds": res.seconds},
        flags=flags, provenance=engine.provenance())


def stage_labels_tacs(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """Atlas, tissue and reference regions in T1w and PET space; regional TACs without/with PVC."""
    import nibabel as nib

    from gliaflow.pipeline.regions import atlas as atl
    from gliaflow.pipeline.spatial.anatomy import AnatResult
    from gliaflow.pipeline.io.derivatives import save_nifti, write_tsv
    from gliaflow.pipeline.regions.pvc import resolve_psf_fwhm
    from gliaflow.pipeline.regions.measure import session_tacs

    spec, cfg = ctx.spec, ctx.config
    anat, motion, coreg = upstream["anat"], upstream["pet_motion"], upstream["coreg"]
    anat_result = AnatResult.model_validate(anat.values["anat_result"])
    atlas = atl.load_atlas(cfg.atlas)
    seg = atl.atlas_entity(atlas.name)
    petref = motion.outputs["petref"]
    engine = get_engine("ants")  # applies the ITK transform chains of the anat stage
    labels = atl.session_labels(anat_result, atlas, petref, coreg.outputs["xfm_petref_to_t1w"],
                                cfg.atlas, ref_resolution_mm=anat_result.template_resolution_mm,
                                engine=engine)

    outputs: dict[str, Path] = {}
    outputs["dseg_t1w"] = save_nifti(labels.partition_t1,
                                     ctx.path("dseg", ".nii.gz", datatype="anat", seg=seg))
    outputs["dseg_pet"] = save_nifti(labels.partition_pet,
                                     ctx.path("dseg", ".nii.gz", space="petref", seg=seg))
    outputs["labels_tsv"] = write_tsv(labels.partition_table, ctx.path("dseg", ".tsv", seg=seg))
    for name, m in labels.refs_pet.items():
        outputs[f"ref_{name}"] = save_nifti(
            m, ctx.path("mask", ".nii.gz", space="petref", label=name.replace("_", "")))
    outputs["volumes_tsv"] = write_tsv(labels.volumes_t1,
                                       ctx.path("volumes", ".tsv", datatype="anat", seg=seg))

    fwhm, fwhm_source = resolve_psf_fwhm(cfg.tacs, spec.sidecar.model_dump())
    pet = nib.load(str(motion.outputs["pet_hmc"]), keep_file_open=True)
    pvc = cfg.tacs.pvc
    res = session_tacs(pet, labels, spec.frame_start_s, spec.frame_end_s, pvc, fwhm,
                       out_tsv=ctx.path("tacs", ".tsv", seg=seg),
                       out_tsv_pvc=None if pvc == "none" else ctx.path("tacs", ".tsv", seg=seg,
                                                                       desc=f"pvc{pvc}"),
                       units_to_bqml=spec.pet_units_to_bqml,
                       sources=[motion.outputs["pet_hmc"], outputs["dseg_pet"]])
    outputs.update(res["paths"])
    qc: dict[str, Any] = dict(res["qc"])
    if "pvc" in qc:
        qc["pvc"] = {**qc["pvc"], "psf_fwhm_mm": fwhm, "psf_source": fwhm_source}
    qc["labels"] = atl.labels_qc(labels.volumes_t1, cfg.atlas.min_region_volume_mm3)
    qc["volumes_pet_mm3"] = dict(zip(labels.volumes_pet["name"], labels.volumes_pet["volume_mm3"].round(1)))
    flags = [f for part in ("labels", "tacs", "tacs_pvc") for f in qc.get(part, {}).get("flags", [])]
    return StageResult(stage="labels_tacs", outputs=outputs, values={"atlas": atlas.name, "seg": seg},
                       qc=qc, flags=flags, provenance=merge_calls(
                           engine.provenance() + labels.provenance + res["provenance"]))


def _read_tacs(path: Path) -> pd.DataFrame:
    """A regional TAC table written by the labels_tacs stage (``n/a`` -> NaN)."""
    return pd.read_csv(path, sep="\t", na_values="n/a")


def _write_regional_tables(ctx: StageContext, reg: RegionalKinetics, pvc_method: str) -> dict[str, Path]:
    """The regional results as BIDS derivatives: plasma input, fits, curves, PVC fits (named after
    the PVC method, like the ``desc-pvc<method>`` TACs they come from) and tidy metrics."""
    from gliaflow.pipeline.io.derivatives import write_tsv

    outputs: dict[str, Path] = {}
    if reg.plasma is not None:
        outputs["plasma_tsv"] = write_tsv(reg.plasma.to_frame(), ctx.path("blood", ".tsv", desc="plasmainput"))
    outputs["fits_tsv"] = write_tsv(reg.fits, ctx.path("kinetics", ".tsv", desc="fits"))
    outputs["fit_curves_tsv"] = write_tsv(reg.curves, ctx.path("kinetics", ".tsv", desc="curves"))
    if reg.fits_pvc is not None:
        outputs["fits_pvc_tsv"] = write_tsv(reg.fits_pvc,
                                            ctx.path("kinetics", ".tsv", desc=f"fitspvc{pvc_method}"))
    outputs["regional_metrics"] = write_tsv(reg.metrics, ctx.path("metrics", ".tsv", desc="regional"))
    return outputs


def _map_missing_input(name: str, body_weight_kg: float | None, injected_bq: float | None,
                       plasma) -> str | None:
    """Why a session cannot have the parametric map ``name`` (None when it can)."""
    if name == "suv" and (body_weight_kg is None or injected_bq is None):
        return "no body weight or injected activity"
    if name in PLASMA_MAPS and plasma is None:
        return "no arterial blood recording"
    return None


def _kinetic_maps(ctx: StageContext, upstream: dict[str, StageResult], tacs: pd.DataFrame,
                  reg: RegionalKinetics) -> StageResult:
    """Voxelwise parametric maps in PET space, then in template space (2 mm) for group statistics.

    A map is made when its inputs exist (SUV: body weight and injected activity; Logan/MA1/basis
    1TCM: a plasma input); the others are listed with the reason in ``qc["maps_skipped"]``.
    Returns the maps' outputs, ``values["maps"]``, QC, flags and provenance.
    """
    import nibabel as nib

    from gliaflow.pipeline.io.derivatives import save_nifti
    from gliaflow.pipeline.kinetics.base import Frames
    from gliaflow.pipeline.kinetics.parametric import parametric_maps
    from gliaflow.pipeline.spatial.spaces import pet_to_template

    spec, ks, plasma = ctx.spec, ctx.config.kinetics, reg.plasma
    # the reference TAC is a column whenever a map needs it (checked when the config is loaded)
    ref_tac = tacs[ks.reference_region].to_numpy() if ks.reference_region in tacs else None
    weight = _body_weight_kg(spec)
    reasons = {m: _map_missing_input(m, weight, spec.injected_bq, plasma) for m in ks.maps}
    skipped = {m: why for m, why in reasons.items() if why}
    maps = [m for m in ks.maps if m not in skipped]
    res = StageResult(stage="kinetics", values={"maps": maps})
    if skipped:
        res.qc["maps_skipped"] = skipped
    if not maps:
        return res
    labels, motion, anat, coreg = (upstream["labels_tacs"], upstream["pet_motion"], upstream["anat"],
                                   upstream["coreg"])
    img = nib.load(str(motion.outputs["pet_hmc"]))
    data = np.asarray(img.dataobj, dtype=np.float32) * np.float32(spec.pet_units_to_bqml)
    brain = nib.load(str(labels.outputs["ref_whole_brain"])) if "ref_whole_brain" in labels.outputs \
        else None
    mask = np.asarray(brain.dataobj) > 0 if brain is not None else None
    frames = Frames.from_arrays(spec.frame_start_s, spec.frame_end_s, source=str(spec.pet))
    arrays = parametric_maps(data, frames, ks, maps=maps, plasma=plasma, ref_tac=ref_tac,
                             injected_bq=spec.injected_bq, body_weight_kg=weight, mask=mask)
    del data
    engine = get_engine("ants")  # applies the ITK transform chains of the anat stage
    for name, arr in arrays.items():
        pimg = nib.Nifti1Image(np.asarray(arr, dtype=np.float32), img.affine)
        meas = name.replace("_", "")
        res.outputs[f"map_{name}"] = save_nifti(pimg, ctx.path("pet", ".nii.gz", space="petref",
                                                                meas=meas))
        timg = pet_to_template(pimg, coreg.outputs["xfm_petref_to_t1w"],
                               anat.values["to_template"], resolution_mm=2.0, engine=engine)
        res.outputs[f"map_{name}_mni"] = save_nifti(
            timg, ctx.path("pet", ".nii.gz", space=anat.values["template"], res="2", meas=meas))
    res.provenance = arrays.provenance + engine.provenance()
    return res


def stage_kinetics(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """Plasma input, regional models (without and with PVC) and voxelwise parametric maps."""
    from gliaflow.pipeline.kinetics.quantify import quantify_regional

    spec, cfg, labels = ctx.spec, ctx.config, upstream["labels_tacs"]
    tacs = _read_tacs(labels.outputs["tacs"])
    pvc_tsv = labels.outputs.get("tacs_pvc")
    reg = quantify_regional(tacs, spec.blood, cfg.blood, cfg.kinetics, injected_bq=spec.injected_bq,
                            body_weight_kg=_body_weight_kg(spec),
                            tacs_pvc=_read_tacs(pvc_tsv) if pvc_tsv else None,
                            source=str(labels.outputs["tacs"]), source_pvc=str(pvc_tsv))
    pvc_method = labels.qc.get("pvc", {}).get("method", "pvc")  # the correction that ran
    outputs = _write_regional_tables(ctx, reg, pvc_method)
    maps = _kinetic_maps(ctx, upstream, tacs, reg)
    return StageResult(stage="kinetics", outputs={**outputs, **maps.outputs},
                       values={"models": reg.models, "maps": maps.values["maps"],
                               "delay_s": float(reg.plasma.delay_s) if reg.plasma is not None else None},
                       qc={**reg.qc, **maps.qc}, flags=reg.flags + maps.flags,
                       provenance=merge_calls(reg.provenance + maps.provenance))


def stage_report(ctx: StageContext, upstream: dict[str, StageResult]) -> StageResult:
    """Self-contained HTML QC report for the session."""
    from gliaflow.pipeline.report.session_report import write_session_report

    outputs: dict[str, Path] = {}
    qc: dict[str, Any] = {}
    flags: list[str] = []
    calls: list[ToolCall] = []
    for name, res in upstream.items():
        outputs.update(res.outputs)
        qc[name] = res.qc
        flags += res.flags
        calls += res.provenance
    html = ctx.out_dir / f"{ctx.spec.session_id}.html"
    if ctx.config.report.enabled:
        write_session_report(html, session_id=ctx.spec.session_id,
                             sidecar=ctx.spec.sidecar.model_dump(), outputs=outputs, qc=qc,
                             flags=flags, config=stage_settings(ctx.config, "report"), errors=[],
                             provenance=calls)
    return StageResult(stage="report", outputs={"report_html": html} if ctx.config.report.enabled else {},
                       qc={}, flags=[])


def _pet_input(spec: SessionSpec) -> list[Path]:
    return [spec.pet, spec.pet_json]


def _blood_inputs(spec: SessionSpec) -> list[Path]:
    files = []
    for r in spec.blood:
        files += [r.tsv, r.json_path]
    return files


SESSION_STAGES: list[Stage] = [
    Stage("anat", stage_anat, (), STAGE_SETTINGS["anat"], lambda s: [s.t1w],
          lambda s: 6 * _header_bytes(s.t1w) + (700 << 20)),
    Stage("pet_motion", stage_pet_motion, (), STAGE_SETTINGS["pet_motion"], _pet_input,
          lambda s: 2 * _pet_bytes(s) + (500 << 20)),
    Stage("coreg", stage_coreg, ("anat", "pet_motion"), STAGE_SETTINGS["coreg"], lambda s: [],
          lambda s: 4 * _header_bytes(s.t1w) + (400 << 20)),
    Stage("labels_tacs", stage_labels_tacs, ("anat", "pet_motion", "coreg"),
          STAGE_SETTINGS["labels_tacs"], lambda s: [s.pet_json],
          lambda s: 2 * _pet_bytes(s) + 4 * _header_bytes(s.t1w) + (600 << 20)),
    Stage("kinetics", stage_kinetics, ("labels_tacs", "pet_motion", "anat", "coreg"),
          STAGE_SETTINGS["kinetics"], lambda s: _blood_inputs(s) + [s.pet_json],
          lambda s: 3 * _pet_bytes(s) + (500 << 20)),
    Stage("report", stage_report, ("anat", "pet_motion", "coreg", "labels_tacs", "kinetics"),
          STAGE_SETTINGS["report"], lambda s: [], lambda s: 600 << 20),
]


# the cohort flow's group step (statistics on OUT_DIR/group/regional.tsv and template-space maps)
from gliaflow.pipeline.group import group_step as GROUP_STEP  # noqa: E402


def stage_by_name(name: str) -> Stage:
    for s in SESSION_STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; known: {[s.name for s in SESSION_STAGES]}")


def run_session(spec: SessionSpec, config: PipelineConfig, out_dir: Path, work_dir: Path,
                stages: list[Stage] | None = None) -> dict[str, StageResult]:
    """Run the stages of one session in order, without orchestration (for notebooks and tests).

    Toolkit thread counts are process settings (ITK reads its variable once per process); set
    them before the first stage, e.g. with
    :func:`gliaflow.workflows.services.threads.set_process_threads`.
    """
    ctx = StageContext(spec=spec, config=config, out_dir=Path(out_dir), work_dir=Path(work_dir))
    results: dict[str, StageResult] = {}
    for stage in stages or SESSION_STAGES:
        upstream = {r: results[r] for r in stage.requires}
        results[stage.name] = stage.func(ctx, upstream)
    return results
