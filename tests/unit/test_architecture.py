"""Architecture rules, checked on the source with ``ast`` (no module is imported).

* no import cycles among gliaflow modules (every import counts, function-local ones too);
* no private name (``_x``) of another module imported or used through the module; a module
  private to its package (``_utils``) may be imported, its public names are the package's helpers;
* the layer rule: nothing under pipeline/ imports gliaflow.workflows, prefect or dask/distributed;
* nothing under pipeline/ writes os.environ (threads and seeds are arguments, never globals).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"pipeline": "gliaflow.pipeline", "workflows": "gliaflow.workflows"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out


SOURCES = _sources()


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path, tree: ast.Module) -> list[tuple[int, str, tuple[str, ...]]]:
    """Every import of a module: (line, absolute module imported from, names imported)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((node.lineno, a.name, ()))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, tuple(a.name for a in node.names)))
    return out


def _targets(target: str, names: tuple[str, ...]) -> set[str]:
    """The gliaflow modules an import loads: the submodules named by ``from package import
    submodule``, and the module itself when it is imported or some name is not a submodule."""
    subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in SOURCES}
    whole = {target} if target in SOURCES and (not names or len(subs) < len(names)) else set()
    return subs | whole


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _graph() -> dict[str, set[str]]:
    """Module -> gliaflow modules it imports. A module's own packages are left out: Python runs
    them before the module, so importing a name from them cannot close a cycle."""
    graph: dict[str, set[str]] = {m: set() for m in SOURCES}
    for mod, (path, tree) in SOURCES.items():
        for _, target, names in _imports(mod, path, tree):
            graph[mod] |= _targets(target, names) - {mod} - _ancestors(mod)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a closed path), or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_sources_found():
    assert "gliaflow.pipeline.config" in SOURCES and "gliaflow.workflows.flows" in SOURCES
    assert len(SOURCES) > 50


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(mod: str, path: Path, tree: ast.Module) -> list[str]:
    """``from gliaflow.x import _name`` of a module other than ``mod``. Modules private to their
    package (``_utils``) may be imported, and their public names are the package's helpers."""
    bad = []
    for line, target, names in _imports(mod, path, tree):
        if not target.startswith("gliaflow.") or target == mod:
            continue
        for n in names:
            if _is_private(n) and f"{target}.{n}" not in SOURCES:
                bad.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {n}")
    return bad


def _private_attribute_uses(mod: str, path: Path, tree: ast.Module) -> list[str]:
    """``module._name`` where ``module`` is another gliaflow module imported under that name (the
    same rule as :func:`_private_imports`, for names reached through the module)."""
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _imports(mod, path, ast.Module(body=[node], type_ignores=[]))[0][1]
            for a in node.names:
                if f"{target}.{a.name}" in SOURCES:
                    modules[a.asname or a.name] = f"{target}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in SOURCES:
                    modules[a.asname] = a.name
    bad = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and _is_private(node.attr)):
            target = modules[node.value.id]
            if target != mod:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}.{node.attr}")
    return bad


def test_no_private_names_imported_across_modules():
    bad = [b for mod, (path, tree) in SOURCES.items()
           for b in _private_imports(mod, path, tree) + _private_attribute_uses(mod, path, tree)]
    assert not bad, "private names used from another module:\n" + "\n".join(bad)


FORBIDDEN_IN_PIPELINE = ("gliaflow.workflows", "prefect", "prefect_dask", "dask", "distributed",
                         "dask_jobqueue")


def test_pipeline_does_not_import_orchestration():
    bad = []
    for mod, (path, tree) in SOURCES.items():
        if not mod.startswith("gliaflow.pipeline"):
            continue
        for line, target, _ in _imports(mod, path, tree):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN_IN_PIPELINE):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not bad, "pipeline/ must not import orchestration:\n" + "\n".join(bad)


def _is_os_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os") or (
        isinstance(node, ast.Name) and node.id == "environ")


def _environ_writes(tree: ast.Module) -> list[int]:
    """Lines that write the process environment: ``os.environ[k] = v`` (also augmented, deleted),
    ``os.environ.update/setdefault/pop/clear(...)``, ``os.putenv``/``os.unsetenv``."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        if any(isinstance(t, ast.Subscript) and _is_os_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if _is_os_environ(f.value) and f.attr in ("update", "setdefault", "pop", "popitem",
                                                      "clear", "__setitem__", "__delitem__"):
                lines.append(node.lineno)
            if isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in ("putenv", "unsetenv"):
                lines.append(node.lineno)
    return sorted(lines)


def test_environ_write_detector():
    code = ("import os\nos.environ['A'] = '1'\nos.environ.update(B='2')\nos.environ.setdefault('C', '3')\n"
            "os.putenv('D', '4')\nx = os.environ.get('E')\ndel os.environ['A']\n")
    assert _environ_writes(ast.parse(code)) == [2, 3, 4, 5, 7]


def test_pipeline_does_not_write_environ():
    bad = [f"{path.relative_to(ROOT)}:{line}"
           for mod, (path, tree) in SOURCES.items() if mod.startswith("gliaflow.pipeline")
           for line in _environ_writes(tree)]
    assert not bad, "pipeline/ writes os.environ (pass settings as arguments):\n" + "\n".join(bad)


@pytest.mark.parametrize("code,expected", [
    ("from gliaflow.pipeline.io.resources import _embedded_atlas\n", 1),
    ("from ..io.resources import ATLASES, _ALIASES\n", 1),
    ("from gliaflow.pipeline._utils import load_image\n", 0),
    ("from gliaflow.pipeline import _utils\n", 0),
    ("from gliaflow.pipeline._utils import _helper\n", 1),
    ("from gliaflow.pipeline.session import _work\n", 0),  # the module itself
])
def test_private_import_rule_examples(code, expected):
    path = ROOT / "pipeline" / "session.py"
    assert len(_private_imports("gliaflow.pipeline.session", path, ast.parse(code))) == expected


@pytest.mark.parametrize("code,expected", [
    ("from gliaflow.pipeline.io import resources\nresources._check_resolution(2)\n", 1),
    ("import gliaflow.pipeline.io.resources as R\nR._ALIASES\n", 1),
    ("from gliaflow.pipeline.io import resources\nresources.get_atlas()\n", 0),
    ("from gliaflow.pipeline import _utils\n_utils.load_image\n", 0),
    ("from gliaflow.pipeline import _utils\n_utils._x\n", 1),
])
def test_private_attribute_rule_examples(code, expected):
    path = ROOT / "pipeline" / "session.py"
    assert len(_private_attribute_uses("gliaflow.pipeline.session", path, ast.parse(code))) == expected
