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

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Imported as a bare module, with no package around it: pytest does this with a checkout whose
    # folder name is not a Python identifier (e.g. a mktemp clone). Use the installed pack's name.
    from omni_diffusion_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
