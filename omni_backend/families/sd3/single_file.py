"""Stable Diffusion 3.5 from ComfyUI's files: the MMDiT (`sd3.5_large.safetensors`, `sd3.5_medium.safetensors`:
Stability's release, which also bundles the VAE), `text_encoders/clip_l.safetensors`, `clip_g.safetensors`,
`t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn_scaled.safetensors`, and the VAE in the original (LDM) layout.

The DiT keeps Stability's original layout; diffusers' converter reads it
(`convert_sd3_transformer_checkpoint_to_diffusers`). The way back is the same map written as one rule
table (fused_keys), and make-tiny checks every written DiT reads back through diffusers' converter to the
same tensors (comfy_layout.check_round_trip).
"""

from __future__ import annotations

import math

from ...single_file import ldm_vae, text_encoders
from ...single_file.fused_keys import Rule, linear, rename, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released SD3.5 Medium's configs (Large: 38 blocks of 38 heads, no dual attention, pos_embed 192).
TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=list(range(13)), qk_norm="rms_norm")
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           latent_channels=16, norm_num_groups=32, act_fn="silu", scaling_factor=1.5305, shift_factor=0.0609,
           use_quant_conv=False, use_post_quant_conv=False, force_upcast=True, sample_size=1024)
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def transformer_config(file: WeightsFile) -> dict:
    inner, in_channels, patch, _ = file.shape("x_embedder.proj.weight")
    qk_norm = file.has("joint_blocks.0.x_block.attn.ln_q.weight")
    head_dim = file.shape("joint_blocks.0.x_block.attn.ln_q.weight")[0] if qk_norm else 64
    num_layers = file.count("joint_blocks", ".x_block.attn.qkv.weight")
    derived = dict(patch_size=patch, in_channels=in_channels, num_layers=num_layers, attention_head_dim=head_dim,
                   num_attention_heads=inner // head_dim, joint_attention_dim=file.shape("context_embedder.weight")[1],
                   caption_projection_dim=file.shape("context_embedder.weight")[0],
                   pooled_projection_dim=file.shape("y_embedder.mlp.0.weight")[1],
                   out_channels=file.shape("final_layer.linear.weight")[0] // (patch * patch),
                   pos_embed_max_size=math.isqrt(math.prod(file.shape("pos_embed")) // inner),
                   dual_attention_layers=[i for i in range(num_layers)
                                          if file.has(f"joint_blocks.{i}.x_block.attn2.qkv.weight")],
                   qk_norm="rms_norm" if qk_norm else None)
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_rules(config: dict) -> list[Rule]:
    rules = [rename("pos_embed", "pos_embed.pos_embed"), *linear("x_embedder.proj", "pos_embed.proj"),
             *linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
             *linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
             *linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
             *linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
             *linear("context_embedder", "context_embedder"), *linear("final_layer.linear", "proj_out"),
             *linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True)]
    last = config["num_layers"] - 1
    for i in range(config["num_layers"]):
        x, c, new = f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block.", f"transformer_blocks.{i}."
        rules += [*linear(x + "attn.qkv", *(new + f"attn.to_{q}" for q in "qkv")),
                  *linear(c + "attn.qkv", *(new + f"attn.add_{q}_proj" for q in "qkv")),
                  rename(x + "attn.ln_q.weight", new + "attn.norm_q.weight"),
                  rename(x + "attn.ln_k.weight", new + "attn.norm_k.weight"),
                  rename(c + "attn.ln_q.weight", new + "attn.norm_added_q.weight"),
                  rename(c + "attn.ln_k.weight", new + "attn.norm_added_k.weight"),
                  *linear(x + "attn.proj", new + "attn.to_out.0"),
                  *linear(x + "attn2.qkv", *(new + f"attn2.to_{q}" for q in "qkv")),
                  rename(x + "attn2.ln_q.weight", new + "attn2.norm_q.weight"),
                  rename(x + "attn2.ln_k.weight", new + "attn2.norm_k.weight"),
                  *linear(x + "attn2.proj", new + "attn2.to_out.0"),
                  *linear(x + "adaLN_modulation.1", new + "norm1.linear"),
                  # The last block's context side is only normalised (context_pre_only): shift/scale swapped.
                  *linear(c + "adaLN_modulation.1", new + "norm1_context.linear", swap_halves=i == last),
                  *linear(x + "mlp.fc1", new + "ff.net.0.proj"), *linear(x + "mlp.fc2", new + "ff.net.2"),
                  *linear(c + "attn.proj", new + "attn.to_add_out"),
                  *linear(c + "mlp.fc1", new + "ff_context.net.0.proj"), *linear(c + "mlp.fc2", new + "ff_context.net.2")]
    return rules


def transformer_keys(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(state_dict))


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    return to_original(state_dict, transformer_rules(config))


def tokenizer_setup(input_name: str, tokenizer):
    """SD3's CLIP-G tokenizer pads with "!" (token 0), as the release's tokenizer_2 and ComfyUI's CLIP-G
    tokenizer do; ComfyUI's shared sd1_tokenizer folder pads with the end token."""
    if input_name == "text_encoder_2":
        tokenizer.pad_token = "!"
    return tokenizer


PROFILE = FilesProfile(
    family_key="sd3", pipeline_class="StableDiffusion3Pipeline",
    identifying_keys=("joint_blocks.0.x_block.attn.qkv.weight", "y_embedder.mlp.0.weight", "pos_embed"),
    transformer=Component("diffusers", "SD3Transformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKL", lambda file: ldm_vae.config(file, VAE), ldm_vae.keys,
                  ldm_vae.to_file_keys),
    text_encoder=text_encoders.CLIP_TEXT_PROJECTION, tokenizer_folder="sd1_tokenizer", tokenizer_class="CLIPTokenizer",
    text_encoder_2=text_encoders.CLIP_TEXT_PROJECTION, tokenizer_2_folder="sd1_tokenizer",
    tokenizer_2_class="CLIPTokenizer",
    text_encoder_3=text_encoders.T5_ENCODER, tokenizer_3_folder="t5_tokenizer", tokenizer_3_class="T5Tokenizer",
    encoder_kinds={"text_encoder": ("CLIP-L", "CLIP"), "text_encoder_2": ("CLIP-G", "CLIP"), "text_encoder_3": ("T5",)},
    # The pooled input is CLIP-L's and CLIP-G's projections side by side; the text input T5's width.
    pairings=((("text_encoder", "text_encoder_2"), "projection_dim", "pooled_projection_dim"),
              ("text_encoder_3", "d_model", "joint_attention_dim")),
    tokenizer_setup=tokenizer_setup,
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=SCHEDULER,
    file_names={"diffusion_model": "sd3.5_medium{dit_suffix}.safetensors", "text_encoder": "clip_l.safetensors",
                "text_encoder_2": "clip_g.safetensors", "text_encoder_3": "t5xxl{t5_suffix}.safetensors",
                "vae": "sd3.5_vae.safetensors"},
)

PROFILES = (PROFILE,)
