"""Which linears FP8 quantizes, and the swap of those nn.Linear modules for FP8Linear.

DiT: only linears inside each block's attention and MLP children (`family.fp8_block_parts`, read
from the family registry, e.g. attn/ff/img_mlp; FLUX single blocks add proj_mlp/proj_out). Kept in
high precision: everything outside the block lists (time/text embeddings, img_in/txt_in/x_embedder,
the final norm_out and proj_out) and, inside blocks, modulation/AdaLN (img_mod, norm1.linear,
adaLN_modulation) and norms. vLLM-Omni quantized those too and got a catastrophic quality drop
(vllm-project/vllm-omni#2728, fixed there by skipping them); the
name guard below keeps them out even if a family lists a container that holds one.

Text encoder (optional): linears inside its repeated layers (attention and MLP), weight-only
(vLLM-Omni: "FP8 storage, BF16 compute"); never embeddings, lm_head, a vision tower, or what the
model itself keeps in fp32 (`_keep_in_fp32_modules`, e.g. T5's `wo`).
"""

from __future__ import annotations

import torch

from .fp8 import FP8Linear

# Any path segment containing one of these marks a layer that must keep its precision.
_NEVER = ("norm", "mod", "adaln", "emb", "lora_")
_TEXT_ENCODER_NEVER = ("lm_head", "visual", "vision", "emb", "norm", "lora_")
_WRAPPER_PARTS = {"base_layer"}  # peft's LoRA wrapper: the real layer is its base_layer


def _parts(name: str) -> list[str]:
    return [part for part in name.split(".") if part not in _WRAPPER_PARTS]


def _plain_linears(module: torch.nn.Module):
    """(name, parent, attribute, linear) for every plain nn.Linear under `module`."""
    for parent_name, parent in module.named_modules():
        for attribute, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                name = f"{parent_name}.{attribute}" if parent_name else attribute
                yield name, parent, attribute, child


def dit_targets(family, transformer):
    """(qualified name, parent, attribute, linear) of the DiT linears FP8 quantizes."""
    allowed = set(family.fp8_block_parts)
    for list_name, blocks in family.block_lists(transformer):
        for index, block in enumerate(blocks):
            for name, parent, attribute, linear in _plain_linears(block):
                parts = _parts(name)
                if parts[0] not in allowed:
                    continue
                if any(marker in part.lower() for part in parts for marker in _NEVER):
                    continue
                yield f"{list_name}.{index}.{name}", parent, attribute, linear


def text_encoder_targets(text_encoder):
    keep_fp32 = set(getattr(text_encoder, "_keep_in_fp32_modules", None) or ())
    for name, parent, attribute, linear in _plain_linears(text_encoder):
        parts = _parts(name)
        if not any(part.isdigit() for part in parts):  # not inside a ModuleList of layers
            continue
        if any(marker in part.lower() for part in parts for marker in _TEXT_ENCODER_NEVER):
            continue
        if keep_fp32 & set(parts):
            continue
        yield name, parent, attribute, linear


def quantize_linears(targets, work_device: torch.device, store_device: torch.device,
                     use_scaled_mm: bool = False) -> list[str]:
    """Replace each target by an FP8Linear; returns the names quantized.

    Each layer is quantized on `work_device` (the GPU when there is one: one layer at a time goes up
    in high precision, never the whole model) and kept on `store_device` (the device when nothing
    is offloaded, the CPU when offload keeps master copies there).
    """
    done = []
    for name, parent, attribute, linear in list(targets):
        quantized = FP8Linear.from_linear(linear.to(work_device), use_scaled_mm=use_scaled_mm)
        setattr(parent, attribute, quantized.to(store_device))
        done.append(name)
    return done


def text_encoders(pipe) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in pipe.components.items()
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module)]
