"""Settings mean what they say: every leaf of PipelineConfig is walked.

For each setting a valid changed value is made (generic rules driven by the field's annotation and
constraints; a small explicit table where no generic rule gives a valid value), and

* the change re-keys exactly the stages that read the setting's section (``STAGE_SETTINGS``),
  and no other stage; ``execution`` settings re-key nothing and leave the config hash alone;
* each stage function reads exactly the sections ``STAGE_SETTINGS`` lists for it (static check
  of pipeline/session.py and pipeline/group.py), so a cache key never misses a setting;
* every setting is read somewhere outside pipeline/config.py (static check of pipeline/ and
  workflows/): a setting nobody reads cannot change what runs.
"""
from __future__ import annotations

import ast
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import nibabel as nib
import numpy as np
import pytest
from pydantic import BaseModel

from gliaflow.pipeline.config import (STAGE_SETTINGS, ExecutionSettings, PipelineConfig, config_hash,
                                      stage_hash)
from gliaflow.pipeline.io import resources

ROOT = Path(__file__).resolve().parents[2]
SECTIONS: dict[str, type[BaseModel]] = {
    name: f.annotation for name, f in PipelineConfig.model_fields.items()}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("GLIAFLOW_"):
            monkeypatch.delenv(k)


def _leaves() -> list[tuple[str, str]]:
    return [(sec, name) for sec, model in SECTIONS.items() for name in model.model_fields]


# --------------------------------------------------------------------------- value changer

def _strip_annotated(tp: Any) -> tuple[Any, list]:
    """(base type, constraint metadata) of a possibly ``Annotated`` type."""
    meta: list = []
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    return tp, meta


def _bounds(meta: list) -> dict[str, float]:
    out = {}
    for m in meta:
        for key in ("ge", "gt", "le", "lt"):
            v = getattr(m, key, None)
            if v is not None:
                out[key] = v
    return out


def _within(v: float, b: dict[str, float]) -> bool:
    return (v >= b.get("ge", -np.inf) and v > b.get("gt", -np.inf) and v <= b.get("le", np.inf)
            and v < b.get("lt", np.inf))


def _number(kind: type, current: float | None, b: dict[str, float]) -> float:
    """A number of ``kind`` within the bounds, different from ``current``."""
    lo = b.get("ge", b.get("gt", 0.0))
    hi = b.get("le", b.get("lt", lo + 10.0))
    if current is None:
        cands = [lo + 1, (lo + hi) / 2]
    elif kind is int:
        cands = [current + 1, current - 1, (lo + hi) // 2]
    else:
        cands = [current * 1.1 + 0.05, current * 0.9 - 0.05, (lo + hi) / 2]
    for c in cands:
        c = kind(c)
        if c != current and _within(c, b):
            return c
    raise AssertionError(f"no {kind.__name__} within {b} besides {current}")


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None`` (else None)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def changed_value(annotation: Any, meta: list, current: Any) -> Any:
    """A valid value different from ``current`` for a field of this annotation and constraints.

    Rules: bool flipped; numbers bumped within their bounds; another Literal member; lists of
    numbers get their first entry bumped (so per-level lists keep their length), other lists lose
    their last entry; pairs get their second entry raised; strings get a suffix; ``X | None`` goes
    to None, or from None to a value of ``X``.
    """
    tp, more = _strip_annotated(annotation)
    meta = list(meta) + more
    inner = _optional_inner(tp)
    if inner is not None:
        return None if current is not None else changed_value(inner, meta, None)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return not current
    if tp in (int, float):
        return _number(tp, current, _bounds(meta))
    if origin is Literal:
        others = [a for a in args if a != current]
        if not others:
            raise LookupError("a Literal with a single member has no other valid value")
        return others[0]
    if origin is list:
        item, item_meta = _strip_annotated(args[0])
        if current is None:
            return [changed_value(args[0], [], None)]
        if item in (int, float):
            return [_number(item, current[0], _bounds(item_meta))] + list(current[1:])
        min_len = next((m.min_length for m in meta if hasattr(m, "min_length")), 0)
        if len(current) > max(min_len, 1) or (len(current) == 1 and min_len == 0):
            return list(current[:-1])
        raise LookupError("list at its minimum length")
    if origin is tuple:
        return (current[0], current[1] + 1)
    if tp is str:
        if any(getattr(m, "pattern", None) for m in meta):
            raise LookupError("a string with a pattern needs an explicit value")
        return "changed" if current is None else current + "_b"
    if isinstance(tp, type) and issubclass(tp, Path):
        return Path("/tmp/gliaflow-elsewhere")
    raise LookupError(f"no generic rule for {annotation!r}")


def _atlas_files(folder: Path) -> tuple[Path, Path]:
    """A small user atlas (two regions in MNI space) and its label table."""
    img = folder / "atlas.nii.gz"
    data = np.zeros((10, 10, 10), np.int16)
    data[:5], data[5:] = 1, 2
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -20.0
    nib.save(nib.Nifti1Image(data, affine), str(img))
    tsv = folder / "atlas.tsv"
    tsv.write_text("index\tname\n1\tleft_block\n2\tright_block\n")
    return img, tsv


def explicit_changes(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Settings no generic rule can change validly, with the changes used (dotted keys)."""
    img, tsv = _atlas_files(folder)
    ho = resources.atlas_label_table("harvard-oxford")["name"].tolist()
    return {
        # a name must be an embedded atlas (or 'custom' with files)
        ("atlas", "name"): {"atlas.name": "aal"},
        # a user atlas needs both files, and they must exist
        ("atlas", "image"): {"atlas.image": img, "atlas.labels": tsv},
        ("atlas", "labels"): {"atlas.image": img, "atlas.labels": tsv},
        # regions must be names of the atlas
        ("atlas", "regions"): {"atlas.regions": ho[:2]},
        # the reference region must be a TAC column
        ("kinetics", "reference_region"): {"kinetics.reference_region": "cerebellum_gm"},
        # the blood delay is fitted on a TAC column
        ("blood", "delay_region"): {"blood.delay_region": "cerebellum_gm"},
        # the MRF term has a fixed format
        ("segmentation", "atropos_mrf"): {"segmentation.atropos_mrf": "[0.2,1x1x1]"},
        # metrics must be made by the kinetics stage
        ("stats", "metrics"): {"stats.metrics": ["suvr", "vt_logan"]},
        # a cluster profile shipped in infrastructure/clusters
        ("execution", "cluster"): {"execution.cluster": "slurm"},
    }


def _nested(changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        sec, name = key.split(".")
        out.setdefault(sec, {})[name] = value
    return out


def _changes_for(sec: str, name: str, base: PipelineConfig, explicit: dict) -> dict[str, Any]:
    if (sec, name) in explicit:
        return explicit[(sec, name)]
    field = SECTIONS[sec].model_fields[name]
    return {f"{sec}.{name}": changed_value(field.annotation, field.metadata,
                                           getattr(getattr(base, sec), name))}


def _single_choice(sec: str, name: str) -> bool:
    tp, _ = _strip_annotated(SECTIONS[sec].model_fields[name].annotation)
    return typing.get_origin(tp) is Literal and len(typing.get_args(tp)) == 1


# --------------------------------------------------------------------------- dynamic walk

def test_stage_settings_name_real_sections():
    assert set(STAGE_SETTINGS) == {"anat", "pet_motion", "coreg", "labels_tacs", "kinetics", "report",
                                   "group"}
    for stage, secs in STAGE_SETTINGS.items():
        assert set(secs) <= set(SECTIONS), stage
    read = {s for secs in STAGE_SETTINGS.values() for s in secs}
    assert read == set(SECTIONS) - {"execution"}, "a section no stage reads changes nothing"


def test_changed_value_rules():
    from gliaflow.pipeline.config import KineticsSettings, MotionSettings, StatsSettings

    f = KineticsSettings.model_fields
    assert changed_value(f["vb"].annotation, f["vb"].metadata, 0.05) is None
    assert 0 < changed_value(f["vb"].annotation, f["vb"].metadata, None) <= 0.2
    assert changed_value(f["tstar_frames"].annotation, f["tstar_frames"].metadata, None) >= 3
    assert changed_value(f["chunk_voxels"].annotation, f["chunk_voxels"].metadata, 1000) == 1001
    assert changed_value(f["weights"].annotation, [], "duration") in ("uniform", "counts")
    m = MotionSettings.model_fields["shrink_factors"]
    assert changed_value(m.annotation, m.metadata, [1, 1]) == [2, 1]
    s = StatsSettings.model_fields["connectivity"]
    assert changed_value(s.annotation, s.metadata, 26) in (6, 18)
    with pytest.raises(LookupError):
        changed_value(Literal["ants"], [], "ants")


def test_every_setting_rekeys_exactly_the_stages_that_read_it(tmp_path):
    base = PipelineConfig()
    base_keys = {st: stage_hash(base, st) for st in STAGE_SETTINGS}
    explicit = explicit_changes(tmp_path)
    walked, single = 0, []
    for sec, name in _leaves():
        if _single_choice(sec, name) and (sec, name) not in explicit:
            single.append(f"{sec}.{name}")  # nothing else it could be: it cannot change a result
            continue
        changes = _changes_for(sec, name, base, explicit)
        cfg = PipelineConfig(**_nested(changes))
        assert getattr(getattr(cfg, sec), name) != getattr(getattr(base, sec), name), (sec, name)
        rekeyed = {st for st in STAGE_SETTINGS if stage_hash(cfg, st) != base_keys[st]}
        expected = {st for st, secs in STAGE_SETTINGS.items() if sec in secs}
        assert rekeyed == expected, f"{sec}.{name} -> {changes}: re-keys {sorted(rekeyed)}, " \
                                    f"expected {sorted(expected)}"
        if sec == "execution":
            assert config_hash(cfg) == config_hash(base), f"{sec}.{name} changes the config hash"
        else:
            assert config_hash(cfg) != config_hash(base), f"{sec}.{name} leaves the config hash"
        walked += 1
    assert walked >= 100
    # single-choice settings are the engine seams with one engine; the walk covers them as soon
    # as a second engine is allowed
    assert all(n.endswith("engine") for n in single), single


def test_execution_documented_as_not_changing_results():
    assert "Does not change results" in (ExecutionSettings.__doc__ or "")
    assert not any("execution" in secs for secs in STAGE_SETTINGS.values())


# --------------------------------------------------------------------------- static: stages

def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _config_names(func: ast.FunctionDef) -> set[str]:
    """Local names bound to the whole config in a stage function (``cfg = ctx.config``, the
    ``config`` parameter of the group step)."""
    names = {a.arg for a in func.args.args if a.arg in ("config", "cfg")}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for t, v in zip(targets, values):
                if isinstance(t, ast.Name) and isinstance(v, ast.Attribute) and v.attr == "config":
                    names.add(t.id)
    return names


def sections_read(func: ast.FunctionDef) -> tuple[set[str], list[str]]:
    """Config sections a stage function reads, and its uses of the whole config other than
    ``<config>.<section>`` and ``stage_settings(<config>, <stage>)``."""
    names = _config_names(func)
    parents = {c: p for p in ast.walk(func) for c in ast.iter_child_nodes(p)}

    def is_config(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in names) or (
            isinstance(node, ast.Attribute) and node.attr == "config"
            and isinstance(node.value, ast.Name) and node.value.id == "ctx")

    read: set[str] = set()
    whole: list[str] = []
    for node in ast.walk(func):
        if not is_config(node) or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        if isinstance(node, ast.Name) and isinstance(parents.get(node), ast.Attribute) \
                and parents[node].attr == "config":
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr in SECTIONS:
            read.add(parent.attr)
        elif (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
              and parent.func.id == "stage_settings" and len(parent.args) == 2
              and isinstance(parent.args[1], ast.Constant)):
            read |= set(STAGE_SETTINGS[parent.args[1].value])
        elif isinstance(parent, ast.Assign) or (isinstance(parent, ast.Tuple)
                                                and isinstance(parents.get(parent), ast.Assign)):
            continue  # an alias (followed through _config_names)
        else:
            whole.append(f"line {node.lineno}: {ast.unparse(parent or node)[:80]}")
    return read, whole


def test_sections_read_finds_reads_and_whole_config_uses():
    code = ("def stage(ctx, upstream):\n    spec, cfg = ctx.spec, ctx.config\n"
            "    a = ctx.config.motion.enabled\n    b = cfg.atlas\n    f(cfg)\n"
            "    g(stage_settings(ctx.config, 'coreg'))\n")
    read, whole = sections_read(ast.parse(code).body[0])
    assert read == {"motion", "atlas", "registration"}
    assert len(whole) == 1 and "f(cfg)" in whole[0]


def test_each_stage_reads_exactly_its_sections():
    from gliaflow.pipeline.session import GROUP_STEP, SESSION_STAGES

    session_funcs = _functions(ROOT / "pipeline" / "session.py")
    group_funcs = _functions(ROOT / "pipeline" / "group.py")
    stages = {s.name: session_funcs[s.func.__name__] for s in SESSION_STAGES}
    stages["group"] = group_funcs[GROUP_STEP.__name__]
    assert set(stages) == set(STAGE_SETTINGS)
    problems = []
    for name, func in stages.items():
        read, whole = sections_read(func)
        if whole:
            problems.append(f"{name}: passes the whole config on ({'; '.join(whole)}); pass sections")
        declared = set(STAGE_SETTINGS[name])
        if read - declared:
            problems.append(f"{name}: reads {sorted(read - declared)} but its cache key does not hash them")
        if declared - read:
            problems.append(f"{name}: hashes {sorted(declared - read)} but never reads them")
    assert not problems, "\n".join(problems)


def test_session_stages_hash_their_sections():
    from gliaflow.pipeline.session import SESSION_STAGES

    for s in SESSION_STAGES:
        assert tuple(s.settings) == STAGE_SETTINGS[s.name], s.name


# --------------------------------------------------------------------------- static: read at all

#: settings that may be read nowhere outside config.py, each with the reason (none today)
NOT_READ_ALLOWED: dict[str, str] = {}


def _names_used() -> tuple[set[str], set[str]]:
    """Attribute names and string constants used in pipeline/ and workflows/ (but config.py)."""
    attrs: set[str] = set()
    strings: set[str] = set()
    for folder in ("pipeline", "workflows"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "pipeline" / "config.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute):
                    attrs.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
    return attrs, strings


def test_every_setting_is_read_somewhere():
    attrs, strings = _names_used()
    unread = [f"{sec}.{name}" for sec, name in _leaves()
              if name not in attrs and name not in strings and f"{sec}.{name}" not in NOT_READ_ALLOWED]
    assert not unread, ("settings read nowhere outside config.py (implement or remove them): "
                        + ", ".join(unread))
    for key in NOT_READ_ALLOWED:
        sec, name = key.split(".")
        assert name in SECTIONS[sec].model_fields, f"stale allow-list entry {key}"
