"""The map in docs/ARCHITECTURE.md, checked: which package may import which, and no import cycle.

The import graph is read from the source (every `import` / `from ... import` statement, function-local ones
included, since a cycle hidden inside a function is still a cycle), not by importing the modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("sam", "experiments", "analysis")
# What each package may import from this repository: the arrows of docs/ARCHITECTURE.md.
MAY_IMPORT = {"sam": {"sam"}, "experiments": {"sam", "experiments"}, "analysis": {"sam", "experiments", "analysis"}}
# sam/ is the optimizer a reader copies into their own code: torch only, nothing of the QA experiment.
SAM_FORBIDDEN = ("transformers", "datasets", "wandb", "omegaconf", "pandas")
# ... but for the Hugging Face Trainer drop-in, which `import sam` does not import (checked below)
SAM_ALLOWED = {"sam.hf": {"transformers"}}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    return {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    modules = _modules(root, packages)
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The repository modules (and external top-level packages) that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, `level - 1` steps up
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            # `from pkg import module` imports the module itself
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    resolved = set()
    for target in found:
        # a.b.c imports a.b.c if it is one of ours, else its nearest module of ours (a.b), else the outside package
        while target and target not in known and "." in target:
            target = target.rpartition(".")[0]
        resolved.add(target)
    resolved.discard(name)
    return resolved


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the graph's own modules (depth-first search for a back edge), or None."""
    ours = {name: {t for t in targets if t in graph} for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(ours[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(ours):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_packages_import_only_downwards(graph):
    for name, targets in graph.items():
        top = name.split(".")[0]
        ours = {t.split(".")[0] for t in targets if t.split(".")[0] in PACKAGES}
        assert ours <= MAY_IMPORT[top], f"{name} imports {sorted(ours - MAY_IMPORT[top])}"
        if top == "sam":
            outside = {t.split(".")[0] for t in targets} & set(SAM_FORBIDDEN) - SAM_ALLOWED.get(name, set())
            assert not outside, f"{name} imports {sorted(outside)}"


def test_import_sam_leaves_the_trainer_drop_in_and_transformers_out(graph):
    """`import sam` (the package and what it imports, transitively) never reaches sam.hf, the one module that may
    import transformers."""
    reached, todo = set(), ["sam"]
    while todo:
        name = todo.pop()
        if name in reached or name not in graph:
            continue
        reached.add(name)
        todo.extend(graph[name])
    assert "sam.hf" not in reached
    assert not {t.split(".")[0] for name in reached for t in graph[name]} & set(SAM_FORBIDDEN)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_reader_sees_relative_function_local_and_module_imports(tmp_path):
    """pkg.a imports pkg.b inside a function with a relative import; pkg.b imports the module pkg.a through
    `from pkg import a`: a cycle the checks above must see. pkg.c only imports torch: no edge of ours."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("from pkg import a\n\ndef g():\n    return a\n")
    (pkg / "c.py").write_text("import torch.nn\n")
    graph = import_graph(tmp_path, packages=("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg", "pkg.a"} and graph["pkg.c"] == {"torch"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path, packages=("pkg",))) is None
