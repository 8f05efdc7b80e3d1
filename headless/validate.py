"""`omni-diffusion validate`: check a shared workflow file (UI or API format) without loading any
weights, against the node types a headless run knows. The checks themselves are graph/check.py's,
the same the server's check route runs inside ComfyUI."""

from __future__ import annotations

from pathlib import Path

from ..graph.check import check_workflow
from ..graph.workflow_format import WorkflowError, WorkflowProblem, load_workflow
from ..nodes import NODE_DISPLAY_NAME_MAPPINGS
from .node_classes import all_node_classes
from .runner import configure


def validate_file(path: str | Path, models_dir: str | Path | None = None,
                  input_dir: str | Path | None = None) -> list[WorkflowProblem]:
    configure(models_dir=models_dir, input_dir=input_dir)
    try:
        workflow = load_workflow(path)
    except WorkflowError as exc:
        return exc.problems
    return validate_workflow(workflow)


def validate_workflow(workflow: dict) -> list[WorkflowProblem]:
    return check_workflow(workflow, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS)
