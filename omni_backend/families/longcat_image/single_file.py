"""LongCat-Image and LongCat-Image-Edit from ComfyUI's files: `diffusion_models/longcat_image_bf16.safetensors`
(Comfy-Org/LongCat-Image), `text_encoders/qwen_2.5_vl_7b.safetensors` / `qwen_2.5_vl_7b_fp8_scaled.safetensors`
(Qwen-Image's encoder) and `vae/ae.safetensors` (FLUX.1's VAE).

ComfyUI runs LongCat's DiT as a FLUX.1 model (comfy/ldm/flux) and its files keep FLUX.1's original layout
(`double_blocks.*`, `single_blocks.*`, `txt_in` 3584 wide), without FLUX.1's pooled-text and guidance
embedders. diffusers' LongCatImageTransformer2DModel has FLUX's module names except its timestep
embedder (`time_embed.` for FLUX's `time_text_embed.`), so the map is FLUX.1's rule table (families/flux/single_file.py)
with that one prefix renamed: both directions from one table.

The edit model's DiT has the same names and shapes: `auto` reads it as LongCat-Image, so the edit model
is chosen with the loader's `family` input (as for Qwen-Image-Edit).
"""

from __future__ import annotations

import dataclasses

from ...single_file import ldm_vae
from ..flux import single_file as flux
from ..qwen_image import single_file as qwen_image
from ..qwen_image_edit import single_file as qwen_image_edit
from ...single_file.fused_keys import Rule, to_diffusers, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released LongCat-Image's configs (transformer/ config.json: FLUX.1's widths, 3584-wide text; scheduler/).
TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=10, num_single_layers=20, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=3584, pooled_projection_dim=3584,
                   axes_dims_rope=[16, 56, 56])
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096)


def transformer_config(file: WeightsFile) -> dict:
    head_dim = file.shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    inner, in_channels = file.shape("img_in.weight")
    text_width = file.shape("txt_in.weight")[1]
    derived = dict(num_layers=file.count("double_blocks", ".img_attn.qkv.weight"),
                   num_single_layers=file.count("single_blocks", ".linear1.weight"),
                   attention_head_dim=head_dim, num_attention_heads=inner // head_dim, in_channels=in_channels,
                   joint_attention_dim=text_width, pooled_projection_dim=text_width)
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_rules(config: dict) -> list[Rule]:
    """FLUX.1's table (its pooled-text and guidance rules name tensors LongCat has not, so they never
    apply), with FLUX's `time_text_embed.` timestep embedder renamed to LongCat's `time_embed.`."""
    renamed = []
    for rule in flux.transformer_rules(config):
        parts = tuple(part.replace("time_text_embed.timestep_embedder.", "time_embed.timestep_embedder.")
                      for part in rule.parts)
        renamed.append(dataclasses.replace(rule, parts=parts))
    return renamed


def transformer_keys(state_dict: dict, config: dict) -> dict:
    return to_diffusers(state_dict, transformer_rules(config))


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    return to_original(state_dict, transformer_rules(config))


def is_longcat(file: WeightsFile) -> bool:
    """FLUX.1's layout without its pooled-text embedder (FLUX.1 has one), and FLUX's plain MLPs (Ovis-Image,
    another FLUX-layout DiT in ComfyUI, has gated ones and a text norm)."""
    return not file.has("vector_in.in_layer.weight") and not file.has("double_blocks.0.img_mlp.gate_proj.weight") \
        and not file.has("txt_norm.weight")


PROFILE = FilesProfile(
    family_key="longcat-image", pipeline_class="LongCatImagePipeline",
    identifying_keys=("double_blocks.0.img_mod.lin.weight", "time_in.in_layer.weight", "txt_in.weight"),
    claims=is_longcat,
    transformer=Component("diffusers", "LongCatImageTransformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKL", lambda file: ldm_vae.config(file, flux.VAE), ldm_vae.keys,
                  ldm_vae.to_file_keys),
    text_encoder=qwen_image.PROFILE.text_encoder, tokenizer_folder="qwen25_tokenizer", tokenizer_class="Qwen2Tokenizer",
    encoder_kinds={"text_encoder": ("Qwen2.5-VL",)},
    # The pipelines' Qwen2-VL processor (the edit model's input image; text only for LongCat-Image).
    processor=qwen_image_edit.processor, processor_name="text_processor",
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "longcat_image_{weights}.safetensors",
                "text_encoder": "qwen_2.5_vl_7b{te_suffix}.safetensors", "vae": "ae.safetensors"},
)
EDIT = dataclasses.replace(
    PROFILE, family_key="longcat-image-edit", pipeline_class="LongCatImageEditPipeline",
    file_names={**PROFILE.file_names, "diffusion_model": "longcat_image_edit_{weights}.safetensors"})
PROFILES = (PROFILE, EDIT)
