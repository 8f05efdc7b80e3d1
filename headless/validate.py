"""`omni-diffusion validate`: check a shared workflow (UI or API format) without loading any weights.

The checks, in the order a user meets them:
1. UI format: saved widget names/count/values against the nodes' current inputs (check_widgets),
   then the conversion to an API prompt;
2. the prompt as ComfyUI's queue checks it (required inputs, widget values, VALIDATE_INPUTS);
3. the features: every node that returns OMNI_MODEL is run. They only build specs and read model
   configs (DESIGN.md: loading is lazy), so this costs milliseconds. They run under
   compat.collecting_problems(), so every incompatible combination in the graph is reported at the
   node that introduced it, not only the first. Sample and the decoder never run.

A node that fails is passed over as if bypassed (its input spec flows on), so the nodes after it
are still checked; a Load Omni Model that fails leaves its chain unchecked (nothing to check on).
The browser extension (web/graph_check.js) applies the same rules with the same semantics; the
shared fixtures in tests/workflow_fixtures keep the two in agreement.
"""

from __future__ import annotations

from pathlib import Path

from omni_backend.compat import Problem, check_spec, collecting_problems
from omni_backend.errors import OmniError, OmniIncompatibleError

from ..nodes.common import builds_spec
from .executor import validate_prompt
from .node_defs import all_node_classes
from .runner import configure
from .workflow_format import (WorkflowError, WorkflowProblem, check_widgets, is_ui_format, load_workflow,
                              ui_to_api)


def validate_file(path: str | Path, models_dir: str | Path | None = None) -> list[WorkflowProblem]:
    configure(models_dir=models_dir)
    try:
        workflow = load_workflow(path)
    except WorkflowError as exc:
        return exc.problems
    return validate_workflow(workflow)


def validate_workflow(workflow: dict) -> list[WorkflowProblem]:
    classes = all_node_classes()
    problems: list[WorkflowProblem] = []
    if is_ui_format(workflow):
        problems += check_widgets(workflow, classes)
        try:
            prompt = ui_to_api(workflow, classes)
        except WorkflowError as exc:
            return _unique(problems + exc.problems)
    else:
        prompt = workflow
    problems += validate_prompt(prompt, classes)
    problems += check_features(prompt, classes, failed={p.node_id for p in problems})
    return _unique(problems)


def check_features(prompt: dict, classes: dict, failed: set[str] = frozenset()) -> list[WorkflowProblem]:
    """Run the spec-building nodes along their links; `failed`: nodes whose inputs are already known
    to be wrong (they are passed over)."""
    specs: dict[str, object] = {}
    problems: list[WorkflowProblem] = []

    def spec_of(node_id: str):
        if node_id in specs:
            return specs[node_id]
        specs[node_id] = None  # a cycle gives nothing (validate_prompt reports missing links; run reports cycles)
        node = prompt.get(node_id)
        node_class = classes.get(node["class_type"]) if node else None
        if node_class is None or not builds_spec(node_class):
            return None
        title = node.get("_meta", {}).get("title") or node["class_type"]
        kwargs, upstream = {}, None
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                upstream = spec_of(str(value[0]))
                if upstream is None:
                    return None  # its chain failed upstream (already reported) or is not a spec
                kwargs[name] = upstream
            else:
                kwargs[name] = value
        if node_id in failed:
            specs[node_id] = upstream
            return upstream
        with collecting_problems() as found:
            try:
                output = getattr(node_class(), node_class.FUNCTION)(**kwargs)
            except OmniError as exc:
                problems.append(problem_from_error(node_id, title, exc))
                specs[node_id] = upstream
                return upstream
        inherited = set(check_spec(upstream)) if upstream is not None else set()
        for problem in found:
            if problem not in inherited:  # reported where it was introduced
                problems.append(problem_from_rule(node_id, title, problem))
        specs[node_id] = output[0]
        return output[0]

    for node_id in prompt:
        spec_of(node_id)
    return problems


def problem_from_rule(node_id: str, title: str, problem: Problem) -> WorkflowProblem:
    return WorkflowProblem(node_id, title, f"{problem.first} cannot be combined with {problem.second}: "
                                           f"{problem.reason}", problem.fix, rule=problem.rule)


def problem_from_error(node_id: str, title: str, error: OmniError) -> WorkflowProblem:
    if isinstance(error, OmniIncompatibleError):
        return problem_from_rule(node_id, title, Problem(error.first, error.second, error.reason, error.fix,
                                                         rule=error.rule))
    return WorkflowProblem(node_id, title, *split_fix(str(error)))


def split_fix(message: str) -> tuple[str, str]:
    """Our errors end in ". Fix: <fix>" (errors.py); the problem line puts the fix in its own place."""
    text, _, fix = message.rpartition(". Fix: ")
    return (text, fix) if text else (message, "see the message")


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _unique(problems: list[WorkflowProblem]) -> list[WorkflowProblem]:
    return list(dict.fromkeys(problems))
