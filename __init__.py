"""Omni Diffusion Nodes: vLLM-Omni's diffusion acceleration stack as ComfyUI nodes.

ComfyUI imports this folder under a name derived from its path; our engine must import as the
stable top-level name `omni_backend` (worker processes start fresh and import it by that name),
so the pack folder goes on sys.path, at the end so it never shadows ComfyUI's own modules.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
