"""Ovis-Image from ComfyUI's files: `diffusion_models/ovis_image_bf16.safetensors`, `text_encoders/ovis_2.5.safetensors`
(Ovis 2.5's Qwen3 language model) and `vae/ae.safetensors` (FLUX.1's VAE), as Comfy-Org/Ovis-Image ships them.

ComfyUI runs the DiT as a FLUX.1 model (comfy/ldm/flux with `yak_mlp` and `txt_norm`): FLUX.1's original
layout without the pooled-text and guidance embedders, an RMS norm on the text input (`txt_norm`), and
gated MLPs, `img_mlp.gate_proj/up_proj/down_proj` in the double blocks, and in the single blocks' fused
`linear1` an MLP part twice as wide (value half, then gate half). diffusers' OvisImageTransformer2DModel
keeps FLUX's module names with a top-level `timestep_embedder`, `context_embedder_norm`, and SwiGLU
feed-forwards whose `net.0.proj` is (value, gate) stacked: the map is FLUX.1's rule table with those
differences, one table both ways.
"""

from __future__ import annotations

import dataclasses

from ...single_file import ldm_vae, text_encoders
from ..flux import single_file as flux
from ...single_file.fused_keys import Rule, linear, rename, to_diffusers, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released Ovis-Image-7B's configs (transformer/: 6 double and 27 single blocks, 2048-wide text).
TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=6, num_single_layers=27,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=2048,
                   axes_dims_rope=[16, 56, 56])
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                 base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
MLP_RATIO = 4


def transformer_config(file: WeightsFile) -> dict:
    derived = dict(**flux.block_dims(file),
                   out_channels=file.shape("final_layer.linear.weight")[0],
                   joint_attention_dim=file.shape("txt_in.weight")[1])
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def _gated(original: str, diffusers: str) -> list[Rule]:
    """A gated MLP: the file's separate up/gate projections are diffusers' one SwiGLU projection
    (value rows, then gate rows). Written with the diffusers tensor as the fused one, so this part of
    the table is applied the other way round (see transformer_keys)."""
    return [Rule(f"{diffusers}.net.0.proj.{suffix}",
                 (f"{original}.up_proj.{suffix}", f"{original}.gate_proj.{suffix}")) for suffix in ("weight", "bias")]


def transformer_rules(config: dict) -> tuple[list[Rule], list[Rule]]:
    """(FLUX-style rules: file tensor -> diffusers parts, gated-MLP rules: diffusers tensor -> file parts)."""
    inner = config["attention_head_dim"] * config["num_attention_heads"]
    rules, gated = [rename("txt_norm.weight", "context_embedder_norm.weight")], []
    for rule in flux.transformer_rules(config):
        if ".img_mlp." in rule.original or ".txt_mlp." in rule.original:
            continue  # the gated MLPs, below
        parts = tuple(part.replace("time_text_embed.timestep_embedder.", "timestep_embedder.") for part in rule.parts)
        sizes = rule.sizes
        if rule.original.endswith((".linear1.weight", ".linear1.bias")):
            sizes = (inner, inner, inner, 2 * MLP_RATIO * inner)  # the MLP part holds value and gate
        rules.append(dataclasses.replace(rule, parts=parts, sizes=sizes))
    for i in range(config["num_layers"]):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        gated += [*_gated(old + "img_mlp", new + "ff"), *_gated(old + "txt_mlp", new + "ff_context")]
        rules += [*linear(old + "img_mlp.down_proj", new + "ff.net.2"),
                  *linear(old + "txt_mlp.down_proj", new + "ff_context.net.2")]
    return rules, gated


def transformer_keys(state_dict: dict, config: dict) -> dict:
    rules, gated = transformer_rules(config)
    return to_original(to_diffusers(state_dict, rules), gated)  # gated rules: file parts -> diffusers tensor


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    rules, gated = transformer_rules(config)
    return to_original(to_diffusers(state_dict, gated), rules)


PROFILE = FilesProfile(
    family_key="ovis-image", pipeline_class="OvisImagePipeline",
    identifying_keys=("double_blocks.0.img_mlp.gate_proj.weight", "txt_norm.weight", "time_in.in_layer.weight"),
    transformer=Component("diffusers", "OvisImageTransformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKL", lambda file: ldm_vae.config(file, flux.VAE), ldm_vae.keys,
                  ldm_vae.to_file_keys),
    text_encoder=text_encoders.QWEN3_MODEL, tokenizer_folder="qwen25_tokenizer", tokenizer_class="Qwen2Tokenizer",
    encoder_kinds={"text_encoder": ("Qwen3",)},
    # The pipeline renders Qwen3's chat turn with thinking off, as ComfyUI's Ovis template writes it.
    tokenizer_setup=text_encoders.qwen3_tokenizer_setup,
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "ovis_image_{weights}.safetensors", "text_encoder": "ovis_2.5{te_suffix}.safetensors",
                "vae": "ae.safetensors"},
)

PROFILES = (PROFILE,)
