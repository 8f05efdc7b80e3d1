"""`omni-diffusion demo`: the default workflow on the built-in reference model, on any machine, offline.

The built-in model is the small Qwen-Image trained on procedural shapes (omni_backend/reference):
it draws what a prompt like "a red circle at the top left on a blue background" says. With
`--edit`, the built-in edit model (a small Qwen-Image-Edit) then changes that drawing as an
instruction like "make the circle green" says; both images are written.
"""

from __future__ import annotations

import os
from pathlib import Path

from omni_backend.reference import edit_model_path, model_path

from .recipes import demo_edit_workflow, demo_workflow
from .runner import run_workflow

DEMO_MODEL = "qwen-image-shapes"
DEMO_EDIT_MODEL = "qwen-image-edit-shapes"


def demo_models_dir() -> Path:
    return Path(os.environ.get("OMNI_DEMO_CACHE", Path.home() / ".cache" / "omni-diffusion")) / "models"


def ensure_demo_model(models_dir: Path, name: str = DEMO_MODEL, source: Path | None = None) -> Path:
    """A models/diffusers entry pointing at a shipped reference model (a link: nothing is copied)."""
    source = source or model_path()
    target = models_dir / "diffusers" / name
    if target.is_symlink() and target.resolve() == source:
        return target
    if target.is_symlink():
        target.unlink()  # left by an older install of the pack
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    return target


def run_demo(output_dir: str | Path = "output", edit: bool = False) -> list[Path]:
    """The written images: the scene, and with `edit` then the edited scene."""
    models_dir = demo_models_dir()
    ensure_demo_model(models_dir)
    if not edit:
        return run_workflow(demo_workflow(DEMO_MODEL), models_dir=models_dir, output_dir=output_dir).files
    ensure_demo_model(models_dir, DEMO_EDIT_MODEL, edit_model_path())
    workflow = demo_edit_workflow(DEMO_MODEL, DEMO_EDIT_MODEL)
    return run_workflow(workflow, models_dir=models_dir, output_dir=output_dir).files
