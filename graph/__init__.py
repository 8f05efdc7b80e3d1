"""The graph check the nodes and the CLI share: ComfyUI workflows read and checked as data.

What is here: reading workflow files in both formats and turning the editor's format into an API
prompt (workflow_format), the one reading of a node's INPUT_TYPES (node_defs), and the checks that
run before anything is sampled. The server's check route (nodes/check_route.py) and
`omni-diffusion validate` (headless/validate.py) ask the same functions, so the browser, the CLI
and ComfyUI's queue refuse a graph alike.

Where it sits: above the engine (omni_backend), below the nodes and the CLI, which both import it.
It imports neither: it is handed the node classes (and their display names) it checks. See
tests/structure/test_layers.py for the layers.
"""
