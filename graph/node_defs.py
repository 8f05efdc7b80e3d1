"""The one reading of a node class's INPUT_TYPES that the workflow converter, the widget checker,
the queue's checks and the workflow builder share: which inputs are widgets, in what order, and how
many values each one saves.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}


@dataclass(frozen=True)
class InputDef:
    name: str
    type: object  # a type name, or the list of choices of a combo
    options: dict
    required: bool

    @property
    def is_widget(self) -> bool:
        return isinstance(self.type, (list, tuple)) or self.type in WIDGET_TYPES

    @property
    def type_name(self) -> str:
        return "COMBO" if isinstance(self.type, (list, tuple)) else str(self.type)

    @property
    def extra_values(self) -> int:
        """UI-only values the frontend saves right after this widget's own value."""
        if self.type == "INT" and (self.options.get("control_after_generate") or self.name in SEED_NAMES):
            return 1  # "fixed" / "randomize" / ...
        if self.options.get("image_upload"):
            return 1  # the upload button's value
        return 0


def node_inputs(node_class) -> list[InputDef]:
    types = node_class.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            inputs.append(InputDef(name, kind, options, section == "required"))
    return inputs


def widget_inputs(node_class) -> list[InputDef]:
    return [i for i in node_inputs(node_class) if i.is_widget]

