"""The package's import graph: no circle, and the layers of the house (API → registry → backends).

Read from the source with ast, every `import` statement counted, the lazy ones inside functions too.
An edge is an explicit import; the implicit import of a module's parent package is not one (every
package whose __init__ imports its own modules would be a circle otherwise).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "srem_kernels"

# what a backend may import from the package: the backends themselves and the shared low layer
SHARED = {f"{PKG}._alloc", f"{PKG}._validate", f"{PKG}.errors", f"{PKG}.sensitivity", f"{PKG}._tau", f"{PKG}._amp"}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _defined(tree: ast.Module) -> set[str]:
    """The names a package's __init__ binds at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in mods.items()}
    graph = {}
    for name, (_, is_pkg) in mods.items():
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(trees[name]):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                mod = ".".join(base + (node.module.split(".") if node.module else []))
                for a in node.names:
                    full = f"{mod}.{a.name}"
                    if full in mods:
                        targets.add(full)  # a submodule
                    elif mod in mods and a.name in _defined(trees[mod]):
                        targets.add(mod)  # a name the module defines
                    # else a compiled submodule (backends/_srem_cpu): a leaf, outside the graph
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path that ends where it starts, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_relative_and_compiled_imports():
    graph = import_graph()
    assert f"{PKG}.backends.cpu" in graph[f"{PKG}.registry"]  # lazy, inside a loader
    assert f"{PKG}.backends.fused" in graph[f"{PKG}.backends.dense"]
    # `from srem_kernels.backends import _srem_cpu` is the compiled module, not the package
    assert f"{PKG}.backends" not in graph[f"{PKG}.backends.cpu"]


def test_the_package_has_no_import_circle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith(f"{PKG}.backends")))
def test_backends_import_no_layer_above_them(module):
    """A backend imports backends and the shared low layer only: never the registry or the API."""
    above = {m for m in import_graph()[module] if not m.startswith(f"{PKG}.backends") and m not in SHARED}
    assert not above, f"{module} imports {sorted(above)}"


def test_the_core_does_not_import_the_trainer():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(f"{PKG}.train") and m != f"{PKG}.demo"]
    assert not {(m, t) for m in core for t in graph[m] if t.startswith(f"{PKG}.train")}
