"""Load LoRA: add a LoRA file to the model's stack (chain several; each keeps its own strength)."""

from __future__ import annotations

import os

from omni_backend.errors import OmniError
from omni_backend.lora import COMPONENT_CHOICES, LoraSpec
from omni_backend.lora.loader import SUFFIX, check_lora_file

from . import comfy_bridge
from .common import MODEL_IN_TOOLTIP, ModelFeatureNode, OMNI_MODEL


def lora_choices() -> list[str]:
    return comfy_bridge.list_files("loras", (SUFFIX,))


class OmniLoadLoRA(ModelFeatureNode):
    DESCRIPTION = ("Add a LoRA from models/loras (.safetensors). Chain several to stack them, each with its own "
                   "strength. The base weights stay loaded: changing a strength or the set of LoRAs does not "
                   "reload them, and a LoRA file is read once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "lora_name": (lora_choices(), {"tooltip": "A .safetensors LoRA under models/loras: diffusers/peft, "
                                                      "kohya or ComfyUI key layouts."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "0 gives the model without this LoRA; negative values subtract it."}),
            "component": (list(COMPONENT_CHOICES), {
                "default": "auto",
                "tooltip": "auto: every part of the file. transformer_2: the file's denoiser part into Wan2.2 "
                           "A14B's second (low-noise) expert. Others: only that part of the file acts."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        # Replaces ComfyUI's plain "value not in list" with a message that says where we looked.
        if lora_name is None:
            return True
        try:
            check_lora_file(comfy_bridge.resolve_in_roots("loras", lora_name, "lora_name"), lora_name)
        except OmniError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        # A file replaced under the same name re-runs what follows (the engine reloads it by content).
        try:
            stat = os.stat(comfy_bridge.resolve_in_roots("loras", lora_name, "lora_name"))
        except (OmniError, OSError):
            return ""
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def apply(self, model, lora_name, strength, component):
        path = comfy_bridge.resolve_in_roots("loras", lora_name, "lora_name")
        check_lora_file(path, lora_name)
        lora = LoraSpec(path=str(path), strength=float(strength), component=component)
        return (model.replace(loras=tuple(model.loras) + (lora,)),)
