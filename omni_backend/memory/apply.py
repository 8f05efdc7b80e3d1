"""Applying a MemoryConfig to a freshly loaded pipeline, and the record of what was done.

Order: FP8 first (so master copies and the auto choice see FP8 sizes), then placement: no offload
(everything to the device), model-level turns, or layerwise block windows. The pipeline arrives on
the CPU (MemoryConfig.keeps_weights_off_device): with FP8 and no offload each layer is quantized on
the device one at a time, so the full-precision model is never resident there at once.

The record (`MemoryState`) is kept on the pipeline as `pipe._omni_memory`: the run session reads it
for the report, tests and the benchmark read the block windows, and `uninstall()` gives every
parameter its real storage back and removes every hook (called when the pipeline is unloaded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..system.devices import torch_dtype
from .auto_offload import choose_for_device
from .budget import window_within_budget
from .fp8 import FP8Linear, w8a8_supported
from .fp8_layers import dit_modulation_targets, dit_targets, quantize_linears, text_encoder_targets, text_encoders
from .layerwise_offload import install_layerwise_offload
from .model_offload import install_model_offload

log = logging.getLogger("omni_diffusion")
STATE_ATTRIBUTE = "_omni_memory"


@dataclass
class MemoryState:
    offload: str  # what runs: "none" | "model" | "layerwise" (auto resolved)
    device: torch.device
    block_windows: list = field(default_factory=list)  # layerwise: one BlockWindow per DiT
    turns: Any = None  # model: ComponentTurns
    fp8_layers: dict = field(default_factory=dict)  # component -> quantized layer names
    fp8_mode: str = "off"  # what runs: "off" | "weight_only" | "w8a8"
    notices: list = field(default_factory=list)
    installed: bool = True

    def summary(self) -> str:
        parts = []
        if self.offload == "layerwise":
            window = self.block_windows[0] if self.block_windows else None
            shown = f"{window.window} of {len(window.units)} blocks" if window else "blocks"
            parts.append(f"layerwise offload ({shown} resident on {self.device.type})")
        elif self.offload == "model":
            parts.append("model offload (components take turns on the device)")
        if self.fp8_layers:
            counts = ", ".join(f"{len(names)} {component} linears" for component, names in self.fp8_layers.items())
            parts.append(f"fp8 {self.fp8_mode.replace('_', '-')} ({counts})")
        return "; ".join(parts) or "no offload, no fp8"

    def uninstall(self) -> None:
        if not self.installed:
            return
        for window in self.block_windows:
            window.uninstall()
        if self.turns is not None:
            self.turns.uninstall()
        self.installed = False


def apply_memory(pipe, spec, config) -> MemoryState:
    family = spec.family
    device = torch.device(spec.device)
    notices = []

    fp8_layers, fp8_mode = {}, config.fp8
    if config.fp8 != "off":
        compute_dtype = torch_dtype(spec.dtype)
        use_scaled_mm = False
        if config.fp8 == "w8a8":
            use_scaled_mm, why_not = w8a8_supported(device, compute_dtype)
            if not use_scaled_mm:
                fp8_mode = "weight_only"
                notices.append(f"fp8 = w8a8: {why_not}; ran FP8 weight-only instead (same weights, "
                               "activations in high precision)")
        stored = sum(isinstance(layer, FP8Linear) for _name, transformer in family.transformers(pipe)
                     for layer in transformer.modules())
        if stored:
            notices.append(f"fp8 = {config.fp8}: {stored} of the DiT's linears are FP8 as the model file stores "
                           "them; they are kept as they are (quantizing them again would add nothing)")
        # Offload keeps master copies on the CPU; `auto` may still choose "none", which moves them up later.
        store_device = torch.device("cpu") if config.offload != "none" else device
        for name, transformer in family.transformers(pipe):
            fp8_layers[name] = quantize_linears(dit_targets(family, transformer), device, store_device,
                                                use_scaled_mm)
            # Modulation: weight-only in every mode (memory/fp8_layers.py says why).
            fp8_layers[name] += quantize_linears(dit_modulation_targets(family, transformer), device, store_device)
        if config.fp8_text_encoder:
            for name, encoder in text_encoders(pipe):
                fp8_layers[name] = quantize_linears(text_encoder_targets(encoder), device, store_device)

    offload = config.offload
    if offload == "auto":
        choice = choose_for_device(pipe, spec.device, spec.world_size(), config.device_budget_gb)
        offload = choice.mode
        notices.append(f"offload = auto chose {offload}: {choice.reason}")

    state = MemoryState(offload=offload, device=device, fp8_layers=fp8_layers, fp8_mode=fp8_mode, notices=notices)
    if offload == "layerwise":
        window = config.blocks_on_device
        if config.device_budget_gb:
            chosen = window_within_budget(family, pipe, config.device_budget_gb, fp8_on=config.fp8 != "off")
            window = chosen.blocks_on_device
            notices.append(chosen.notice)
        state.block_windows = install_layerwise_offload(family, pipe, window, device)
        blocks = min(len(w.units) for w in state.block_windows)
        if window >= blocks:
            named = (f"device_budget_gb = {config.device_budget_gb:g} holds all {blocks} of the DiT's blocks"
                     if config.device_budget_gb else
                     f"blocks_on_device = {window} is at least the DiT's {blocks} blocks")
            notices.append(f"{named}: every block stays resident, so layerwise offload saves nothing here")
    elif offload == "model":
        state.turns = install_model_offload(pipe, device)
    else:
        pipe.to(device)
    setattr(pipe, STATE_ATTRIBUTE, state)
    log.info("memory: %s", state.summary())
    return state


def memory_state(pipe) -> MemoryState | None:
    return getattr(pipe, STATE_ATTRIBUTE, None)
