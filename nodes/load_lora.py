"""Load Omni LoRA: add a LoRA file to the model's stack (chain several; each keeps its own strength)."""

from __future__ import annotations

import os
from functools import lru_cache

from omni_backend.errors import OmniError, OmniInputError
from omni_backend.lora import COMPONENT_CHOICES, LoraSpec
from omni_backend.lora.files import NO_TENSORS, SUFFIX, check_lora_file

from . import comfy_bridge
from .common import MODEL_IN_TOOLTIP, OMNI_MODEL, ModelFeatureNode, as_verdict, with_mark, without_mark

NOT_SAFETENSORS = "broken: not a valid safetensors file"
EMPTY = "broken: holds no tensors"


def lora_choices() -> list[str]:
    """The .safetensors files under models/loras; one whose header does not read (a partial
    download, a renamed pickle) is listed as "name (broken: not a valid safetensors file)"."""
    return [with_mark(name, _unusable_because(name)) for name in comfy_bridge.list_files("loras", (SUFFIX,))]


def _unusable_because(name: str) -> str | None:
    try:
        path = _resolve(name)
        stat = os.stat(path)
    except (OmniError, OSError):
        return None  # gone since it was listed: the next refresh drops it
    return _header_problem(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1024)
def _header_problem(path: str, _size: int, _mtime_ns: int) -> str | None:
    """Cached per file version (size, mtime): the list is rebuilt on every INPUT_TYPES call. The same
    header-only check Load LoRA runs (check_lora_file); its problem becomes the list's short label."""
    try:
        check_lora_file(path)
    except OmniInputError as exc:
        return EMPTY if exc.problem == NO_TENSORS else NOT_SAFETENSORS
    return None


def _resolve(lora_name: str):
    return comfy_bridge.resolve_in_roots("loras", without_mark(lora_name), "lora_name")


class OmniLoadLoRA(ModelFeatureNode):
    DESCRIPTION = ("Add a LoRA from models/loras (.safetensors). Chain several to stack them, each with its own "
                   "strength. The base weights stay loaded: changing a strength or the set of LoRAs does not "
                   "reload them, and a LoRA file is read once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": MODEL_IN_TOOLTIP}),
            "lora_name": (lora_choices(), {"tooltip": "A .safetensors LoRA under models/loras: diffusers/peft, "
                                                      "kohya or ComfyUI key layouts. A file marked (broken: ...) "
                                                      "cannot be read; pick it to see why and the fix."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "0 gives the model without this LoRA; negative values subtract it."}),
            "component": (list(COMPONENT_CHOICES), {
                "default": "auto",
                "tooltip": "auto: every part of the file. transformer_2: the file's denoiser part into Wan2.2 "
                           "A14B's second (low-noise) expert. Others: only that part of the file acts."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name=None):
        # One input only: ComfyUI repeats a failing verdict for every input named here.
        return as_verdict(cls.queue_check, lora_name=lora_name)

    @classmethod
    def queue_check(cls, lora_name=None):
        """Replaces ComfyUI's plain "value not in list" with a message that says where we looked."""
        if lora_name is not None:
            check_lora_file(_resolve(lora_name), without_mark(lora_name))

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        # A file replaced under the same name re-runs what follows (the engine reloads it by content).
        try:
            stat = os.stat(_resolve(lora_name))
        except (OmniError, OSError):
            return ""
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def apply(self, model, lora_name, strength, component):
        path = _resolve(lora_name)
        check_lora_file(path, without_mark(lora_name))
        lora = LoraSpec(path=str(path), strength=strength, component=component)
        return (model.replace(loras=tuple(model.loras) + (lora,)),)
