"""The option nodes: one per option group the families declare (omni_backend/options.py), built from the
declaration, so a new family's options need no node code. Each passes its values to Sample's options
input (OMNI_OPTIONS); Sample checks them against the model it samples with.

Their inputs never change once shipped (saved workflows fill widgets by position): a new option goes at
the end of its group.
"""

from __future__ import annotations

from omni_backend.families import FAMILIES, option_groups
from omni_backend.options import OMNI_OPTIONS, ModelOptions, OptionGroup

from .common import CATEGORY


def described(group: OptionGroup) -> str:
    """The group's description and the models that take it (read from the families, so a new family that
    takes the group is listed without an edit here)."""
    takers = [family.title for family in FAMILIES.values() if group in family.option_groups]
    return f"{group.description} Models that take it: {', '.join(takers)}."


def option_node(group: OptionGroup) -> type:
    """A ComfyUI node class for `group`: one input per option, one OMNI_OPTIONS output."""
    description = described(group)

    def INPUT_TYPES(cls):
        inputs = {"required": {}, "optional": {}}
        for option in group.options:
            inputs["optional" if option.is_link else "required"][option.name] = option.input_type()
        return inputs

    def options(self, **values):
        return (ModelOptions(group.key, group.title, {name: value for name, value in values.items()
                                                      if value is not None}),)

    return type(group.node_id, (), {
        "DESCRIPTION": description, "CATEGORY": CATEGORY, "RETURN_TYPES": (OMNI_OPTIONS,),
        "RETURN_NAMES": ("options",), "FUNCTION": "options", "INPUT_TYPES": classmethod(INPUT_TYPES),
        "options": options, "__module__": __name__, "__doc__": description})


OPTION_NODES = {group.node_id: (option_node(group), group.title) for group in option_groups()}
