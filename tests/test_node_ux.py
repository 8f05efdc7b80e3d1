"""What a user meets in ComfyUI's editor: tooltips on every input."""

from __future__ import annotations


# ---- tooltips ------------------------------------------------------------------------------
def test_every_input_of_every_node_has_a_tooltip(headless, nodes):
    missing = []
    for node_id, node_class in nodes.items():
        for section in ("required", "optional"):
            for name, spec in node_class.INPUT_TYPES().get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip", "")).strip():
                    missing.append(f"{node_id}.{name}")
    assert not missing, f"inputs without a tooltip: {', '.join(missing)}"
