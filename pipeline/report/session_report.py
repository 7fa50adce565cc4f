"""Per-session HTML QC report: one self-contained file with a figure per processing step.

The report reads the stage outputs by file format (the StageResult.outputs keys of gliaflow.pipeline.session) from the paths
it is given. Every section is independent: a missing or unreadable input gives a visible
"not available" note (and a warning in the report), never an exception.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import nibabel as nib
import numpy as np
import pandas as pd

from gliaflow.pipeline.io.derivatives import atomic_write_text
from gliaflow.pipeline.report import figures as F
from gliaflow.pipeline.report.html import (badge, bullet_list, esc, figure, flatten, guarded_section, kv_table, page, section,
                   table, unavailable)
from gliaflow.pipeline.report.methods import methods_html, methods_text, stages_from_outputs, tool_versions

__all__ = ["write_session_report", "read_tsv", "reference_masks"]

_NAV = [("summary", "Summary"), ("qc", "QC flags"), ("motion", "Motion"), ("coreg", "PET→T1"),
        ("segmentation", "Segmentation"), ("atlas", "Atlas"), ("refmasks", "Reference regions"),
        ("tacs", "TACs"), ("fits", "Model fits"), ("metrics", "Regional metrics"), ("maps", "Maps"),
        ("methods", "Methods"), ("errors", "Errors and warnings")]


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


def write_session_report(out_html: str | Path, *, session_id: str, sidecar: dict,
                         outputs: dict[str, Path], qc: dict, flags: list[str], config: dict,
                         errors: list[str], warnings: list[str] | None = None,
                         inputs: dict[str, Path] | None = None, dpi: int | None = None) -> Path:
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
        ``PipelineConfig.model_dump(mode="json")``; drives the methods text, the settings table
        and ``report.dpi``.
    errors : list of str
        Errors of this session (stages that failed), shown prominently.
    warnings : list of str, optional
        Warnings from the stages; sections that could not be drawn add their own.
    inputs : dict of str -> path, optional
        Input files (PET, T1w, blood) listed in the summary.
    dpi : int, optional
        Figure resolution; default ``config['report']['dpi']`` (80).

    Returns
    -------
    Path of the written report.
    """
    out_html = Path(out_html)
    outputs = {k: Path(v) for k, v in (outputs or {}).items() if v is not None}
    config = dict(config or {})
    dpi = int(dpi or (config.get("report") or {}).get("dpi", 80))
    warns = list(warnings or [])
    sidecar = dict(sidecar or {})

    def guarded(anchor: str, title: str, build: Callable[[], str]) -> str:
        return guarded_section(anchor, title, build, warns)

    def need(*keys: str) -> list[Path] | None:
        paths = [_existing(outputs, k) for k in keys]
        return None if any(p is None for p in paths) else paths  # type: ignore[return-value]

    def missing(*keys: str) -> str:
        absent = [k for k in keys if _existing(outputs, k) is None]
        return "missing " + ", ".join(absent)

    def motion() -> str:
        p = need("motion_tsv")
        if p is None:
            return unavailable("Frame realignment", missing("motion_tsv"))
        df = read_tsv(p[0])
        html = figure(F.motion_figure(df, dpi), "frame realignment parameters",
                      "Rigid realignment parameters per frame and framewise displacement (FD).")
        if "framewise_displacement" in df:
            fd = df["framewise_displacement"].to_numpy(float)
            html += kv_table({"mean FD (mm)": float(np.nanmean(fd)), "max FD (mm)": float(np.nanmax(fd)),
                              "frames": len(df)})
        return html

    def coreg() -> str:
        t1 = _existing(outputs, "t1w_preproc") or _existing(outputs, "t1w")
        pet_t1 = _existing(outputs, "petref_t1w")
        petref = _existing(outputs, "petref")
        if t1 is None or (pet_t1 is None and petref is None):
            return unavailable("PET-on-T1 check", missing("t1w_preproc", "petref"))
        if pet_t1 is not None:
            img, note = F.load_img(pet_t1), "PET reference in T1w space"
        else:
            img, note = F.pet_in_t1(petref, t1, _existing(outputs, "xfm_petref_to_t1w"))
        png = F.registration_figure(F.load_img(t1), img, dpi)
        return figure(png, "PET contours over T1w", f"PET iso-contours (yellow: 50th, red: 85th "
                      f"percentile) over the T1w image; {note}.")

    def segmentation() -> str:
        p = need("t1w_preproc", "dseg")
        if p is None:
            return unavailable("Tissue segmentation", missing("t1w_preproc", "dseg"))
        html = figure(F.segmentation_figure(F.load_img(p[0]), F.load_img(p[1]), dpi),
                      "tissue segmentation over T1w")
        d = F.load_img(p[1])
        data = np.asarray(d.dataobj)
        vox = float(np.prod(d.header.get_zooms()[:3]))
        vols = {f"{name} volume (mL)": float((data == i).sum() * vox / 1000)
                for i, name in ((1, "GM"), (2, "WM"), (3, "CSF"))}
        return html + kv_table(vols)

    def atlas() -> str:
        labels = _existing(outputs, "dseg_pet")
        bg = _existing(outputs, "petref") or _existing(outputs, "pet_hmc")
        if labels is None or bg is None:
            return unavailable("Atlas in PET space", missing("dseg_pet", "petref"))
        name = (config.get("atlas") or {}).get("name", "atlas")
        html = figure(F.atlas_figure(F.load_img(bg), F.load_img(labels), dpi),
                      "atlas labels over PET", f"{name} labels over the PET reference (axial).")
        t1, lab_t1 = _existing(outputs, "t1w_preproc"), _existing(outputs, "dseg_t1w")
        if t1 is not None and lab_t1 is not None:
            html += figure(F.atlas_figure(F.load_img(t1), F.load_img(lab_t1), dpi), "atlas labels over T1w",
                           f"{name} labels (with tissue labels) over the T1w (axial).")
        lt = _existing(outputs, "labels_tsv")
        if lt is not None:
            html += "<details><summary>label table</summary>" + table(read_tsv(lt)) + "</details>"
        return html

    def refmasks() -> str:
        masks = reference_masks(outputs)
        bg = _existing(outputs, "petref") or _existing(outputs, "pet_hmc")
        if not masks or bg is None:
            return unavailable("Reference-region masks", "missing petref" if masks else
                               "no ref_masks / ref_<name> outputs")
        html = figure(F.reference_masks_figure(F.load_img(bg), masks, dpi), "reference regions",
                      "Reference-region outlines over the PET reference.")
        vols = {}
        for n, m in masks.items():
            vox = float(np.prod(m.header.get_zooms()[:3]))
            vols[f"{n} (mL)"] = float(np.asarray(m.dataobj).astype(bool).sum() * vox / 1000)
        return html + kv_table(vols)

    def tacs() -> str:
        t = _existing(outputs, "tacs")
        tp = _existing(outputs, "tacs_pvc")
        pl = _existing(outputs, "plasma_tsv")
        if t is None and tp is None and pl is None:
            return unavailable("TACs", missing("tacs", "plasma_tsv"))
        refs = tuple((config.get("atlas") or {}).get("reference_regions") or ()) + (
            (config.get("kinetics") or {}).get("reference_region", ""),)
        png = F.tacs_figure(read_tsv(t) if t else None, read_tsv(pl) if pl else None,
                            read_tsv(tp) if tp else None, dpi=dpi, highlight=refs)
        note = "" if pl else " Plasma input not available."
        return figure(png, "time-activity curves", "Regional TACs (reference regions dashed) and "
                      "the arterial plasma input." + note)

    def fits() -> str:
        p = need("fits_tsv")
        if p is None:
            return unavailable("Model fits", missing("fits_tsv"))
        df = read_tsv(p[0])
        refs = list((config.get("atlas") or {}).get("reference_regions") or [])
        html = ""
        curves_file = _existing(outputs, "fit_curves_tsv")
        try:
            # fitted curves given directly (model, region, time, measured, fitted): the fits table
            # itself or a separate ``fit_curves_tsv``
            long = F.fits_long(read_tsv(curves_file) if curves_file is not None else df)
            params = None if curves_file is None else df
            given = True
        except ValueError:
            given = False
            if "region" not in df.columns:
                raise
            params = df
            t, pl = _existing(outputs, "tacs"), _existing(outputs, "plasma_tsv")
            long = None
            if t is not None and pl is not None:
                from gliaflow.pipeline.report.curves import tcm_curves

                long = F.fits_long(tcm_curves(params, read_tsv(t), read_tsv(pl)))
                if long.empty:
                    long = None
        if long is not None:
            regions = list(dict.fromkeys(long["region"]))
            chosen = [r for r in regions if r not in refs][:2] + [r for r in regions if r in refs][:1]
            png = F.fits_figure(long.assign(frame_start=long["t_min"] * 60, frame_end=long["t_min"] * 60),
                                dpi, regions=chosen or regions)
            how = ("as written by the kinetics stage" if given
                   else "recomputed from the fitted parameters and the plasma input")
            html += figure(png, "model fits and residuals", "Measured TAC, model curves ({}) and "
                           "residuals (measured - fitted).".format(how))
            rmse = (long.assign(r2=(long["measured"] - long["fitted"]) ** 2)
                    .groupby(["model", "region"])["r2"].mean() ** 0.5).unstack("model")
            med = rmse.median(axis=0)
            html += kv_table({f"median RMS residual, {m} (Bq/mL)": float(v) for m, v in med.items()})
            html += ("<details><summary>RMS residual (Bq/mL) per region and model</summary>"
                     + table(rmse.reset_index(), max_rows=200) + "</details>")
        elif params is not None:
            html += unavailable("Compartment-model curves", "needs converged 1TCM/2TCM parameters, "
                                "the TAC table and the plasma input")
        if params is not None:
            t, pl = _existing(outputs, "tacs"), _existing(outputs, "plasma_tsv")
            if "logan_VT" in params.columns and t is not None and pl is not None:
                from gliaflow.pipeline.report.curves import logan_points

                tstar = float((config.get("kinetics") or {}).get("tstar_min", 30.0))
                pts = logan_points(params, read_tsv(t), read_tsv(pl), tstar)
                if len(pts):
                    regs = list(dict.fromkeys(pts["region"]))
                    chosen = [r for r in regs if r not in refs][:2] + [r for r in regs if r in refs][:1]
                    html += figure(F.logan_figure(pts, dpi, chosen), "Logan plots",
                                   f"Logan plots; the line (VT slope) is fitted after t* = {tstar:g} min "
                                   "(filled dots).")
            from gliaflow.pipeline.report.curves import parameter_summary

            summ = parameter_summary(params)
            n_bad = int((summ.get("not converged", pd.Series(dtype=str)).fillna("") != "").sum())
            html += (f"<details{' open' if n_bad else ''}><summary>Outcome per region and model"
                     f"{f' ({n_bad} region(s) with a fit that did not converge)' if n_bad else ''}"
                     "</summary>" + table(summ, max_rows=200) + "</details>")
        return html

    def metrics() -> str:
        p = need("regional_metrics")
        if p is None:
            return unavailable("Regional metrics", missing("regional_metrics"))
        df = read_tsv(p[0])
        if len(df) <= 12:
            return table(df)
        return (f"<details><summary>{len(df)} regions x {df.shape[1] - 1} metrics</summary>"
                + table(df, max_rows=300) + "</details>")

    def maps() -> str:
        keys = sorted(k for k in outputs if k.startswith("map_") and not k.endswith("_mni")
                      and _existing(outputs, k))
        space = "PET"
        if not keys:
            keys = sorted(k for k in outputs if k.startswith("map_") and _existing(outputs, k))
            space = "template"
        if not keys:
            return unavailable("Parametric maps", "no map_* outputs")
        imgs = {k[4:]: F.load_img(outputs[k]) for k in keys}
        return figure(F.map_montage(imgs, dpi), "parametric map montage",
                      f"Parametric maps ({space} space), axial slices; colour 0 to 99th percentile.")

    def methods() -> str:
        paras, cited = methods_text(config, stages_from_outputs(outputs), sidecar.get("TracerName"),
                                    tool_versions())
        html = methods_html(paras, cited)
        flat = flatten({k: v for k, v in config.items() if k != "execution"})
        if flat:
            html += "<details><summary>all settings</summary>" + kv_table(flat) + "</details>"
        return html

    body = guarded("summary", "Summary", lambda: _summary(session_id, sidecar, outputs, inputs, out_html))
    if errors:
        body += section("failure", "Errors", "<p>" + badge("session has errors", "bad") + "</p>"
                        + bullet_list(errors))
    body += guarded("qc", "QC flags and metrics", lambda: _qc(qc or {}, list(flags or [])))
    for anchor, title, fn in (("motion", "Frame realignment (head motion)", motion),
                              ("coreg", "PET-to-T1 registration", coreg),
                              ("segmentation", "Tissue segmentation", segmentation),
                              ("atlas", "Atlas regions in PET space", atlas),
                              ("refmasks", "Reference-region masks", refmasks),
                              ("tacs", "Time-activity curves and plasma input", tacs),
                              ("fits", "Kinetic model fits", fits),
                              ("metrics", "Regional metrics", metrics),
                              ("maps", "Parametric maps", maps),
                              ("methods", "Methods", methods)):
        body += guarded(anchor, title, fn)
    err_html = ""
    if errors:
        err_html += "<h3>Errors</h3>" + bullet_list(errors)
    if warns:
        err_html += "<h3>Warnings</h3>" + bullet_list(warns)
    body += section("errors", "Errors and warnings", err_html or "<p>None.</p>")
    sub = " · ".join(s for s in (sidecar.get("TracerName", ""), f"{len(flags or [])} QC flag(s)",
                                 f"{len(errors or [])} error(s)") if s)
    html = page(f"gliaflow report: {session_id}", body, subtitle=sub, nav=_NAV)
    return atomic_write_text(out_html, html)
