"""A family is one folder (omni_backend/families/<name>/): the registry finds it, shared code never imports
it, and adding a family touches only the files NEW_FAMILY_MAY_TOUCH names.

Three proofs: no module outside the family folders imports one; Qwen-Image-Edit-2511 (the family added
in this layout) is named nowhere else in the engine, the nodes or the CLI; and a family written here
into a temporary copy of the engine, as a folder and nothing else, is found by every registry (folders,
single files, the support matrix, the option nodes, the shipped workflows).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_layers import IMPORTS, PACK, ROOT, layer_of

FAMILIES_PACKAGE = "omni_backend.families"

# What adding a family may change ({folder}: its folder's name, {key}: its family key).
NEW_FAMILY_MAY_TOUCH = (
    "omni_backend/families/{folder}/*",  # the class, single-file layout, tiny builder, hooks, options
    "workflows/{key}*.json",             # its shipped workflows (headless/recipes.py writes them from the class)
    "docs/*.md",                         # its rows: models, compatibility (generated), single files, workflows
    "README.md",                         # its line in the model list
    "tests/*",                           # its tests
)


def family_folder_of(module: str) -> str | None:
    """The family folder a module belongs to (`omni_backend.families.wan.single_file` -> "wan")."""
    parts = module.split(".")
    if parts[:2] == FAMILIES_PACKAGE.split(".") and len(parts) > 2 and (ROOT / "omni_backend" / "families"
                                                                         / parts[2]).is_dir():
        return parts[2]
    return None


def test_no_shared_module_imports_a_family_folder():
    """Families build on families (Edit on Qwen-Image); the engine, the nodes and the CLI ask the registry.
    (The training code that made the reference edit model uses its family, as tests do.)"""
    naming = [f"{name} imports {target}" for name, targets in sorted(IMPORTS.items()) for target in sorted(targets)
              if family_folder_of(target) and not family_folder_of(name) and layer_of(name) != f"{PACK}.training"]
    assert not naming, "shared code names a family; ask omni_backend.families instead:\n" + "\n".join(naming)


def test_the_newest_family_is_named_only_where_a_new_family_may_be():
    folder, key = "qwen_image_edit_2511", "qwen-image-edit-2511"
    allowed = [pattern.format(folder=folder, key=key) for pattern in NEW_FAMILY_MAY_TOUCH]
    names = (key, folder, "QwenImageEdit2511", "Edit-2511", "-2511")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    outside = []
    for path in tracked.splitlines():
        if any(fnmatch.fnmatch(path, pattern) for pattern in allowed) or not (ROOT / path).is_file():
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        outside += [f"{path}: {name}" for name in names if name in text]
    assert not outside, f"a new family may touch only {allowed}; also named in:\n" + "\n".join(outside)


TOY_FAMILY = {
    "__init__.py": '''
        """Toy-Image: a family written by the layout test, as a folder and nothing else."""

        from .family import ToyImage

        FAMILIES = (ToyImage(),)
    ''',
    "family.py": '''
        from ...options import Option, OptionGroup
        from ..qwen_image.family import QwenImage

        TOY_OPTIONS = OptionGroup(
            key="toy", node_id="OmniToyOptions", title="Omni Toy Options", description="Toy-Image's own options.",
            options=(Option("sharpness", "FLOAT", "How sharp.", default=0.5, low=0.0, high=1.0, step=0.05),))


        class ToyImage(QwenImage):
            key = "toy-image"
            title = "Toy-Image"
            example_model = "Toy-Image"
            option_groups = (TOY_OPTIONS,)
            refines = ("qwen-image",)

            def claims(self, model_index, folder=None):
                return bool(model_index.get("_toy"))
    ''',
    "single_file.py": '''
        import dataclasses

        from ..qwen_image.single_file import PROFILE as QWEN_IMAGE

        PROFILES = (dataclasses.replace(QWEN_IMAGE, family_key="toy-image", claims=lambda file: file.has("toy"),
                                        refines=("qwen-image",),
                                        file_names={**QWEN_IMAGE.file_names, "diffusion_model": "toy.safetensors"}),)
    ''',
}

TOY_CHECKS = '''
    import sys
    from pathlib import Path

    import omni_backend
    import torch
    from safetensors.torch import save_file

    assert omni_backend.__file__.startswith(sys.argv[1]), omni_backend.__file__  # the copy, not the checkout
    from omni_backend.families import FAMILIES, family_for_pipeline
    from omni_backend.rules.feature_matrix import render_markdown
    from omni_backend.single_file.model_files import PROFILES, detect_family
    from omni_backend.single_file.weights_file import inspect_weights_file
    from omni_diffusion_nodes.headless.recipes import shipped_workflows
    from omni_diffusion_nodes.nodes.mappings import NODE_CLASS_MAPPINGS

    assert "toy-image" in FAMILIES and "toy-image" in PROFILES
    assert family_for_pipeline("QwenImagePipeline", {"_toy": True}).key == "toy-image"
    assert family_for_pipeline("QwenImagePipeline", {}).key == "qwen-image"  # the family it refines keeps its folders
    dit = {name: torch.zeros(2, 2) for name in ("transformer_blocks.0.img_mod.1.weight", "txt_norm.weight",
                                                "img_in.weight")}
    save_file(dit, sys.argv[2] + "/qwen.safetensors")
    save_file({**dit, "toy": torch.zeros(1)}, sys.argv[2] + "/toy.safetensors")
    assert detect_family(inspect_weights_file(sys.argv[2] + "/toy.safetensors", "diffusion_model")).family_key == "toy-image"
    assert detect_family(inspect_weights_file(sys.argv[2] + "/qwen.safetensors", "diffusion_model")).family_key == "qwen-image"
    assert "| Toy-Image |" in render_markdown()
    assert "toy-image.json" in shipped_workflows()
    assert "OmniToyOptions" in NODE_CLASS_MAPPINGS and "Toy-Image" in NODE_CLASS_MAPPINGS["OmniToyOptions"].DESCRIPTION
    print("found everywhere")
'''


@pytest.mark.slow
def test_a_family_added_as_a_folder_is_found_everywhere(tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(ROOT / "omni_backend", engine / "omni_backend",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    toy = engine / "omni_backend" / "families" / "toy_image"
    toy.mkdir()
    for name, source in TOY_FAMILY.items():
        (toy / name).write_text(textwrap.dedent(source).lstrip())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(engine), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(TOY_CHECKS), str(engine), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and "found everywhere" in result.stdout, result.stderr[-3000:]
