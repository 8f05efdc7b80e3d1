"""Shared fixtures: the pack imported as ComfyUI would see it, and tiny models of every family.

Tiny models are random-weight diffusers folders of the real architectures (built in memory, no
download); they are written once per test session and loaded through the same code a user's
folder takes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
PACK_ROOT = Path(__file__).resolve().parent.parent


def _import_pack():
    """Import the pack under its installed name, or from this checkout when not installed."""
    try:
        module = importlib.import_module("omni_diffusion_nodes")
        if Path(module.__file__).resolve().parent == PACK_ROOT:
            return module
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("omni_diffusion_nodes", PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["omni_diffusion_nodes"] = module
    spec.loader.exec_module(module)
    return module


PACK = _import_pack()

from omni_diffusion_nodes.headless import recipes  # noqa: E402
from omni_diffusion_nodes.nodes import comfy_bridge  # noqa: E402

from omni_backend.families import FAMILIES  # noqa: E402
from omni_backend.weights.loading import quiet_libraries  # noqa: E402
from omni_backend.single_file.comfy_layout import write_comfy_files  # noqa: E402
from omni_backend.tiny.lora import make_tiny_lora  # noqa: E402

quiet_libraries()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the two cores: one torch thread each (the tiny models' work is mostly Python,
    # measured: one thread gives the same wall time as two, with a core left for the other worker).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """models/ with a tiny model per family under its key and under the real names workflows use."""
    root = tmp_path_factory.mktemp("models")
    diffusers_dir = root / "diffusers"
    for key, family in FAMILIES.items():
        family.make_tiny(diffusers_dir / key)
        (diffusers_dir / family.example_model).symlink_to(diffusers_dir / key, target_is_directory=True)
    for key, weights in recipes.COMFY_FILE_FAMILIES.items():  # single files under ComfyUI's template names
        write_comfy_files(key, root, weights)
    (root / "loras").mkdir()
    for index, name in enumerate(recipes.LORA_FILES):  # tiny stand-ins for the LoRA workflow's files
        make_tiny_lora(diffusers_dir / "qwen-image", root / "loras" / name, seed=index,
                       layout=("diffusers", "kohya")[index % 2])
    return root


def write_example_image(path: Path) -> Path:
    """The stand-in for the image the image-conditioned workflows name: a red disc on blue, with a
    transparent corner (Load Image turns alpha into its mask)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 255
    rgba[(x - 24) ** 2 + (y - 24) ** 2 < 144] = (220, 30, 30, 255)
    rgba[:8, :8, 3] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


@pytest.fixture()
def headless(models_dir, tmp_path):
    """Point the nodes' headless host at the tiny models and a fresh output folder."""
    host = comfy_bridge.HEADLESS
    saved = (host.models_dir, host.output_dir, host.input_dir)
    host.models_dir, host.output_dir, host.input_dir = models_dir, tmp_path / "output", tmp_path / "input"
    write_example_image(host.input_dir / recipes.EXAMPLE_IMAGE)
    host.stop.clear()
    host.progress_log.clear()
    yield host
    host.models_dir, host.output_dir, host.input_dir = saved
    host.stop.clear()


@pytest.fixture()
def nodes():
    return PACK.NODE_CLASS_MAPPINGS


@pytest.fixture()
def tiny_settings():
    """tiny_settings(family, **overrides) -> Sample node inputs for a quick run of a tiny model."""

    def settings(family_key: str, **overrides) -> dict:
        values = dict(prompt="a red circle", negative_prompt="blurry", seed=1, steps=3, guidance=4.0,
                      width=64, height=48, frames=1, batch_size=1)
        values.update(FAMILIES[family_key].tiny_request_overrides())
        values.update(overrides)
        return values

    return settings


@pytest.fixture(scope="module")
def engine():
    """A private Engine per test module (its worker groups end with the module)."""
    from omni_backend.engine import Engine

    engine = Engine()
    yield engine
    engine.unload_all()


@pytest.fixture(scope="session")
def comfyui_trees_dir(tmp_path_factory):
    """Where the ComfyUI trees are copied to run (once per session)."""
    return tmp_path_factory.mktemp("comfyui-trees")


@pytest.fixture(scope="session")
def comfyui_server(request, models_dir, comfyui_trees_dir, tmp_path_factory):
    """A real ComfyUI server of the version the test is parametrized with (tests/comfyui_host.py)."""
    from comfyui_host import ComfyServer, make_base, working_copy

    tree = request.param
    if tree is None:
        pytest.skip("no ComfyUI tree (COMFYUI_PATH)")
    input_image = write_example_image(tmp_path_factory.mktemp("input") / recipes.EXAMPLE_IMAGE)
    base = make_base(tmp_path_factory.mktemp(f"comfyui-{tree.version}-base"), models_dir, input_image)
    server = ComfyServer(tree, working_copy(tree, comfyui_trees_dir), base).start()
    yield server
    server.stop()


def pytest_itemcollected(item):
    """With pytest-xdist (`-n 2 --dist loadgroup`, the default: pyproject.toml) each test module runs on
    one worker, so its module fixtures (the single-process references most tests compare with) are built
    once; the tests of one real ComfyUI server run on one worker, where that server starts once, and the
    newest version's workflows are two groups (a server each) so that both workers share the tier's
    longest part. Set here, before xdist reads the groups in its own collection hook."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    tree = params.get("comfyui_server")
    group = item.path.stem
    if item.get_closest_marker("comfyui") is not None:
        item.add_marker(pytest.mark.slow)  # the real-ComfyUI tier is never part of the fast tier
        # The tier's other tests (ComfyUI's modules run on our files) wait for its environment, which
        # CI builds while the rest runs: kept together at the end, not inside their module's group.
        group = "comfyui-code"
    if tree is not None:
        from comfyui_host import newest

        group = f"comfyui-{tree.version}"
        if tree == newest() and item.originalname == "test_shipped_workflow_runs_in_the_real_editor":
            # Every workflow runs there: every other one on a second server, on the other worker.
            names = sorted(p.name for p in params["path"].parent.glob("*.json"))
            if names.index(params["path"].name) % 2:
                group += "-second-server"
    item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)  # after pytest has grouped the tests by the server version they share
def pytest_collection_modifyitems(config, items):
    """Deselect the combinations a test's `only_cases` mark leaves out (tests/comfyui_host.py), and run
    the real-ComfyUI tier last, in the order pytest gave it: its last server and browser then end with
    the session instead of idling (a browser renders the editor all the while) beside the other tests."""
    kept, dropped = [], []
    for item in items:
        mark = item.get_closest_marker("only_cases")
        params = getattr(getattr(item, "callspec", None), "params", {})
        (kept if mark is None or mark.args[0](**params) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = ([item for item in kept if item.get_closest_marker("comfyui") is None]
                + [item for item in kept if item.get_closest_marker("comfyui") is not None])


@pytest.fixture(scope="session")
def comfyui_code(comfyui_trees_dir):
    """The newest ComfyUI tree COMFYUI_PATH names, copied to run scripts that import its modules."""
    from comfyui_host import ComfyCode, newest, working_copy

    tree = newest()
    if tree is None:
        pytest.skip("COMFYUI_PATH is not set (a ComfyUI source tree, or a folder of them)")
    return ComfyCode(tree, working_copy(tree, comfyui_trees_dir))
