"""Key names of the Wan 2.1 VAE (also Qwen-Image's VAE) between its original layout and diffusers'.

ComfyUI's `vae/qwen_image_vae.safetensors` and `vae/wan_2.1_vae.safetensors` keep the original Wan
layout (`encoder.downsamples.N.residual.2.weight`, `decoder.upsamples.N...`, `conv1`/`conv2`).
diffusers' own converter (`convert_wan_vae_to_diffusers`) hard-codes the released models' two residual
blocks per level; these maps work for any count (the test suite's tiny VAEs have one) and both ways
(the tiny twins are written in the original layout). The layouts, per the two implementations:

    original                                   diffusers
    conv1 / conv2                              quant_conv / post_quant_conv
    {enc,dec}oder.conv1                        {enc,dec}oder.conv_in
    {enc,dec}oder.head.0 / head.2              {enc,dec}oder.norm_out / conv_out
    {enc,dec}oder.middle.0|2 (residual)        {enc,dec}oder.mid_block.resnets.0|1
    {enc,dec}oder.middle.1 (attention)         {enc,dec}oder.mid_block.attentions.0
    encoder.downsamples.N (flat list)          encoder.down_blocks.N (same flat list)
    decoder.upsamples.N: per level, R+1        decoder.up_blocks.L.resnets.J and
      residual blocks then one resample          decoder.up_blocks.L.upsamplers.0
    residual.0 / .2 / .3 / .6, shortcut        norm1 / conv1 / norm2 / conv2, conv_shortcut
"""

from __future__ import annotations

import re

_RESIDUAL = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2.",
             "shortcut.": "conv_shortcut."}
_FIXED = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv.",
          "encoder.conv1.": "encoder.conv_in.", "decoder.conv1.": "decoder.conv_in.",
          "encoder.head.0.": "encoder.norm_out.", "encoder.head.2.": "encoder.conv_out.",
          "decoder.head.0.": "decoder.norm_out.", "decoder.head.2.": "decoder.conv_out.",
          "encoder.middle.1.": "encoder.mid_block.attentions.0.", "decoder.middle.1.": "decoder.mid_block.attentions.0."}


def _residual_names(rest: str, table: dict) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def to_diffusers(key: str, num_res_blocks: int) -> str:
    for old, new in _FIXED.items():
        if key.startswith(old):
            return new + key[len(old):]
    if match := re.match(r"(encoder|decoder)\.middle\.([02])\.(.*)", key):
        side, index, rest = match.groups()
        return f"{side}.mid_block.resnets.{int(index) // 2}.{_residual_names(rest, _RESIDUAL)}"
    if match := re.match(r"encoder\.downsamples\.(\d+)\.(.*)", key):
        index, rest = match.groups()
        return f"encoder.down_blocks.{index}.{_residual_names(rest, _RESIDUAL)}"
    if match := re.match(r"decoder\.upsamples\.(\d+)\.(.*)", key):
        index, rest = int(match.group(1)), match.group(2)
        level, position = divmod(index, num_res_blocks + 2)
        if position <= num_res_blocks:
            return f"decoder.up_blocks.{level}.resnets.{position}.{_residual_names(rest, _RESIDUAL)}"
        return f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
    return key


def to_original(key: str, num_res_blocks: int) -> str:
    inverse_residual = {new: old for old, new in _RESIDUAL.items()}
    for old, new in _FIXED.items():
        if key.startswith(new):
            return old + key[len(new):]
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
        side, index, rest = match.groups()
        return f"{side}.middle.{int(index) * 2}.{_residual_names(rest, inverse_residual)}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", key):
        index, rest = match.groups()
        return f"encoder.downsamples.{index}.{_residual_names(rest, inverse_residual)}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level, position, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        return f"decoder.upsamples.{level * (num_res_blocks + 2) + position}.{_residual_names(rest, inverse_residual)}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        level, rest = int(match.group(1)), match.group(2)
        return f"decoder.upsamples.{level * (num_res_blocks + 2) + num_res_blocks + 1}.{rest}"
    return key


def num_res_blocks_of_original(keys) -> int:
    """Residual blocks per level: the encoder's first level holds that many before its first resample."""
    first_resample = min((int(m.group(1)) for key in keys
                          if (m := re.match(r"encoder\.downsamples\.(\d+)\.resample\.", key))), default=None)
    if first_resample is None:
        raise ValueError("no encoder resample found: not a Wan-layout VAE")
    return first_resample


# The Wan2.2 VAE (TI2V 5B, `vae/wan2.2_vae.safetensors`, diffusers' `is_residual=True`) nests each
# level's blocks one deeper; the rest (conv1/conv2, middle, head) is named as in the 2.1 VAE. Per
# diffusers' conversion script (scripts/convert_wan_to_diffusers.py, convert_vae_22) and ComfyUI's
# comfy/ldm/wan/vae2_2.py:
#
#     original                                            diffusers
#     encoder.downsamples.L.downsamples.J (J < R)         encoder.down_blocks.L.resnets.J
#     encoder.downsamples.L.downsamples.R (resample)      encoder.down_blocks.L.downsampler
#     decoder.upsamples.L.upsamples.J (J <= R)            decoder.up_blocks.L.resnets.J
#     decoder.upsamples.L.upsamples.R+1 (resample)        decoder.up_blocks.L.upsampler
#
# (R = num_res_blocks; the decoder has one residual block more per level. The levels' averaging
# shortcuts hold no weights.)
_LEVEL_22 = re.compile(r"(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.*)")
_BLOCK_22 = re.compile(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets\.(\d+)|downsampler|upsampler)\.(.*)")


def is_wan22_layout(keys) -> bool:
    """ComfyUI's own test (comfy/sd.py): the 2.2 VAE's decoder nests its blocks."""
    return "decoder.upsamples.0.upsamples.0.residual.2.weight" in keys


def to_diffusers_22(key: str, num_res_blocks: int) -> str:
    if match := _LEVEL_22.match(key):
        side, _, level, _, index, rest = match.groups()
        blocks = "encoder.down_blocks" if side == "encoder" else "decoder.up_blocks"
        if rest.startswith(("resample.", "time_conv.")):
            return f"{blocks}.{level}.{'downsampler' if side == 'encoder' else 'upsampler'}.{rest}"
        return f"{blocks}.{level}.resnets.{index}.{_residual_names(rest, _RESIDUAL)}"
    return to_diffusers(key, num_res_blocks)


def to_original_22(key: str, num_res_blocks: int) -> str:
    if match := _BLOCK_22.match(key):
        side, level, block, index, rest = match.groups()
        nested = "encoder.downsamples" if side == "encoder.down" else "decoder.upsamples"
        inner = nested.split(".")[1]
        if index is not None:
            inverse_residual = {new: old for old, new in _RESIDUAL.items()}
            return f"{nested}.{level}.{inner}.{index}.{_residual_names(rest, inverse_residual)}"
        resample_index = num_res_blocks if side == "encoder.down" else num_res_blocks + 1
        return f"{nested}.{level}.{inner}.{resample_index}.{rest}"
    return to_original(key, num_res_blocks)


def num_res_blocks_of_original_22(keys) -> int:
    """Residual blocks per encoder level: the first level's nested residual blocks."""
    found = {int(m.group(1)) for key in keys if (m := re.match(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.", key))}
    if not found:
        raise ValueError("no nested encoder blocks found: not a Wan2.2-layout VAE")
    return len(found)
