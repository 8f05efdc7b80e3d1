"""Run an API-format prompt: check it as ComfyUI's queue does (graph/prompt_check.py), then execute
the output nodes.

A small stand-in for ComfyUI's executor (no caching between prompts, no async, no lazy inputs):
enough to run shared workflows of this pack and ComfyUI's image I/O nodes headless.
"""

from __future__ import annotations

from omni_backend.errors import OmniError, OmniInterrupted

from ..graph.prompt_check import is_link, node_title_in, validate_prompt
from ..graph.workflow_format import WorkflowError, WorkflowProblem, problem_from_error
from ..nodes import comfy_bridge


class NodeExecutionError(OmniError, RuntimeError):
    def __init__(self, node_id: str, title: str, class_type: str, error: Exception):
        self.node_id, self.title, self.class_type, self.error = node_id, title, class_type, error
        super().__init__(f"node {node_id} ({title}, {class_type}) failed: {error}")


def _settings_problems(prompt: dict, classes: dict) -> list[WorkflowProblem]:
    """Nodes that can check their own settings (`check_inputs`, e.g. where Save Image writes) do so
    before anything runs, so a bad setting does not cost a whole generation first."""
    problems = []
    for node_id, node in prompt.items():
        check = getattr(classes[node["class_type"]], "check_inputs", None)
        if check is None:
            continue
        constants = {k: v for k, v in node.get("inputs", {}).items() if not is_link(v)}
        try:
            check(**constants)
        except TypeError:
            continue  # it needs an input only the run produces (e.g. the model): checked when it runs
        except OmniError as exc:
            problems.append(problem_from_error(node_id, node_title_in(prompt, node_id), exc))
    return problems


def execute(prompt: dict, classes: dict, extra_pnginfo: dict | None = None) -> dict:
    """Run every output node (and what it needs); returns {node_id: ui dict} of the output nodes."""
    problems = validate_prompt(prompt, classes)
    problems += [] if problems else _settings_problems(prompt, classes)
    if problems:
        raise WorkflowError(problems)
    results: dict[str, tuple] = {}
    ui: dict[str, dict] = {}
    running: set[str] = set()

    def run(node_id: str) -> tuple:
        if node_id in results:
            return results[node_id]
        if node_id in running:
            raise WorkflowError(WorkflowProblem(node_id, node_title_in(prompt, node_id), "is part of a cycle",
                                                "remove the loop between nodes"))
        running.add(node_id)
        node = prompt[node_id]
        node_class = classes[node["class_type"]]
        kwargs = {}
        for name, value in node.get("inputs", {}).items():
            kwargs[name] = run(str(value[0]))[value[1]] if is_link(value) else value
        for name, value in kwargs.items():
            if isinstance(value, comfy_bridge.ExecutionBlocker):  # as ComfyUI: the node does not run
                raise NodeExecutionError(node_id, node_title_in(prompt, node_id), node["class_type"],
                                         RuntimeError(f"Execution Blocked: {value.message} (input {name})"))
        hidden = node_class.INPUT_TYPES().get("hidden", {})
        for name, kind in hidden.items():
            kwargs[name] = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo, "UNIQUE_ID": node_id}.get(kind)
        try:
            output = getattr(node_class(), node_class.FUNCTION)(**kwargs)
        except OmniInterrupted:
            raise
        except Exception as exc:
            raise NodeExecutionError(node_id, node_title_in(prompt, node_id), node["class_type"], exc) from exc
        if isinstance(output, dict):
            if output.get("ui"):
                ui[node_id] = output["ui"]
            output = tuple(output.get("result", ()))
        results[node_id] = tuple(output or ())
        running.discard(node_id)
        return results[node_id]

    for node_id, node in prompt.items():
        if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
            run(node_id)
    return ui
