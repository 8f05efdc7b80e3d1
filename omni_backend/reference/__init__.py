"""The trained reference model: a small Qwen-Image trained on this CPU on procedural shapes.

Random-weight tiny models prove plumbing; this one proves quality. It is a complete
QwenImagePipeline folder (`MODEL_DIR`) made by `python -m omni_diffusion_nodes.training.train`, and
`omni_diffusion_nodes.training.evaluate` checks that it follows prompts it never saw in training.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "qwen-image-shapes"
# The edit model (QwenImageEditPipeline) made from it by `python -m omni_diffusion_nodes.training.train_edit`.
EDIT_MODEL_DIR = Path(__file__).resolve().parent / "qwen-image-edit-shapes"

# TeaCache polynomial fitted for this model (Apply TeaCache's `coefficients`), from 16 runs of
# training-distribution captions (not the held-out ones), 768 step pairs, R^2 0.51:
#   omni-diffusion fit-teacache omni_backend/reference/qwen-image-shapes --steps 25 --guidance 4 \
#       --width 64 --height 64 --dtype fp32 --device cpu --seeds 2 --prompt "a large red circle at the
#       top right on a yellow background" ... (8 captions of dataset.random_scenes(default_rng(123), 8))
TEACACHE_COEFFICIENTS = (20552.5, -2679.36, 26.7538, 6.98937, -0.158643)


def model_path() -> Path:
    """The committed model folder; raises if its weights are missing (e.g. a partial checkout)."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"the reference model is missing at {MODEL_DIR}; train it with "
                                "`python -m omni_diffusion_nodes.training.train --out <that folder>`")
    return MODEL_DIR


def edit_model_path() -> Path:
    """The committed edit model folder; raises if its weights are missing."""
    if not (EDIT_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"the reference edit model is missing at {EDIT_MODEL_DIR}; train it with "
                                "`python -m omni_diffusion_nodes.training.train_edit --out <that folder>`")
    return EDIT_MODEL_DIR
