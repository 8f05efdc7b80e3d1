"""ComfyUI workflow files: read both formats, convert the UI format to an API prompt, check widgets.

The UI format (what the editor saves) stores widget values by position, in the order of the
node's INPUT_TYPES (required, then optional), plus UI-only values such as a seed's
"control_after_generate". Turning it into the API format ({id: {class_type, inputs}}) needs the
node definitions, which is also what lets us check that a saved workflow still matches the nodes:
a renamed or reordered input shows up as a mismatch instead of silently shifting values.

The node definitions come from the caller, as ComfyUI keeps them: `classes` (node type -> class,
NODE_CLASS_MAPPINGS) and `titles` (node type -> display name, NODE_DISPLAY_NAME_MAPPINGS), the
title a node without one of its own shows in the editor and in every problem reported at it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from omni_backend.errors import OmniError, OmniIncompatibleError, OmniInputError
from omni_backend.rules.compat import Problem

from .node_defs import InputDef, widget_inputs

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_MUTED, MODE_BYPASS = 2, 4


@dataclass(frozen=True)
class WorkflowProblem:
    node_id: str
    title: str
    problem: str
    fix: str
    rule: str = ""  # the compat rule id, for feature combinations (see check.py)

    def __str__(self) -> str:
        return f"node {self.node_id} ({self.title}): {self.problem}. Fix: {self.fix}"

    def as_dict(self) -> dict:
        return {"node": self.node_id, "title": self.title, "problem": self.problem, "fix": self.fix,
                "rule": self.rule}


class WorkflowError(OmniError, ValueError):
    def __init__(self, problems: list[WorkflowProblem] | WorkflowProblem):
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("\n".join(str(p) for p in self.problems))


def problem_from_rule(node_id: str, title: str, problem: Problem) -> WorkflowProblem:
    return WorkflowProblem(node_id, title, f"{problem.first} cannot be combined with {problem.second}: "
                                           f"{problem.reason}", problem.fix, rule=problem.rule)


def problem_from_error(node_id: str, title: str, error: OmniError) -> WorkflowProblem:
    """From the error's own fields (errors.py), never by parsing its message."""
    if isinstance(error, OmniIncompatibleError):
        return problem_from_rule(node_id, title, Problem(error.first, error.second, error.reason, error.fix,
                                                         rule=error.rule))
    if isinstance(error, OmniInputError):
        return WorkflowProblem(node_id, title, f"{error.input_name} = {error.value!r}: {error.problem}", error.fix)
    return WorkflowProblem(node_id, title, str(error), "see the message")


def load_workflow(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(WorkflowProblem("-", str(path), "the workflow file does not exist",
                                            "check the path")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowError(WorkflowProblem("-", path.name, f"not a JSON file ({exc})",
                                            "export the workflow from ComfyUI (Save, or Export (API))")) from None
    if not isinstance(data, dict) or not (is_ui_format(data) or is_api_format(data)):
        raise WorkflowError(WorkflowProblem("-", path.name, "not a ComfyUI workflow (UI or API format)",
                                            "export the workflow from ComfyUI (Save, or Export (API))"))
    problems = structure_problems(data)
    if problems:
        raise WorkflowError(problems)
    return data


def structure_problems(data) -> list[WorkflowProblem]:
    """What makes a file impossible to read as a workflow at all, one line per node: checked before
    anything else reads it, so a malformed file never ends in a traceback."""
    if not isinstance(data, dict):
        return [WorkflowProblem("-", "workflow", "not a ComfyUI workflow (UI or API format)",
                                "export the workflow from ComfyUI (Save, or Export (API))")]
    if is_ui_format(data):
        return _ui_structure_problems(data)
    problems = []
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            problems.append(WorkflowProblem(str(node_id), "?", "has no class_type", "export the workflow again"))
        elif not isinstance(node.get("inputs", {}), dict):
            problems.append(WorkflowProblem(str(node_id), node["class_type"], "its inputs are not a mapping of "
                                            "names to values", "export the workflow again (Export (API))"))
    return problems


def _ui_structure_problems(data: dict) -> list[WorkflowProblem]:
    problems, ids = [], set()
    for index, node in enumerate(data["nodes"]):
        where = str(node.get("id", f"#{index + 1}")) if isinstance(node, dict) else f"#{index + 1}"
        fix = "save the workflow again from ComfyUI"
        if not isinstance(node, dict):
            problems.append(WorkflowProblem(where, "?", "is not a node object", fix))
            continue
        title = str(node.get("type", "?"))
        if not isinstance(node.get("id"), (int, str)) or isinstance(node.get("id"), bool):
            problems.append(WorkflowProblem(where, title, "has no id", fix))
        elif node["id"] in ids:
            problems.append(WorkflowProblem(where, title, "shares its id with another node", fix))
        ids.add(node.get("id"))
        if not isinstance(node.get("type"), str):
            problems.append(WorkflowProblem(where, title, "has no type", fix))
        if not isinstance(node.get("inputs", []), list) or not all(isinstance(i, dict) for i in node.get("inputs", [])):
            problems.append(WorkflowProblem(where, title, "its inputs are not a list of slots", fix))
        if not isinstance(node.get("widgets_values", []), (list, dict)):
            problems.append(WorkflowProblem(where, title, "its widget values are not a list", fix))
    for link in data["links"]:
        if not (isinstance(link, list) and len(link) == 6 and all(isinstance(v, (int, str)) for v in link[:5])):
            problems.append(WorkflowProblem("-", "links", f"the link {str(link)[:60]} is not [id, from node, from "
                                            "slot, to node, to slot, type]", "save the workflow again from ComfyUI"))
    return problems


def is_ui_format(data: dict) -> bool:
    return isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)


def is_api_format(data: dict) -> bool:
    return bool(data) and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def node_title(node: dict, titles: dict) -> str:
    """The title the editor shows: a user's own, else the node's display name."""
    kind = node.get("type", "?")
    return node.get("title") or titles.get(kind, kind)


# ---- widgets ------------------------------------------------------------------------------
def read_widgets(node: dict, node_class) -> dict:
    """{input name: saved value} for the node's widgets."""
    saved = node.get("widgets_values")
    expected = widget_inputs(node_class)
    if isinstance(saved, dict):
        return {w.name: saved[w.name] for w in expected if w.name in saved}
    values, position = {}, 0
    for widget in expected:
        if position < len(saved or []):
            values[widget.name] = saved[position]
        position += 1 + widget.extra_values
    return values


def check_widgets(workflow: dict, classes: dict, titles: dict) -> list[WorkflowProblem]:
    """Saved widget names, count and values against the nodes' current inputs."""
    problems = []
    for node in workflow.get("nodes", []):
        node_class = classes.get(node.get("type"))
        if node_class is None:
            continue
        node_id, title = str(node.get("id")), node_title(node, titles)
        expected = widget_inputs(node_class)
        saved_names = [i["widget"].get("name", i.get("name")) for i in node.get("inputs", [])
                       if isinstance(i, dict) and isinstance(i.get("widget"), dict)]
        # A file saved before optional widgets were added at the end loads in ComfyUI with their
        # defaults (the editor assigns the saved values in order): so does it here.
        kept = _widgets_saved_before_optional_ones(expected, saved_names, node.get("widgets_values"))
        expected = expected[:kept]
        if saved_names and saved_names != [w.name for w in expected]:
            problems.append(WorkflowProblem(
                node_id, title, f"saved widgets {saved_names} but the node now has {[w.name for w in expected]}",
                "re-create the node in the editor (or update the workflow file) so values land on the right inputs"))
            continue
        saved = node.get("widgets_values")
        if isinstance(saved, list):
            count = sum(1 + w.extra_values for w in expected)
            if len(saved) != count:
                problems.append(WorkflowProblem(
                    node_id, title, f"saves {len(saved)} widget values but the node now takes {count}",
                    "re-create the node in the editor so values land on the right inputs"))
                continue
        for widget in expected:
            value = read_widgets(node, node_class).get(widget.name)
            problem = value_problem(widget, value)
            if problem:
                problems.append(WorkflowProblem(node_id, title, f"{widget.name} = {value!r}: {problem}",
                                                f"set {widget.name} to a valid value"))
    return problems


def _widgets_saved_before_optional_ones(expected: list, saved_names: list, saved) -> int:
    """How many of the node's widgets the file holds, when it lacks only optional widgets at the end;
    else all of them (and the checks then say what does not match)."""
    for kept in range(len(expected) - 1, -1, -1):
        if expected[kept].required:
            break
        if saved_names and saved_names == [w.name for w in expected[:kept]]:
            return kept
        if not saved_names and isinstance(saved, list) and len(saved) == sum(1 + w.extra_values
                                                                              for w in expected[:kept]):
            return kept
    return len(expected)


def value_problem(widget: InputDef, value) -> str | None:
    """Why `value` does not fit `widget`, or None."""
    options = widget.options
    if widget.type_name == "COMBO":
        choices = list(widget.type)
        if value not in choices:
            shown = ", ".join(map(str, choices[:8])) + (" ..." if len(choices) > 8 else "")
            return f"not one of the choices ({shown or 'none available'})"
        return None
    if widget.type_name == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return "expected a whole number"
    elif widget.type_name == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "expected a number"
        if not math.isfinite(value):
            return "expected a finite number"
    elif widget.type_name == "STRING":
        return None if isinstance(value, str) else "expected text"
    elif widget.type_name == "BOOLEAN":
        return None if isinstance(value, bool) else "expected true or false"
    if "min" in options and value < options["min"]:
        return f"below the minimum {options['min']}"
    if "max" in options and value > options["max"]:
        return f"above the maximum {options['max']}"
    return None


# ---- UI -> API ----------------------------------------------------------------------------
def ui_to_api(workflow: dict, classes: dict, titles: dict) -> dict:
    nodes = {str(n["id"]): n for n in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict] = {}
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        node_class = classes.get(kind)
        if node_class is None:
            raise WorkflowError(unknown_node_problem(node_id, node_title(node, titles), kind, classes))
        inputs = dict(read_widgets(node, node_class))
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            source = _resolve_link(slot["link"], links, nodes, titles)
            if source is not None:
                inputs[slot["name"]] = source
        prompt[node_id] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node_title(node, titles)}}
    return prompt


def unknown_node_problem(node_id: str, title: str, kind: str, classes: dict) -> WorkflowProblem:
    if kind.startswith("Omni"):  # saved by another version of the pack (ComfyUI's check asks too)
        return WorkflowProblem(node_id, title, f"unknown node type {kind!r}",
                               "this version of the pack has no such node: update the pack, or replace the node")
    return WorkflowProblem(node_id, title, f"unknown node type {kind!r}",
                           "headless runs know this pack's Omni nodes and " + ", ".join(
                               sorted(k for k in classes if not k.startswith("Omni")))
                           + "; run other nodes in ComfyUI itself")


def _resolve_link(link_id, links, nodes, titles):
    """Follow a link through reroutes, primitives and bypassed nodes to [node_id, slot] or a value."""
    seen = set()
    while True:
        if link_id in seen or link_id not in links:
            return None
        seen.add(link_id)
        _, source_id, source_slot, _, _, link_type = links[link_id]
        source = nodes.get(str(source_id))
        if source is None:
            return None
        kind, mode = source.get("type"), source.get("mode", 0)
        if kind == "PrimitiveNode":
            return (source.get("widgets_values") or [None])[0]
        if kind == "Reroute":
            link_id = (source.get("inputs") or [{}])[0].get("link")
            continue
        if mode == MODE_BYPASS:
            # A bypassed node passes through its first linked input of the same type.
            passthrough = [i for i in source.get("inputs", []) if i.get("link") is not None
                           and i.get("type") == link_type]
            if not passthrough:
                raise WorkflowError(WorkflowProblem(str(source_id), node_title(source, titles),
                                                    f"is bypassed but has no {link_type} input to pass through",
                                                    "un-bypass it or connect its input"))
            link_id = passthrough[0]["link"]
            continue
        if mode == MODE_MUTED:
            return None
        return [str(source_id), source_slot]
