"""Shared bits of the node classes: the category, the custom type names, error translation."""

from __future__ import annotations

import contextlib
import re

from omni_backend.errors import OmniInterrupted

# Declared with the graph check, which runs the nodes that return OMNI_MODEL and hands check_inputs
# LINKED for inputs only a run produces; the nodes take them from here.
from ..graph.node_contract import LINKED, OMNI_MODEL  # noqa: F401
from . import comfy_bridge

CATEGORY = "Omni Diffusion"
# The model link every feature node takes: one wording, so the tooltips read the same everywhere.
MODEL_IN_TOOLTIP = ("The Omni model from Load Omni Model (or from another Omni node); this node adds its "
                    "feature and passes the model on.")


class ModelFeatureNode:
    """Base of the OMNI_MODEL -> OMNI_MODEL nodes: each adds one feature to the model's spec."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (OMNI_MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"


# A file or folder that cannot load is still listed, with why: "name (broken: weights missing)". The
# user sees their model and the reason; picking it gives the full error with its fix (the loaders
# read the name without the mark).
_MARK = re.compile(r" \((?:broken: [^()]*|unsupported)\)$")


def with_mark(name: str, label: str | None) -> str:
    return f"{name} ({label})" if label else name


def without_mark(name: str) -> str:
    return _MARK.sub("", name)


@contextlib.contextmanager
def host_interrupts():
    """The backend raises OmniInterrupted; ComfyUI expects its own interrupt exception."""
    try:
        yield
    except OmniInterrupted as exc:
        comfy_bridge.raise_interrupted(exc)


def as_verdict(check, **inputs):
    """VALIDATE_INPUTS' answer from a check that raises: True, or the error's text (ComfyUI takes text
    only). Headless validators call the node's `queue_check` itself and keep the error's fields."""
    from omni_backend.errors import OmniError

    try:
        check(**inputs)
    except OmniError as exc:
        return str(exc)
    return True
