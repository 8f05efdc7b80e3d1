"""The pack imports the way ComfyUI imports it, and outside ComfyUI; the CLI works."""

from __future__ import annotations

import runpy
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from omni_diffusion_nodes.headless import cli

PACK_ROOT = Path(__file__).resolve().parents[2]


def test_loads_like_comfyui_loads_a_custom_node(tmp_path):
    """ComfyUI imports the folder under a path-derived name with its own `nodes` module loaded."""
    script = textwrap.dedent(f"""
        import importlib.util, sys, types
        comfy_nodes = types.ModuleType("nodes")  # ComfyUI's own top-level module
        sys.modules["nodes"] = comfy_nodes
        name = {str(PACK_ROOT).replace('.', '_x_')!r}
        spec = importlib.util.spec_from_file_location(name, {str(PACK_ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(PACK_ROOT)!r}])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        assert sys.modules["nodes"] is comfy_nodes, "the pack replaced ComfyUI's nodes module"
        assert sorted(module.NODE_CLASS_MAPPINGS) == sorted(module.NODE_DISPLAY_NAME_MAPPINGS)
        assert all(n.startswith("Omni") for n in module.NODE_CLASS_MAPPINGS)
        assert module.WEB_DIRECTORY == "./web"
        import omni_backend  # the stable name worker processes use
        assert "comfy" not in sys.modules and "folder_paths" not in sys.modules
        print(len(module.NODE_CLASS_MAPPINGS))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 3


def test_backend_never_imports_comfyui():
    banned = ("import comfy", "from comfy", "import folder_paths", "import server", "from server",
              "from nodes", "import nodes")
    for path in (PACK_ROOT / "omni_backend").rglob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            stripped = line.strip()
            assert not stripped.startswith(banned), f"{path}: {stripped}"


def test_pyproject_has_registry_metadata():
    data = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    assert data["project"]["name"] and data["project"]["version"]
    assert data["tool"]["comfy"]["PublisherId"]
    assert "omni-diffusion" in data["project"]["scripts"]


def test_node_display_names_and_category(nodes):
    from omni_diffusion_nodes import NODE_DISPLAY_NAME_MAPPINGS

    assert {"Load Omni Model", "Sample", "VAE Decode Patch-Parallel"} <= set(NODE_DISPLAY_NAME_MAPPINGS.values())
    assert all(cls.CATEGORY == "Omni Diffusion" for cls in nodes.values())


def test_make_tiny_lists_families_and_writes_a_folder(tmp_path, capsys):
    assert cli.main(["make-tiny", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "qwen-image" in listed and "wan2.2" in listed
    assert cli.main(["make-tiny", "z-image", str(tmp_path / "z")]) == 0
    assert (tmp_path / "z" / "model_index.json").is_file()
    assert cli.main(["make-tiny", "nope", str(tmp_path / "n")]) == 2


def test_cli_run_prints_written_files(headless, tmp_path, capsys):
    workflow = PACK_ROOT / "workflows" / "z-image.json"
    from omni_diffusion_nodes.graph.workflow_format import load_workflow
    from omni_diffusion_nodes.headless.runner import to_prompt
    import json

    prompt = to_prompt(load_workflow(workflow))
    next(n for n in prompt.values() if n["class_type"] == "OmniSampleV2")["inputs"].update(width=64, height=64)
    small = tmp_path / "small.json"
    small.write_text(json.dumps(prompt))
    code = cli.main(["run", str(small), "--models-dir", str(headless.models_dir),
                     "--output-dir", str(tmp_path / "out"), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    written = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    assert written and all(p.exists() for p in written)


def test_cli_reports_errors_without_a_traceback(headless, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert cli.main(["run", str(bad), "--models-dir", str(headless.models_dir)]) == 1
    assert "error:" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (PACK_ROOT / "README.md").read_text()
    ci = (PACK_ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line)
    assert command in readme, "the README's test command and .ci/run must stay the same command"


def test_every_python_package_of_the_pack_is_installed():
    """setup.py lists the pack's own packages by hand (the pack folder itself is a package) and finds the
    engine's: a new subpackage that is not listed works in a checkout and is missing from `pip install .`."""
    listed = set(runpy.run_path(str(PACK_ROOT / "setup.py"), run_name="packages")["packages"]())
    found = set()
    for init in PACK_ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(PACK_ROOT).parts
        if not parts or parts[0] in ("tests", "benchmarks", "web", "workflows") or parts[0].startswith("."):
            continue
        found.add(".".join(parts) if parts[0] == "omni_backend" else ".".join(("omni_diffusion_nodes", *parts)))
    found.add("omni_diffusion_nodes")
    assert found - listed == set(), f"add these to setup.py's PACK_PACKAGES: {found - listed}"
