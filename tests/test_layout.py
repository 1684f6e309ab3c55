"""The package layout shows the architecture: no import cycles (module-level or lazy, inside functions),
no module past ~600 lines, and every sub-package says in its docstring what it holds."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "pipeline"
MAX_LINES = 620
PACKAGES = ("stages", "vs2", "engines", "video", "run", "tools", "dev", "commands")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Edges module -> pipeline module it imports, counting imports inside functions too (a lazy import
    still ties the two modules together)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    graph[m].add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods)
    for m in graph:  # a package __init__ importing its own modules is not a cycle with them
        graph[m] = {t for t in graph[m] if t != m and t in mods and not m.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t] if t in path else [n, t]
            if t not in state and (c := visit(t, path + [t])):
                return c
        state[n] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m, [m])):
            return c
    return None


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_module_sizes():
    big = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_subpackages_say_what_they_hold():
    for name in PACKAGES:
        mod = importlib.import_module(f"pipeline.{name}")
        assert (mod.__doc__ or "").strip(), f"pipeline/{name}/__init__.py has no docstring"


def test_stages_do_not_import_tools_or_dev():
    """The run's stages depend on the contract (vs2), engines, video and storage, never on the tools
    around runs or on dev-only pieces."""
    graph = import_graph()
    for m, targets in graph.items():
        if m.startswith(("pipeline.stages", "pipeline.vs2", "pipeline.engines", "pipeline.video", "pipeline.run")):
            bad = {t for t in targets if t.startswith(("pipeline.tools", "pipeline.dev", "pipeline.commands"))}
            assert not bad, f"{m} imports {bad}"
