"""No import cycles inside the installed packages: every import counts, at module level or inside a function (an
import moved into a function hides a cycle from Python, not from this test), and so does every package ``__init__``
an import runs (``from .export.info import x`` runs ``export/__init__.py`` first, and whatever that imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT


def parents(module: str) -> list[str]:
    """The packages whose ``__init__`` Python runs before ``module``: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. ``from .x import y`` names module x, and x.y when y is a
    submodule; a package's own ``__init__`` is the package's name. Importing a module also imports its parent
    packages (their ``__init__``), except those of the importer itself (Python has entered them already)."""
    modules = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                if node.level:
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
                targets = subs + ([module] if len(subs) < len(node.names) else [])
            else:
                continue
            targets += [p for t in targets for p in parents(t) if p not in parents(name) and p != name]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(root: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` under ``root`` holding ``files`` (relative path -> source)."""
    for rel, text in files.items():
        (root / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / rel).write_text(text)
    return root / "pkg"


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = _package(tmp_path, {"__init__.py": "from .a import f\n",
                              "a.py": "from .sub.b import g\n\ndef f():\n    return g()\n", "sub/__init__.py": "",
                              "sub/b.py": "def g():\n    from ..a import f\n    return f\n",
                              "c.py": "from . import a\n"})
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_the_cycle_finder_counts_the_parent_packages_an_import_runs(tmp_path):
    """models imports export.info, whose package __init__ imports the writer, which imports models in a function:
    a cycle through export/__init__ (issue 48), though no module names another that names it."""
    pkg = _package(tmp_path, {"__init__.py": "", "models.py": "from .export.info import info\n",
                              "export/__init__.py": "from .writer import write\n",
                              "export/info.py": "def info():\n    pass\n",
                              "export/writer.py": "def write():\n    from .. import models\n"})
    assert cycles(import_graph(pkg)) == [["pkg.export", "pkg.export.writer", "pkg.models"]]
    _package(tmp_path, {"export/writer.py": "from . import info\n"})  # a sibling: its package is already entered
    assert cycles(import_graph(pkg)) == []


@pytest.mark.parametrize("package", ["hopscotch", "hopscotch_ext"])
def test_no_import_cycles(package):
    graph = import_graph(ROOT / "python" / package)
    assert len(graph) > 5
    assert cycles(graph) == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles(graph))
