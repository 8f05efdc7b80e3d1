"""An API-format prompt checked as ComfyUI's queue checks it before running anything: every node
known, required inputs present, links to outputs that exist, widget values in range, each node's
VALIDATE_INPUTS called (and counted) as ComfyUI calls it, no loop of links, an output node.

The headless executor runs this before executing; `omni-diffusion validate` and the server's check
route (check.py) run it without executing.
"""

from __future__ import annotations

import dataclasses
import inspect

from omni_backend.errors import OmniError

from .node_defs import node_inputs
from .workflow_format import WorkflowProblem, problem_from_error, unknown_node_problem, value_problem


def node_title_in(prompt: dict, node_id: str) -> str:
    """The title the converter kept for the node (ui_to_api), else its type."""
    return prompt[node_id].get("_meta", {}).get("title") or prompt[node_id]["class_type"]


def validate_prompt(prompt: dict, classes: dict) -> list[WorkflowProblem]:
    problems = []
    for node_id, node in prompt.items():
        node_class = classes.get(node["class_type"])
        if node_class is None:
            problems.append(unknown_node_problem(node_id, node_title_in(prompt, node_id), node["class_type"], classes))
            continue
        problems += _node_problems(prompt, node_id, node_class, classes)
    problems += _cycle_problems(prompt)
    if not any(getattr(classes.get(n["class_type"]), "OUTPUT_NODE", False) for n in prompt.values()):
        problems.append(WorkflowProblem("-", "prompt", "the workflow has no output node",
                                        "add a Save Image or Preview Image node"))
    return problems


def _node_problems(prompt: dict, node_id: str, node_class, classes: dict) -> list[WorkflowProblem]:
    title = node_title_in(prompt, node_id)
    given = prompt[node_id].get("inputs", {})
    validated = _validator_inputs(node_class)
    problems, constants, received_types = [], {}, {}
    for definition in node_inputs(node_class):
        value = given.get(definition.name)
        if value is None:
            if definition.required:
                problems.append(WorkflowProblem(node_id, title, f"required input {definition.name!r} is missing",
                                                f"connect or set {definition.name}"))
            continue
        if is_link(value):
            problem = _link_problem(prompt, classes, definition.name, value)
            if problem:
                problems.append(WorkflowProblem(node_id, title, problem, "reconnect the input"))
            else:
                source = prompt[str(value[0])]
                received_types[definition.name] = _output_type(classes.get(source.get("class_type")), value[1])
            continue
        constants[definition.name] = value
        if definition.is_widget:
            # As ComfyUI: an input the node's VALIDATE_INPUTS takes is checked by it, not against the
            # widget's list or range (that is how a node accepts names its list does not show).
            checked = _type_only(definition) if validated.takes(definition.name) else definition
            problem = value_problem(checked, value) if checked is not None else None
            if problem:
                problems.append(WorkflowProblem(node_id, title, f"{definition.name} = {value!r}: {problem}",
                                                f"set {definition.name} to a valid value"))
    if validated.function is not None:
        problems += _custom_validation(node_id, title, node_class, validated, constants, received_types)
    return problems


class _ValidatorInputs:
    """Which inputs a node's VALIDATE_INPUTS takes: named parameters, or all of them with **kwargs."""

    def __init__(self, function):
        self.function = function
        self.names, self.any_name = set(), False
        if function is not None:
            parameters = inspect.signature(function).parameters.values()
            self.names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            self.any_name = any(p.kind is p.VAR_KEYWORD for p in parameters)

    def takes(self, name: str) -> bool:
        return self.any_name or name in self.names


def _validator_inputs(node_class) -> _ValidatorInputs:
    return _ValidatorInputs(getattr(node_class, "VALIDATE_INPUTS", None))


def _custom_validation(node_id, title, node_class, validated, constants, received_types) -> list[WorkflowProblem]:
    """Call VALIDATE_INPUTS as ComfyUI's validate_inputs (execution.py) does, and count as it does.

    ComfyUI passes only the inputs the function names that have a value at queue time (widget
    values and hidden inputs; linked inputs are left out, so their parameters keep their defaults),
    plus `input_types` when named. A failing verdict becomes one error *per input passed*: a
    validator that names eight inputs shows one failure eight times. We report it the same way, so
    a test here sees what a ComfyUI user sees.
    """
    passed = {name: value for name, value in {**constants, **_hidden_values(node_class, node_id)}.items()
              if validated.takes(name)}
    if "input_types" in validated.names:
        passed["input_types"] = received_types
    check = getattr(node_class, "queue_check", None)
    if check is not None:  # ours: the same check, with the error's fields instead of its text
        try:
            check(**{name: value for name, value in passed.items() if name in validated.names})
            return []
        except OmniError as exc:
            return [problem_from_error(node_id, title, exc)] * len(passed)
    verdict = validated.function(**passed)
    if verdict is True:
        return []
    return [WorkflowProblem(node_id, title, str(verdict), "change the input named above")] * len(passed)


def _hidden_values(node_class, node_id: str) -> dict:
    # At queue time ComfyUI has no prompt object for PROMPT yet ({}), and no extra_pnginfo.
    values = {"PROMPT": {}, "EXTRA_PNGINFO": None, "UNIQUE_ID": node_id}
    hidden = node_class.INPUT_TYPES().get("hidden", {})
    return {name: values.get(kind) for name, kind in hidden.items()}


def _type_only(definition):
    """The input without its range (only the value's type is checked); None for a list, which
    ComfyUI then leaves to the validator entirely."""
    if definition.type_name == "COMBO":
        return None
    options = {k: v for k, v in definition.options.items() if k not in ("min", "max")}
    return dataclasses.replace(definition, options=options)


def _output_type(source_class, slot: int):
    outputs = tuple(getattr(source_class, "RETURN_TYPES", ()))
    return outputs[slot] if isinstance(slot, int) and 0 <= slot < len(outputs) else None


def _link_problem(prompt: dict, classes: dict, name: str, link) -> str | None:
    source = prompt.get(str(link[0]))
    if source is None:
        return f"{name} is connected to missing node {link[0]}"
    outputs = getattr(classes.get(source["class_type"]), "RETURN_TYPES", ())
    if not 0 <= link[1] < len(outputs):
        return (f"{name} is connected to output {link[1]} of node {link[0]} ({source['class_type']}), "
                f"which has {len(outputs)} output(s)")
    return None


def _cycle_problems(prompt: dict) -> list[WorkflowProblem]:
    """One problem per loop of links (ComfyUI refuses such a prompt before running anything)."""
    state: dict[str, str] = {}
    problems = []

    def visit(node_id: str) -> None:
        state[node_id] = "open"
        for value in prompt[node_id].get("inputs", {}).values():
            source = str(value[0]) if is_link(value) else None
            if source not in prompt:
                continue
            if state.get(source) == "open":
                problems.append(WorkflowProblem(node_id, node_title_in(prompt, node_id),
                                                f"is part of a cycle (through node {source})",
                                                "remove the loop between the nodes"))
            elif source not in state:
                visit(source)
        state[node_id] = "done"

    for node_id in prompt:
        if node_id not in state:
            visit(node_id)
    return problems


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
