"""FLUX.2-klein from ComfyUI's files: `diffusion_models/flux-2-klein-base-4b.safetensors` (or the
step-distilled `flux-2-klein-4b.safetensors`), `text_encoders/qwen_3_4b.safetensors` (the 9B: qwen_3_8b),
`vae/flux2-vae.safetensors`.

The DiT keeps Black Forest Labs' original layout; diffusers' converter reads it
(`convert_flux2_transformer_checkpoint_to_diffusers`), and the way back is the same map as one rule table
(checked against that converter by make-tiny's round trip). The VAE is FLUX.1's LDM layout plus a
latent batch norm (`bn.*`) and quant convs (top-level, or inside encoder/decoder as BFL's release has
them, which ComfyUI accepts too): diffusers' LDM converter reads the body, the rest is carried over.
"""

from __future__ import annotations

from pathlib import Path

from ...single_file import ldm_vae, text_encoders
from ..flux.single_file import block_dims, double_block_attention
from ...single_file.fused_keys import Rule, linear, rename, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released FLUX.2-klein-base-4B's configs (transformer/, vae/, scheduler/).
TRANSFORMER = dict(patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
                   timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=[32, 32, 32, 32], rope_theta=2000,
                   eps=1e-6, guidance_embeds=False)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           latent_channels=32, norm_num_groups=32, act_fn="silu", use_quant_conv=True, use_post_quant_conv=True,
           patch_size=[2, 2], batch_norm_eps=1e-4, batch_norm_momentum=0.1, sample_size=1024)
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                 num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
# BFL's release keeps the quant convs inside the encoder and decoder.
_QUANT_CONVS = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}


def transformer_config(file: WeightsFile) -> dict:
    inner = file.shape("img_in.weight")[0]
    derived = dict(**block_dims(file),
                   joint_attention_dim=file.shape("txt_in.weight")[1],
                   timestep_guidance_channels=file.shape("time_in.in_layer.weight")[1],
                   # The MLP's input projection is gated (SwiGLU): twice the hidden width.
                   mlp_ratio=file.shape("double_blocks.0.img_mlp.0.weight")[0] / 2 / inner,
                   guidance_embeds=file.has("guidance_in.in_layer.weight"))
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_rules(config: dict) -> list[Rule]:
    rules = [*linear("img_in", "x_embedder"), *linear("txt_in", "context_embedder"),
             *linear("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
             *linear("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
             *linear("guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_1"),
             *linear("guidance_in.out_layer", "time_guidance_embed.guidance_embedder.linear_2"),
             *linear("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
             *linear("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"),
             *linear("single_stream_modulation.lin", "single_stream_modulation.linear"),
             *linear("final_layer.linear", "proj_out"),
             *linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True)]
    for i in range(config["num_layers"]):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        rules += [*double_block_attention(old, new),
                  *linear(old + "img_mlp.0", new + "ff.linear_in"), *linear(old + "img_mlp.2", new + "ff.linear_out"),
                  *linear(old + "txt_mlp.0", new + "ff_context.linear_in"),
                  *linear(old + "txt_mlp.2", new + "ff_context.linear_out")]
    for i in range(config["num_single_layers"]):
        old, new = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        rules += [*linear(old + "linear1", new + "attn.to_qkv_mlp_proj"), *linear(old + "linear2", new + "attn.to_out"),
                  rename(old + "norm.query_norm.scale", new + "attn.norm_q.weight"),
                  rename(old + "norm.key_norm.scale", new + "attn.norm_k.weight")]
    return rules


def transformer_keys(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    return convert_flux2_transformer_checkpoint_to_diffusers(dict(state_dict))


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    return to_original(state_dict, transformer_rules(config))


def _top_level_quant_convs(keys) -> dict:
    return {key: next((new + key[len(old):] for old, new in _QUANT_CONVS.items() if key.startswith(old)), key)
            for key in keys}


def vae_config(file: WeightsFile) -> dict:
    config = ldm_vae.config(file, VAE)
    renamed = _top_level_quant_convs(file.tensors)
    config.update(use_quant_conv="quant_conv.weight" in renamed.values(),
                  use_post_quant_conv="post_quant_conv.weight" in renamed.values())
    return with_file_config(file, config, "vae")


def vae_keys(state_dict: dict, config: dict) -> dict:
    import torch

    state = {new: state_dict[old] for old, new in _top_level_quant_convs(state_dict).items()}
    out = ldm_vae.keys({key: value for key, value in state.items() if not key.startswith("bn.")}, config)
    out.update({key: value for key, value in state.items() if key.startswith("bn.")})
    if "bn.running_mean" in out and "bn.num_batches_tracked" not in out:  # a counter the decoder never reads
        out["bn.num_batches_tracked"] = torch.tensor(0)
    return out


def vae_file_keys(state_dict: dict, config: dict) -> dict:
    return ldm_vae.to_file_keys(state_dict, config)  # bn.* keep their names


def pipeline_kwargs(files) -> dict:
    """The step-distilled klein and klein-base share every shape; ComfyUI's release names tell them apart
    (flux-2-klein-4b vs flux-2-klein-base-4b): the distilled one ignores guidance."""
    return {"is_distilled": "base" not in Path(files.diffusion_model).name.lower()}


PROFILE = FilesProfile(
    family_key="flux2-klein", pipeline_class="Flux2KleinPipeline",
    identifying_keys=("double_stream_modulation_img.lin.weight", "double_blocks.0.img_attn.qkv.weight"),
    transformer=Component("diffusers", "Flux2Transformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKLFlux2", vae_config, vae_keys, vae_file_keys),
    text_encoder=text_encoders.QWEN3_CAUSAL_LM, tokenizer_folder="qwen25_tokenizer", tokenizer_class="Qwen2Tokenizer",
    encoder_kinds={"text_encoder": ("Qwen3",)},
    # Klein stacks three of the encoder's hidden layers side by side as its text input.
    pairings=(("text_encoder", "hidden_size", "joint_attention_dim", 3),),
    tokenizer_setup=text_encoders.qwen3_tokenizer_setup, pipeline_kwargs=pipeline_kwargs,
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "flux-2-klein-base-4b{dit_suffix}.safetensors",
                "text_encoder": "qwen_3_4b{te_suffix}.safetensors", "vae": "flux2-vae.safetensors"},
)

PROFILES = (PROFILE,)
