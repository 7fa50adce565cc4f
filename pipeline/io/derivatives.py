"""BIDS derivatives: PETPrep-compatible names, JSON sidecars, atomic writes.

Every output goes through :func:`atomic_path`: the file is written under a temporary name in the
same folder and renamed into place, so a reader (or a resumed run) never sees a half-written
final file. :class:`Derivatives` refuses to write inside the input dataset.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from gliaflow.pipeline.errors import OutputError

__all__ = [
    "ENTITY_ORDER",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "save_nifti",
    "write_tsv",
    "build_name",
    "Derivatives",
    "code_revision",
]

# mkstemp creates files readable by their owner only; outputs get the usual mode (0666 & ~umask)
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

# BIDS entity order (subset used by PET derivatives), as in the BIDS specification appendix.
ENTITY_ORDER = (
    "sub", "ses", "task", "trc", "rec", "run", "space", "cohort", "res", "seg", "label",
    "from", "to", "mode", "hemi", "desc", "meas",
)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` when the block succeeds.

    The temporary name keeps ``final``'s suffixes (``.nii.gz`` stays ``.nii.gz``) so writers that
    choose a format from the name work. On any exception, the temporary file is removed and
    ``final`` is left as it was. Errors such as a full disk or a read-only folder are raised as
    :class:`OutputError` naming ``final``.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder: {exc.strerror}", file=final.parent) from exc
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as exc:
        raise OutputError(f"cannot write: {exc.strerror}", file=final) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _FILE_MODE)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"cannot write: {exc.strerror or exc}", file=final) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _finite_or_none(obj: Any) -> Any:
    """Replace non-finite floats (NaN, inf), which JSON cannot hold, by None, recursively."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically.

    numpy, Path and pydantic values are converted; NaN and infinities become ``null`` (strict
    JSON has no token for them).
    """
    plain = json.loads(json.dumps(data, default=_json_default))  # numpy/pydantic -> python
    text = json.dumps(_finite_or_none(plain), indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def save_nifti(img, path: str | Path) -> Path:
    """Save a nibabel image atomically to ``path`` (.nii or .nii.gz)."""
    import nibabel as nib

    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_tsv(df, path: str | Path, float_format: str = "%.6g") -> Path:
    """Write a pandas DataFrame as a BIDS TSV (tab separated, ``n/a`` for missing) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format=float_format)
    return path


def build_name(entities: dict[str, str | None], suffix: str, extension: str) -> str:
    """Compose a BIDS file name with entities in the standard order.

    >>> build_name({"sub": "01", "desc": "preproc", "ses": "a"}, "pet", ".nii.gz")
    'sub-01_ses-a_desc-preproc_pet.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    if not extension.startswith("."):
        extension = "." + extension
    return "_".join(parts + [suffix]) + extension


def code_revision() -> str | None:
    """The git revision of the gliaflow source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Derivatives:
    """A BIDS derivatives dataset rooted at ``root``.

    Parameters
    ----------
    root : path
        Output folder (created). Must not be inside ``input_dir``.
    input_dir : path, optional
        The raw BIDS dataset; writing inside it is refused.
    """

    def __init__(self, root: str | Path, input_dir: str | Path | None = None):
        self.root = Path(root).absolute()
        self.input_dir = Path(input_dir).absolute() if input_dir is not None else None
        if self.input_dir is not None:
            r, i = self.root.resolve(), self.input_dir.resolve()
            if r == i or i in r.parents:
                raise OutputError("the output folder must not be inside the input dataset "
                                  f"{i}; choose a folder outside it", file=self.root)

    def path(self, entities: dict[str, str | None], suffix: str, extension: str,
             datatype: str = "pet") -> Path:
        """Where a derivative file goes: ``root/sub-X[/ses-Y]/<datatype>/<name>``."""
        folder = self.root / f"sub-{entities['sub']}"
        if entities.get("ses"):
            folder = folder / f"ses-{entities['ses']}"
        return folder / datatype / build_name(entities, suffix, extension)

    def write_dataset_description(self, version: str, config_hash: str | None = None,
                                  config_file: str | None = None,
                                  tools: Iterable[tuple[str, str | None]] = (),
                                  provenance_file: str | None = None) -> Path:
        """Write ``dataset_description.json``.

        GeneratedBy lists gliaflow (version, code revision, config hash, the effective config's
        file name and the provenance file, both relative to the root) and then one entry per
        other tool that ran (``tools``: ``(name, version)`` pairs from the provenance records;
        a tool that ran in two versions has two entries). Command lines are not part of
        GeneratedBy: they are in the provenance file.
        """
        generated: dict[str, Any] = {"Name": "gliaflow", "Version": version}
        rev = code_revision()
        if rev:
            generated["CodeRevision"] = rev
        if config_hash:
            generated["ConfigHash"] = config_hash
        if config_file:
            generated["ConfigFile"] = config_file
        if provenance_file:
            generated["ProvenanceFile"] = provenance_file
        others = []
        for name, tool_version in tools:
            if name == "gliaflow":
                continue
            entry = {"Name": name}
            if tool_version and tool_version != "unknown":
                entry["Version"] = tool_version
            if entry not in others:
                others.append(entry)
        desc = {
            "Name": "gliaflow derivatives",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated] + others,
        }
        if self.input_dir is not None:
            desc["SourceDatasets"] = [{"URL": self.input_dir.as_uri()}]
        return atomic_write_json(self.root / "dataset_description.json", desc)

    @staticmethod
    def sidecar(path: str | Path, meta: dict[str, Any]) -> Path:
        """Write the JSON sidecar of an image or table (same name, ``.json``)."""
        p = Path(path)
        name = p.name
        for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".txt", ".mat"):
            if name.endswith(ext):
                name = name[: -len(ext)]
                break
        return atomic_write_json(p.with_name(name + ".json"), meta)
