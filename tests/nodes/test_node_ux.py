"""What a user meets in ComfyUI's editor: tooltips on every input, one error per mistake, and model
and LoRA lists that show a broken file as broken instead of offering it."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch

from omni_backend.errors import OmniInputError
from omni_backend.weights import model_folder
from omni_diffusion_nodes.graph.prompt_check import validate_prompt
from omni_diffusion_nodes.headless.executor import NodeExecutionError, execute
from omni_diffusion_nodes.headless.node_classes import all_node_classes
from omni_diffusion_nodes.headless.validate import validate_workflow
from omni_diffusion_nodes.nodes import comfy_bridge


# ---- tooltips ------------------------------------------------------------------------------
def test_every_input_of_every_node_has_a_tooltip(headless, nodes):
    missing = []
    for node_id, node_class in nodes.items():
        for section in ("required", "optional"):
            for name, spec in node_class.INPUT_TYPES().get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip", "")).strip():
                    missing.append(f"{node_id}.{name}")
    assert not missing, f"inputs without a tooltip: {', '.join(missing)}"


# ---- one error per mistake -----------------------------------------------------------------
def validator_inputs(node_class) -> list[str]:
    parameters = inspect.signature(node_class.VALIDATE_INPUTS).parameters.values()
    return [p.name for p in parameters if p.kind is not p.VAR_POSITIONAL]


def test_every_validator_names_one_input(nodes):
    """ComfyUI repeats a failing VALIDATE_INPUTS verdict once per input the function names."""
    for node_id, node_class in nodes.items():
        if hasattr(node_class, "VALIDATE_INPUTS"):
            assert len(validator_inputs(node_class)) == 1, (node_id, validator_inputs(node_class))


class ThreeInputCheck:
    """A node whose validator names three inputs, as the Parallel Config's used to (it named eight)."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 1, "min": 1, "max": 4}), "b": ("INT", {"default": 1}),
                             "c": ("INT", {"default": 1})}}

    @classmethod
    def VALIDATE_INPUTS(cls, a=None, b=None, c=None):
        return "a x b x c is too big. Fix: lower one" if (a or 1) * (b or 1) * (c or 1) > 8 else True


class Constant:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


def test_headless_validation_counts_a_failing_validator_as_comfyui_does():
    classes = {"ThreeInputCheck": ThreeInputCheck, "Constant": Constant}
    three_constants = {"1": {"class_type": "ThreeInputCheck", "inputs": {"a": 3, "b": 3, "c": 3}}}
    assert len(validate_prompt(three_constants, classes)) == 3, "one error per input passed to the validator"
    one_linked = {"1": {"class_type": "ThreeInputCheck", "inputs": {"a": 3, "b": 3, "c": ["2", 0]}},
                  "2": {"class_type": "Constant", "inputs": {}}}
    assert len(validate_prompt(one_linked, classes)) == 2, "a linked input is not passed (nor counted)"
    # An input the validator names is left to it: ComfyUI skips its own min/max check for it.
    too_big = validate_prompt({"1": {"class_type": "ThreeInputCheck", "inputs": {"a": 9, "b": 1, "c": 1}}}, classes)
    assert too_big[0].problem == "a x b x c is too big. Fix: lower one", "another pack's verdict is kept whole"


def parallel_prompt(**layout) -> dict:
    degrees = dict(ulysses_degree=1, ring_degree=1, cfg_parallel=1, tensor_parallel=1, vae_patch_parallel=1,
                   devices="auto", remote_ranks=0, rendezvous="")
    return {
        "1": {"class_type": "OmniLoadModel", "inputs": {"model_name": "z-image", "dtype": "auto", "device": "cpu"}},
        "2": {"class_type": "OmniParallelConfig", "inputs": {"model": ["1", 0], **degrees, **layout}},
        "3": {"class_type": "OmniSampleV2", "inputs": {
            "model": ["2", 0], "prompt": "a circle", "negative_prompt": "", "seed": 1, "steps": 2, "guidance": 1.0,
            "width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "OmniVAEDecodeImages", "inputs": {"model": ["2", 0], "samples": ["3", 0], "tile_size": 0,
                                                        "tile_overlap": 64}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }


@pytest.mark.parametrize("layout, named", [
    (dict(ulysses_degree=2, vae_patch_parallel=4), "vae_patch_parallel"),
    (dict(ring_degree=2, remote_ranks=1), "rendezvous"),
    (dict(ring_degree=2, devices="cpu,cpu,cpu"), "devices"),
])
def test_an_impossible_parallel_layout_is_one_error(headless, layout, named):
    prompt = parallel_prompt(**layout)
    assert validate_prompt(prompt, all_node_classes()) == [], "the queue check reports nothing per input"
    problems = validate_workflow(prompt)  # the queue check, then the spec-building nodes run
    assert len(problems) == 1 and problems[0].node_id == "2", [str(p) for p in problems]
    assert problems[0].problem.startswith(f"{named} = ")
    with pytest.raises(NodeExecutionError) as info:  # when queued, the node fails once, before Sample
        execute(prompt, all_node_classes())
    assert info.value.node_id == "2" and f"{named} = " in str(info.value)
    assert headless.progress_log == [], "nothing was sampled"


def test_fp8_text_encoder_without_fp8_is_one_error(headless):
    prompt = parallel_prompt()
    prompt["2"] = {"class_type": "OmniOffloadFP8", "inputs": {"model": ["1", 0], "offload": "none",
                                                            "blocks_on_device": 2, "fp8": "off",
                                                            "fp8_text_encoder": True}}
    problems = validate_workflow(prompt)
    assert [(p.node_id, p.problem.split(":")[0]) for p in problems] == [("2", "fp8_text_encoder = True")]


# ---- broken files in the lists -------------------------------------------------------------
@pytest.fixture()
def own_models(headless, models_dir, tmp_path):
    """A models folder of its own (the session's stays intact): one good and one breakable copy of
    a tiny model, and one good LoRA."""
    root = tmp_path / "own-models"
    for name in ("good", "broken"):
        shutil.copytree(models_dir / "diffusers" / "z-image", root / "diffusers" / name)
    (root / "loras").mkdir()
    shutil.copy(models_dir / "loras" / "qwen-image-style-lora.safetensors", root / "loras" / "good.safetensors")
    headless.models_dir = root
    return root


def model_list(nodes) -> list[str]:
    return nodes["OmniLoadModel"].INPUT_TYPES()["required"]["model_name"][0]


def lora_list(nodes) -> list[str]:
    return nodes["OmniLoadLoRA"].INPUT_TYPES()["required"]["lora_name"][0]


def test_a_folder_with_a_missing_weights_file_is_marked_and_says_restore_it(own_models, nodes):
    weights = own_models / "diffusers" / "broken" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file()
    kept = weights.with_name("kept-aside")
    weights.rename(kept)
    marked = "broken (broken: weights missing)"
    assert model_list(nodes) == [marked, "good"]

    verdict = nodes["OmniLoadModel"].VALIDATE_INPUTS(marked)
    assert "transformer/diffusion_pytorch_model.safetensors" in verdict and "Fix: restore the missing file" in verdict
    assert nodes["OmniLoadModel"].VALIDATE_INPUTS("broken") == verdict, "an older workflow's plain name too"
    with pytest.raises(OmniInputError, match="Fix: restore the missing file"):
        nodes["OmniLoadModel"]().load(marked, "auto", "cpu")

    kept.rename(weights)  # restored: offered again, without waiting for a restart
    assert model_list(nodes) == ["broken", "good"]
    assert nodes["OmniLoadModel"].VALIDATE_INPUTS("broken") is True


def test_a_missing_shard_of_a_sharded_component_is_marked(own_models, nodes):
    component = own_models / "diffusers" / "broken" / "text_encoder"
    (component / "model.safetensors").rename(component / "model-00001-of-00002.safetensors")
    (component / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
    assert model_list(nodes) == ["broken (broken: weights missing)", "good"]
    verdict = nodes["OmniLoadModel"].VALIDATE_INPUTS("broken")
    assert "text_encoder/model-00002-of-00002.safetensors" in verdict and "model.safetensors.index.json" in verdict


def test_the_model_list_is_checked_again_only_when_a_folder_changes(own_models, nodes, monkeypatch):
    """ComfyUI builds the list on every INPUT_TYPES call: unchanged folders are not read again."""
    model_list(nodes)
    reads = []
    original = model_folder._read_folder
    monkeypatch.setattr(model_folder, "_read_folder", lambda *args: reads.append(args[0].name) or original(*args))
    for _ in range(3):
        assert model_list(nodes) == ["broken", "good"]
    assert reads == []
    (own_models / "diffusers" / "broken" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert model_list(nodes) == ["broken (broken: weights missing)", "good"]
    assert reads == ["broken"]


@pytest.mark.parametrize("damage", ["truncated", "renamed pickle"])
def test_a_lora_that_is_not_valid_safetensors_is_marked(own_models, nodes, damage):
    bad = own_models / "loras" / "bad.safetensors"
    if damage == "truncated":
        data = (own_models / "loras" / "good.safetensors").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"lora_down.weight": torch.zeros(2, 2)}, bad)
    marked = "bad.safetensors (broken: not a valid safetensors file)"
    assert lora_list(nodes) == [marked, "good.safetensors"]
    verdict = nodes["OmniLoadLoRA"].VALIDATE_INPUTS(marked)
    assert "bad.safetensors" in verdict and "not a valid safetensors file" in verdict and "Fix: " in verdict
    assert comfy_bridge.list_files("loras", (".safetensors",)) == ["bad.safetensors", "good.safetensors"]
