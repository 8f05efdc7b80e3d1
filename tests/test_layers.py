"""The engine's imports run one way: no cycles, families import no feature, workers do not import
the engine that starts them, and nothing in omni_backend imports ComfyUI.

Read from the source (every import statement, at module top or inside functions), so a new module
is checked the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

BACKEND = Path(__file__).resolve().parent.parent / "omni_backend"
FEATURE_PACKAGES = ("cache", "parallel", "memory", "lora", "workers")
ENGINE_MODULES = ("engine", "runner", "sampling", "loading", "spec", "compat", "omni")
COMFYUI_MODULES = ("comfy", "folder_paths", "server", "nodes", "execution", "comfy_extras")


def module_name(path: Path) -> str:
    parts = path.relative_to(BACKEND.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in BACKEND.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every module `name` imports (absolute names; `from x import y` counts y when y is a module)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return found


GRAPH = {name: {t for t in imports_of(name) if t in MODULES and t != name} for name in MODULES}


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(trail + [name, target])
            if target not in state:
                visit(target, trail + [name])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])


def test_families_are_data_and_import_no_feature():
    for name, targets in GRAPH.items():
        if name.startswith("omni_backend.families"):
            upward = {t for t in targets if t.split(".")[1] in FEATURE_PACKAGES + ENGINE_MODULES}
            assert not upward, f"{name} imports {sorted(upward)}: features ask the family, never the reverse"


def test_workers_do_not_import_the_engine_that_starts_them():
    for name, targets in GRAPH.items():
        if name.startswith("omni_backend.workers"):
            assert "omni_backend.engine" not in targets, name


def test_the_engine_never_imports_comfyui():
    for name in MODULES:
        foreign = {t for t in imports_of(name) if t.split(".")[0] in COMFYUI_MODULES}
        assert not foreign, f"{name} imports {sorted(foreign)}"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The walk above must be able to fail: a graph with a cycle trips the same assertion."""
    saved = dict(GRAPH)
    try:
        GRAPH["omni_backend.errors"] = {"omni_backend.spec"}
        try:
            test_no_import_cycles()
        except AssertionError as error:
            assert "import cycle" in str(error)
        else:
            raise AssertionError("a cycle went unnoticed")
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
