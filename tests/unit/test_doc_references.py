"""Every ``gliaflow.pipeline...`` / ``gliaflow.workflows...`` name written in the code's docstrings,
comments and the README resolves to a module or an attribute (moved code leaves no dead pointers)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"gliaflow\.(?:pipeline|workflows)(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_dotted_names_in_code_and_docs_resolve():
    files = [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("workflows/**/*.py"), ROOT / "README.md"]
    bad = sorted({(str(f.relative_to(ROOT)), n) for f in files for n in NAME.findall(f.read_text())
                  if not n.endswith("__main__") and not _resolves(n.rstrip("."))})
    assert not bad, "names that resolve to nothing:\n" + "\n".join(f"{f}: {n}" for f, n in bad)
