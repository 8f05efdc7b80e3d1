"""Qwen-Image-Edit-2511: Qwen-Image-Edit-2509's pipeline (QwenImageEditPlusPipeline), inputs and features,
with a DiT that holds the reference images at timestep 0. The folder adds a family without touching the
shared code: the registry finds this folder, and `refines` tells it apart from Edit-2509's folders and files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..qwen_image_edit.family import QwenImageEditPlus


class QwenImageEdit2511(QwenImageEditPlus):
    """Qwen-Image-Edit-2511: Edit-2509's pipeline class, inputs and features. Its DiT (`zero_cond_t` in
    transformer/config.json) modulates the reference images' tokens with timestep 0 while the output's
    tokens get the step's timestep: diffusers doubles the time embedding and picks per token with a
    `modulate_index`, which the sequence split (diffusers' _cp_plan) and the TeaCache extractor take along."""

    key = "qwen-image-edit-2511"
    title = "Qwen-Image-Edit-2511"
    example_model = "Qwen-Image-Edit-2511"

    refines = ("qwen-image-edit-2509",)  # a 2509 folder claims every QwenImageEditPlusPipeline folder

    def claims(self, model_index, folder=None):
        return conditions_at_timestep_zero(folder)

    def build_tiny(self):
        from diffusers import QwenImageTransformer2DModel

        pipe = super().build_tiny()
        # Without the private keys: `_use_default_values` lists zero_cond_t and would turn it back off.
        config = {key: value for key, value in pipe.transformer.config.items() if not key.startswith("_")}
        transformer = QwenImageTransformer2DModel.from_config({**config, "zero_cond_t": True})
        transformer.load_state_dict(pipe.transformer.state_dict())
        pipe.transformer = transformer.eval()
        return pipe


def conditions_at_timestep_zero(folder) -> bool:
    """Whether the folder's DiT is Edit-2511's (its config sets `zero_cond_t`)."""
    if folder is None:
        return False
    try:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("zero_cond_t") is True
