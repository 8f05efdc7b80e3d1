"""What the graph check counts on from the pack's node classes, beyond ComfyUI's own conventions.

A node whose only output is OMNI_MODEL (Load Omni Model, the Apply/Config nodes, Load LoRA) builds
the model's spec from configs alone: the check runs it, weights never load. A node whose only output is
OMNI_OPTIONS (the option nodes) packs its values: the check runs it too, with LINKED for its images. A node may also declare
`check_inputs` (run with the specs it receives, LINKED standing for what only a run produces) and
`queue_check` (the check behind its VALIDATE_INPUTS, raising the error with its fields).
"""

from __future__ import annotations

OMNI_MODEL = "OMNI_MODEL"  # the ComfyUI type of the model spec the nodes pass along
OMNI_OPTIONS = "OMNI_OPTIONS"  # the ComfyUI type of an option node's values (omni_backend.options)


def builds_spec(node_class) -> bool:
    """Nodes that return OMNI_MODEL read configs only: validators may run them without loading weights."""
    return tuple(getattr(node_class, "RETURN_TYPES", ())) == (OMNI_MODEL,)


def builds_options(node_class) -> bool:
    """Option nodes only pack their inputs: validators may run them (images they take are LINKED)."""
    return tuple(getattr(node_class, "RETURN_TYPES", ())) == (OMNI_OPTIONS,)


class _Linked:
    """Stands for an input that only a run produces (an image from Load Image, a latent), when a
    validator calls a node's `check_inputs` before anything runs."""

    def __repr__(self) -> str:
        return "LINKED"


LINKED = _Linked()
