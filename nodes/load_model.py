"""Load Omni Model: pick a diffusers folder; validate and read configs only (weights load lazily)."""

from __future__ import annotations

from omni_backend.devices import DTYPE_CHOICES, available_devices
from omni_backend.errors import OmniError
from omni_backend.spec import ModelSpec

from . import comfy_bridge
from .common import CATEGORY, OMNI_MODEL


def device_choices() -> list[str]:
    return ["auto", *available_devices()]


class OmniLoadModel:
    DESCRIPTION = ("Choose a diffusers model folder from models/diffusers. Only configs are read here; "
                   "weights load when Sample first needs them.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (OMNI_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (comfy_bridge.list_model_folders(),
                           {"tooltip": "A folder with model_index.json under models/diffusers."}),
            "dtype": (list(DTYPE_CHOICES), {"default": "auto",
                                           "tooltip": "auto: bf16 on GPUs that support it, fp32 on the CPU."}),
            "device": (device_choices(), {"default": "auto",
                                          "tooltip": "Where the model runs: auto = the first GPU (cuda:0), "
                                                     "else the CPU. Parallel Config spreads it over several."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        # Replaces ComfyUI's plain "value not in list" with a message that says where we looked.
        if model_name is None:
            return True
        try:
            comfy_bridge.resolve_in_roots("diffusers", model_name, "model_name", must_exist="model_index.json")
        except OmniError as exc:
            return str(exc)
        return True

    def load(self, model_name, dtype, device):
        folder = comfy_bridge.resolve_in_roots("diffusers", model_name, "model_name",
                                               must_exist="model_index.json")
        return (ModelSpec.from_folder(str(folder), dtype=dtype, device=device),)
