"""Qwen-Image-Edit-2511 from ComfyUI's files (`diffusion_models/qwen_image_edit_2511_bf16.safetensors`, with
Qwen-Image's text encoder and VAE): Edit-2509's layout, and ComfyUI's `__index_timestep_zero__` marker in the
DiT file, by which "auto" finds it (`refines`: a file with the marker is not Qwen-Image's or Edit-2509's).
"""

from __future__ import annotations

import dataclasses

from ...single_file.profile import Component
from ..qwen_image.single_file import PROFILE as QWEN_IMAGE
from ..qwen_image.single_file import transformer_config
from ..qwen_image_edit.single_file import EDIT_2509

# ComfyUI's Edit-2511 files hold an empty tensor of this name: its model detection reads it as "the
# reference images at timestep 0" (diffusers' zero_cond_t). The DiT has no such parameter.
EDIT_2511_MARKER = "__index_timestep_zero__"


def edit_2511_config(file) -> dict:
    return {**transformer_config(file), "zero_cond_t": True}


def without_marker(state_dict: dict, config: dict) -> dict:
    return {key: value for key, value in state_dict.items() if key != EDIT_2511_MARKER}


def with_marker(state_dict: dict, config: dict) -> dict:
    import torch

    return {**state_dict, EDIT_2511_MARKER: torch.zeros(0, dtype=torch.bfloat16)}


EDIT_2511 = dataclasses.replace(
    EDIT_2509, family_key="qwen-image-edit-2511", claims=lambda file: file.has(EDIT_2511_MARKER), auto_detect=True,
    refines=("qwen-image", "qwen-image-edit", "qwen-image-edit-2509"),
    transformer=Component("diffusers", "QwenImageTransformer2DModel", edit_2511_config, without_marker, with_marker),
    file_names={**QWEN_IMAGE.file_names, "diffusion_model": "qwen_image_edit_2511_{weights}.safetensors"})
PROFILES = (EDIT_2511,)
