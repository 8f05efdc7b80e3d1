"""GET /omni_diffusion/rules: the compatibility rules and model facts for the browser extension.

The extension (web/omni_extension.js) holds no rules of its own: it fetches this document and
checks the graph with it (web/graph_check.js). The document is the backend's export
(omni_backend/rules_export.py) for the models in ComfyUI's diffusers folders, plus what the
extension needs to read the graph: which node types build a spec and their widgets' order and
defaults. Registered on ComfyUI's server only inside ComfyUI (guarded like comfy_bridge), so the
pack imports anywhere.
"""

from __future__ import annotations

import logging

from omni_backend.rules_export import export_rules

from . import comfy_bridge
from .common import builds_spec

ROUTE = "/omni_diffusion/rules"
log = logging.getLogger("omni_diffusion")


def rules_document(machine: dict | None = None) -> dict:
    folders = {}
    for name in comfy_bridge.list_model_folders():
        try:
            folders[name] = str(comfy_bridge.resolve_in_roots("diffusers", name, "model_name"))
        except Exception:  # a folder that vanished since it was listed: leave it out
            continue
    document = export_rules(folders, machine=machine)
    document["node_types"] = node_types()
    return document


def node_types() -> dict:
    """{node id: {title, builds_spec, widgets: [[name, default], ...] in INPUT_TYPES order}}."""
    from . import NODE_CLASSES

    found = {}
    for node_id, (node_class, title) in NODE_CLASSES.items():
        widgets = []
        for section in ("required", "optional"):
            for name, spec in node_class.INPUT_TYPES().get(section, {}).items():
                kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
                # A list's own default only: a folder listing's first entry is no default.
                if isinstance(kind, (list, tuple)) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    widgets.append([name, options.get("default")])
        found[node_id] = {"title": title, "widgets": widgets,
                          "builds_spec": builds_spec(node_class)}
    return found


def register() -> bool:
    """Add the route to ComfyUI's server; False outside ComfyUI."""
    if not comfy_bridge.IN_COMFYUI:
        return False
    try:
        from aiohttp import web
        from server import PromptServer  # type: ignore
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False

    @instance.routes.get(ROUTE)
    async def omni_rules(_request):
        try:
            return web.json_response(rules_document())
        except Exception as exc:  # the page shows this instead of a silent failure
            log.exception("could not build the Omni rules document")
            return web.json_response({"error": f"could not build the rules: {exc}"}, status=500)

    return True
