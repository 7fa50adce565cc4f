"""Per-session HTML QC report: one self-contained file with a figure per processing step.

The report reads the stage outputs by file format (the StageResult.outputs keys of gliaflow.pipeline.session) from the paths
it is given. Every section is independent: a missing or unreadable input gives a visible
"not available" note (and a warning in the report), never an exception.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from gliaflow.pipeline.io.derivatives import atomic_write_text
from gliaflow.pipeline.report import figures as F
from gliaflow.pipeline.report.html import (badge, bullet_list, esc, figure, flatten, guarded_section, kv_table, page, section,
                   table, unavailable)
from gliaflow.pipeline.provenance import ToolCall, as_calls
from gliaflow.pipeline.report.methods import methods_html, methods_text, provenance_table

__all__ = ["write_session_report", "read_tsv", "reference_masks"]

_NAV = [("summary", "Summary"), ("qc", "QC flags"), ("motion", "Motion"), ("coreg", "PET→T1"),
        ("segmentation", "Segmentation"), ("atlas", "Atlas"), ("refmasks", "Reference regions"),
        ("tacs", "TACs"), ("fits", "Model fits"), ("metrics", "Regional metrics"), ("maps", "Maps"),
        ("provenance", "What ran"), ("methods", "Methods"), ("errors", "Errors and warnings")]


def read_tsv(path: str | Path) -> pd.DataFrame:
    """Read a BIDS TSV ('n/a' as missing)."""
    return pd.read_csv(path, sep="\t", na_values=["n/a", "N/A", ""], keep_default_na=True)


def _existing(outputs: Mapping[str, Any], key: str) -> Path | None:
    p = outputs.get(key)
    if p is None:
        return None
    p = Path(p)
    return p if p.exists() else None


def _sidecar_json(path: Path) -> dict:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            js = path.with_name(name[: -len(ext)] + ".json")
            if js.exists():
                try:
                    return json.loads(js.read_text())
                except (OSError, ValueError):
                    return {}
    return {}


def _label_from_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    for part in stem.split("_"):
        if part.startswith("label-"):
            return part[6:]
    return stem


def reference_masks(outputs: Mapping[str, Any]) -> dict[str, nib.Nifti1Image]:
    """Reference-region masks from the outputs, as name -> 3D binary image (PET space).

    Accepted forms: ``ref_masks`` as a 4D NIfTI (one volume per region, names from its JSON
    sidecar key ``Regions``/``regions``/``labels``/``VolumeNames``), a 3D label image (names from
    the sidecar, a mapping index -> name or a list), a 3D binary mask, or a folder of mask NIfTIs;
    and keys ``ref_<name>`` / ``ref_mask_<name>`` with one mask NIfTI each (the labels_tacs stage).
    """
    masks: dict[str, nib.Nifti1Image] = {}
    p = _existing(outputs, "ref_masks")
    if p is not None and p.is_dir():
        for f in sorted(list(p.glob("*.nii.gz")) + list(p.glob("*.nii"))):
            masks[_label_from_name(f)] = nib.load(str(f))
    elif p is not None:
        img = nib.load(str(p))
        meta = _sidecar_json(p)
        names = next((meta[k] for k in ("Regions", "regions", "labels", "Labels", "VolumeNames")
                      if k in meta), None)
        data = np.asarray(img.dataobj)
        if img.ndim == 4:
            for i in range(data.shape[3]):
                name = names[i] if isinstance(names, list) and i < len(names) else f"reference_{i + 1}"
                masks[str(name)] = nib.Nifti1Image((data[..., i] > 0.5).astype(np.uint8), img.affine)
        else:
            vals = [int(v) for v in np.unique(data) if v > 0]
            if len(vals) <= 1:
                masks["reference"] = nib.Nifti1Image((data > 0).astype(np.uint8), img.affine)
            else:
                for j, v in enumerate(vals):
                    if isinstance(names, Mapping):
                        name = names.get(str(v), names.get(v, f"label_{v}"))
                    elif isinstance(names, list) and j < len(names):
                        name = names[j]
                    else:
                        name = f"label_{v}"
                    masks[str(name)] = nib.Nifti1Image((data == v).astype(np.uint8), img.affine)
    for key in sorted(outputs):
        name = None
        if key.startswith(("ref_mask_", "refmask_")):
            name = key.split("_", 2)[-1] if key.startswith("ref_mask_") else key[8:]
        elif key.startswith("ref_") and key != "ref_masks":
            name = key[4:]
        q = _existing(outputs, key) if name else None
        if q is not None and str(q).endswith((".nii", ".nii.gz")):
            masks[name] = nib.load(str(q))
    return masks


def _fmt_dose(sidecar: Mapping[str, Any]) -> str:
    val = sidecar.get("InjectedRadioactivity")
    if val is None:
        return ""
    unit = sidecar.get("InjectedRadioactivityUnits", "")
    return f"{val} {unit}".strip()


def _summary(session_id: str, sidecar: Mapping[str, Any], outputs: Mapping[str, Any],
             inputs: Mapping[str, Any] | None, out_html: Path) -> str:
    starts = sidecar.get("FrameTimesStart") or []
    durs = sidecar.get("FrameDuration") or []
    items: list[tuple[str, Any]] = [("session", session_id),
                                    ("tracer", sidecar.get("TracerName", "")),
                                    ("radionuclide", sidecar.get("TracerRadionuclide", "")),
                                    ("injected dose", _fmt_dose(sidecar)),
                                    ("body weight (kg)", sidecar.get("BodyWeight", "")),
                                    ("frames", len(durs) or len(starts) or "")]
    if starts and durs:
        try:
            end = float(starts[-1]) + float(durs[-1])
            items.append(("acquisition", f"{float(starts[0]):g}-{end:g} s ({end / 60:.1f} min)"))
            items.append(("frame durations (s)", ", ".join(f"{float(d):g}" for d in durs[:40])
                          + (" ..." if len(durs) > 40 else "")))
        except (TypeError, ValueError):
            pass
    for k in ("Units", "ScanStart", "InjectionStart", "ImageDecayCorrected", "ReconMethodName",
              "Manufacturer", "ManufacturersModelName"):
        if k in sidecar:
            items.append((k, sidecar[k]))
    html = kv_table([(k, v) for k, v in items if v not in ("", None)])
    rows = []
    for title, mapping in (("inputs", inputs or {}), ("outputs", outputs)):
        for k, v in mapping.items():
            try:
                rel = os.path.relpath(Path(v).resolve(), out_html.parent.resolve())
            except (ValueError, OSError, TypeError):
                rel = v
            exists = Path(v).exists() if v is not None else False
            rows.append({"kind": title, "name": k, "file": str(rel), "exists": "yes" if exists else "NO"})
    if rows:
        df = pd.DataFrame(rows)
        cls = pd.DataFrame({"exists": ["" if e == "yes" else "bad" for e in df["exists"]]}, index=df.index)
        n_missing = int((df["exists"] != "yes").sum())
        note = f", {n_missing} missing" if n_missing else ""
        html += (f"<details{' open' if n_missing else ''}><summary>Files ({len(df)}{note})</summary>"
                 + table(df, classes=cls) + "</details>")
    return html


def _qc(qc: Mapping[str, Any], flags: list[str], max_inline: int = 8) -> str:
    """Flags as badges, then the QC values: small groups inline, large per-region groups (e.g.
    ``labels_tacs.tacs.peak_time_s``) collapsed with their range."""
    if flags:
        html = "<p>" + " ".join(badge(f, "bad") for f in flags) + "</p>"
    else:
        html = "<p>" + badge("no QC flags", "ok") + "</p>"
    flat = {k: v for k, v in flatten(qc).items() if v is not None and not (isinstance(v, str) and not v)}
    if not flat:
        return html + unavailable("QC metrics", "none recorded")
    groups: dict[str, list[str]] = {}
    for k in flat:
        groups.setdefault(k.rsplit(".", 1)[0] if "." in k else "", []).append(k)
    inline = [(k, flat[k]) for g, ks in groups.items() if len(ks) <= max_inline for k in ks]
    html += kv_table(inline) if inline else ""
    for g, ks in groups.items():
        if len(ks) <= max_inline:
            continue
        vals = [flat[k] for k in ks]
        nums = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        rng = f", {min(nums):.4g} to {max(nums):.4g}" if nums else ""
        rows = [(k[len(g) + 1:], flat[k]) for k in ks]
        html += (f"<details><summary>{esc(g)} ({len(ks)} values{esc(rng)})</summary>"
                 f"{kv_table(rows)}</details>")
    return html


@dataclass
class _Report:
    """What the sections of one session report read."""

    outputs: dict[str, Path]
    config: dict
    dpi: int
    sidecar: dict
    qc: dict
    provenance: list[ToolCall] = field(default_factory=list)

    def path(self, key: str) -> Path | None:
        return _existing(self.outputs, key)

    def need(self, *keys: str) -> list[Path] | None:
        paths = [self.path(k) for k in keys]
        return None if any(p is None for p in paths) else paths  # type: ignore[return-value]

    def missing(self, *keys: str) -> str:
        return "missing " + ", ".join(k for k in keys if self.path(k) is None)

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        return (self.config.get(section) or {}).get(key, default)

    def reference_regions(self) -> list[str]:
        return list(self.setting("atlas", "reference_regions") or [])


# --------------------------------------------------------------------------- sections

def _motion(r: _Report) -> str:
    p = r.need("motion_tsv")
    if p is None:
        return unavailable("Frame realignment", r.missing("motion_tsv"))
    df = read_tsv(p[0])
    html = figure(F.motion_figure(df, r.dpi), "frame realignment parameters",
                  "Rigid realignment parameters per frame and framewise displacement (FD).")
    if "framewise_displacement" in df:
        fd = df["framewise_displacement"].to_numpy(float)
        html += kv_table({"mean FD (mm)": float(np.nanmean(fd)), "max FD (mm)": float(np.nanmax(fd)),
                          "frames": len(df)})
    return html


def _coreg(r: _Report) -> str:
    t1 = r.path("t1w_preproc") or r.path("t1w")
    pet_t1, petref = r.path("petref_t1w"), r.path("petref")
    if t1 is None or (pet_t1 is None and petref is None):
        return unavailable("PET-on-T1 check", r.missing("t1w_preproc", "petref"))
    if pet_t1 is not None:
        img, note = F.load_img(pet_t1), "PET reference in T1w space"
    else:
        img, note = F.pet_in_t1(petref, t1, r.path("xfm_petref_to_t1w"))
    png = F.registration_figure(F.load_img(t1), img, r.dpi)
    return figure(png, "PET contours over T1w", f"PET iso-contours (yellow: 50th, red: 85th "
                  f"percentile) over the T1w image; {note}.")


def _segmentation(r: _Report) -> str:
    p = r.need("t1w_preproc", "dseg")
    if p is None:
        return unavailable("Tissue segmentation", r.missing("t1w_preproc", "dseg"))
    d = F.load_img(p[1])
    html = figure(F.segmentation_figure(F.load_img(p[0]), d, r.dpi), "tissue segmentation over T1w")
    data = np.asarray(d.dataobj)
    vox = float(np.prod(d.header.get_zooms()[:3]))
    vols = {f"{name} volume (mL)": float((data == i).sum() * vox / 1000)
            for i, name in ((1, "GM"), (2, "WM"), (3, "CSF"))}
    return html + kv_table(vols)


def _atlas(r: _Report) -> str:
    labels = r.path("dseg_pet")
    bg = r.path("petref") or r.path("pet_hmc")
    if labels is None or bg is None:
        return unavailable("Atlas in PET space", r.missing("dseg_pet", "petref"))
    name = r.setting("atlas", "name", "atlas")
    html = figure(F.atlas_figure(F.load_img(bg), F.load_img(labels), r.dpi),
                  "atlas labels over PET", f"{name} labels over the PET reference (axial).")
    t1, lab_t1 = r.path("t1w_preproc"), r.path("dseg_t1w")
    if t1 is not None and lab_t1 is not None:
        html += figure(F.atlas_figure(F.load_img(t1), F.load_img(lab_t1), r.dpi), "atlas labels over T1w",
                       f"{name} labels (with tissue labels) over the T1w (axial).")
    lt = r.path("labels_tsv")
    if lt is not None:
        html += "<details><summary>label table</summary>" + table(read_tsv(lt)) + "</details>"
    return html


def _refmasks(r: _Report) -> str:
    masks = reference_masks(r.outputs)
    bg = r.path("petref") or r.path("pet_hmc")
    if not masks or bg is None:
        return unavailable("Reference-region masks", "missing petref" if masks else
                           "no ref_masks / ref_<name> outputs")
    html = figure(F.reference_masks_figure(F.load_img(bg), masks, r.dpi), "reference regions",
                  "Reference-region outlines over the PET reference.")
    vols = {}
    for n, m in masks.items():
        vox = float(np.prod(m.header.get_zooms()[:3]))
        vols[f"{n} (mL)"] = float(np.asarray(m.dataobj).astype(bool).sum() * vox / 1000)
    return html + kv_table(vols)


def _tacs(r: _Report) -> str:
    t, tp, pl = r.path("tacs"), r.path("tacs_pvc"), r.path("plasma_tsv")
    if t is None and tp is None and pl is None:
        return unavailable("TACs", r.missing("tacs", "plasma_tsv"))
    refs = tuple(r.reference_regions()) + (r.setting("kinetics", "reference_region", ""),)
    png = F.tacs_figure(read_tsv(t) if t else None, read_tsv(pl) if pl else None,
                        read_tsv(tp) if tp else None, dpi=r.dpi, highlight=refs)
    note = "" if pl else " Plasma input not available."
    return figure(png, "time-activity curves", "Regional TACs (reference regions dashed) and "
                  "the arterial plasma input." + note)


def _pick_regions(regions: Iterable[str], refs: list[str]) -> list[str]:
    """Two target regions and one reference region to plot (all when none qualify)."""
    regions = list(dict.fromkeys(regions))
    chosen = [x for x in regions if x not in refs][:2] + [x for x in regions if x in refs][:1]
    return chosen or regions


def _fit_curves(r: _Report, df: pd.DataFrame) -> tuple[pd.DataFrame | None, pd.DataFrame | None, bool]:
    """Fitted curves in long form, the parameter table, and whether the curves were written by
    the kinetics stage (True) or recomputed from the parameters (False)."""
    curves_file = r.path("fit_curves_tsv")
    try:
        # fitted curves given directly (model, region, time, measured, fitted): the fits table
        # itself or a separate ``fit_curves_tsv``
        long = F.fits_long(read_tsv(curves_file) if curves_file is not None else df)
        return long, (None if curves_file is None else df), True
    except ValueError:
        if "region" not in df.columns:
            raise
    t, pl = r.path("tacs"), r.path("plasma_tsv")
    long = None
    if t is not None and pl is not None:
        from gliaflow.pipeline.report.curves import tcm_curves

        long = F.fits_long(tcm_curves(df, read_tsv(t), read_tsv(pl)))
        if long.empty:
            long = None
    return long, df, False


def _fit_curves_html(r: _Report, long: pd.DataFrame, given: bool) -> str:
    chosen = _pick_regions(long["region"], r.reference_regions())
    png = F.fits_figure(long.assign(frame_start=long["t_min"] * 60, frame_end=long["t_min"] * 60),
                        r.dpi, regions=chosen)
    how = ("as written by the kinetics stage" if given
           else "recomputed from the fitted parameters and the plasma input")
    html = figure(png, "model fits and residuals", "Measured TAC, model curves ({}) and "
                  "residuals (measured - fitted).".format(how))
    rmse = (long.assign(r2=(long["measured"] - long["fitted"]) ** 2)
            .groupby(["model", "region"])["r2"].mean() ** 0.5).unstack("model")
    med = rmse.median(axis=0)
    html += kv_table({f"median RMS residual, {m} (Bq/mL)": float(v) for m, v in med.items()})
    return html + ("<details><summary>RMS residual (Bq/mL) per region and model</summary>"
                   + table(rmse.reset_index(), max_rows=200) + "</details>")


def _fit_params_html(r: _Report, params: pd.DataFrame) -> str:
    from gliaflow.pipeline.report.curves import logan_points, parameter_summary

    html = ""
    t, pl = r.path("tacs"), r.path("plasma_tsv")
    if "logan_VT" in params.columns and t is not None and pl is not None:
        tstar = float(r.setting("kinetics", "tstar_min", 30.0))
        pts = logan_points(params, read_tsv(t), read_tsv(pl), tstar)
        if len(pts):
            chosen = _pick_regions(pts["region"], r.reference_regions())
            html += figure(F.logan_figure(pts, r.dpi, chosen), "Logan plots",
                           f"Logan plots; the line (VT slope) is fitted after t* = {tstar:g} min "
                           "(filled dots).")
    summ = parameter_summary(params)
    n_bad = int((summ.get("not converged", pd.Series(dtype=str)).fillna("") != "").sum())
    return html + (f"<details{' open' if n_bad else ''}><summary>Outcome per region and model"
                   f"{f' ({n_bad} region(s) with a fit that did not converge)' if n_bad else ''}"
                   "</summary>" + table(summ, max_rows=200) + "</details>")


def _fits(r: _Report) -> str:
    p = r.need("fits_tsv")
    if p is None:
        return unavailable("Model fits", r.missing("fits_tsv"))
    long, params, given = _fit_curves(r, read_tsv(p[0]))
    html = ""
    if long is not None:
        html += _fit_curves_html(r, long, given)
    elif params is not None:
        html += unavailable("Compartment-model curves", "needs converged 1TCM/2TCM parameters, "
                            "the TAC table and the plasma input")
    if params is not None:
        html += _fit_params_html(r, params)
    return html


def _metrics(r: _Report) -> str:
    p = r.need("regional_metrics")
    if p is None:
        return unavailable("Regional metrics", r.missing("regional_metrics"))
    df = read_tsv(p[0])
    if len(df) <= 12:
        return table(df)
    return (f"<details><summary>{len(df)} regions x {df.shape[1] - 1} metrics</summary>"
            + table(df, max_rows=300) + "</details>")


def _maps(r: _Report) -> str:
    keys = sorted(k for k in r.outputs if k.startswith("map_") and not k.endswith("_mni") and r.path(k))
    space = "PET"
    if not keys:
        keys = sorted(k for k in r.outputs if k.startswith("map_") and r.path(k))
        space = "template"
    if not keys:
        return unavailable("Parametric maps", "no map_* outputs")
    imgs = {k[4:]: F.load_img(r.outputs[k]) for k in keys}
    return figure(F.map_montage(imgs, r.dpi), "parametric map montage",
                  f"Parametric maps ({space} space), axial slices; colour 0 to 99th percentile.")


def _what_ran(r: _Report) -> str:
    if not r.provenance:
        return unavailable("What ran", "no provenance records were given")
    df = provenance_table(r.provenance)
    n_cmd = int((df["command"] != "").sum())
    note = (f"{len(df)} kinds of call"
            + (f"; {n_cmd} with a command line (the first one when repeated)" if n_cmd else ""))
    return (f"<p>Every tool call the stages recorded ({esc(note)}); the methods text below is "
            "written from these records.</p>" + table(df, max_rows=500))


def _methods(r: _Report) -> str:
    paras, cited = methods_text(r.provenance, r.config, r.sidecar.get("TracerName"), qc=r.qc)
    html = methods_html(paras, cited) if paras else unavailable(
        "Methods text", "no provenance records: nothing to describe")
    flat = flatten({k: v for k, v in r.config.items() if k != "execution"})
    if flat:
        html += "<details><summary>all settings</summary>" + kv_table(flat) + "</details>"
    return html


_SECTIONS: list[tuple[str, str, Callable[[_Report], str]]] = [
    ("motion", "Frame realignment (head motion)", _motion),
    ("coreg", "PET-to-T1 registration", _coreg),
    ("segmentation", "Tissue segmentation", _segmentation),
    ("atlas", "Atlas regions in PET space", _atlas),
    ("refmasks", "Reference-region masks", _refmasks),
    ("tacs", "Time-activity curves and plasma input", _tacs),
    ("fits", "Kinetic model fits", _fits),
    ("metrics", "Regional metrics", _metrics),
    ("maps", "Parametric maps", _maps),
    ("provenance", "What ran", _what_ran),
    ("methods", "Methods", _methods),
]


def _errors_section(errors: list[str], warns: list[str]) -> str:
    html = ""
    if errors:
        html += "<h3>Errors</h3>" + bullet_list(errors)
    if warns:
        html += "<h3>Warnings</h3>" + bullet_list(warns)
    return section("errors", "Errors and warnings", html or "<p>None.</p>")


def write_session_report(out_html: str | Path, *, session_id: str, sidecar: dict,
                         outputs: dict[str, Path], qc: dict, flags: list[str], config: dict,
                         errors: list[str], warnings: list[str] | None = None,
                         inputs: dict[str, Path] | None = None, dpi: int | None = None,
                         provenance: Iterable[ToolCall | Mapping[str, Any]] | None = None) -> Path:
    """Write the self-contained HTML QC report of one PET session (atomically).

    Parameters
    ----------
    out_html : path
        Report file to write (its folder is created).
    session_id : str
        E.g. ``sub-01_ses-baseline``.
    sidecar : dict
        The BIDS PET JSON (TracerName, InjectedRadioactivity(+Units), FrameTimesStart and
        FrameDuration in s, ...).
    outputs : dict of str -> path
        Stage outputs by key (StageResult.outputs of gliaflow.pipeline.session): t1w_preproc, dseg, petref, pet_hmc, motion_tsv,
        xfm_petref_to_t1w, dseg_pet, dseg_t1w, ref_<name> (or ref_masks), tacs, tacs_pvc,
        plasma_tsv, fits_tsv (regional parameter table, or long fitted curves), optional
        fit_curves_tsv (model, region, frame_start, frame_end, measured, fitted; Bq/mL),
        regional_metrics, map_<name> (PET space) and map_<name>_mni. Any may be missing.
    qc : dict
        QC values (nested dicts allowed), shown as a table.
    flags : list of str
        QC flags raised by the stages (e.g. ``coreg_suspect``).
    config : dict
        Configuration sections as JSON-able dicts: those the session used
        (``gliaflow.pipeline.config.stage_settings(cfg, "report")``) or the whole
        ``PipelineConfig.model_dump(mode="json")``: the settings the methods text states, the
        settings table and ``report.dpi``.
    errors : list of str
        Errors of this session (stages that failed), shown prominently.
    warnings : list of str, optional
        Warnings from the stages; sections that could not be drawn add their own.
    inputs : dict of str -> path, optional
        Input files (PET, T1w, blood) listed in the summary.
    dpi : int, optional
        Figure resolution; default ``config['report']['dpi']`` (80).
    provenance : list of ToolCall (or their JSON dumps), optional
        The stages' records of what ran (``StageResult.provenance``): the "What ran" table and
        the only source of the methods text.

    Returns
    -------
    Path of the written report.
    """
    out_html = Path(out_html)
    config = dict(config or {})
    sidecar = dict(sidecar or {})
    r = _Report(outputs={k: Path(v) for k, v in (outputs or {}).items() if v is not None},
                config=config, dpi=int(dpi or (config.get("report") or {}).get("dpi", 80)),
                sidecar=sidecar, qc=dict(qc or {}), provenance=as_calls(provenance))
    warns = list(warnings or [])
    flags = list(flags or [])
    body = guarded_section("summary", "Summary",
                           lambda: _summary(session_id, sidecar, r.outputs, inputs, out_html), warns)
    if errors:
        body += section("failure", "Errors", "<p>" + badge("session has errors", "bad") + "</p>"
                        + bullet_list(errors))
    body += guarded_section("qc", "QC flags and metrics", lambda: _qc(r.qc, flags), warns)
    for anchor, title, build in _SECTIONS:
        body += guarded_section(anchor, title, lambda build=build: build(r), warns)
    body += _errors_section(list(errors or []), warns)
    sub = " · ".join(s for s in (sidecar.get("TracerName", ""), f"{len(flags)} QC flag(s)",
                                 f"{len(errors or [])} error(s)") if s)
    html = page(f"gliaflow report: {session_id}", body, subtitle=sub, nav=_NAV)
    return atomic_write_text(out_html, html)
