"""Registering and removing our named diffusers hooks, leaving a module exactly as loaded.

Shared by the features that hook into modules for a run or a load (TeaCache, offload).
"""

from __future__ import annotations

from diffusers.hooks import HookRegistry


def add_hook(module, hook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove_hook(module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(name, recurse=False)
    if not registry.hooks:
        # An empty registry still leaves `forward` as an instance attribute and itself on the
        # module; drop both so nothing of ours remains.
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) is type(module).forward:
            del module.forward
        del module._diffusers_hook
