"""The `omni-diffusion` CLI and the host that runs the pack's nodes outside ComfyUI: a small
executor, stand-ins for the ComfyUI core nodes our workflows use, and the shipped workflows as code.

The top layer: it imports the nodes it hosts, the graph check (graph/) and the engine; nothing in
the pack imports it. See tests/structure/test_layers.py for the layers.
"""
