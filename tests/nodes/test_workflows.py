"""The shipped workflows: valid against ComfyUI's schema, widgets matching the nodes, and they run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from comfyui_host import (COMFYUI_PATH, SUBSET_SINGLE_FILES, covering_subset, host_traits, node_types, only_cases,
                          output_kind, ranks, with_quick_steps)
from omni_diffusion_nodes.graph.workflow_format import (
    WorkflowError,
    check_widgets,
    load_workflow,
)
from omni_diffusion_nodes.headless.node_classes import all_node_classes
from omni_diffusion_nodes.headless.runner import run_workflow
from omni_diffusion_nodes.nodes import NODE_DISPLAY_NAME_MAPPINGS

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
# Shipped files as saved before Sample's options moved to option nodes and the decoder split by output kind
# (OmniSample with every option a widget, OmniVAEDecode with three outputs): they must keep running.
SAVED_BEFORE = sorted((Path(__file__).resolve().parents[1] / "workflow_fixtures" / "saved-before-option-nodes").glob("*.json"))
# ComfyUI's workflow file schema (v0.4, what the frontend saves): see tests/reference/README.md.
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "reference" / "workflow-0.4.schema.json"


def test_there_is_a_workflow_per_family():
    """A new family module brings its workflow: the recipe reads the family's example_* fields."""
    from omni_backend.families import FAMILIES

    missing = set(FAMILIES) - {p.stem for p in WORKFLOWS}
    assert not missing, (f"no workflows/<family>.json for {sorted(missing)}: set example_model and example_sample "
                         "in the family module, then run `python -m omni_diffusion_nodes.headless.recipes workflows`")


def test_the_models_page_lists_every_family():
    """What cannot be generated from a family module: the Models table (docs/models.md), written for users."""
    from omni_backend.families import FAMILIES

    page = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    table = page[page.index("| Family | Pipeline |"):].split("\n\n")[0]
    for family in FAMILIES.values():
        assert family.example_model, f"{family.key}: set example_model (the real checkpoint's folder name)"
        assert any(name in table for name in family.pipeline_classes), \
            f"add a row for {family.title} ({family.pipeline_classes[0]}) to the Models table in docs/models.md"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_comfyui_schema(path):
    jsonschema.validate(json.loads(path.read_text()), json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_saved_widgets_match_current_node_inputs(headless, path):
    assert check_widgets(load_workflow(path), all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS) == []


def _headless_runs_it(path: Path) -> bool:
    """Every workflow, but while the real-ComfyUI tier runs (it runs every one in a real server, with the
    same nodes and engine) only the fewest that cover what the headless host adds: its core-node
    stand-ins and every output kind."""
    return not COMFYUI_PATH or path in covering_subset(WORKFLOWS, host_traits, first=())


@pytest.mark.slow
@only_cases(lambda path: _headless_runs_it(path))
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_headless(headless, path):
    run = run_workflow(with_quick_steps(path))
    assert run.files, "the workflow wrote no image"
    assert all(f.exists() and f.stat().st_size > 0 for f in run.files)
    if path.name == "qwen-image-layered.json":  # decode images + masks -> Join Image with Alpha -> one RGBA PNG a layer
        from PIL import Image

        options = next(n for n in load_workflow(path)["nodes"] if n["type"] == "OmniLayeredOptions")
        layers = options["widgets_values"][0]  # (layers, resolution)
        assert len(run.files) == layers and all(Image.open(f).mode == "RGBA" for f in run.files)


@pytest.mark.slow
@pytest.mark.parametrize("path", SAVED_BEFORE, ids=lambda p: p.name)
def test_workflows_saved_before_the_option_nodes_still_check_and_run(headless, path):
    """Files users saved with the old Sample (every option a widget) and the three-output decoder load with
    their widgets in place, pass the check, and run the same request: the layers asked for, the audio window,
    the video's frames."""
    from PIL import Image

    workflow = load_workflow(path)
    assert {n["type"] for n in workflow["nodes"]} >= {"OmniSample", "OmniVAEDecode"}
    assert check_widgets(workflow, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS) == []
    run = run_workflow(with_quick_steps(path))
    assert run.files and all(f.stat().st_size > 0 for f in run.files)
    sample = next(n for n in workflow["nodes"] if n["type"] == "OmniSample")
    if path.name == "qwen-image-layered.json":
        layers = sample["widgets_values"][-2]  # (layers, resolution) end the old Sample's widgets
        assert len(run.files) == layers and all(Image.open(f).mode == "RGBA" for f in run.files)
    if path.name.startswith("wan2.2"):
        frames = sample["widgets_values"][8]  # prompt, negative, seed, control, steps, guidance, width, height, frames
        assert frames > 1 and Image.open(run.files[0]).n_frames == frames
    if path.name == "stable-audio.json":
        import soundfile

        seconds = sample["widgets_values"][10]  # after frames and batch_size: seconds, start, ...
        assert soundfile.info(str(run.files[0])).duration == pytest.approx(seconds, abs=0.05)


def _sample_node(workflow):
    return next(n for n in workflow["nodes"] if n["type"] == "OmniSampleV2")


def test_reordered_widgets_are_caught(headless):
    workflow = load_workflow(WORKFLOWS[0])
    broken = copy.deepcopy(workflow)
    node = _sample_node(broken)
    widgets = [i for i in node["inputs"] if i.get("widget")]
    widgets[3], widgets[4] = widgets[4], widgets[3]  # as if two inputs had been swapped in INPUT_TYPES
    node["inputs"] = [i for i in node["inputs"] if not i.get("widget")] + widgets
    problems = check_widgets(broken, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS)
    assert len(problems) == 1 and "saved widgets" in problems[0].problem


def test_renamed_widget_is_caught(headless):
    broken = copy.deepcopy(load_workflow(WORKFLOWS[0]))
    node = _sample_node(broken)
    slot = next(i for i in node["inputs"] if i.get("widget", {}).get("name") == "guidance")
    slot["name"] = slot["widget"]["name"] = "cfg"  # as saved before a rename of "cfg" to "guidance"
    problems = check_widgets(broken, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS)
    assert len(problems) == 1 and "'cfg'" in problems[0].problem


def test_shifted_values_are_caught_without_widget_names(headless):
    """Older files carry no widget names: a missing value shifts the rest and is caught by count/type."""
    broken = copy.deepcopy(load_workflow(WORKFLOWS[0]))
    node = _sample_node(broken)
    node["inputs"] = [i for i in node["inputs"] if not i.get("widget")]
    del node["widgets_values"][2]  # the seed
    problems = check_widgets(broken, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS)
    # One value short may also read as "saved before the last optional widget": then the shifted values
    # land on inputs whose types they do not fit (seed control text where a number goes, ...).
    assert problems and any("widget values" in p.problem or "expected" in p.problem for p in problems)


def test_files_saved_before_layers_and_resolution_still_check(headless):
    """The old Sample's `layers` and `resolution` were added at the end of its optional widgets: a file saved
    without them loads in ComfyUI with their defaults, and the check agrees."""
    older = copy.deepcopy(load_workflow(SAVED_BEFORE[0]))
    node = next(n for n in older["nodes"] if n["type"] == "OmniSample")
    del node["widgets_values"][-2:]
    node["inputs"] = [i for i in node["inputs"] if i.get("widget", {}).get("name") not in ("layers", "resolution")]
    assert check_widgets(older, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS) == []


def test_out_of_range_value_is_caught(headless):
    broken = copy.deepcopy(load_workflow(WORKFLOWS[0]))
    _sample_node(broken)["widgets_values"][4] = 0  # steps (after prompt, negative, seed, seed control)
    problems = check_widgets(broken, all_node_classes(), NODE_DISPLAY_NAME_MAPPINGS)
    assert [p.problem for p in problems] == ["steps = 0: below the minimum 1"]
    with pytest.raises(WorkflowError, match="steps"):
        run_workflow(broken)


def test_api_format_runs_too(headless, tmp_path):
    from omni_diffusion_nodes.headless.runner import to_prompt

    prompt = to_prompt(load_workflow(WORKFLOWS[0]))
    sample = next(n for n in prompt.values() if n["class_type"] == "OmniSampleV2")
    sample["inputs"].update(steps=2, width=64, height=64)
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    assert run_workflow(path).files


def test_the_subset_covers_every_node_and_output_kind():
    """The subset an older ComfyUI runs (and the headless runner while the tier runs) is computed, so it
    must keep its promise."""
    subset = covering_subset(WORKFLOWS)
    assert {output_kind(p) for p in subset} == {"image", "video", "audio", "layered"}
    assert any(ranks(p) > 1 for p in subset)
    assert SUBSET_SINGLE_FILES in {p.name for p in subset}
    assert len(subset) < len(WORKFLOWS)
    hosted = covering_subset(WORKFLOWS, host_traits, first=())
    assert set().union(*map(host_traits, hosted)) == set().union(*map(host_traits, WORKFLOWS))
    assert {"SaveImage", "SaveAudio", "SaveAnimatedPNG", "JoinImageWithAlpha", "LoadImage"} <= \
        set().union(*map(node_types, hosted))
