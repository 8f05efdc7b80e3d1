"""Fused LoRA: for one run, the active adapters are added into the base weights, then put back exactly.

Unfused, peft's LoRA layer runs `base(x) + B(A(x)) * scale` for every adapter on every call: two
extra matmuls per adapter and layer, each step. Within one run the adapters and their strengths are
fixed, so the same result comes from `W + sum(scale * B @ A)` once (peft's own `get_delta_weight`,
so the arithmetic is peft's). For a layer of width d over T tokens the fuse costs about d / (2T) of
one unfused pass (d = 3072, T = 4096: 0.4 of a pass), so for any run it is cheaper than leaving the
adapters unfused.

Why not peft's `merge`/`unmerge`: unmerge subtracts the delta again, which in bf16 does not give
back the original weights (each round trip moves some weights by an ulp, and switches add up).
Here the touched weights are copied first (to the CPU when the model is on a GPU, so the device
holds nothing extra) and copied back bit for bit when the run ends, so a run without LoRA after a
fused one is the base model exactly. For the run, a fused layer's peft wrapper is also taken out of
the module tree (its parent holds the plain base layer again, put back at the end): even with its
adapters off, the wrapper's Python forward costs more than a small layer's matmul.

Left unfused (peft's adapter matmuls, as before): layers whose weights are stored in FP8 (adding a
delta would round it to 3 mantissa bits), layers with DoRA or other peft variants, and every layer
while offload holds the weights (their master copies live apart from `param.data`).

Tensor-parallel shards fuse too: column and row shards hold LoRA factors cut like their weight, so
the delta is already their piece; a gathered-column shard holds whole factors and keeps its rows of
the delta (`local_delta`). A fused row shard is called directly, so it reduces by itself.
"""

from __future__ import annotations

import torch


def _is_high_precision(weight: torch.Tensor) -> bool:
    return weight.dtype.is_floating_point and weight.dtype.itemsize >= 2


def fusable(layer) -> bool:
    """A peft LoRA Linear whose base weight is a plain high-precision tensor and whose active adapters
    are vanilla LoRA."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer) or layer.disable_adapters or layer.merged:
        return False
    base = layer.get_base_layer()
    if type(base) is not torch.nn.Linear and not hasattr(base, "local_delta"):
        return False  # FP8 layers stay unfused; tensor-parallel shards say how a delta fits their piece
    weight = getattr(layer.get_base_layer(), "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or type(weight.data) is not torch.Tensor:
        return False  # FP8 layers hold a tensor subclass or a float8 tensor
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    return (_is_high_precision(weight) and bool(active) and not getattr(layer, "fan_in_fan_out", False)
            and not any(a in getattr(layer, "lora_variant", {}) for a in active)
            and all(getattr(layer, "use_dora", {}).get(a, False) is False for a in active))


class FusedRun:
    """The layers fused for the current run and their original weights."""

    def __init__(self):
        self._saved: list[tuple[object, torch.Tensor]] = []  # (LoRA layer, original weight)
        self._unwrapped: list[tuple[torch.nn.Module, str, object]] = []  # (parent, attribute, LoRA layer)

    @property
    def layers(self) -> int:
        return len(self._saved)

    @torch.no_grad()
    def fuse(self, models) -> int:
        """Fuse every fusable LoRA layer of `models`; returns how many were fused."""
        for model in models:
            for layer in model.modules():
                if not fusable(layer):
                    continue
                weight = layer.get_base_layer().weight
                delta = None
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        part = layer.get_delta_weight(adapter)
                        delta = part if delta is None else delta + part
                if hasattr(layer.get_base_layer(), "local_delta"):
                    delta = layer.get_base_layer().local_delta(delta)
                original = weight.detach().to("cpu", copy=True)
                weight.add_(delta.to(weight.dtype))
                self._saved.append((layer, original))
                layer.enable_adapters(False)
            fused = {id(layer) for layer, _ in self._saved}
            for parent in list(model.modules()):
                for attribute, child in list(parent.named_children()):
                    if id(child) in fused:
                        self._unwrapped.append((parent, attribute, child))
                        setattr(parent, attribute, child.get_base_layer())
        return len(self._saved)

    @torch.no_grad()
    def restore(self) -> None:
        """Every fused weight gets its original bits back; the layers' adapters stay off (as after a run)."""
        for parent, attribute, layer in self._unwrapped:
            setattr(parent, attribute, layer)
        self._unwrapped.clear()
        for layer, original in self._saved:
            layer.get_base_layer().weight.copy_(original)
        self._saved.clear()
