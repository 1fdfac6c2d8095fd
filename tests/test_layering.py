"""
The package's import graph has no cycle (outside C{sniproxy.dns}, whose
modules are one layer), counting imports inside functions too: the layers
stay layers.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

from twisted.trial.unittest import SynchronousTestCase

import sniproxy

PACKAGE = pathlib.Path(sniproxy.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The sniproxy modules C{name} imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "from sniproxy import alerts" imports the module sniproxy.alerts.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _collapse(name: str) -> str:
    """The DNS layer counts as one node."""
    return "sniproxy.dns" if name == "sniproxy.dns" or name.startswith("sniproxy.dns.") else name


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        node = _collapse(name)
        edges = graph.setdefault(node, set())
        edges.update(_collapse(target) for target in _imports(name, path, known))
        edges.discard(node)
    # A package's __init__ is imported by its submodules implicitly; that is
    # not an edge anyone wrote, so the graph holds only the written ones.
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in C{graph}, as a list of nodes, or C{None}."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


class LayeringTests(SynchronousTestCase):
    def test_every_module_imports(self):
        for name in _modules():
            importlib.import_module(name)

    def test_no_import_cycle(self):
        cycle = find_cycle(import_graph())
        self.assertIsNone(cycle, "import cycle: " + " -> ".join(cycle or ()))

    def test_the_check_finds_a_cycle(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}))

    def test_the_scan_sees_imports_inside_functions(self):
        path = pathlib.Path(self.mktemp())
        path.write_text("def f():\n    from sniproxy import config\n    import sniproxy.routing\n")
        known = {"sniproxy", "sniproxy.config", "sniproxy.routing", "sniproxy.x"}
        self.assertEqual(_imports("sniproxy.x", path, known), {"sniproxy.config", "sniproxy.routing", "sniproxy"})
