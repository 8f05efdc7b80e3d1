"""Check a workflow (UI or API format) without loading any weights: what `omni-diffusion validate`
reports for a whole workflow (check_workflow), and the server's check route for the pack's part of
the graph being edited (check_graph).

The checks, in the order a user meets them:
1. UI format: saved widget names/count/values against the nodes' current inputs (check_widgets),
   then the conversion to an API prompt;
2. the prompt as ComfyUI's queue checks it (required inputs, widget values, VALIDATE_INPUTS);
3. the features: every node that returns OMNI_MODEL is run. They only build specs and read model
   configs (weights load only when Sample first runs), so this costs milliseconds. They run under
   compat.collecting_problems(), so every incompatible combination in the graph is reported at the
   node that introduced it, not only the first. Sample and the decoder never run.

A node that fails is passed over as if bypassed (its input spec flows on), so the nodes after it
are still checked; a Load Omni Model that fails leaves its chain unchecked (nothing to check on).

`check_graph` is the same check on the part of a graph this pack's nodes make up: the browser
extension posts the graph being edited to ComfyUI's server (nodes/check_route.py) and marks the
nodes it answers for, so the browser holds no rules of its own.

`classes` and `titles` are the node types the caller knows, as ComfyUI's NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS (see workflow_format.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from omni_backend.errors import OmniError
from omni_backend.rules.compat import check_spec, collecting_problems

from .node_contract import LINKED, builds_options, builds_spec
from .prompt_check import is_link, node_title_in, validate_prompt
from .workflow_format import (FRONTEND_ONLY, WorkflowError, WorkflowProblem, check_widgets, is_ui_format,
                              problem_from_error, problem_from_rule, structure_problems, ui_to_api)


def check_workflow(workflow: dict, classes: dict, titles: dict) -> list[WorkflowProblem]:
    problems = structure_problems(workflow)
    if problems:
        return problems
    if is_ui_format(workflow):
        problems += check_widgets(workflow, classes, titles)
        try:
            prompt = ui_to_api(workflow, classes, titles)
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
        if node_class is None or not (builds_spec(node_class) or builds_options(node_class)):
            return None
        title = node_title_in(prompt, node_id)
        kwargs, upstream = {}, None
        for name, value in node.get("inputs", {}).items():
            if is_link(value) and builds_options(node_class):
                kwargs[name] = LINKED  # an option node's images: only a run has them
            elif is_link(value):
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
    for node_id, node in prompt.items():
        if node_id not in failed:
            problems += _check_consumer(node_id, prompt, classes, specs)
    return problems


def _check_consumer(node_id: str, prompt: dict, classes: dict, specs: dict) -> list[WorkflowProblem]:
    """A node that declares `check_inputs` (Sample: its settings and images against the model's family;
    Save Image: where it would write) is checked with its settings and the specs it receives, so
    validate refuses what run would refuse, without running it. An input only a run produces (an
    image, a latent) is passed as LINKED."""
    node = prompt[node_id]
    check = getattr(classes.get(node.get("class_type")), "check_inputs", None)
    if check is None:
        return []
    kwargs = {}
    for name, value in node.get("inputs", {}).items():
        if not is_link(value):
            kwargs[name] = value
            continue
        source = prompt.get(str(value[0]), {})
        source_class = classes.get(source.get("class_type"))
        if builds_spec(source_class) or builds_options(source_class):
            if specs.get(str(value[0])) is None:
                return []  # its model chain failed (reported there): nothing to check against
            kwargs[name] = specs[str(value[0])]
        else:
            kwargs[name] = LINKED
    try:
        check(**kwargs)
    except OmniError as exc:
        return [problem_from_error(node_id, node_title_in(prompt, node_id), exc)]
    except TypeError:
        return []  # an input is missing: the prompt check above reported it
    return []


# ---- the graph being edited (the browser extension asks through nodes/check_route.py) ---------------
@dataclass(frozen=True)
class GraphCheck:
    problems: list[WorkflowProblem]
    checked_nodes: dict  # the pack's spec-building nodes of the graph, as an API prompt (id -> node)


def check_graph(workflow: dict, classes: dict, titles: dict) -> GraphCheck:
    """The problems of the pack's nodes of a graph in the workflow file's UI format (what the editor's
    graph serializes to), and the nodes checked.

    Only the pack's nodes are checked (with the reroutes and primitives between them): other packs'
    nodes are ComfyUI's to check when the graph is queued.
    """
    structure = structure_problems(workflow)
    if structure:
        return GraphCheck(structure, {})
    graph = _pack_part(workflow)
    problems = check_widgets(graph, classes, titles)
    try:
        prompt = ui_to_api(graph, classes, titles)
    except WorkflowError as exc:
        prompt, problems = {}, problems + exc.problems
    builders = {node_id: node for node_id, node in prompt.items()
                if builds_spec(classes[node["class_type"]]) or builds_options(classes[node["class_type"]])}
    problems += [p for p in validate_prompt(builders, classes) if p.node_id in builders]
    problems += check_features(builders, classes, failed={p.node_id for p in problems})
    return GraphCheck(_unique(problems), builders)


def _pack_part(workflow: dict) -> dict:
    nodes = [n for n in workflow.get("nodes", []) if str(n.get("type", "")).startswith("Omni")
             or n.get("type") in FRONTEND_ONLY]
    kept = {n.get("id") for n in nodes}
    links = [link for link in workflow.get("links", []) if isinstance(link, list) and len(link) == 6
             and link[1] in kept and link[3] in kept]
    return {**workflow, "nodes": nodes, "links": links}


def _unique(problems: list[WorkflowProblem]) -> list[WorkflowProblem]:
    return list(dict.fromkeys(problems))
