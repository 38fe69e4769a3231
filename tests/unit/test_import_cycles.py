"""No import cycle among the project's own modules: the program, its tools, the harnesses, the
services, the benchmarks and the tests. Every import counts, those inside functions included: a
cycle hidden behind a late import is still two modules that cannot be understood one without the
other. And no module imports a test module: what several tests share lives in a helper module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.modules import ROOT_PACKAGES, module_files, parsed


def imported(path: Path, module: str, known: set[str]) -> set[str]:
    """The project's modules `path` (module `module`) imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name`, the
            # module alone.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # The deepest of the project's modules the name falls in.
            owner = target
            while owner and owner not in known:
                owner = owner.rpartition(".")[0]
            if owner and owner != module:
                found.add(owner)
    return found


def import_graph() -> dict[str, set[str]]:
    files = dict(module_files())
    known = set(files)
    return {module: imported(path, module, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_covers_every_part_of_the_project() -> None:
    graph = import_graph()
    for part in (*ROOT_PACKAGES, "mlstack_gateway", "mlstack_model", "mlstack_common"):
        assert any(module.split(".")[0] == part for module in graph), part
    # An import the graph must see, from inside a function of the gateway's store factory.
    assert "mlstack_gateway.stores.sqlite" in graph["mlstack_gateway.stores.factory"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_no_import_cycle() -> None:
    assert [sorted(cycle) for cycle in cycles(import_graph())] == []


def test_no_module_imports_a_test_module() -> None:
    found = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target.rpartition(".")[2].startswith("test_")
    )
    assert found == []
