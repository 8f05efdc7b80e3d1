"""FP8 weights kept as a single file stores them, with their scales.

ComfyUI's FP8 releases (`*_fp8_e4m3fn.safetensors`, `*_fp8_scaled.safetensors`) hold most linear
weights in one byte per value. Converting them to the load dtype on reading doubles (bf16) or
quadruples (fp32) their size in memory; ComfyUI's own loader keeps them in FP8 and upcasts one
layer at a time when it runs. So does this pack: a DiT's attention, MLP and modulation linears and a
text encoder's layer linears (the layers the Offload/FP8 node quantizes, memory/fp8_layers.py) become
`FP8Linear`s holding the file's FP8 values and their scale; every other FP8 tensor (embeddings, input
and output projections, norms) is dequantized, with the arithmetic the loader always used.

A family's key map (file names -> diffusers names) may rename, cut, reorder or join the file's
tensors (a fused qkv weight cut into to_q/to_k/to_v by rows, the halves of an AdaLN swapped). The
values pass through unchanged, but each file tensor has its own scale (one number, or one per row).
So the same key map runs a second time over the scales, each spread to its tensor's shape as a
zero-stride view (no memory; only a map that joins tensors makes a real copy, of that one tensor),
and each mapped tensor finds its scale under its own name. Plain FP8 files have no scales.
"""

from __future__ import annotations

import torch

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dtype in FP8


class StoredFP8:
    """The scales of the FP8 tensors read from one file, by file key (float32, one or one per row)."""

    def __init__(self):
        self._scales: dict[str, torch.Tensor] = {}

    def add(self, key: str, tensor: torch.Tensor, scale: torch.Tensor | None) -> None:
        if scale is not None and not bool(torch.all(scale == 1)):
            rows = tensor.shape[0] if tensor.dim() else 1
            scale = scale.to(torch.float32)
            self._scales[key] = scale.reshape(rows, *([1] * (tensor.dim() - 1))) if scale.numel() > 1 \
                else scale.reshape([1] * tensor.dim())

    def mapped_scales(self, key_map, read: dict, config: dict) -> dict | None:
        """{class key: float32 scale of that key's tensor's shape} after `key_map` (the component's file
        -> class map); None when the file has no scales (every FP8 value is the weight itself)."""
        if not self._scales:
            return None
        spread = {key: self._scales[key].expand(tensor.shape) if key in self._scales
                  else torch.ones(()).expand(tensor.shape) if is_fp8(tensor) else tensor
                  for key, tensor in read.items()}
        return key_map(spread, config)


def row_scale(scale: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor | None:
    """The [out, 1] scale of a 2-D weight, or None where its scale varies along a row (a key map that
    transposed it: such a weight is dequantized instead)."""
    if scale is None:
        return torch.ones(weight.shape[0], 1)
    first = scale[:, :1]
    return first.contiguous() if scale.stride(1) == 0 or torch.equal(scale, first.expand_as(scale)) else None


def dequantize(tensor: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """FP8 values times their scale in float32, then `dtype`: the arithmetic the loader always used, so a
    dequantized tensor is bit-identical to what it loaded before FP8 was kept."""
    return (tensor.to(torch.float32) * scale).to(dtype) if scale is not None else tensor.to(dtype)
