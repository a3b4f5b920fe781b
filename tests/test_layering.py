"""The package's floor plan: every import (module level or inside a function) points to the same stage or a
lower one, and no modules import each other in a cycle.

Stages, lowest first: the foundation (errors, fsutil, runtime, config, and the run directory's file names in
runs.layout), corpus, bank, index, scoring, models,
train, runs, decode, eval, serve, commands, cli, api. A module of a stage may import its own stage and the ones
below it; the root package ``vecrag`` imports only the foundation (the public names load lazily from api).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vecrag"
STAGES = [
    ("vecrag", "vecrag.errors", "vecrag.fsutil", "vecrag.runtime_env", "vecrag.runtime", "vecrag.config",
     "vecrag.runs.layout"),  # the run directory's file names: every stage that writes or reads a run uses them
    ("vecrag.corpus",),
    ("vecrag.bank",),
    ("vecrag.index",),
    ("vecrag.scoring",),
    ("vecrag.models",),
    ("vecrag.train",),
    ("vecrag.runs",),
    ("vecrag.decode",),
    ("vecrag.eval",),
    ("vecrag.serve",),
    ("vecrag.commands",),
    ("vecrag.cli",),
    ("vecrag.api",),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The vecrag modules ``name`` imports anywhere in its file (resolved to a module of the package)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("vecrag") and t != name:
                found.add(t)
    return found


def stage(name: str) -> int:
    best = -1, -1
    for i, members in enumerate(STAGES):
        for m in members:
            if (name == m or name.startswith(m + ".")) and len(m) > best[1]:
                best = i, len(m)
    if best[0] < 0:
        raise AssertionError(f"{name} belongs to no stage: add it to STAGES in {__file__}")
    return best[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_stage(graph: dict[str, set[str]]) -> None:
    assert len(graph) > 100
    for name in graph:
        stage(name)


def test_imports_point_down(graph: dict[str, set[str]]) -> None:
    upward = sorted(f"{a} ({STAGES[stage(a)][0]}) -> {b} ({STAGES[stage(b)][0]})"
                    for a, targets in graph.items() for b in targets if stage(b) > stage(a))
    assert not upward, "imports from a lower stage to a higher one:\n" + "\n".join(upward)


def test_root_package_imports_only_the_foundation(graph: dict[str, set[str]]) -> None:
    assert all(stage(t) == 0 for t in graph["vecrag"]), graph["vecrag"]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """Tarjan's strongly connected components: any component of two or more modules is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: an import of eval from models is found and reported as upward."""
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from vecrag.eval.baselines import retrieve_ranks\n", encoding="utf-8")
    known = modules()
    found = imports("vecrag.models.fake", p, known)
    assert found == {"vecrag.eval.baselines"} and stage("vecrag.eval.baselines") > stage("vecrag.models.fake")
