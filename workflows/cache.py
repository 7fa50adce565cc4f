"""Stage cache keys and completion manifests (resume without recomputation).

A stage's key is the SHA-256 of
  * the contents of its input files (hashed once per run; a per-work-dir table keyed by
    (path, size, mtime) avoids re-reading unchanged files),
  * the settings it depends on (:func:`gliaflow.pipeline.config.stage_hash`),
  * the code version (gliaflow version + a hash of the source of the stage function's module),
  * the keys of its upstream stages.
So a key never depends on paths or time. A finished stage writes a small JSON manifest (key,
outputs with sizes, values, qc, flags) atomically; a later run with the same key and intact
outputs skips the stage.
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from gliaflow.pipeline import __version__
from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.io.derivatives import atomic_write_json

__all__ = ["FileHasher", "code_version", "settings_hash", "stage_keys", "manifest_path",
           "write_manifest", "load_manifest", "STATE_DIR"]

STATE_DIR = ".gliaflow"  # under OUT_DIR: manifests and ledger lock
_CHUNK = 4 * 1024 * 1024


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class FileHasher:
    """Content hashes of input files, remembered by (path, size, mtime_ns) in ``table``.

    Parameters
    ----------
    table : path, optional
        JSON file holding the remembered hashes (e.g. ``WORK_DIR/filehashes.json``); None keeps
        them in memory only.
    """

    def __init__(self, table: str | Path | None = None):
        self.table = Path(table) if table is not None else None
        self._known: dict[str, list] = {}
        self._dirty = False
        self.hashed_bytes = 0
        if self.table is not None and self.table.is_file():
            try:
                self._known = json.loads(self.table.read_text())
            except (OSError, ValueError):
                self._known = {}

    def digest(self, path: str | Path) -> str:
        """SHA-256 (hex) of the file's bytes; a missing file hashes to ``'missing'``."""
        p = Path(path).absolute()
        try:
            st = p.stat()
        except FileNotFoundError:
            return "missing"
        if p.is_dir():  # a folder input: hash its files in name order
            h = hashlib.sha256()
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                h.update(str(f.relative_to(p)).encode())
                h.update(self.digest(f).encode())
            return h.hexdigest()
        rec = self._known.get(str(p))
        if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            return rec[2]
        d = _sha256_file(p)
        self.hashed_bytes += st.st_size
        self._known[str(p)] = [st.st_size, st.st_mtime_ns, d]
        self._dirty = True
        return d

    def save(self) -> None:
        """Write the table (atomically) when it changed."""
        if self.table is not None and self._dirty:
            atomic_write_json(self.table, self._known)
            self._dirty = False


_code_cache: dict[object, str] = {}


def _imports(tree, package: str, only_names: set[str] | None = None) -> set[str]:
    """gliaflow modules imported in ``tree`` (relative imports resolved against ``package``).
    With ``only_names``, an import counts only when one of its bound names is in the set."""
    import ast

    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                bound = a.asname or a.name
                if only_names is not None and bound not in only_names:
                    continue
                out.add(mod)
                out.add(f"{mod}.{a.name}")  # `from . import resources` imports a submodule
        elif isinstance(node, ast.Import):
            for a in node.names:
                bound = (a.asname or a.name).split(".")[0]
                if only_names is not None and bound not in only_names:
                    continue
                out.add(a.name)
    return {m for m in out if m.startswith("gliaflow.")}


def _module_file(name: str) -> str | None:
    """Source file of module ``name`` (None when it is not a module, e.g. a function), found
    from the folders of its nearest loaded parent package, so nothing is imported."""
    import importlib.util

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        mod = sys.modules.get(".".join(parts[:i]))
        if mod is not None:
            break
    else:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        i, mod = 1, None
        dirs = list(spec.submodule_search_locations or [])
        found = spec.origin
    if mod is not None:
        dirs = list(getattr(mod, "__path__", []) or [])
        found = getattr(mod, "__file__", None)
    for part in parts[i:]:
        if not dirs:  # an attribute of a module, not a submodule
            return None
        for d in dirs:
            pkg, single = Path(d) / part / "__init__.py", Path(d) / f"{part}.py"
            if pkg.is_file():
                found, dirs = str(pkg), [str(pkg.parent)]
                break
            if single.is_file():
                found, dirs = str(single), []
                break
        else:
            return None
    return found if found and str(found).endswith(".py") else None


_parsed: dict[tuple[str, str, frozenset | None], set[str]] = {}


def _file_imports(path: str, package: str, only_names: set[str] | None = None) -> set[str]:
    """:func:`_imports` of a source file, parsed once per process."""
    import ast

    k = (path, package, frozenset(only_names) if only_names is not None else None)
    if k not in _parsed:
        _parsed[k] = _imports(ast.parse(Path(path).read_text()), package, only_names)
    return _parsed[k]


def code_version(func) -> str:
    """gliaflow version + SHA-256 (16 hex) of the code a stage function runs.

    The hash covers the source file of the function's module and, transitively, every gliaflow
    module the function imports (function-level imports, and module-level imports whose names
    the function uses). So editing ``pipeline/anat.py`` invalidates the stages that use it,
    even when the stage function itself lives in ``pipeline/session.py``.
    """
    if func in _code_cache:
        return _code_cache[func]
    files = code_files(func)
    if not files:
        return f"{__version__}:{getattr(func, '__qualname__', repr(func))}"
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(Path(f).name.encode())
        h.update(Path(f).read_bytes())
    _code_cache[func] = f"{__version__}:{h.hexdigest()[:16]}"
    return _code_cache[func]


def code_files(func) -> set[str]:
    """Source files whose contents define :func:`code_version` of ``func`` (empty if unknown)."""
    import ast
    import re
    import textwrap

    mod = sys.modules.get(getattr(func, "__module__", "") or "")
    try:
        src_file = inspect.getsourcefile(mod) if mod is not None else inspect.getsourcefile(func)
        fsrc = inspect.getsource(func)
    except (TypeError, OSError):
        return set()
    package = mod.__name__ if hasattr(mod, "__path__") else mod.__name__.rpartition(".")[0]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", fsrc))
    todo = _imports(ast.parse(textwrap.dedent(fsrc)), package)
    todo |= _file_imports(src_file, package, only_names=words)
    files = {src_file}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        f = _module_file(name)
        if f is None or f in files:
            continue
        files.add(f)
        pkg = name if f.endswith("__init__.py") else name.rpartition(".")[0]
        todo |= _file_imports(f, pkg) - seen
    return files


def settings_hash(cfg: PipelineConfig, stage) -> str:
    """Hash of the config sections ``stage`` depends on (its ``settings`` attribute, or the
    registry in :data:`gliaflow.pipeline.config.STAGE_SETTINGS`) and of the versions of the
    engines those sections select (a new FSL or ANTsPy version recomputes the stage)."""
    from gliaflow.pipeline.engines import engine_versions

    sections = tuple(getattr(stage, "settings", ()) or ())
    if not sections:
        from gliaflow.pipeline.config import STAGE_SETTINGS

        sections = STAGE_SETTINGS.get(stage.name, ())
    data = {s: getattr(cfg, s).model_dump(mode="json") for s in sections}
    data["_engines"] = engine_versions(cfg, sections)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(stages: Iterable, spec, cfg: PipelineConfig, hasher: FileHasher) -> dict[str, str]:
    """Cache key (hex SHA-256) of every stage of one session, in dependency order.

    Parameters
    ----------
    stages : list of Stage
        Ordered so that each stage comes after the stages it ``requires``.
    spec : SessionSpec
        The session; ``stage.input_files(spec)`` names the files whose contents enter the key.
    cfg : PipelineConfig
    hasher : FileHasher
    """
    keys: dict[str, str] = {}
    for st in stages:
        h = hashlib.sha256()
        h.update(st.name.encode())
        for f in sorted(str(Path(p)) for p in (st.input_files(spec) or [])):
            h.update(f"\0{Path(f).name}:{hasher.digest(f)}".encode())
        h.update(f"\0settings:{settings_hash(cfg, st)}".encode())
        h.update(f"\0code:{code_version(st.func)}".encode())
        for up in st.requires:
            h.update(f"\0up:{up}:{keys[up]}".encode())
        keys[st.name] = h.hexdigest()
    return keys


def manifest_path(out_dir: str | Path, session_id: str, stage: str) -> Path:
    """``OUT_DIR/.gliaflow/stages/<session_id>/<stage>.json``."""
    return Path(out_dir) / STATE_DIR / "stages" / session_id / f"{stage}.json"


def write_manifest(out_dir: str | Path, session_id: str, key: str, result: dict[str, Any]) -> Path:
    """Record a finished stage (atomically): key, outputs with their sizes (bytes), values, qc,
    flags. ``result`` is a StageResult dumped to a dict."""
    outputs = {k: str(v) for k, v in (result.get("outputs") or {}).items()}
    sizes = {}
    for k, v in outputs.items():
        try:
            sizes[k] = os.path.getsize(v)
        except OSError:
            sizes[k] = None
    data = {"key": key, "session_id": session_id, **result, "outputs": outputs, "sizes": sizes}
    return atomic_write_json(manifest_path(out_dir, session_id, result["stage"]), data)


def load_manifest(out_dir: str | Path, session_id: str, stage: str, key: str) -> dict | None:
    """The stage's recorded result when its key matches and its outputs are intact, else None."""
    p = manifest_path(out_dir, session_id, stage)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    for k, v in (data.get("outputs") or {}).items():
        size = (data.get("sizes") or {}).get(k)
        try:
            if size is not None and os.path.getsize(v) != size:
                return None
        except OSError:
            return None
    data.pop("key", None), data.pop("sizes", None), data.pop("session_id", None)
    return data


class FileLock:
    """An exclusive ``fcntl`` lock on ``path`` (for read-modify-write of shared files)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
