"""Which linears FP8 quantizes, and the swap of those nn.Linear modules for FP8Linear.

DiT, attention and MLP: linears inside each block's attention and MLP children (`family.fp8_block_parts`,
e.g. attn/ff/img_mlp; FLUX single blocks add proj_mlp/proj_out), in the chosen mode (w8a8 where it runs).

DiT, modulation: each block's AdaLN linears (`family.fp8_modulation_parts`: Qwen-Image's img_mod/txt_mod,
FLUX/SD3's norm1.linear, Z-Image's adaLN_modulation) and the shared ones outside the blocks
(`family.fp8_shared_modulation`: FLUX.2's, Wan's time_proj), always weight-only: their input is one
vector per sample, so an FP8 matmul has nothing to speed up, and quantizing that conditioning vector is
the kind of activation quantization that broke vLLM-Omni's FP8 (vllm-project/vllm-omni#2728, fixed
there by skipping these layers). Stored in e4m3 with a scale per output channel, i.e. per modulation
coefficient, they hold the quality: on the trained reference model (Qwen-Image's architecture, where
img_mod/txt_mod are a third of every block) the DiT went from 0.686 to 0.530 of its bf16 bytes while
PSNR against bf16 went from 46.4 to 46.2 dB, with the same prompt-following (docs/memory.md).
Measured on that model only; the other families' modulation linears are the same kind of layer.

Kept in high precision: norms; the timestep/text embeddings (one small MLP whose output drives every
block's modulation: an error there reaches all of them at once); the input projections (img_in,
txt_in, x_embedder, patch embedding) and the output side (the final AdaLN `norm_out` and `proj_out`,
which set the predicted velocity directly). Together a few percent of a real DiT's bytes; on the
reference model quantizing them too saved 0.014 of the bytes for 1.6 dB (46.2 -> 44.6 dB). The name
guard below keeps embeddings and LoRA factors out even if a family lists a container holding one.

Text encoder (optional): linears inside its repeated layers (attention and MLP), weight-only
(vLLM-Omni: "FP8 storage, BF16 compute"); never embeddings, lm_head, a vision tower, or what the
model itself keeps in fp32 (`_keep_in_fp32_modules`, e.g. T5's `wo`).
"""

from __future__ import annotations

import torch

from .fp8 import FP8Linear

# Any path segment containing one of these marks a layer that must keep its precision.
_NEVER = ("norm", "mod", "adaln", "emb", "lora_")
_MODULATION_NEVER = ("emb", "lora_")  # a modulation part is itself named norm*/..._mod/adaLN_*
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
    """(qualified name, parent, attribute, linear) of the DiT's attention and MLP linears FP8 quantizes."""
    yield from _block_linears(family, transformer, set(family.fp8_block_parts), _NEVER)


def dit_modulation_targets(family, transformer):
    """(qualified name, parent, attribute, linear) of the DiT's modulation linears (weight-only FP8)."""
    yield from _block_linears(family, transformer, set(family.fp8_modulation_parts), _MODULATION_NEVER)
    modules = dict(transformer.named_modules())
    for name in family.fp8_shared_modulation:
        parent_name, _, attribute = name.rpartition(".")
        parent = modules.get(parent_name) if parent_name else transformer
        linear = getattr(parent, attribute, None) if parent is not None else None
        if type(linear) is torch.nn.Linear:
            yield name, parent, attribute, linear


def _block_linears(family, transformer, allowed: set, never: tuple):
    for list_name, blocks in family.block_lists(transformer):
        for index, block in enumerate(blocks):
            for name, parent, attribute, linear in _plain_linears(block):
                parts = _parts(name)
                if parts[0] not in allowed:
                    continue
                if any(marker in part.lower() for part in parts for marker in never):
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
