"""Write tiny BIDS-PET datasets for tests (8x8x8x37 float32 PET, 8x8x8 T1w, blood, participants).

Import from a test with ``import bidsfactory as bf`` (pyproject.toml puts tests/ on the pytest
``pythonpath``).

Everything is small so a dataset of a few subjects writes in well under a second.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

#: the [11C]PBR28 HRRT schedule: 8x10 s, 5x20 s, 4x30 s, 4x60 s, 4x180 s, 12x360 s (37 frames)
DURATIONS_S = [10.0] * 8 + [20.0] * 5 + [30.0] * 4 + [60.0] * 4 + [180.0] * 4 + [360.0] * 12


def frame_schedule(n_frames: int = 37) -> tuple[list[float], list[float]]:
    """(FrameTimesStart, FrameDuration) in s for the first ``n_frames`` frames."""
    dur = DURATIONS_S[:n_frames]
    starts = np.concatenate([[0.0], np.cumsum(dur)[:-1]]).tolist()
    return starts, list(dur)


def write_nifti(path: Path, shape=(8, 8, 8, 37), zoom_mm: float = 2.0, affine=None,
                dtype=np.float32) -> Path:
    """Write a small NIfTI (values: a ramp, so it is not all zero)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) % 97
    if affine is None:
        affine = np.diag([zoom_mm, zoom_mm, zoom_mm, 1.0])
        affine[:3, 3] = -zoom_mm * np.asarray(shape[:3]) / 2
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def pet_sidecar(n_frames: int = 37, **overrides) -> dict:
    """A valid BIDS PET sidecar (kBq/mL, 400 MBq, frames from :data:`DURATIONS_S`)."""
    starts, dur = frame_schedule(n_frames)
    side = {
        "Manufacturer": "Siemens",
        "Units": "kBq/mL",
        "TracerName": "[11C]PBR28",
        "TracerRadionuclide": "C11",
        "InjectedRadioactivity": 400,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": 1.2,
        "InjectedMassUnits": "ug",
        "ModeOfAdministration": "bolus",
        "TimeZero": "12:00:00",
        "ScanStart": 0.0,
        "InjectionStart": 0.0,
        "FrameTimesStart": starts,
        "FrameDuration": dur,
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0.0,
    }
    side.update(overrides)
    return side


def write_json(path: Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def write_tsv(path: Path, columns: dict[str, list]) -> Path:
    """Write a TSV from columns (None -> ``n/a``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    n = len(columns[names[0]])
    lines = ["\t".join(names)]
    for i in range(n):
        lines.append("\t".join("n/a" if columns[c][i] is None else str(columns[c][i]) for c in names))
    path.write_text("\n".join(lines) + "\n")
    return path


def autosampler_blood() -> tuple[dict, dict]:
    """(columns, sidecar) of a 1 Hz-ish autosampler recording (kBq/mL, s)."""
    t = np.arange(0, 600, 10.0)
    wb = (20 * (t / 30) * np.exp(1 - t / 30) + 2).round(4)
    return ({"time": t.tolist(), "whole_blood_radioactivity": wb.tolist(),
             "plasma_radioactivity": (wb * 1.1).round(4).tolist()},
            {"Description": "autosampler", "SampleOrigin": "arterial", "DispersionCorrected": False,
             "time": {"Description": "time from TimeZero", "Units": "s"},
             "whole_blood_radioactivity": {"Units": "kBq/mL"},
             "plasma_radioactivity": {"Units": "kBq/mL"}})


def manual_blood() -> tuple[dict, dict]:
    """(columns, sidecar) of manual samples with parent fraction (times in min, kBq/mL)."""
    t_min = [1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 90.0]
    pf = [0.98, 0.9, 0.7, 0.5, 0.35, 0.3, 0.25]
    wb = [15.0, 6.0, 4.0, 3.0, 2.5, 2.2, 2.0]
    return ({"time": t_min, "whole_blood_radioactivity": wb,
             "plasma_radioactivity": [w * 1.1 for w in wb], "metabolite_parent_fraction": pf},
            {"Description": "manual samples",
             "time": {"Units": "min"},
             "whole_blood_radioactivity": {"Units": "kBq/mL"},
             "plasma_radioactivity": {"Units": "kBq/mL"},
             "metabolite_parent_fraction": {"Units": "unitless"}})


def session_prefix(sub: str, ses: str | None = None, trc: str | None = "PBR28") -> str:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"trc-{trc}"] if trc else [])
    return "_".join(parts)


def session_dir(root: Path, sub: str, ses: str | None = None) -> Path:
    d = Path(root) / f"sub-{sub}"
    return d / f"ses-{ses}" if ses else d


def make_session(root: Path, sub: str, ses: str | None = None, trc: str | None = "PBR28",
                 n_frames: int = 37, blood: bool = True, t1w: str | None = "session",
                 sidecar: dict | None = None) -> dict[str, Path]:
    """Write one PET session; returns the paths written (keys pet, pet_json, t1w, blood_*).

    ``t1w``: ``"session"`` (in the session's anat), ``"subject"`` (subject-level anat) or None.
    """
    root = Path(root)
    sdir = session_dir(root, sub, ses)
    pre = session_prefix(sub, ses, trc)
    out = {}
    shape = (8, 8, 8, n_frames) if n_frames > 1 else (8, 8, 8)
    out["pet"] = write_nifti(sdir / "pet" / f"{pre}_pet.nii.gz", shape)
    out["pet_json"] = write_json(sdir / "pet" / f"{pre}_pet.json",
                                 sidecar if sidecar is not None else pet_sidecar(n_frames))
    if t1w:
        adir = (sdir if t1w == "session" else root / f"sub-{sub}") / "anat"
        anat_pre = f"sub-{sub}" + (f"_ses-{ses}" if ses and t1w == "session" else "")
        out["t1w"] = write_nifti(adir / f"{anat_pre}_T1w.nii.gz", (8, 8, 8), zoom_mm=1.0)
    if blood:
        for label, (cols, meta) in (("autosampler", autosampler_blood()), ("manual", manual_blood())):
            base = sdir / "pet" / f"{pre}_recording-{label}_blood"
            out[f"blood_{label}"] = write_tsv(base.with_suffix(".tsv"), cols)
            out[f"blood_{label}_json"] = write_json(base.with_suffix(".json"), meta)
    return out


def write_participants(root: Path, rows: list[dict], sidecar: dict | None = None) -> Path:
    cols = list(rows[0])
    write_tsv(Path(root) / "participants.tsv", {c: [r.get(c) for r in rows] for c in cols})
    if sidecar is None:
        sidecar = {"group": {"Levels": {"patient": "fibromyalgia", "control": "healthy"}},
                   "tspo_genotype": {"Levels": {"HAB": "high", "MAB": "mixed", "LAB": "low"}},
                   "age": {"Units": "year"}, "fatigue": {"Description": "FIQ fatigue score"}}
    write_json(Path(root) / "participants.json", sidecar)
    return Path(root) / "participants.tsv"


def make_dataset(root: Path, subjects=("01", "02", "03"), sessions=(None,), **session_kw) -> Path:
    """A BIDS-PET dataset with one PET per subject and session, and participants.tsv."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.9.0"})
    rows = []
    for i, sub in enumerate(subjects):
        for ses in sessions:
            make_session(root, sub, ses, **session_kw)
        rows.append({"participant_id": f"sub-{sub}", "group": "patient" if i % 2 else "control",
                     "tspo_genotype": "HAB" if i % 3 else "MAB", "site": "KI", "age": 30 + i,
                     "sex": "F", "fatigue": None if i == 0 else 10 + i})
    write_participants(root, rows)
    return root


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with (size, mtime_ns, mode), for 'nothing was written' checks."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            snap[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns,
                                              st.st_mode)
    return snap
