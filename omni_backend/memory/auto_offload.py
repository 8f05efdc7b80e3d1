"""offload = auto: pick none, model or layerwise from the device's free memory and the model's size.

The rule, with W = weights of everything in the pipeline and R = a reserve for activations:
- W + R fits: no offload (fastest);
- the largest component (usually the DiT) + R fits: model-level offload;
- otherwise: layerwise offload (only blocks_on_device DiT blocks plus the DiT's non-block parts
  and the other components are resident).
Multi-GPU layouts never get layerwise (compat rule: it streams through one device), and on the
CPU nothing is offloaded: the execution device is the offload device, so offloading saves nothing.

The reserve is a heuristic: activations grow with resolution and frames; 10% of the device's total
memory, at least 2 GiB, covers a 1024 px image step of the supported DiTs in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024**3
GB = 1e9  # a device_budget_gb is in GB, as the node shows it (memory/budget.py)


@dataclass(frozen=True)
class AutoChoice:
    mode: str  # "none" | "model" | "layerwise"
    reason: str


def choose_offload(free_bytes: int, device_total_bytes: int, component_bytes: dict[str, int],
                   world_size: int = 1, reserve: int | None = None) -> AutoChoice:
    if reserve is None:
        reserve = max(2 * GIB, device_total_bytes // 10)
    need_all = sum(component_bytes.values())
    largest_name, largest = max(component_bytes.items(), key=lambda item: item[1])
    free = _gib(free_bytes)
    if need_all + reserve <= free_bytes:
        return AutoChoice("none", f"all weights ({_gib(need_all)}) fit in {free} free")
    if largest + reserve <= free_bytes:
        return AutoChoice("model", f"the weights ({_gib(need_all)}) do not fit in {free} free, "
                                   f"the largest component ({largest_name}, {_gib(largest)}) does")
    if world_size > 1:
        return AutoChoice("model", f"not even {largest_name} ({_gib(largest)}) fits in {free} free, but layerwise "
                                   "offload cannot run with a multi-GPU layout; model offload is the most it can do")
    return AutoChoice("layerwise", f"not even {largest_name} ({_gib(largest)}) fits in {free} free")


def choose_for_device(pipe, device: str, world_size: int = 1, budget_gb: float = 0.0) -> AutoChoice:
    device = torch.device(device)
    component_bytes = {name: module_bytes(module) for name, module in pipe.components.items()
                       if isinstance(module, torch.nn.Module)}
    if budget_gb > 0:  # the user's budget is for weights, on any device: no reserve (memory/budget.py)
        budget = int(budget_gb * GB)
        choice = choose_offload(budget, budget, component_bytes, world_size, reserve=0)
        return AutoChoice(choice.mode, f"{choice.reason} (the device_budget_gb of {budget_gb:g} GB)")
    if device.type != "cuda":
        return AutoChoice("none", f"the model runs on the {device.type.upper()}, where the offload device is the "
                                  "execution device, so offloading would save nothing")
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    return choose_offload(free_bytes, total_bytes, component_bytes, world_size)


def module_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"
