"""The house: ``openmind_prep`` (get and prepare data) ← ``loaders`` (feed the device) ←
``trainers`` (learn); only the CLI shell ``openmind_prep.cli`` composes all three; click only in
the shell; no import cycle anywhere. Imports are read from the source (lazy ones inside functions
count too), so the rule holds for every code path, not just for what a test happens to import."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("openmind_prep", "loaders", "trainers")
SHELL = "openmind_prep.cli"
ENTRY_POINTS = ("openmind_prep.__main__",)  # ``python -m openmind_prep``: the shell's other door


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path) -> dict[str, set[str]]:
    """Every module of the three packages → the project modules it imports (anywhere in its body)."""
    files = {module_name(root, p): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {f for f in found if f in files}
        graph[name] = targets - {name}
    return graph


#: The rooms of ``openmind_prep``, lowest first: a room imports only itself and the rooms before it.
ROOMS = ("core", "store", "sources", "preprocess", "shards", "reports")


def _layer(module: str) -> float:
    """3 for the shell; 0, 1, 2 for the three packages; inside ``openmind_prep`` 0.0-0.5 by room."""
    if module == SHELL or module.startswith(SHELL + ".") or module in ENTRY_POINTS:
        return 3
    parts = module.split(".")
    if parts[0] == "openmind_prep":
        return ROOMS.index(parts[1]) / 10 if len(parts) > 1 and parts[1] in ROOMS else 0.9
    return {"loaders": 1, "trainers": 2}[parts[0]]


def violations(root: Path) -> list[str]:
    """Upward imports (a module importing a higher layer), click outside the shell, and cycles."""
    graph = imports_of(root)
    found = [f"{a} imports {b} (layer {_layer(a)} -> {_layer(b)})"
             for a, targets in sorted(graph.items()) for b in sorted(targets) if _layer(b) > _layer(a)]
    for name in sorted(graph):
        if _layer(name) == 3:
            continue
        path = root / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text())
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "click" in
               ([a.name.split(".")[0] for a in n.names] if isinstance(n, ast.Import) else [(n.module or "").split(".")[0]])
               for n in ast.walk(tree)):
            found.append(f"{name} imports click (only {SHELL} may)")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_house_has_no_upward_import_no_click_outside_the_shell_and_no_cycle():
    assert violations(ROOT) == []


@pytest.fixture()
def copy_of_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize("module, planted, expected", [
    ("openmind_prep/preprocess/resample.py", "    from loaders.sampler import OverlapViewSampler\n", "layer 0.3 -> 1"),
    ("openmind_prep/store/manifest.py", "    from openmind_prep.preprocess.job import run_preprocess\n", "layer 0.1 -> 0.3"),
    ("openmind_prep/core/atomic.py", "from openmind_prep.sources import hub\n", "layer 0.0 -> 0.2"),
    ("loaders/collate.py", "import trainers.losses\n", "layer 1 -> 2"),
    ("trainers/losses.py", "from openmind_prep.cli import main\n", "layer 2 -> 3"),
    ("openmind_prep/store/store.py", "import click\n", "imports click"),
    ("openmind_prep/sources/metadata.py", "from openmind_prep.sources.selection import Selection\n", "import cycle"),
])
def test_a_planted_violation_is_found(copy_of_tree: Path, module: str, planted: str, expected: str):
    path = copy_of_tree / module
    text = path.read_text()
    if planted.startswith("    "):  # a lazy import inside a function counts as much as a top-level one
        planted = "def _planted():\n" + planted
    path.write_text(text + "\n" + planted)
    assert violations(copy_of_tree) != []
    assert any(expected in v for v in violations(copy_of_tree)), violations(copy_of_tree)
