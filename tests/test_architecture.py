"""The package's layout rules (DESIGN.md section 1), checked over its import statements.

Every ``import`` and ``from … import`` of every module counts, wherever it stands (inside a
function or under ``TYPE_CHECKING`` too): imports run one way, so no module imports a module
that imports it back, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clara_voice"
MAX_LINES = 400

SHARED = {
    "config",
    "logging",
    "telemetry",
    "states",
    "_lifecycle",
    "_closing",
    "_settings_errors",
    "_provider_specs",
    "_redact",
    "_urls",
    "_ratelimit",
    "_settings_base",
    "_json",
    "_names",
    "tokens",
    "_cli",
    "_livekit_server",
    "_supervisor",
}
"""Modules at the top that every wing may use; they use no wing."""
ENTRY = {"__main__", "worker", "web", "outbox_cli", "db_cli", "_livekit_worker", "demo"}
"""Modules at the top that use the wings; nothing imports them."""
MAY_USE: dict[str, set[str]] = {
    "agent": {"voice", "sync", "persistence"},
    "voice": set(),
    "sync": {"voice"},
    "persistence": set(),
    "client": {"voice", "sync"},
    "fleet": {"agent", "voice"},
}
"""Which wings each wing may import (besides itself and the shared modules)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> Iterator[str]:
    """The clara_voice modules ``path`` (module ``name``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # "from package import module" imports the module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("clara_voice") and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    return {name: set(imports_of(path, name)) for name, path in modules().items()}


def part(name: str) -> str:
    """The wing (``agent``, ``voice``…) or top-level module a module belongs to."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_run_one_way_between_the_wings() -> None:
    wrong = []
    for name, targets in graph().items():
        mine = part(name)
        for target in targets:
            theirs = part(target)
            if theirs == mine or target == "clara_voice" or mine in ENTRY:
                continue
            if theirs in ENTRY:
                wrong.append(f"{name} imports the entry point {target}")
            elif mine in SHARED and theirs not in SHARED:
                wrong.append(f"shared {name} imports the wing {target}")
            elif mine in MAY_USE and theirs not in SHARED | MAY_USE[mine]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_nothing_in_the_server_imports_the_client() -> None:
    server = {n: t for n, t in graph().items() if part(n) != "client"}
    assert not [n for n, t in server.items() if any(part(x) == "client" for x in t)]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (aim: under {MAX_LINES})"


def test_the_benchmarks_share_the_test_kit_not_the_tests() -> None:
    """bench/ uses testkit/ (the fakes, peers and speech the tests use too), never tests/."""
    bench = PACKAGE.parents[1] / "bench"
    wrong = []
    for path in sorted(bench.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            wrong += [f"{path.name} imports {n}" for n in names if n.split(".")[0] == "tests"]
    assert not wrong, wrong


@pytest.mark.parametrize("command", ["clara_voice.outbox_cli", "clara_voice.db_cli"])
def test_the_operator_commands_get_their_store_without_the_worker(command: str) -> None:
    """The outbox and db commands build the store the settings name through
    persistence/factory.py; the worker (livekit's server, the agent, the pipeline) is never
    imported for that, directly or through another module."""
    edges = graph()
    seen, todo = set(), [command]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    assert "clara_voice.persistence.factory" in seen or command.endswith("db_cli")
    assert not {"clara_voice.worker", "clara_voice.agent", "clara_voice.voice"} & seen
