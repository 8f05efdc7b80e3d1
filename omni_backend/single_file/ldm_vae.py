"""The image VAE in the original (LDM) layout: FLUX.1's and Z-Image's `vae/ae.safetensors`, SD3.5's VAE.

Reading uses diffusers' own converter (`convert_ldm_vae_checkpoint`, which handles any block count).
diffusers has no converter back, so `to_file_keys` inverts its renames here, and `make-tiny --layout
comfy` checks every written VAE reads back through diffusers' converter to the same tensors
(comfy_layout.check_round_trip), so this inverse cannot drift unnoticed. The layouts:

    original (LDM)                             diffusers (AutoencoderKL)
    {enc,dec}oder.norm_out                     {enc,dec}oder.conv_norm_out
    encoder.down.I.block.J / .downsample       encoder.down_blocks.I.resnets.J / .downsamplers.0
    decoder.up.I.block.J / .upsample          decoder.up_blocks.(N-1-I).resnets.J / .upsamplers.0
    mid.block_1 / block_2, mid.attn_1          mid_block.resnets.0 / 1, mid_block.attentions.0
    nin_shortcut                               conv_shortcut
    attn_1.norm / q / k / v / proj_out         attentions.0.group_norm / to_q / to_k / to_v / to_out.0
      (1x1 convolutions, [C, C, 1, 1])           (linears, [C, C])
"""

from __future__ import annotations

import re

from .profile import with_file_config
from .weights_file import WeightsFile


def config(file: WeightsFile, released: dict) -> dict:
    """AutoencoderKL's config: channels, block counts and quant convs from the shapes; the group count
    and the latent scaling from the released config (or the file's `config` metadata)."""
    levels = file.count("encoder.down", ".block.0.conv1.weight")
    derived = dict(
        in_channels=file.shape("encoder.conv_in.weight")[1], out_channels=file.shape("decoder.conv_out.weight")[0],
        latent_channels=file.shape("decoder.conv_in.weight")[1],
        block_out_channels=[file.shape(f"encoder.down.{level}.block.0.conv2.weight")[0] for level in range(levels)],
        layers_per_block=file.count("encoder.down.0.block", ".conv1.weight"),
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        use_quant_conv=file.has("quant_conv.weight"), use_post_quant_conv=file.has("post_quant_conv.weight"),
        mid_block_add_attention=file.has("encoder.mid.attn_1.q.weight"))
    return with_file_config(file, {**released, **derived}, "vae")


def keys(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(state_dict), config)



def to_file_keys(state_dict: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]  # diffusers key -> LDM key, diffusers' own table
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state_dict.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        new = key.replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.",
                     lambda match: f"decoder.up.{levels - 1 - int(match.group(1))}.", new)
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda match: f"mid.block_{int(match.group(1)) + 1}.", new)
        new = new.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for old, original in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                                  ("to_out.0.", "proj_out.")):
                new = new.replace(f".attn_1.{old}", f".attn_1.{original}")
            if value is not None and value.ndim == 2:  # the original's 1x1 convolutions
                value = value[:, :, None, None]
        out[new] = value
    return out
