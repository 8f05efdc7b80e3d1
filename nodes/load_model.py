"""Load Omni Model: pick a diffusers folder; validate and read configs only (weights load lazily)."""

from __future__ import annotations

from omni_backend.errors import OmniError
from omni_backend.spec import ModelSpec
from omni_backend.system.devices import DTYPE_CHOICES, available_devices
from omni_backend.weights.model_folder import folder_label, inspect_model_folder

from . import comfy_bridge
from .common import CATEGORY, OMNI_MODEL, as_verdict, with_mark, without_mark


def device_choices() -> list[str]:
    return ["auto", *available_devices()]


def device_input() -> tuple:
    """The loaders' device input."""
    return (device_choices(), {"default": "auto",
                               "tooltip": "Where the model runs: auto = the first GPU (cuda:0), else the CPU. "
                                          "Parallel Config spreads it over several."})


def model_choices() -> list[str]:
    """The diffusers folders; one that cannot load is listed as "name (broken: weights missing)"."""
    return [with_mark(name, _unusable_because(name)) for name in comfy_bridge.list_model_folders()]


def _unusable_because(name: str) -> str | None:
    try:
        return folder_label(_resolve(name))
    except OmniError:
        return None  # gone since it was listed: the next refresh drops it


def _resolve(model_name: str):
    return comfy_bridge.resolve_in_roots("diffusers", without_mark(model_name), "model_name",
                                         must_exist="model_index.json")


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
            "model_name": (model_choices(), {
                "tooltip": "A diffusers model folder (it has model_index.json) under models/diffusers. A folder "
                           "marked (broken: ...) or (unsupported) cannot load; pick it to see why and the fix."}),
            "dtype": (list(DTYPE_CHOICES), {"default": "auto",
                                           "tooltip": "auto: bf16 on GPUs that support it, fp32 on the CPU."}),
            "device": device_input(),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name=None):
        # One input only: ComfyUI repeats a failing verdict for every input named here.
        return as_verdict(cls.queue_check, model_name=model_name)

    @classmethod
    def queue_check(cls, model_name=None):
        """Replaces ComfyUI's plain "value not in list" with a message that says where we looked, and
        refuses a broken folder (marked in the list, or named by an older workflow) with its fix."""
        if model_name is not None:
            inspect_model_folder(_resolve(model_name), "model_name")

    def load(self, model_name, dtype, device):
        return (ModelSpec.from_folder(str(_resolve(model_name)), dtype=dtype, device=device),)
