"""The repository's imports run one way: no cycle anywhere, no layer imports a layer above it, and
inside the engine families import no feature, workers do not import the engine that starts them,
and the engine imports nothing of ComfyUI.

The layers, lowest first (a module imports its own layer and the layers below, never one above):

    omni_backend  the engine: plain Python values in, tensors out; knows no graph and no ComfyUI
    graph         the graph check the nodes and the CLI share: workflow files, node definitions,
                  the queue's checks and the feature check; it is handed the node classes
    nodes         the ComfyUI nodes and the server's check route (they ask `graph`)
    headless      the `omni-diffusion` CLI and the host that runs the nodes outside ComfyUI
    training      how the shipped reference models were made and are scored (it uses the engine);
                  no module outside it imports it: the engine ships the weights, not their making
    (root)        the pack's own __init__.py, ComfyUI's entry point: it imports the nodes

So the nodes never import the CLI that hosts them: what both need lives in `graph`, below both.

Read from the source (every import statement, at module top or inside functions, since a
function-local import closes a circle just the same when it runs), so a new module is checked the
day it is added, and a new top-level package must be given its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "omni_backend"
PACK = "omni_diffusion_nodes"  # the repository root is this package; omni_backend sits beside it when installed
LAYERS = ("omni_backend", f"{PACK}.graph", f"{PACK}.nodes", f"{PACK}.headless", f"{PACK}.training", PACK)
FEATURE_PACKAGES = ("cache", "parallel", "memory", "lora", "workers")
ENGINE_MODULES = ("engine", "run.runner", "run.sampling", "weights.loading", "spec", "rules.compat", "omni")
COMFYUI_MODULES = ("comfy", "folder_paths", "server", "nodes", "execution", "comfy_extras")
NOT_CODE = ("tests", "benchmarks", "web", "workflows")  # folders of the repository that no module imports


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) if parts[:1] == ("omni_backend",) else ".".join((PACK, *parts))


def pack_packages() -> list[Path]:
    """The pack's top-level packages (nodes, headless, ...): folders of the root holding an __init__.py."""
    return sorted(path.parent for path in ROOT.glob("*/__init__.py")
                  if path.parent.name not in NOT_CODE and path.parent.name != "omni_backend")


MODULES = {module_name(path): path
           for path in [ROOT / "__init__.py", *BACKEND.rglob("*.py"),
                        *(path for package in pack_packages() for path in package.rglob("*.py"))]}


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    """Every module the module `name` imports (absolute names; `from x import y` counts y when y is a
    module), wherever the import statement stands."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return found


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    return imports_in(path.read_text(), name, path.name == "__init__.py")


# module -> the repository's modules it imports
IMPORTS = {name: {t for t in imports_of(name) if t in MODULES and t != name} for name in MODULES}


def layer_of(name: str) -> str:
    """The innermost layer holding the module (the pack's __init__ is its own, outermost, layer)."""
    return max((layer for layer in LAYERS if name == layer or name.startswith(layer + ".")), key=len)


def import_cycle(imports: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(imports[name]):
            if state.get(target) == "open":  # on the path that led here
                path = trail + [name]
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, trail + [name])
                if cycle:
                    return cycle
        state[name] = "done"
        return None

    for name in sorted(imports):
        if name not in state:
            cycle = visit(name, [])
            if cycle:
                return cycle
    return None


def upward_imports(imports: dict[str, set[str]]) -> list[str]:
    return [f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
            for name, targets in sorted(imports.items()) for target in sorted(targets)
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name))]


def test_every_package_has_a_layer():
    unplaced = [package.name for package in pack_packages() if f"{PACK}.{package.name}" not in LAYERS]
    assert not unplaced, f"give {unplaced} a layer in LAYERS (and say why in this module's docstring)"


def test_no_import_cycles():
    cycle = import_cycle(IMPORTS)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_layer_imports_a_layer_above_it():
    upward = upward_imports(IMPORTS)
    assert not upward, "imports against the layers (see this module's docstring):\n" + "\n".join(upward)


def test_families_are_data_and_import_no_feature():
    for name, targets in IMPORTS.items():
        if name.startswith("omni_backend.families"):
            upward = {t for t in targets for inner in FEATURE_PACKAGES + ENGINE_MODULES
                      if t == f"omni_backend.{inner}" or t.startswith(f"omni_backend.{inner}.")}
            assert not upward, f"{name} imports {sorted(upward)}: features ask the family, never the reverse"


def test_workers_do_not_import_the_engine_that_starts_them():
    for name, targets in IMPORTS.items():
        if name.startswith("omni_backend.workers"):
            assert "omni_backend.engine" not in targets, name


def test_nothing_imports_the_training_code():
    training = f"{PACK}.training"
    importers = [f"{name} imports {target}" for name, targets in sorted(IMPORTS.items())
                 if layer_of(name) != training for target in sorted(targets) if layer_of(target) == training]
    assert not importers, "training is used by tests and benchmarks only:\n" + "\n".join(importers)


def test_the_engine_never_imports_comfyui():
    for name in MODULES:
        if layer_of(name) == "omni_backend":
            foreign = {t for t in imports_of(name) if t.split(".")[0] in COMFYUI_MODULES}
            assert not foreign, f"{name} imports {sorted(foreign)}"


def test_the_checker_sees_a_cycle_an_upward_import_and_a_function_local_import():
    """The checks above must be able to fail: the same functions on small graphs with one bad edge."""
    engine, graph_check, node = "omni_backend.errors", f"{PACK}.graph.check", f"{PACK}.nodes.common"
    assert import_cycle({engine: set(), graph_check: {engine}, node: {graph_check}}) is None
    assert import_cycle({engine: set(), graph_check: {engine, node}, node: {graph_check}}) == [graph_check, node,
                                                                                              graph_check]
    assert upward_imports({engine: set(), graph_check: {engine}, node: {graph_check}}) == []
    assert upward_imports({engine: set(), graph_check: {node}, node: set()}) == [
        f"{graph_check} ({PACK}.graph) imports {node} ({PACK}.nodes)"]

    source = "def answer():\n    from ..headless.validate import check_graph\n"
    assert f"{PACK}.headless.validate" in imports_in(source, f"{PACK}.nodes.check_route", is_package=False)
