"""`omni-diffusion demo`: the default workflow on the built-in reference model, on any machine, offline.

The built-in model is the small Qwen-Image trained on procedural shapes (omni_backend/reference):
it draws what a prompt like "a red circle at the top left on a blue background" says.
"""

from __future__ import annotations

import os
from pathlib import Path

from omni_backend.reference import model_path

from .recipes import demo_workflow
from .runner import run_workflow

DEMO_MODEL = "qwen-image-shapes"


def demo_models_dir() -> Path:
    return Path(os.environ.get("OMNI_DEMO_CACHE", Path.home() / ".cache" / "omni-diffusion")) / "models"


def ensure_demo_model(models_dir: Path) -> Path:
    """A models/diffusers entry pointing at the shipped reference model (a link: nothing is copied)."""
    source = model_path()
    target = models_dir / "diffusers" / DEMO_MODEL
    if target.is_symlink() and target.resolve() == source:
        return target
    if target.is_symlink():
        target.unlink()  # left by an older install of the pack
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source, target_is_directory=True)
    return target


def run_demo(output_dir: str | Path = "output") -> list[Path]:
    models_dir = demo_models_dir()
    ensure_demo_model(models_dir)
    return run_workflow(demo_workflow(DEMO_MODEL), models_dir=models_dir, output_dir=output_dir).files
