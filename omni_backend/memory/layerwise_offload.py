"""Layerwise offload: a DiT's blocks live off the execution device; a window of W of them is resident.

W = blocks_on_device. While block i runs, blocks i+1 .. i+W-1 are resident or being copied in; when
block i returns it is released and block i+W is prefetched, so the copy of the coming blocks
overlaps the compute of this one and at most W blocks hold device storage at any moment. The
window wraps: after the last block, blocks 0 .. W-1 are prefetched for the next transformer call
(the next step). That resting state also means code that reads block 0 before calling it (a
TeaCache decision computes block 0's modulation first) finds its weights resident. Everything
outside the block lists (embeddings, input/output projections, final norm), the text encoders and
the VAE stay resident, as in vLLM-Omni's LayerwiseOffloadHook.

On CUDA the prefetch runs on a separate copy stream and block i waits for its own copy through an
event. On the CPU the same schedule runs with zero-copy re-pointing (see residency.py), so tests
can check on storage that only the window is resident.

The window is enforced on entry to every block rather than assumed from the previous one, so a
cache that skips blocks (Cache-DiT, TeaCache, a first-block cache) or an interrupt mid-step can
never leave more than W blocks resident. Our hook sits inside any cache hook registered later, so
a block a cache skips is never copied in.

Why not diffusers' `apply_group_offloading(offload_type="block_level")`: it moves `param.data`
between an offload and an onload device, so with both on the CPU nothing is ever released (no
storage semantics to test), and its stream prefetch needs an accelerator. Its CUDA path is close to
this one; the CPU path is what we need here.
"""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from ..blocks.hooks import add_hook, remove_hook
from .residency import ParameterSet

HOOK_NAME = "omni_layerwise_offload"


class BlockWindow:
    """The blocks of one transformer in execution order, with at most `window` of them resident."""

    def __init__(self, blocks: list[torch.nn.Module], window: int, device: torch.device):
        self.blocks = blocks
        self.units = [ParameterSet(block, device) for block in blocks]
        self.window = max(1, min(int(window), len(blocks)))
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def install(self) -> None:
        self.settle()
        for index, block in enumerate(self.blocks):
            add_hook(block, _BlockHook(self, index), HOOK_NAME)

    def uninstall(self) -> None:
        for block in self.blocks:
            remove_hook(block, HOOK_NAME)
        for unit in self.units:
            unit.restore()

    def wanted(self, index: int) -> list[int]:
        return [(index + offset) % len(self.units) for offset in range(self.window)]

    def enter(self, index: int) -> None:
        wanted = self.wanted(index)
        for other, unit in enumerate(self.units):
            if other not in wanted:
                unit.release()
        current = self.units[index]
        current.materialise()  # synchronous only when it was not prefetched (first call, after a skip)
        current.wait()
        for other in wanted[1:]:
            self.units[other].materialise(self.copy_stream)

    def leave(self, index: int) -> None:
        if self.window < len(self.units):
            self.units[index].release()
            self.units[(index + self.window) % len(self.units)].materialise(self.copy_stream)

    def settle(self) -> None:
        """The resting state between transformer calls: blocks 0 .. W-1 resident, the rest released."""
        wanted = self.wanted(0)
        for index, unit in enumerate(self.units):
            if index not in wanted:
                unit.release()
        for index in wanted:
            self.units[index].materialise(self.copy_stream)


class _BlockHook(ModelHook):
    def __init__(self, window: BlockWindow, index: int):
        super().__init__()
        self.window = window
        self.index = index

    def pre_forward(self, module, *args, **kwargs):
        self.window.enter(self.index)
        return args, kwargs

    def post_forward(self, module, output):
        self.window.leave(self.index)
        return output


def install_layerwise_offload(family, pipe, window: int, device: torch.device) -> list[BlockWindow]:
    """Offload every DiT's blocks; the rest of the pipeline goes to `device` and stays there."""
    device = torch.device(device)
    transformers = [module for _name, module in family.transformers(pipe)]
    windows = []
    for transformer in transformers:
        blocks = [block for _attr, block_list in family.block_lists(transformer) for block in block_list]
        in_blocks = {id(module) for block in blocks for module in block.modules()}
        for module in transformer.modules():
            # Buffers (rope tables, index tensors) are small and stay resident everywhere.
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.to(device)
            if id(module) not in in_blocks:
                for param in module._parameters.values():
                    if param is not None:
                        param.data = param.data.to(device)
        windows.append(BlockWindow(blocks, window, device))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and not any(component is t for t in transformers):
            component.to(device)
    for block_window in windows:
        block_window.install()
    return windows
