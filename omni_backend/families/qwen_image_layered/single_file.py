"""Qwen-Image-Layered from ComfyUI's files: `diffusion_models/qwen_image_layered_{weights}.safetensors`,
the Qwen2.5-VL text encoder and `vae/qwen_image_layered_vae.safetensors`.

The DiT has Qwen-Image's layout plus the extra time condition (`time_text_embed.addition_t_embedding`),
which tells its files apart from Qwen-Image's; its config adds the layered switches (the layer-3D rotary
positions and that time condition). The VAE has the Qwen-Image VAE's layout with RGBA in and out (4
channels, read from the shapes). The processor is the edit models' (the input image's vision tokens).
"""

from __future__ import annotations

import dataclasses

from ..qwen_image import single_file as qwen_image
from ..qwen_image.single_file import PROFILE as QWEN_IMAGE
from ..qwen_image_edit.single_file import processor
from ...single_file.weights_file import WeightsFile

ADDITIONAL_TIME = "time_text_embed.addition_t_embedding.weight"


def transformer_config(file: WeightsFile) -> dict:
    return {**qwen_image.transformer_config(file), "use_additional_t_cond": True, "use_layer3d_rope": True}


def vae_config(file: WeightsFile) -> dict:
    return {**qwen_image.vae_config(file), "input_channels": file.shape("encoder.conv1.weight")[1]}


PROFILE = dataclasses.replace(
    QWEN_IMAGE, family_key="qwen-image-layered", pipeline_class="QwenImageLayeredPipeline",
    identifying_keys=(*QWEN_IMAGE.identifying_keys, ADDITIONAL_TIME),
    refines=("qwen-image", "qwen-image-edit", "qwen-image-edit-2509"),  # their keys are a subset of these
    transformer=dataclasses.replace(QWEN_IMAGE.transformer, config=transformer_config),
    vae=dataclasses.replace(QWEN_IMAGE.vae, config=vae_config), processor=processor,
    file_names={**QWEN_IMAGE.file_names, "diffusion_model": "qwen_image_layered_{weights}.safetensors",
                "vae": "qwen_image_layered_vae.safetensors"})

PROFILES = (PROFILE,)
