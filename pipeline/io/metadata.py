"""Pydantic models for the BIDS-PET files gliaflow reads, and for what discovery returns.

Internal units: seconds (from injection) and Bq/mL; fractions 0..1; injected dose in Bq.
Conversion happens once, here and in :mod:`gliaflow.pipeline.io.bids`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gliaflow.pipeline.errors import BloodDataError
from gliaflow.pipeline.io.units import activity_concentration_factor, fraction_factor, radioactivity_factor, time_factor

__all__ = [
    "PetSidecar",
    "BloodRecording",
    "SessionIssue",
    "SessionSpec",
    "Discovery",
    "BLOOD_COLUMNS",
    "OVERLAP_TOLERANCE_S",
]

#: BIDS blood column -> (internal column, kind of unit)
BLOOD_COLUMNS: dict[str, tuple[str, str]] = {
    "time": ("time_s", "time"),
    "plasma_radioactivity": ("plasma_bqml", "activity"),
    "whole_blood_radioactivity": ("whole_blood_bqml", "activity"),
    "metabolite_parent_fraction": ("parent_fraction", "fraction"),
}
_UNIT_FACTOR = {"time": time_factor, "activity": activity_concentration_factor,
                "fraction": fraction_factor}

#: Frames may overlap by this much (s) before it is an error (rounding in sidecars).
OVERLAP_TOLERANCE_S = 0.01


def _numbers(v: list[float], name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=float)
    if arr.size == 0:
        raise ValueError("is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"entry {int(bad[0])} is not a finite number ({v[bad[0]]!r})")
    return arr


def _check_n_frames(n: int, info: ValidationInfo) -> None:
    n_frames = (info.context or {}).get("n_frames")
    if n_frames is not None and n != n_frames:
        raise ValueError(f"has {n} entries but the image has {n_frames} frame"
                         f"{'s' if n_frames != 1 else ''}")


class PetSidecar(BaseModel):
    """The BIDS PET JSON sidecar (after BIDS inheritance), validated.

    Times are in seconds relative to ``TimeZero`` as BIDS defines them (``FrameTimesStart``,
    ``FrameDuration``, ``ScanStart``, ``InjectionStart``). Older spellings ``Unit`` and
    ``InjectedRadioactivityUnit`` are accepted. Other keys are kept (``extra='allow'``).

    Validation context (``model_validate(data, context={"n_frames": n})``) makes the frame lists
    be checked against the number of frames in the image header.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    Units: str = Field(validation_alias=AliasChoices("Units", "Unit"),
                       description="Unit of the image values (activity concentration, e.g. Bq/mL).")
    FrameTimesStart: list[float] = Field(description="Frame start times (s, relative to TimeZero).")
    FrameDuration: list[float] = Field(description="Frame durations (s).")
    TracerName: str | None = None
    TracerRadionuclide: str | None = None
    InjectedRadioactivity: float | None = Field(None, description="Injected dose, in "
                                                "InjectedRadioactivityUnits.")
    InjectedRadioactivityUnits: str | None = Field(
        None, validation_alias=AliasChoices("InjectedRadioactivityUnits", "InjectedRadioactivityUnit"))
    TimeZero: str | None = None
    ScanStart: float | None = Field(None, description="Scan start relative to TimeZero (s).")
    InjectionStart: float | None = Field(None, description="Injection start relative to TimeZero (s).")
    ImageDecayCorrected: bool | None = None
    ImageDecayCorrectionTime: float | None = None

    @field_validator("Units")
    @classmethod
    def _units_known(cls, v: str) -> str:
        activity_concentration_factor(v)  # raises ValueError naming accepted units
        return v

    @field_validator("InjectedRadioactivityUnits")
    @classmethod
    def _dose_units_known(cls, v: str | None) -> str | None:
        if v is not None:
            radioactivity_factor(v)
        return v

    @field_validator("FrameTimesStart")
    @classmethod
    def _starts(cls, v: list[float], info: ValidationInfo) -> list[float]:
        arr = _numbers(v, "FrameTimesStart")
        _check_n_frames(arr.size, info)
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise ValueError(f"frame {int(neg[0])} starts at a negative time ({arr[neg[0]]:g} s)")
        back = np.flatnonzero(np.diff(arr) <= 0)
        if back.size:
            i = int(back[0])
            raise ValueError(f"frames are not in time order: frame {i + 1} starts at "
                             f"{arr[i + 1]:g} s, not after frame {i} ({arr[i]:g} s)")
        return v

    @field_validator("FrameDuration")
    @classmethod
    def _durations(cls, v: list[float], info: ValidationInfo) -> list[float]:
        arr = _numbers(v, "FrameDuration")
        _check_n_frames(arr.size, info)
        nonpos = np.flatnonzero(arr <= 0)
        if nonpos.size:
            raise ValueError(f"frame {int(nonpos[0])} has a non-positive duration "
                             f"({arr[nonpos[0]]:g} s)")
        starts = info.data.get("FrameTimesStart")
        if starts is not None:
            if len(starts) != arr.size:
                raise ValueError(f"has {arr.size} entries but FrameTimesStart has {len(starts)}")
            s = np.asarray(starts, dtype=float)
            ends = s + arr
            over = np.flatnonzero(ends[:-1] > s[1:] + OVERLAP_TOLERANCE_S)
            if over.size:
                i = int(over[0])
                raise ValueError(f"frames overlap: frame {i} ends at {ends[i]:g} s but frame "
                                 f"{i + 1} starts at {s[i + 1]:g} s")
        return v

    def injected_bq(self) -> float | None:
        """Injected radioactivity in Bq, or None when not given."""
        if self.InjectedRadioactivity is None or self.InjectedRadioactivityUnits is None:
            return None
        return float(self.InjectedRadioactivity) * radioactivity_factor(self.InjectedRadioactivityUnits)

    def units_to_bqml(self) -> float:
        """Factor converting image values to Bq/mL."""
        return activity_concentration_factor(self.Units)


class BloodRecording(BaseModel):
    """One BIDS blood recording (``*_recording-<label>_blood.tsv`` + ``.json``).

    Attributes
    ----------
    label : str
        The ``recording`` entity (e.g. ``autosampler``, ``manual``).
    tsv, json_path : Path
        The table and its sidecar.
    columns : list of str
        The BIDS columns present in the table among ``time``, ``plasma_radioactivity``,
        ``whole_blood_radioactivity``, ``metabolite_parent_fraction``.
    units : dict
        Column -> unit as written in the JSON.
    factors : dict
        Column -> factor to the internal unit (s, Bq/mL, fraction).
    time_offset_s : float
        Subtracted from the converted times so they are seconds from injection (the PET
        sidecar's ``InjectionStart``; BIDS blood times are relative to ``TimeZero``).
    meta : dict
        The whole (inherited) JSON sidecar, for e.g. ``DispersionCorrected``.
    """

    label: str
    tsv: Path
    json_path: Path
    columns: list[str] = Field(default_factory=list)
    units: dict[str, str] = Field(default_factory=dict)
    factors: dict[str, float] = Field(default_factory=dict)
    time_offset_s: float = 0.0
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def has_plasma(self) -> bool:
        return "plasma_radioactivity" in self.columns

    @property
    def has_whole_blood(self) -> bool:
        return "whole_blood_radioactivity" in self.columns

    @property
    def has_parent_fraction(self) -> bool:
        return "metabolite_parent_fraction" in self.columns

    @classmethod
    def from_files(cls, tsv: str | Path, json_path: str | Path, label: str,
                   meta: dict[str, Any] | None = None, time_offset_s: float = 0.0,
                   display_tsv: str | None = None, display_json: str | None = None) -> "BloodRecording":
        """Read and validate a recording (units known, ``time`` present, values numeric).

        Parameters
        ----------
        tsv, json_path : path
            The table and its sidecar.
        label : str
            Recording label.
        meta : dict, optional
            The sidecar content already read (with BIDS inheritance); read from ``json_path``
            when omitted.
        time_offset_s : float
            Injection time relative to TimeZero (s), subtracted from the times.
        display_tsv, display_json : str, optional
            How to name the files in error messages (default: the paths).

        Raises
        ------
        BloodDataError
            Naming the file and the column (field) at fault.
        """
        tsv, json_path = Path(tsv), Path(json_path)
        dj = display_json or str(json_path)
        if meta is None:
            try:
                meta = json.loads(json_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise BloodDataError("blood sidecar (JSON with column units) not found", file=dj) from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BloodDataError(f"not valid JSON: {exc}", file=dj) from None
        if not isinstance(meta, dict):
            raise BloodDataError("top level must be a JSON object", file=dj)
        header = _read_tsv_header(tsv, display_tsv)
        columns = [c for c in BLOOD_COLUMNS if c in header]
        if "time" not in columns:
            raise BloodDataError(f"no 'time' column (columns: {', '.join(header)})",
                                 file=display_tsv or str(tsv), field="time")
        units: dict[str, str] = {}
        factors: dict[str, float] = {}
        for col in columns:
            desc = meta.get(col)
            unit = desc.get("Units") if isinstance(desc, dict) else None
            if unit is None:
                raise BloodDataError(f"no Units given for column '{col}' (add "
                                     f'"{col}": {{"Units": ...}})', file=dj, field=col)
            try:
                factors[col] = _UNIT_FACTOR[BLOOD_COLUMNS[col][1]](unit)
            except ValueError as exc:
                raise BloodDataError(str(exc), file=dj, field=f"{col}.Units") from None
            units[col] = str(unit)
        rec = cls(label=label, tsv=tsv, json_path=json_path, columns=columns, units=units,
                  factors=factors, time_offset_s=float(time_offset_s or 0.0), meta=meta)
        rec._table(display_tsv)  # validate values now, so problems surface at discovery
        return rec

    def table(self) -> pd.DataFrame:
        """The recording in internal units, sorted by time.

        Returns
        -------
        pandas.DataFrame
            Columns ``time_s`` (s from injection), ``plasma_bqml`` and ``whole_blood_bqml``
            (Bq/mL), ``parent_fraction`` (0..1). NaN where a column is absent or ``n/a``.

        Raises
        ------
        BloodDataError
            If a value is not a number, or a time is missing.
        """
        return self._table(None)

    def _table(self, display: str | None) -> pd.DataFrame:
        name = display or str(self.tsv)
        try:
            with open(self.tsv, encoding="utf-8", newline="") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BloodDataError(f"cannot read table: {exc}", file=name) from None
        header = [c.strip() for c in lines[0].split("\t")] if lines else []
        rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
        n = len(rows)
        if n == 0:
            raise BloodDataError("the table has no rows", file=name)
        for i, r in enumerate(rows):
            if len(r) != len(header):
                raise BloodDataError(f"row {i + 1} has {len(r)} values but the header has "
                                     f"{len(header)} columns", file=name)
        out = {}
        for col, (internal, _) in BLOOD_COLUMNS.items():
            if col not in self.columns:
                out[internal] = np.full(n, np.nan)
                continue
            j = header.index(col)
            arr = np.empty(n)
            for i, r in enumerate(rows):
                text = r[j].strip()
                if text in ("n/a", ""):
                    if col == "time":
                        raise BloodDataError(f"row {i + 1}: time is missing (n/a is not allowed "
                                             "in 'time')", file=name, field=col)
                    arr[i] = np.nan
                    continue
                try:
                    arr[i] = float(text)
                except ValueError:
                    raise BloodDataError(f"row {i + 1}: {text!r} is not a number", file=name,
                                         field=col) from None
                if not np.isfinite(arr[i]):
                    raise BloodDataError(f"row {i + 1}: {text!r} is not a finite number",
                                         file=name, field=col)
            out[internal] = arr * self.factors[col]
        pf = out["parent_fraction"]
        if np.any(pf > 1.0 + 1e-6) or np.any(pf < -1e-6):
            unit = self.units.get("metabolite_parent_fraction")
            raise BloodDataError(f"parent fraction outside 0..1 (range {np.nanmin(pf):g} to "
                                 f"{np.nanmax(pf):g} with Units {unit!r}; percent values need "
                                 "\"Units\": \"percent\")", file=name, field="metabolite_parent_fraction")
        out["time_s"] = out["time_s"] - self.time_offset_s
        order = np.argsort(out["time_s"], kind="stable")
        return pd.DataFrame({k: v[order] for k, v in out.items()})


def _read_tsv_header(tsv: Path, display: str | None) -> list[str]:
    name = display or str(tsv)
    try:
        with open(tsv, encoding="utf-8") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise BloodDataError("file not found", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BloodDataError(f"cannot read: {exc}", file=name) from None
    if not first.strip():
        raise BloodDataError("empty file (no header line)", file=name)
    return [c.strip() for c in first.rstrip("\r\n").split("\t")]


class SessionIssue(BaseModel):
    """One problem found in one session: which file, which field, what is wrong.

    ``file`` is relative to the BIDS folder (e.g. ``sub-02/pet/sub-02_pet.json``); ``field`` is the
    JSON key, TSV column or header field (None when the whole file is at fault).
    """

    session_id: str
    file: str | None = None
    field: str | None = None
    message: str
    kind: str = "bids"

    def __str__(self) -> str:
        where = [w for w in (self.file, f"field '{self.field}'" if self.field else None) if w]
        return ": ".join(where + [self.message])


class SessionSpec(BaseModel):
    """Everything a session's processing needs, validated; cheap and picklable.

    Attributes
    ----------
    participant, session, tracer, run : str or None
        BIDS labels without prefixes (``participant`` is never None).
    task, rec : str or None
        Other entities of the PET file name, when present.
    pet, pet_json : Path
        Absolute paths of the PET image and its sidecar (when the sidecar is wholly inherited,
        the most specific inherited JSON).
    sidecar : PetSidecar
        The sidecar (with BIDS inheritance applied).
    frame_start_s, frame_end_s : list of float
        Frame start/end in seconds **from injection** (FrameTimesStart - InjectionStart).
    pet_units_to_bqml : float
        Multiply image values by this to get Bq/mL.
    injected_bq : float or None
        Injected radioactivity (Bq).
    n_frames : int
        Frames in the image (1 for a 3D image).
    pet_shape : tuple
        Image shape from the header.
    pet_zooms_mm : tuple
        Voxel sizes (mm) from the affine.
    t1w : Path
        The T1-weighted image (session-level, else subject-level anat).
    blood : list of BloodRecording
        All recordings of the session (autosampler, manual, ...), unmerged.
    covariates : dict
        The participant's participants.tsv row (missing values as None).
    """

    model_config = ConfigDict(arbitrary_types_allowed=False)

    participant: str
    session: str | None = None
    tracer: str | None = None
    run: str | None = None
    task: str | None = None
    rec: str | None = None
    bids_dir: Path
    pet: Path
    pet_json: Path
    sidecar: PetSidecar
    frame_start_s: list[float]
    frame_end_s: list[float]
    pet_units_to_bqml: float
    injected_bq: float | None = None
    n_frames: int
    pet_shape: tuple[int, ...]
    pet_zooms_mm: tuple[float, ...]
    t1w: Path
    blood: list[BloodRecording] = Field(default_factory=list)
    covariates: dict[str, Any] = Field(default_factory=dict)

    @property
    def entities(self) -> dict[str, str | None]:
        """BIDS entities for derivative names: sub, ses, trc, run (+ task, rec when present)."""
        ent = {"sub": self.participant, "ses": self.session, "trc": self.tracer, "run": self.run}
        if self.task is not None:
            ent["task"] = self.task
        if self.rec is not None:
            ent["rec"] = self.rec
        return ent

    @property
    def session_id(self) -> str:
        """E.g. ``sub-01_ses-baseline`` (``_trc-``/``_run-`` etc. appended when present)."""
        return entities_id(self.entities)

    @property
    def frame_mid_s(self) -> list[float]:
        """Frame mid-times (s from injection)."""
        return [(a + b) / 2 for a, b in zip(self.frame_start_s, self.frame_end_s)]

    def blood_by_label(self, label: str) -> BloodRecording:
        """The recording called ``label`` (KeyError when absent)."""
        for rec in self.blood:
            if rec.label == label:
                return rec
        raise KeyError(label)


def entities_id(entities: dict[str, str | None]) -> str:
    """Join entities in BIDS order: ``{'sub': '01', 'ses': 'a'}`` -> ``'sub-01_ses-a'``."""
    from gliaflow.pipeline.io.derivatives import ENTITY_ORDER

    return "_".join(f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, ""))


class Discovery(BaseModel):
    """Result of :func:`gliaflow.pipeline.io.bids.discover`.

    ``sessions`` are the valid sessions; ``invalid`` lists every problem found (several per
    session possible). A session appears in one or the other, never both.
    """

    bids_dir: Path
    sessions: list[SessionSpec] = Field(default_factory=list)
    invalid: list[SessionIssue] = Field(default_factory=list)

    @property
    def invalid_sessions(self) -> list[str]:
        """Session ids with at least one issue, in discovery order."""
        return list(dict.fromkeys(i.session_id for i in self.invalid))

    @property
    def ok(self) -> bool:
        """True when no issue was found (and at least one session was)."""
        return not self.invalid and bool(self.sessions)

    def issues_for(self, session_id: str) -> list[SessionIssue]:
        return [i for i in self.invalid if i.session_id == session_id]

