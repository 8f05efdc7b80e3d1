"""POST /omni_diffusion/check: the server checks the graph being edited, for the browser extension.

The extension (web/omni_extension.js) holds no rules: it posts the graph as the editor serializes
it (the workflow file's UI format) and marks the nodes this answers for. The answer is
`headless/validate.check_graph`, the same check `omni-diffusion validate` runs, on the part of the
graph this pack's nodes make up. Registered on ComfyUI's server only inside ComfyUI (guarded like
comfy_bridge), so the pack imports anywhere.
"""

from __future__ import annotations

import logging

from . import comfy_bridge

ROUTE = "/omni_diffusion/check"
MAX_GRAPH_BYTES = 8 * 1024 * 1024  # a graph of thousands of nodes fits; anything larger is not an editor's
log = logging.getLogger("omni_diffusion")


def answer(workflow) -> tuple[dict, int]:
    """(JSON body, HTTP status) for a posted graph."""
    # Imported here: the checker reads this package's node classes, which are still being defined
    # while the package registers its routes.
    from ..headless.validate import check_graph

    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return {"error": "post the graph as the editor serializes it: {\"nodes\": [...], \"links\": [...]}"}, 400
    try:
        return check_graph(workflow), 200
    except Exception as exc:  # noqa: BLE001 - the page shows this instead of failing silently
        log.exception("could not check the graph")
        return {"error": f"could not check the graph: {type(exc).__name__}: {exc}"}, 500


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
