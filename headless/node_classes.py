"""The node classes a headless run knows: this pack's nodes plus stand-ins for the ComfyUI core nodes
our workflows use (core_nodes.py)."""

from __future__ import annotations

from ..nodes import NODE_CLASS_MAPPINGS
from .core_nodes import CORE_NODE_CLASSES


def all_node_classes() -> dict:
    return {**CORE_NODE_CLASSES, **NODE_CLASS_MAPPINGS}
