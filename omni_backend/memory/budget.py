"""A device memory budget: how many DiT blocks layerwise offload keeps resident within it.

The budget counts weights on the execution device: everything layerwise offload keeps resident
(the text encoders, the VAE, each DiT's parts outside its blocks) plus the window of blocks.
Activations come on top of it (see the Offload/FP8 node's tooltip). The window is the largest that
fits, from 1 to every block; when not even one block fits next to the resident parts, the budget is
refused with the smallest one that works, before anything moves to the device.

With offload = auto, the budget stands in for the device's free memory when choosing between no
offload, model offload and layerwise offload (auto_offload.choose_offload, with no reserve: the
budget is for weights already).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import OmniInputError
from .auto_offload import GB, module_bytes

@dataclass(frozen=True)
class BudgetWindow:
    blocks_on_device: int
    notice: str


def window_within_budget(family, pipe, budget_gb: float, fp8_on: bool) -> BudgetWindow:
    """The most DiT blocks that fit in `budget_gb` beside what layerwise offload keeps resident."""
    budget = int(budget_gb * GB)
    transformers = [module for _name, module in family.transformers(pipe)]
    # Largest first: a window of N blocks costs at most a DiT's N largest, and each DiT keeps its own
    # window resident between calls (memory/layerwise_offload.py).
    per_dit = [sorted((module_bytes(block) for _attr, block_list in family.block_lists(transformer)
                       for block in block_list), reverse=True) for transformer in transformers]
    resident = sum(module_bytes(c) for c in pipe.components.values()
                   if isinstance(c, torch.nn.Module) and not any(c is t for t in transformers))
    resident += sum(module_bytes(t) - sum(sizes) for t, sizes in zip(transformers, per_dit))
    most_blocks = max(len(sizes) for sizes in per_dit)
    largest = max(sizes[0] for sizes in per_dit)

    def cost(window: int) -> int:
        return resident + sum(sum(sizes[:window]) for sizes in per_dit)

    if cost(1) > budget:
        raise OmniInputError(
            "device_budget_gb", budget_gb,
            f"the parts layerwise offload keeps on the device take {_gb(resident)} and one DiT block "
            f"{_gb(largest)} more ({_gb(cost(1))} with one block per DiT)",
            f"raise device_budget_gb to at least {_round_up(cost(1) / GB)}"
            + ("" if fp8_on else ", or set fp8 = weight_only to shrink the blocks"))
    window = max(w for w in range(1, most_blocks + 1) if cost(w) <= budget)
    return BudgetWindow(window, (
        f"device_budget_gb = {budget_gb:g}: {window} of {most_blocks} DiT blocks stay resident "
        f"({_gb(cost(window))} of weights on the device: {_gb(resident)} outside the blocks, "
        f"a block {_gb(largest)} at most); activations come on top"))


def _gb(count: int) -> str:
    return f"{count / GB:.3g} GB"


def _round_up(gb: float) -> float:
    """Rounded up to three significant digits (two decimals at least), so the suggested budget does fit."""
    decimals = max(2, 2 - math.floor(math.log10(gb)))
    return math.ceil(gb * 10**decimals) / 10**decimals
