"""The layering of docs/architecture.md, read from the source: no import cycle, and each layer
imports only what is below it.

Every ``import`` statement counts, including the lazy ones inside functions (a lazy import
hides a cycle from Python, not from a reader). Imports are resolved to the project file they
load; a package's own ``__init__`` pulling in its submodules is not an edge back to it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ardrop", "cuda_ext", "models", "callbacks", "datamodules")
# The library's entry points may use the framework; nothing else in ardrop may.
ENTRY_POINTS = {"ardrop.train", "ardrop.bench", "ardrop.bench_loop", "ardrop.report"}
FRAMEWORK = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "torchmetrics", "models", "callbacks",
             "datamodules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name this file imports (absolute, relative resolved; ``from a import b`` -> a.b if a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names if f"{mod}.{alias.name}" in MODULES)
    return out


def _project_target(mod: str) -> str | None:
    """The project module a dotted import loads (its longest known prefix), or None if outside."""
    parts = mod.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in MODULES:
            return cand
    return None


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


# An ancestor package is loaded before any of its modules anyway: importing it (``from . import
# loader``) is not an edge back to it.
GRAPH = {
    name: {t for t in (_project_target(m) for m in _imports(name, path))
           if t is not None and t != name and t not in _ancestors(name)}
    for name, path in MODULES.items()
}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_project():
    assert {"ardrop.train", "ardrop.nn.lstm", "cuda_ext.loader", "models.mlp", "callbacks.pattern"} <= set(MODULES)
    assert "ardrop.contract.param_reads" in GRAPH["ardrop.optim.lazy_sgd"]  # a plain import is an edge
    assert "models.common" in GRAPH["models.mlp"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_project_files():
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_packages():
    """Also at the level of the top packages: ardrop sits below models/callbacks/datamodules, cuda_ext below ardrop."""
    top = {}
    for name, targets in GRAPH.items():
        top.setdefault(name.split(".")[0], set()).update(t.split(".")[0] for t in targets)
    for pkg in top:
        top[pkg].discard(pkg)
    # The entry points sit above everything by design: they are the roots that build the run.
    lib = {}
    for name, targets in GRAPH.items():
        if name in ENTRY_POINTS:
            continue
        lib.setdefault(name.split(".")[0], set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != name.split(".")[0])
    assert _cycles(lib) == [], lib


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("ardrop") and n not in ENTRY_POINTS))
def test_the_library_imports_no_framework(name):
    bad = sorted(m for m in _imports(name, MODULES[name]) if m.split(".")[0] in FRAMEWORK)
    assert not bad, f"{name} imports {bad}: only the entry points {sorted(ENTRY_POINTS)} may"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("cuda_ext")))
def test_cuda_ext_is_the_bottom_layer(name):
    bad = sorted(m for m in _imports(name, MODULES[name]) if m.split(".")[0] in ("ardrop", *FRAMEWORK))
    assert not bad, f"{name} imports {bad}: cuda_ext holds kernels and their loader, below ardrop"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc and len(doc.split()) >= 5, f"{name} has no docstring saying what it holds"


@pytest.mark.parametrize("pkg", ["models", "callbacks", "datamodules"])
def test_the_lightning_parts_do_not_import_each_other(pkg):
    others = {"models", "callbacks", "datamodules"} - {pkg}
    bad = sorted((n, m) for n in MODULES if n.split(".")[0] == pkg
                 for m in _imports(n, MODULES[n]) if m.split(".")[0] in others)
    assert not bad, f"{pkg} imports {bad}: the Lightning parts meet in the Hydra config and the Trainer"


@pytest.mark.parametrize("name", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_every_package_says_what_it_may_import(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text())) or ""
    assert "Imports:" in doc, f"{name}/__init__.py should say in its docstring what the package may import"
