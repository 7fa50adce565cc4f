"""BIDS-PET input: discover sessions, validate them, and describe each as a :class:`SessionSpec`.

Reads only headers and small text files (never voxel data), so discovery of thousands of
sessions takes seconds. Nothing is ever written into the BIDS folder.

One session's problem never stops the others: every problem becomes a :class:`SessionIssue`
naming the file (relative to the BIDS folder) and the field, e.g.
``sub-02/pet/sub-02_pet.json: field 'FrameDuration': has 36 entries but the image has 37 frames``.

Units: frame and blood times are returned in seconds from injection, concentrations in Bq/mL,
injected dose in Bq (see :mod:`gliaflow.pipeline.io.units`).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from pydantic import ValidationError

from gliaflow.pipeline.io.metadata import (
    BloodRecording,
    Discovery,
    PetSidecar,
    SessionIssue,
    SessionSpec,
    entities_id,
)
from gliaflow.pipeline.errors import BIDSError, ConfigError, GliaflowError

__all__ = [
    "PetSidecar",
    "BloodRecording",
    "SessionIssue",
    "SessionSpec",
    "Discovery",
    "discover",
    "read_participants",
    "normalise_labels",
    "parse_bids_name",
    "read_image_header",
    "ImageHeader",
    "VOXEL_SIZE_RANGE_MM",
]

#: Accepted voxel sizes (mm) for PET and T1w images.
VOXEL_SIZE_RANGE_MM = (0.1, 20.0)

#: older sidecar spellings (pre-BIDS 1.7 PET drafts) -> current names, per suffix
_OLD_SPELLINGS = {"pet": {"Unit": "Units", "InjectedRadioactivityUnit": "InjectedRadioactivityUnits"}}
_LABEL_RE = re.compile(r"[A-Za-z0-9]+")
_NIFTI_EXTS = (".nii.gz", ".nii")


# --------------------------------------------------------------------------------------------
# labels and file names
# --------------------------------------------------------------------------------------------
def normalise_labels(value: str | Iterable[str] | None, prefix: str, flag: str) -> list[str] | None:
    """Turn a label filter into plain BIDS labels.

    Parameters
    ----------
    value : str, list of str or None
        Labels with or without the ``<prefix>-`` prefix (``"sub-01"`` or ``"01"``).
    prefix : str
        ``"sub"``, ``"ses"`` or ``"trc"``.
    flag : str
        The option name to report (``"--participant-label"``).

    Returns
    -------
    list of str or None
        The labels without prefix (None when no filter was given).

    Raises
    ------
    ConfigError
        When a label is not a plain BIDS label (letters and digits only), naming ``flag``.
    """
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        return None
    out = []
    for raw in items:
        label = str(raw).strip()
        if label.startswith(f"{prefix}-"):
            label = label[len(prefix) + 1:]
        if not _LABEL_RE.fullmatch(label):
            raise ConfigError(f"{raw!r} is not a BIDS label (letters and digits only, optionally "
                              f"prefixed with '{prefix}-')", field=flag)
        out.append(label)
    return list(dict.fromkeys(out))


def parse_bids_name(name: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into (entities, suffix, extension).

    >>> parse_bids_name("sub-01_ses-a_trc-PBR28_pet.nii.gz")
    ({'sub': '01', 'ses': 'a', 'trc': 'PBR28'}, 'pet', '.nii.gz')

    Raises
    ------
    ValueError
        When a part is not ``key-label`` with an alphanumeric label.
    """
    ext = ""
    for e in (".nii.gz", ".nii", ".json", ".tsv.gz", ".tsv"):
        if name.endswith(e):
            ext, name = e, name[: -len(e)]
            break
    parts = name.split("_")
    suffix = parts[-1]
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, label = part.partition("-")
        if not sep or not key.isalnum() or not _LABEL_RE.fullmatch(label):
            raise ValueError(f"'{part}' is not a BIDS entity (key-label, label letters and digits)")
        if key in entities:
            raise ValueError(f"entity '{key}' appears twice")
        entities[key] = label
    return entities, suffix, ext


# --------------------------------------------------------------------------------------------
# image headers
# --------------------------------------------------------------------------------------------
class ImageHeader:
    """What discovery needs from a NIfTI header: shape, voxel sizes (mm), affine, frames."""

    __slots__ = ("shape", "zooms_mm", "affine", "n_frames")

    def __init__(self, shape, zooms_mm, affine, n_frames):
        self.shape = tuple(int(s) for s in shape)
        self.zooms_mm = tuple(float(z) for z in zooms_mm)
        self.affine = affine
        self.n_frames = int(n_frames)


def read_image_header(path: Path, display: str, modality: str = "image") -> ImageHeader:
    """Read and check a NIfTI header without reading voxel data.

    Checks: the file exists and is not empty; it is a NIfTI; 3D or 4D; the affine is finite and
    non-singular with voxel sizes within :data:`VOXEL_SIZE_RANGE_MM`; an uncompressed ``.nii``
    is long enough for its data.

    Parameters
    ----------
    path : Path
        The image.
    display : str
        How to name the file in errors.
    modality : str
        Word used in messages (``"PET image"``, ``"T1w image"``).

    Raises
    ------
    BIDSError
        Naming ``display`` and the header field at fault (``dim``, ``affine``, ``pixdim``).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BIDSError(f"{modality} not found", file=display) from None
    except OSError as exc:
        raise BIDSError(f"cannot read {modality}: {exc.strerror}", file=display) from None
    if size == 0:
        raise BIDSError(f"{modality} is an empty file (0 bytes)", file=display)
    try:
        hdr = _parse_nifti_header(path)
    except Exception as exc:  # gzip, nibabel and struct raise many types
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip().lower()
        hint = " (it looks like an HTML page, e.g. a failed download)" if head.startswith(
            (b"<!doctype html", b"<html", b"<?xml", b"<head")) else ""
        raise BIDSError(f"{modality} is not a readable NIfTI file{hint}: "
                        f"{type(exc).__name__}: {exc}", file=display) from None
    try:
        hdr.get_data_dtype()
    except Exception:
        raise BIDSError(f"{modality} has an unknown data type code {int(hdr['datatype'])}",
                        file=display, field="datatype") from None
    shape = tuple(int(d) for d in hdr.get_data_shape())
    full_shape = shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            affine = np.asarray(hdr.get_best_affine(), dtype=float)
    except Exception as exc:
        raise BIDSError(f"{modality} affine cannot be computed: {exc}", file=display,
                        field="affine") from None
    # trailing singleton dimensions beyond 4 are harmless; anything else is not an image volume
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise BIDSError(f"{modality} must be 3D or 4D, header has shape {shape}", file=display,
                        field="dim")
    if not np.all(np.isfinite(affine)):
        raise BIDSError(f"{modality} affine has non-finite values", file=display, field="affine")
    lin = affine[:3, :3]
    if abs(np.linalg.det(lin)) < 1e-9:
        raise BIDSError(f"{modality} affine is singular (zero voxel size or collapsed axes)",
                        file=display, field="affine")
    zooms = np.sqrt((lin ** 2).sum(axis=0))
    lo, hi = VOXEL_SIZE_RANGE_MM
    if np.any(zooms < lo) or np.any(zooms > hi):
        raise BIDSError(f"{modality} voxel sizes {np.round(zooms, 3).tolist()} mm are outside "
                        f"{lo}-{hi} mm (wrong units in the header?)", file=display, field="pixdim")
    if path.name.endswith(".nii") and not path.name.endswith(".nii.gz"):
        need = int(hdr["vox_offset"]) + int(np.prod(full_shape)) * hdr.get_data_dtype().itemsize
        if size < need:
            raise BIDSError(f"{modality} is truncated: {size} bytes, header needs {need}",
                            file=display)
    n_frames = shape[3] if len(shape) == 4 else 1
    return ImageHeader(shape, zooms, affine, n_frames)


def _parse_nifti_header(path: Path):
    """The NIfTI-1/2 header of ``path`` (.nii or .nii.gz), reading only its first 540 bytes.

    Raises ValueError (or gzip/OSError) when the file is not a NIfTI.
    """
    import gzip

    import nibabel as nib

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read(540)
    if len(raw) < 348:
        raise ValueError(f"file too short for a NIfTI header ({len(raw)} bytes)")
    size_le = int.from_bytes(raw[:4], "little")
    size_be = int.from_bytes(raw[:4], "big")
    if 348 in (size_le, size_be):
        klass, n = nib.Nifti1Header, 348
    elif 540 in (size_le, size_be) and len(raw) >= 540:
        klass, n = nib.Nifti2Header, 540
    else:
        raise ValueError("no NIfTI header (sizeof_hdr is neither 348 nor 540)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr = klass(raw[:n], check=False)
    magic = bytes(hdr["magic"]).rstrip(b"\x00")[:3]
    if magic not in (b"n+1", b"ni1", b"n+2", b"ni2"):
        raise ValueError(f"bad NIfTI magic {magic!r}")
    if magic in (b"ni1", b"ni2"):
        raise ValueError("a .hdr/.img pair header; BIDS needs a single-file .nii/.nii.gz")
    return hdr


# --------------------------------------------------------------------------------------------
# participants
# --------------------------------------------------------------------------------------------
def read_participants(bids_dir: str | Path) -> pd.DataFrame:
    """Read ``participants.tsv``, typed with ``participants.json``.

    Parameters
    ----------
    bids_dir : path
        The BIDS folder.

    Returns
    -------
    pandas.DataFrame
        One row per participant; columns as in the TSV, ``participant_id`` always ``sub-<label>``.
        ``n/a`` (and empty cells) are missing (NaN / None). Columns the JSON describes with
        ``Levels`` stay text; other columns whose values are all numbers become float. The JSON
        content is in ``df.attrs["sidecar"]``.

    Raises
    ------
    BIDSError
        When the file is missing or unreadable, ``participant_id`` is missing or duplicated, or
        a column the JSON gives ``Units`` for holds text.
    """
    root = Path(bids_dir)
    tsv = root / "participants.tsv"
    name = "participants.tsv"
    if not tsv.is_file():
        raise BIDSError("not found (every participant must be listed, with group and covariates)",
                        file=name)
    try:
        df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BIDSError(f"cannot read: {exc}", file=name) from None
    df.columns = [c.strip() for c in df.columns]
    if "participant_id" not in df.columns:
        raise BIDSError("no 'participant_id' column", file=name, field="participant_id")
    meta: dict[str, Any] = {}
    js = root / "participants.json"
    if js.is_file():
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BIDSError(f"not valid JSON: {exc}", file="participants.json") from None
        if not isinstance(meta, dict):
            raise BIDSError("top level must be a JSON object", file="participants.json")
    ids = df["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    for pid in ids:
        if not _LABEL_RE.fullmatch(pid[4:]):
            raise BIDSError(f"{pid!r} is not a valid participant id", file=name, field="participant_id")
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise BIDSError(f"listed more than once: {', '.join(dup)}", file=name, field="participant_id")
    df["participant_id"] = ids
    for col in df.columns:
        if col == "participant_id":
            continue
        text = df[col].str.strip()
        missing = text.isin(["n/a", ""])
        desc = meta.get(col) if isinstance(meta.get(col), dict) else {}
        if "Levels" in desc:
            df[col] = text.where(~missing, None).astype(object)
            continue
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = values.isna() & ~missing
        if not bad.any():
            df[col] = values.astype(float)
        elif "Units" in desc:
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise BIDSError(f"{ids.iloc[i]}: {text.iloc[i]!r} is not a number (the column has "
                            f"Units {desc['Units']!r})", file=name, field=col)
        else:
            df[col] = text.where(~missing, None).astype(object)
    df.attrs["sidecar"] = meta
    return df.reset_index(drop=True)


def _rows_by_id(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """participant_id -> row as a plain dict (missing values None, numpy scalars as Python)."""
    out = {}
    for rec in df.to_dict(orient="records"):
        row = {}
        for k, v in rec.items():
            if v is None or (isinstance(v, float) and np.isnan(v)):
                row[k] = None
            elif isinstance(v, np.generic):
                row[k] = v.item()
            else:
                row[k] = v
        out[row["participant_id"]] = row
    return out


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------
class _Listing:
    """Cached directory listings (one ``iterdir`` per folder per discovery run)."""

    def __init__(self):
        self._cache: dict[Path, list[str]] = {}

    def names(self, folder: Path) -> list[str]:
        if folder not in self._cache:
            try:
                self._cache[folder] = sorted(p.name for p in folder.iterdir())
            except OSError:
                self._cache[folder] = []
        return self._cache[folder]


def _inherited_json(root: Path, file_dir: Path, entities: dict[str, str], suffix: str,
                    listing: _Listing, own: Path | None) -> tuple[dict[str, Any], list[Path]]:
    """Merge JSON sidecars by the BIDS inheritance principle (top level first, own file last).

    Returns the merged dict and the files used. Raises BIDSError for unparsable JSON.
    """
    dirs = [root]
    rel = file_dir.relative_to(root)
    for part in rel.parts:
        dirs.append(dirs[-1] / part)
    used: list[Path] = []
    for d in dirs:
        level = []
        for name in listing.names(d):
            if not name.endswith(f"{suffix}.json"):
                continue
            p = d / name
            if own is not None and p == own:
                continue
            try:
                ent, suf, _ = parse_bids_name(name)
            except ValueError:
                continue
            if suf != suffix or any(entities.get(k) != v for k, v in ent.items()):
                continue
            level.append((len(ent), p))
        used.extend(p for _, p in sorted(level))
    if own is not None:
        used.append(own)
    merged: dict[str, Any] = {}
    for p in used:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BIDSError("sidecar not found", file=_rel(root, p)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BIDSError(f"not valid JSON: {exc}", file=_rel(root, p)) from None
        if not isinstance(data, dict):
            raise BIDSError("top level must be a JSON object", file=_rel(root, p))
        for old, new in _OLD_SPELLINGS.get(suffix, {}).items():
            # rename per file, so a more specific file's old spelling overrides an inherited key
            if old in data and new not in data:
                data[new] = data.pop(old)
        merged.update(data)
    return merged, used


def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _issue(session_id: str, err: GliaflowError) -> SessionIssue:
    return SessionIssue(session_id=session_id, file=err.file, field=err.field, message=err.message,
                        kind=err.kind)


def _pydantic_issues(session_id: str, file: str, exc: ValidationError) -> list[SessionIssue]:
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        field = loc[0] if loc else None
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "missing":
            msg = "required field is missing"
        if len(loc) > 1:
            msg = f"entry {'/'.join(loc[1:])}: {msg}"
        if e["type"] not in ("missing", "value_error") and "input" in e:
            msg = f"{msg} (got {e['input']!r})"
        out.append(SessionIssue(session_id=session_id, file=file, field=field, message=msg))
    return out


def _find_t1w(root: Path, sub_dir: Path, ses_dir: Path | None, listing: _Listing) -> Path | None:
    """Session-level anat T1w first, then subject-level. Among several, the first by name."""
    folders = ([ses_dir / "anat"] if ses_dir is not None else []) + [sub_dir / "anat"]
    for folder in folders:
        names = [n for n in listing.names(folder)
                 if any(n.endswith(f"_T1w{e}") for e in _NIFTI_EXTS)]
        if names:
            return folder / names[0]
    return None


def _match_tracer(wanted: list[str] | None, trc: str | None, sidecar: dict | None) -> bool:
    if wanted is None:
        return True
    wl = [w.lower() for w in wanted]
    if trc is not None:
        return trc.lower() in wl
    name = re.sub(r"[^a-z0-9]", "", str((sidecar or {}).get("TracerName", "")).lower())
    return bool(name) and any(w in name for w in wl)


def discover(
    bids_dir: str | Path,
    participant_label: str | Sequence[str] | None = None,
    session_label: str | Sequence[str] | None = None,
    tracer_label: str | Sequence[str] | None = None,
    require_blood: bool = False,
    require_dynamic: bool = True,
    require_participants: bool = True,
    require_parent_fraction: bool | None = None,
) -> Discovery:
    """Find and validate every PET session in a BIDS folder.

    Parameters
    ----------
    bids_dir : path
        The BIDS-PET dataset (read only; nothing is written).
    participant_label, session_label, tracer_label : str or list of str, optional
        Keep only these subjects / sessions / tracers (``trc`` entity; when a file has none,
        the sidecar's TracerName). Prefixes ``sub-``/``ses-``/``trc-`` are optional.
    require_blood : bool
        Plasma-input models asked: each session needs blood recordings with ``time``,
        ``plasma_radioactivity`` and ``metabolite_parent_fraction`` (in some recording).
    require_parent_fraction : bool, optional
        Whether ``require_blood`` also needs a parent fraction column; default: yes. Pass
        ``config.blood.parent_fraction_model != "none"`` when plasma is already
        metabolite-corrected.
    require_dynamic : bool
        A 3D (single-frame) PET is an error (kinetic modelling needs a dynamic 4D PET).
    require_participants : bool
        The participant must be listed in ``participants.tsv``.

    Returns
    -------
    Discovery
        ``.sessions`` (valid :class:`SessionSpec`) and ``.invalid`` (:class:`SessionIssue`).

    Raises
    ------
    ConfigError
        When a label filter is not a plain BIDS label (naming the flag).
    BIDSError
        When ``bids_dir`` is not a folder (the only dataset-level failure).
    """
    subs = normalise_labels(participant_label, "sub", "--participant-label")
    sess = normalise_labels(session_label, "ses", "--session-label")
    trcs = normalise_labels(tracer_label, "trc", "--tracer-label")
    root = Path(bids_dir).absolute()
    if not root.is_dir():
        raise BIDSError("BIDS folder not found or not a folder", file=root)

    if require_parent_fraction is None:
        require_parent_fraction = True
    listing = _Listing()
    result = Discovery(bids_dir=root)
    participants_rows: dict[str, dict[str, Any]] | None = None
    participants_err: BIDSError | None = None
    if require_participants:
        try:
            participants_rows = _rows_by_id(read_participants(root))
        except BIDSError as exc:
            participants_err = exc

    sub_labels = [n[4:] for n in listing.names(root) if n.startswith("sub-") and (root / n).is_dir()]
    if subs is not None:
        for s in subs:
            if s not in sub_labels:
                result.invalid.append(SessionIssue(
                    session_id=f"sub-{s}", file=f"sub-{s}", field="--participant-label",
                    message="participant not found in the dataset"))
        sub_labels = [s for s in sub_labels if s in subs]

    for sub in sub_labels:
        sub_dir = root / f"sub-{sub}"
        ses_dirs: list[tuple[str | None, Path]] = [
            (n[4:], sub_dir / n) for n in listing.names(sub_dir)
            if n.startswith("ses-") and (sub_dir / n).is_dir()]
        if (sub_dir / "pet").is_dir():
            ses_dirs.insert(0, (None, sub_dir))
        if sess is not None:
            ses_dirs = [(s, d) for s, d in ses_dirs if s in sess]
        found = 0
        for ses, ses_dir in ses_dirs:
            found += _discover_session(
                root, sub, ses, sub_dir, ses_dir, listing, trcs,
                (require_blood, require_parent_fraction), require_dynamic,
                participants_rows, participants_err, result)
        if found == 0:
            where = f"sub-{sub}" + (f" (sessions {', '.join(sess)})" if sess else "")
            sid = entities_id({"sub": sub, "ses": sess[0] if sess and len(sess) == 1 else None})
            result.invalid.append(SessionIssue(
                session_id=sid, file=f"sub-{sub}", field=None,
                message=f"no PET image (pet/*_pet.nii[.gz]) found for {where}"
                        + (f" with tracer {', '.join(trcs)}" if trcs else "")))
    return result


def _discover_session(root, sub, ses, sub_dir, ses_dir, listing, trcs, blood_req,
                      require_dynamic, participants_rows, participants_err, result) -> int:
    """Validate every PET file in one session folder; returns how many matched the filters.

    ``blood_req`` is (require_blood, require_parent_fraction).
    """
    pet_dir = ses_dir / "pet"
    names = listing.names(pet_dir)
    stems: dict[str, dict[str, Path]] = {}
    for n in names:
        for ext in (".nii.gz", ".nii", ".json"):
            if n.endswith(f"_pet{ext}"):
                stems.setdefault(n[: -len(ext)], {})[ext] = pet_dir / n
                break
    count = 0
    for stem, files in sorted(stems.items()):
        base_id = entities_id({"sub": sub, "ses": ses})
        try:
            ent, _, _ = parse_bids_name(stem)
        except ValueError as exc:
            result.invalid.append(SessionIssue(session_id=base_id, file=_rel(root, pet_dir / stem),
                                               field=None, message=f"not a BIDS file name: {exc}"))
            count += 1
            continue
        ent_id = {"sub": ent.get("sub"), "ses": ent.get("ses"), "trc": ent.get("trc"),
                  "run": ent.get("run"), "task": ent.get("task"), "rec": ent.get("rec")}
        sid = entities_id(ent_id)
        issues: list[SessionIssue] = []
        if ent.get("sub") != sub or ent.get("ses") != ses:
            issues.append(SessionIssue(
                session_id=sid or base_id, file=_rel(root, pet_dir / stem), field="sub/ses",
                message=f"file name entities do not match the folder (sub-{sub}"
                        + (f"/ses-{ses}" if ses else "") + ")"))
        sid = sid or base_id
        own_json = files.get(".json")
        # tracer filter first (cheap; may need the sidecar when there is no trc entity)
        side_raw: dict | None = None
        side_err: BIDSError | None = None
        side_files: list[Path] = []
        try:
            side_raw, side_files = _inherited_json(root, pet_dir, ent, "pet", listing, own_json)
        except BIDSError as exc:
            side_err = exc
        if not _match_tracer(trcs, ent.get("trc"), side_raw):
            continue
        count += 1
        if side_err is None and own_json is None and not side_raw:
            side_err = BIDSError("PET sidecar not found", file=_rel(root, pet_dir / f"{stem}.json"))
        json_disp = _rel(root, own_json or pet_dir / f"{stem}.json")

        # image header
        pet = files.get(".nii.gz") or files.get(".nii")
        header = None
        if pet is None:
            issues.append(SessionIssue(
                session_id=sid, file=_rel(root, pet_dir / f"{stem}.nii.gz"), field=None,
                message="PET image not found (the sidecar exists but no .nii/.nii.gz next to it)"))
        else:
            try:
                header = read_image_header(pet, _rel(root, pet), "PET image")
            except BIDSError as exc:
                issues.append(_issue(sid, exc))
            if header is not None and require_dynamic and header.n_frames < 2:
                issues.append(SessionIssue(
                    session_id=sid, file=_rel(root, pet), field="dim",
                    message=f"static PET (shape {header.shape}): a dynamic 4D PET is needed for "
                            "motion correction and kinetic modelling"))

        # sidecar
        sidecar = None
        if side_err is not None:
            issues.append(_issue(sid, side_err))
        else:
            ctx = {"n_frames": header.n_frames if header is not None else None}
            try:
                sidecar = PetSidecar.model_validate(side_raw, context=ctx)
            except ValidationError as exc:
                issues.extend(_pydantic_issues(sid, json_disp, exc))

        # anatomy
        t1w = _find_t1w(root, sub_dir, ses_dir if ses is not None else None, listing)
        if t1w is None:
            looked = [_rel(root, ses_dir / "anat")] if ses is not None else []
            looked.append(_rel(root, sub_dir / "anat"))
            issues.append(SessionIssue(session_id=sid, file=looked[0], field=None,
                                       message=f"no T1w image found (looked in {', '.join(looked)})"))
        else:
            try:
                t1h = read_image_header(t1w, _rel(root, t1w), "T1w image")
                if t1h.n_frames != 1:
                    issues.append(SessionIssue(session_id=sid, file=_rel(root, t1w), field="dim",
                                               message=f"T1w image must be 3D, shape {t1h.shape}"))
            except BIDSError as exc:
                issues.append(_issue(sid, exc))

        # blood
        offset = float(sidecar.InjectionStart or 0.0) if sidecar is not None else 0.0
        blood, blood_issues = _find_blood(root, pet_dir, ent, listing, offset, sid)
        issues.extend(blood_issues)
        if blood_req[0] and not blood_issues:
            issues.extend(_blood_requirements(root, pet_dir, stem, blood, sid, blood_req[1]))

        # participant
        covariates: dict[str, Any] = {}
        if participants_err is not None:
            issues.append(_issue(sid, participants_err))
        elif participants_rows is not None:
            row = participants_rows.get(f"sub-{sub}")
            if row is None:
                issues.append(SessionIssue(session_id=sid, file="participants.tsv",
                                           field="participant_id",
                                           message=f"sub-{sub} is not listed"))
            else:
                covariates = row

        if issues:
            result.invalid.extend(issues)
            continue
        starts = np.asarray(sidecar.FrameTimesStart, float) - offset
        ends = starts + np.asarray(sidecar.FrameDuration, float)
        result.sessions.append(SessionSpec(
            participant=sub, session=ses, tracer=ent.get("trc"), run=ent.get("run"),
            task=ent.get("task"), rec=ent.get("rec"), bids_dir=root, pet=pet,
            pet_json=own_json or side_files[-1], sidecar=sidecar,
            frame_start_s=starts.tolist(), frame_end_s=ends.tolist(),
            pet_units_to_bqml=sidecar.units_to_bqml(), injected_bq=sidecar.injected_bq(),
            n_frames=header.n_frames, pet_shape=header.shape, pet_zooms_mm=header.zooms_mm,
            t1w=t1w, blood=blood, covariates=covariates))
    return count


def _find_blood(root: Path, pet_dir: Path, pet_ent: dict[str, str], listing: _Listing,
                offset_s: float, sid: str) -> tuple[list[BloodRecording], list[SessionIssue]]:
    """Blood recordings in ``pet_dir`` whose entities agree with the PET file's."""
    recs: list[BloodRecording] = []
    issues: list[SessionIssue] = []
    for name in listing.names(pet_dir):
        if not name.endswith("_blood.tsv"):
            continue
        tsv = pet_dir / name
        try:
            ent, _, _ = parse_bids_name(name)
        except ValueError as exc:
            issues.append(SessionIssue(session_id=sid, file=_rel(root, tsv), field=None,
                                       message=f"not a BIDS file name: {exc}"))
            continue
        label = ent.get("recording")
        # the recording belongs to this PET when every entity it has (but recording) agrees;
        # blood has no reconstruction, so 'rec' on the PET is ignored.
        if any(pet_ent.get(k) != v for k, v in ent.items() if k not in ("recording", "rec")):
            continue
        if label is None:
            issues.append(SessionIssue(session_id=sid, file=_rel(root, tsv), field="recording",
                                       message="blood file names need a recording-<label> entity"))
            continue
        own = tsv.with_name(name[: -len(".tsv")] + ".json")
        try:
            if not own.is_file():
                raise BIDSError("blood sidecar (JSON with column units) not found",
                                file=_rel(root, own))
            meta, _ = _inherited_json(root, pet_dir, ent, "blood", listing, own)
            recs.append(BloodRecording.from_files(
                tsv, own, label, meta=meta, time_offset_s=offset_s,
                display_tsv=_rel(root, tsv), display_json=_rel(root, own)))
        except GliaflowError as exc:
            issues.append(_issue(sid, exc))
    return recs, issues


def _blood_requirements(root: Path, pet_dir: Path, stem: str, blood: list[BloodRecording],
                        sid: str, parent_fraction: bool = True) -> list[SessionIssue]:
    if not blood:
        return [SessionIssue(
            session_id=sid, file=_rel(root, pet_dir / f"{stem[:-4]}_recording-<label>_blood.tsv"),
            field=None, kind="blood",
            message="no blood recording found; plasma-input models (1TCM, 2TCM, Logan, MA1) "
                    "need arterial blood data")]
    out = []
    files = ", ".join(_rel(root, r.tsv) for r in blood)
    needed = [("plasma_radioactivity", "the plasma curve")]
    if parent_fraction:
        needed.append(("metabolite_parent_fraction", "the parent fraction"))
    for col, what in needed:
        if not any(col in r.columns for r in blood):
            out.append(SessionIssue(session_id=sid, file=_rel(root, blood[0].tsv), field=col,
                                    kind="blood",
                                    message=f"no recording has {what} (column '{col}'; "
                                            f"looked in {files}); plasma-input models need it"))
    return out

