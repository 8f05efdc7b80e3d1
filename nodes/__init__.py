"""The pack's graph nodes. Import this package relatively only: ComfyUI owns the name `nodes`.

They build and check specs and call the engine (omni_backend); the checks they share with the CLI
live in the graph package below them. They never import the CLI (headless), which hosts them
outside ComfyUI: see tests/structure/test_layers.py for the layers.
"""

from __future__ import annotations

from omni_backend.engine import default_engine

from . import check_route, comfy_bridge
from .mappings import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

# ComfyUI's "Unload models" (and POST /free) also frees the pipelines this pack holds.
comfy_bridge.on_unload(lambda: default_engine().unload_all())
comfy_bridge.on_free_memory(lambda device: default_engine().unload_from(device))
# A refusal is one line in ComfyUI's log, not a traceback.
comfy_bridge.quiet_refusal_tracebacks()
# POST /omni_diffusion/check for the browser extension (web/), inside ComfyUI only.
check_route.register()
