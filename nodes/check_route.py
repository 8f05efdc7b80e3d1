"""POST /omni_diffusion/check: the server checks the graph being edited, for the browser extension.

The extension (web/omni_extension.js) holds no rules: it posts the graph as the editor serializes
it (the workflow file's UI format) and marks the nodes this answers for. The answer is
`graph/check.check_graph`, the same check `omni-diffusion validate` runs, on the part of the
graph this pack's nodes make up, plus what each Load Omni Model's model supports. Registered on
ComfyUI's server only inside ComfyUI (guarded like comfy_bridge), so the pack imports anywhere.
"""

from __future__ import annotations

import logging

from omni_backend.errors import OmniError
from omni_backend.rules.feature_matrix import support_lines

from ..graph.check import check_graph
from . import comfy_bridge
from .mappings import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROUTE = "/omni_diffusion/check"
MAX_GRAPH_BYTES = 8 * 1024 * 1024  # a graph of thousands of nodes fits; anything larger is not an editor's
log = logging.getLogger("omni_diffusion")


def answer(workflow) -> tuple[dict, int]:
    """(JSON body, HTTP status) for a posted graph. The body: {"problems": {node id: [problem]},
    "support": {Load Omni Model's id: [lines]}}."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return {"error": "post the graph as the editor serializes it: {\"nodes\": [...], \"links\": [...]}"}, 400
    try:
        result = check_graph(workflow, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)
        body: dict = {"problems": {}, "support": {}}
        for problem in result.problems:
            body["problems"].setdefault(problem.node_id, []).append(problem.as_dict())
        for node_id, node in result.checked_nodes.items():
            if node["class_type"] == "OmniLoadModel" and node_id not in body["problems"]:
                body["support"][node_id] = model_support_lines(node["inputs"].get("model_name"))
        return body, 200
    except Exception as exc:  # noqa: BLE001 - the page shows this instead of failing silently
        log.exception("could not check the graph")
        return {"error": f"could not check the graph: {type(exc).__name__}: {exc}"}, 500


def model_support_lines(model_name) -> list[str]:
    """What the chosen model supports, shown under Load Omni Model (from its configs, no weights)."""
    try:
        folder = comfy_bridge.resolve_in_roots("diffusers", model_name, "model_name")
        return support_lines(str(folder))
    except OmniError as exc:
        return [f"cannot load: {exc}"]


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

    @instance.routes.post(ROUTE)
    async def omni_check(request):
        if (request.content_length or 0) > MAX_GRAPH_BYTES:
            return web.json_response({"error": "the graph is too large to check"}, status=413)
        try:
            workflow = await request.json()
        except ValueError:
            workflow = None
        body, status = answer(workflow)
        return web.json_response(body, status=status)

    return True
