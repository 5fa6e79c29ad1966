"""The rooms of the house (DESIGN.md) and their doors: who may import whom, and no cycles.

Every import counts, the ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = (
    "schemas",
    "blocks",
    "tasks",
    "flows",
    "operations",
    "deployments",
    "mcp_adapter",
    "cli",
    "training",
)

ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "training": set(),  # shipped alone as a file to Hugging Face Jobs
    "blocks": {"schemas"},
    "tasks": {"schemas", "blocks", "training"},  # training: to find the script it ships
    "flows": {"schemas", "blocks", "tasks", "operations"},
    "operations": {"schemas", "blocks", "tasks"},
    "deployments": {"schemas", "blocks", "flows", "operations", "tasks"},
    "mcp_adapter": {"schemas"},  # and Prefect's client: the adapter only translates
    "cli": set(ROOMS),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Our modules that `module` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(path, module, known) for module, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_it_may(room: str):
    wrong: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        if module.split(".")[0] != room:
            continue
        for target in targets:
            target_room = target.split(".")[0]
            if target_room != room and target_room not in ALLOWED[room]:
                wrong[module].add(target)
    assert dict(wrong) == {}, f"{room} may import only {sorted(ALLOWED[room])} (and itself)"
