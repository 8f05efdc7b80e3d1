"""Model-level offload: the pipeline's components take turns on the execution device.

Text encoder(s), DiT(s) and VAE each live in a master copy off the device (pinned on CUDA); when one
of them starts running it becomes resident and whichever component held the device is released.
So at any moment at most one component's weights are on the device: during the denoising loop
that is the DiT (Wan2.2 A14B's two experts take turns too), during decoding the VAE.

Why our own hooks: diffusers' `enable_model_cpu_offload` (accelerate) refuses to run without an
accelerator (it asks for a CUDA/XPU/MPS device), and vLLM-Omni keeps the VAE resident. These hooks run the
same logic on the CPU, where the execution device is the offload device and a turn is a zero-copy
re-pointing (residency.py), so the schedule itself is tested here.

A turn starts on the component's own forward and on the forward of any of its direct children:
pipelines call `vae.decode(...)` and `text_encoder(...)`, and decode never goes through the VAE's
forward, but it does run its children (post_quant_conv, decoder).
"""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from ..blocks.hooks import add_hook, remove_hook
from .residency import ParameterSet

HOOK_NAME = "omni_model_offload"


class ComponentTurns:
    """One ParameterSet per component; `take_turn(name)` makes `name` the only resident one."""

    def __init__(self, components: dict[str, torch.nn.Module], device: torch.device):
        self.device = torch.device(device)
        self.components = components
        self.units = {name: ParameterSet(module, self.device) for name, module in components.items()}
        self.current: str | None = None
        self.turns: list[str] = []  # the order components ran in, for the run report and tests

    def take_turn(self, name: str) -> None:
        if self.current == name:
            return
        for other, unit in self.units.items():
            if other != name:
                unit.release()
        self.units[name].materialise()
        self.current = name
        self.turns.append(name)

    def resident(self) -> list[str]:
        return [name for name, unit in self.units.items() if unit.resident]

    def install(self) -> None:
        for name, module in self.components.items():
            for target in (module, *module.children()):
                add_hook(target, _TurnHook(self, name), HOOK_NAME)
            # Buffers are small (position ids, rope tables) and stay on the device.
            for owner in module.modules():
                for key, buffer in owner._buffers.items():
                    if buffer is not None:
                        owner._buffers[key] = buffer.to(self.device)
        for unit in self.units.values():
            unit.release()
        self.current = None

    def uninstall(self) -> None:
        for module in self.components.values():
            for target in (module, *module.children()):
                remove_hook(target, HOOK_NAME)
        for unit in self.units.values():
            unit.restore()
        self.current = None


class _TurnHook(ModelHook):
    def __init__(self, turns: ComponentTurns, name: str):
        super().__init__()
        self.turns = turns
        self.name = name

    def pre_forward(self, module, *args, **kwargs):
        self.turns.take_turn(self.name)
        return args, kwargs


def install_model_offload(pipe, device: torch.device) -> ComponentTurns:
    components = {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    turns = ComponentTurns(components, device)
    turns.install()
    return turns
