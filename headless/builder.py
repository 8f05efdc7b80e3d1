"""Build UI-format workflow files (what ComfyUI's editor saves) from code.

Used to author the shipped `workflows/*.json` (see `recipes.py`) and the tests' broken fixtures.
Widget values are written in INPUT_TYPES order with the editor's extra values, and every widget
also gets an input slot naming it, as the current frontend saves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph.node_defs import node_inputs

SOCKET_WIDTH = 320


@dataclass
class NodeRef:
    id: int
    type: str


@dataclass
class WorkflowBuilder:
    classes: dict
    nodes: list = field(default_factory=list)
    links: list = field(default_factory=list)

    def add(self, node_type: str, title: str | None = None, mode: int = 0, **widgets) -> NodeRef:
        node_class = self.classes[node_type]
        definitions = node_inputs(node_class)
        unknown = set(widgets) - {d.name for d in definitions}
        if unknown:
            raise KeyError(f"{node_type} has no inputs {sorted(unknown)}")
        node_id = len(self.nodes) + 1
        inputs, values = [], []
        for definition in definitions:
            if definition.is_widget:
                value = widgets.get(definition.name, _default(definition))
                values.append(value)
                if definition.extra_values:
                    values.append("fixed" if definition.type == "INT" else "image")
                inputs.append({"name": definition.name, "type": definition.type_name,
                               "widget": {"name": definition.name}, "link": None})
            else:
                inputs.append({"name": definition.name, "type": definition.type_name, "link": None})
        outputs = [{"name": name, "type": kind, "links": [], "slot_index": slot}
                   for slot, (kind, name) in enumerate(zip(node_class.RETURN_TYPES, _return_names(node_class)))]
        column = len(self.nodes)
        node = {
            "id": node_id, "type": node_type, "pos": [40 + column * (SOCKET_WIDTH + 40), 80 + (column % 2) * 60],
            "size": [SOCKET_WIDTH, 60 + 26 * len(values)], "flags": {}, "order": column, "mode": mode,
            "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": node_type},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return NodeRef(node_id, node_type)

    def connect(self, source: NodeRef, target: NodeRef, input_name: str, output_slot: int = 0) -> None:
        src, dst = self._node(source.id), self._node(target.id)
        slot = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == input_name)
        link_id = len(self.links) + 1
        kind = src["outputs"][output_slot]["type"]
        self.links.append([link_id, source.id, output_slot, target.id, slot, kind])
        dst["inputs"][slot]["link"] = link_id
        src["outputs"][output_slot]["links"].append(link_id)

    def chain(self, *steps: tuple) -> None:
        """connect((a, b, "model"), (b, c, "model"), ...)"""
        for source, target, input_name in steps:
            self.connect(source, target, input_name)

    def to_json(self) -> dict:
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
            "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
            "version": 0.4,
        }

    def _node(self, node_id: int) -> dict:
        return self.nodes[node_id - 1]


def _return_names(node_class) -> tuple:
    return getattr(node_class, "RETURN_NAMES", None) or node_class.RETURN_TYPES


def _default(definition):
    if "default" in definition.options:
        return definition.options["default"]
    if definition.type_name == "COMBO":
        return list(definition.type)[0] if definition.type else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[definition.type_name]
