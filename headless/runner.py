"""Run a workflow file headless: read it, convert to an API prompt, execute, report files written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..graph.workflow_format import WorkflowError, is_ui_format, load_workflow, structure_problems, ui_to_api
from ..nodes import NODE_DISPLAY_NAME_MAPPINGS, comfy_bridge
from .executor import execute
from .node_classes import all_node_classes


@dataclass
class WorkflowRun:
    files: list[Path]
    ui: dict = field(default_factory=dict)  # node id -> what the node showed (e.g. Sample's report)


def configure(models_dir: str | Path | None = None, output_dir: str | Path | None = None,
              input_dir: str | Path | None = None) -> None:
    host = comfy_bridge.HEADLESS
    if models_dir is not None:
        host.models_dir = Path(models_dir)
    if output_dir is not None:
        host.output_dir = Path(output_dir)
    if input_dir is not None:
        host.input_dir = Path(input_dir)


def to_prompt(workflow: dict) -> dict:
    return ui_to_api(workflow, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS) if is_ui_format(workflow) else workflow


def run_workflow(workflow: str | Path | dict, **folders) -> WorkflowRun:
    configure(**folders)
    data = workflow if isinstance(workflow, dict) else load_workflow(workflow)
    problems = structure_problems(data)
    if problems:
        raise WorkflowError(problems)
    host = comfy_bridge.HEADLESS
    host.written = []
    host.stop.clear()
    extra = {"workflow": data} if is_ui_format(data) else None
    ui = execute(to_prompt(data), all_node_classes(), extra_pnginfo=extra)
    return WorkflowRun(files=list(host.written), ui=ui)
