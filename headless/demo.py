"""`omni-diffusion demo`: the default workflow on a built-in model, on any machine, offline."""

from __future__ import annotations

import os
from pathlib import Path

from omni_backend.families import FAMILIES

from .recipes import demo_workflow
from .runner import run_workflow

DEMO_MODEL = "omni-demo-qwen-image"


def demo_models_dir() -> Path:
    return Path(os.environ.get("OMNI_DEMO_CACHE", Path.home() / ".cache" / "omni-diffusion")) / "models"


def ensure_demo_model(models_dir: Path) -> Path:
    """The demo's model folder, made on first use (no network)."""
    target = models_dir / "diffusers" / DEMO_MODEL
    if not (target / "model_index.json").exists():
        FAMILIES["qwen-image"].make_tiny(target)
    return target


def run_demo(output_dir: str | Path = "output") -> list[Path]:
    models_dir = demo_models_dir()
    ensure_demo_model(models_dir)
    return run_workflow(demo_workflow(DEMO_MODEL), models_dir=models_dir, output_dir=output_dir).files
