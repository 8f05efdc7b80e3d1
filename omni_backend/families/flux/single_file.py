"""FLUX.1 from ComfyUI's files: `diffusion_models/flux1-dev.safetensors` (or the fp8 and schnell
releases), `text_encoders/clip_l.safetensors` + `t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn_scaled.safetensors`,
`vae/ae.safetensors`.

The DiT file keeps Black Forest Labs' original layout. diffusers' converter
(`convert_flux_transformer_checkpoint_to_diffusers`) hard-codes FLUX.1's width (inner_dim = 3072) to split
the single blocks' fused `linear1`, so it cannot read a narrower model (the tiny twins, or any other
width); the same map is written here as one rule table for the released model's every width
(tests/single_file/test_single_file_families.py checks it equals diffusers' converter at FLUX.1's real widths).
"""

from __future__ import annotations

from ...single_file import ldm_vae, text_encoders
from ...single_file.fused_keys import Rule, linear, rename, to_diffusers, to_original
from ...single_file.profile import Component, FilesProfile, with_file_config
from ...single_file.weights_file import WeightsFile

# The released FLUX.1-dev's configs (transformer/, vae/ config.json, scheduler/).
TRANSFORMER = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           latent_channels=16, norm_num_groups=32, act_fn="silu", scaling_factor=0.3611, shift_factor=0.1159,
           use_quant_conv=False, use_post_quant_conv=False, force_upcast=True, sample_size=1024)
SCHEDULER_DEV = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                     num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
SCHEDULER_SCHNELL = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
MLP_RATIO = 4  # FluxSingleTransformerBlock's fixed MLP width factor


def block_dims(file: WeightsFile) -> dict:
    """The block counts and widths of a DiT in BFL's double/single-block layout (FLUX.1, FLUX.2, Ovis)."""
    head_dim = file.shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    inner, in_channels = file.shape("img_in.weight")
    return dict(num_layers=file.count("double_blocks", ".img_attn.qkv.weight"),
                num_single_layers=file.count("single_blocks", ".linear1.weight"),
                attention_head_dim=head_dim, num_attention_heads=inner // head_dim, in_channels=in_channels)


def transformer_config(file: WeightsFile) -> dict:
    """Shapes decide the widths and block counts; guidance-distilled (dev) vs not (schnell) is whether
    the file has the guidance embedder."""
    derived = dict(**block_dims(file),
                   joint_attention_dim=file.shape("txt_in.weight")[1],
                   pooled_projection_dim=file.shape("vector_in.in_layer.weight")[1],
                   guidance_embeds=file.has("guidance_in.in_layer.weight"))
    return with_file_config(file, {**TRANSFORMER, **derived}, "diffusion_model")


def transformer_rules(config: dict) -> list[Rule]:
    inner = config["attention_head_dim"] * config["num_attention_heads"]
    rules = [*linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
             *linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
             *linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
             *linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
             *linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
             *linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
             *linear("txt_in", "context_embedder"), *linear("img_in", "x_embedder"),
             *linear("final_layer.linear", "proj_out"),
             *linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True)]
    for i in range(config["num_layers"]):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        rules += [*linear(old + "img_mod.lin", new + "norm1.linear"),
                  *linear(old + "txt_mod.lin", new + "norm1_context.linear"),
                  *double_block_attention(old, new),
                  *linear(old + "img_mlp.0", new + "ff.net.0.proj"), *linear(old + "img_mlp.2", new + "ff.net.2"),
                  *linear(old + "txt_mlp.0", new + "ff_context.net.0.proj"),
                  *linear(old + "txt_mlp.2", new + "ff_context.net.2")]
    for i in range(config["num_single_layers"]):
        old, new = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        rules += [*linear(old + "modulation.lin", new + "norm.linear"),
                  *linear(old + "linear1", *(new + f"attn.to_{x}" for x in "qkv"), new + "proj_mlp",
                          sizes=(inner, inner, inner, MLP_RATIO * inner)),
                  rename(old + "norm.query_norm.scale", new + "attn.norm_q.weight"),
                  rename(old + "norm.key_norm.scale", new + "attn.norm_k.weight"),
                  *linear(old + "linear2", new + "proj_out")]
    return rules


def transformer_keys(state_dict: dict, config: dict) -> dict:
    return to_diffusers(state_dict, transformer_rules(config))


def transformer_file_keys(state_dict: dict, config: dict) -> dict:
    return to_original(state_dict, transformer_rules(config))


def scheduler_config(transformer: dict) -> dict:
    """FLUX.1-dev shifts its schedule with the image size; schnell (no guidance embedder) does not."""
    return SCHEDULER_DEV if transformer.get("guidance_embeds", True) else SCHEDULER_SCHNELL


PROFILE = FilesProfile(
    family_key="flux", pipeline_class="FluxPipeline",
    identifying_keys=("double_blocks.0.img_mod.lin.weight", "vector_in.in_layer.weight", "img_in.weight"),
    transformer=Component("diffusers", "FluxTransformer2DModel", transformer_config, transformer_keys,
                          transformer_file_keys),
    vae=Component("diffusers", "AutoencoderKL", lambda file: ldm_vae.config(file, VAE), ldm_vae.keys,
                  ldm_vae.to_file_keys),
    text_encoder=text_encoders.CLIP_TEXT, tokenizer_folder="sd1_tokenizer", tokenizer_class="CLIPTokenizer",
    text_encoder_2=text_encoders.T5_ENCODER, tokenizer_2_folder="t5_tokenizer", tokenizer_2_class="T5Tokenizer",
    encoder_kinds={"text_encoder": ("CLIP-L", "CLIP"), "text_encoder_2": ("T5",)},
    # The DiT's pooled input is CLIP's width, its text input T5's.
    pairings=(("text_encoder", "hidden_size", "pooled_projection_dim"),
              ("text_encoder_2", "d_model", "joint_attention_dim")),
    scheduler_class="FlowMatchEulerDiscreteScheduler", scheduler_config=scheduler_config,
    file_names={"diffusion_model": "flux1-dev{dit_suffix}.safetensors", "text_encoder": "clip_l.safetensors",
                "text_encoder_2": "t5xxl{t5_suffix}.safetensors", "vae": "ae.safetensors"},
)


def double_block_attention(old: str, new: str) -> list:
    """A double-stream block's joint attention, the same in FLUX.1's and FLUX.2's original layouts:
    fused qkv per stream, the four QK norms, the two output projections."""
    return [*linear(old + "img_attn.qkv", *(new + f"attn.to_{x}" for x in "qkv")),
            *linear(old + "txt_attn.qkv", *(new + f"attn.add_{x}_proj" for x in "qkv")),
            rename(old + "img_attn.norm.query_norm.scale", new + "attn.norm_q.weight"),
            rename(old + "img_attn.norm.key_norm.scale", new + "attn.norm_k.weight"),
            rename(old + "txt_attn.norm.query_norm.scale", new + "attn.norm_added_q.weight"),
            rename(old + "txt_attn.norm.key_norm.scale", new + "attn.norm_added_k.weight"),
            *linear(old + "img_attn.proj", new + "attn.to_out.0"),
            *linear(old + "txt_attn.proj", new + "attn.to_add_out")]

PROFILES = (PROFILE,)
