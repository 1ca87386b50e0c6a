"""The import graph of ``src/dpp``: no cycles, function-level and ``TYPE_CHECKING`` imports
counted."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The dpp modules ``path`` imports: at module level, inside functions and under
    ``if TYPE_CHECKING:`` (a reader following the imports meets those too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" imports the module pkg.mod; "from mod import f" imports mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted((SRC / "dpp").rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle():
    """The checker itself: it reports a cycle through function-level imports, not a chain."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_parser_sees_imports_inside_functions():
    """An import inside a function body is an edge of the graph."""
    graph = import_graph()
    assert "dpp.experiments.trainer" in graph["dpp.experiments.cli"]  # imported in functions


def test_parser_sees_type_checking_imports(tmp_path, monkeypatch):
    """An import under ``if TYPE_CHECKING:`` is an edge of the graph."""
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    source = tmp_path / "dpp" / "probe.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .experiments.runconfig import RunConfig\n"
    )
    modules = {"dpp.probe", "dpp.experiments.runconfig"}
    assert imported_modules(source, modules) == {"dpp.experiments.runconfig"}


def test_no_import_cycle_among_dpp_modules():
    """No chain of imports (module-level, in functions or under TYPE_CHECKING) among src/dpp
    modules comes back."""
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_core_never_imports_the_experiment_side():
    """src/dpp/*.py and src/dpp/export/ import nothing from dpp.experiments."""
    for module, targets in import_graph().items():
        if module.startswith("dpp.experiments") or module == "dpp.__main__":
            continue
        bad = sorted(t for t in targets if t.startswith("dpp.experiments"))
        assert not bad, f"{module} imports {bad}"
