"""Shared bits of the node classes: the category, the custom type names, error translation."""

from __future__ import annotations

import contextlib

from omni_backend.errors import OmniInterrupted

from . import comfy_bridge

CATEGORY = "Omni Diffusion"
OMNI_MODEL = "OMNI_MODEL"
# The model link every feature node takes: one wording, so the tooltips read the same everywhere.
MODEL_IN_TOOLTIP = ("The Omni model from Load Omni Model (or from another Omni node); this node adds its "
                    "feature and passes the model on.")


class ModelFeatureNode:
    """Base of the OMNI_MODEL -> OMNI_MODEL nodes: each adds one feature to the model's spec."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (OMNI_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"


def builds_spec(node_class) -> bool:
    """Nodes that return OMNI_MODEL read configs only (Load Omni Model, Apply/Config nodes, Load LoRA):
    validators may run them without loading weights."""
    return tuple(getattr(node_class, "RETURN_TYPES", ())) == (OMNI_MODEL,)


@contextlib.contextmanager
def host_interrupts():
    """The backend raises OmniInterrupted; ComfyUI expects its own interrupt exception."""
    try:
        yield
    except OmniInterrupted as exc:
        comfy_bridge.raise_interrupted(exc)
