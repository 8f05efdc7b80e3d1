"""Bad input gets an error naming the input, the value and the fix, before weights load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from omni_backend.engine import default_engine
from omni_backend.errors import OmniError, OmniInputError
from omni_backend.spec import ModelSpec
from omni_diffusion_nodes.headless.runner import run_workflow
from omni_diffusion_nodes.headless.workflow_format import WorkflowError


@pytest.fixture()
def broken_copy(headless):
    """make(name): a copy of a tiny model under models/diffusers/<name> to break; removed after the
    test, so the session's shared models folder stays as conftest built it."""
    made = []

    def make(name, family="z-image"):
        target = headless.models_dir / "diffusers" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(headless.models_dir / "diffusers" / family, target)
        made.append(target)
        return target

    yield make
    for target in made:
        shutil.rmtree(target, ignore_errors=True)


def assert_clear(error: Exception, *fragments):
    message = str(error)
    for fragment in (*fragments, "Fix:"):
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_unknown_model_name(headless, nodes):
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load("No-Such-Model", "auto", "auto")
    assert_clear(info.value, "model_name", "No-Such-Model", "not found")
    assert "not found" in nodes["OmniLoadModel"].VALIDATE_INPUTS("No-Such-Model")


@pytest.mark.parametrize("name", ["../diffusers/z-image", "/etc"])
def test_names_never_leave_the_model_folders(headless, nodes, name):
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load(name, "auto", "auto")
    assert_clear(info.value, "model_name", "only inside")


def test_folder_without_model_index(headless, nodes, tmp_path):
    with pytest.raises(OmniInputError) as info:
        ModelSpec.from_folder(str(tmp_path))
    assert_clear(info.value, "model_index.json is missing")


def test_unsupported_pipeline(headless, nodes, broken_copy):
    folder = broken_copy("sdxl-like")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load("sdxl-like", "auto", "auto")
    assert_clear(info.value, "StableDiffusionXLPipeline", "QwenImagePipeline")


def test_component_that_would_run_shipped_code(headless, nodes, broken_copy):
    folder = broken_copy("custom-code")
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["my_models", "EvilTransformer"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load("custom-code", "auto", "auto")
    assert_clear(info.value, "my_models", "run code")


def test_pickle_only_weights_are_refused(headless, nodes, broken_copy):
    folder = broken_copy("pickled")
    for weights in (folder / "transformer").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load("pickled", "auto", "auto")
    assert_clear(info.value, "pickle", ".safetensors")


def test_missing_component_folder(headless, nodes, broken_copy):
    folder = broken_copy("no-vae")
    shutil.rmtree(folder / "vae")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadModel"]().load("no-vae", "auto", "auto")
    assert_clear(info.value, "vae/", "missing")


@pytest.mark.parametrize("dtype, device, fragment", [("fp16", "cpu", "fp32"), ("auto", "cuda:3", "cuda:3")])
def test_impossible_dtype_or_device(headless, dtype, device, fragment):
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only refusals")
    with pytest.raises(OmniInputError) as info:
        ModelSpec.from_folder(str(headless.models_dir / "diffusers" / "z-image"), dtype=dtype, device=device)
    assert_clear(info.value, fragment)


@pytest.mark.parametrize("change, fragments", [
    (dict(width=100), ("width = 100", "multiple of 16", "use 96")),
    (dict(steps=0), ("steps = 0",)),
    (dict(frames=5), ("frames = 5", "image model")),
    (dict(batch_size=0), ("batch_size = 0",)),
])
def test_bad_sample_settings_fail_before_loading(headless, nodes, tiny_settings, change, fragments):
    engine = default_engine()
    engine.unload_all()
    (spec,) = nodes["OmniLoadModel"]().load("z-image", "auto", "auto")
    loads = engine.pipelines.load_count
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"]().sample(spec, **tiny_settings("z-image", **change))
    assert_clear(info.value, *fragments)
    assert engine.pipelines.load_count == loads, "a refused request must not load weights"


def test_video_frames_must_be_4k_plus_1(headless, nodes, tiny_settings):
    (spec,) = nodes["OmniLoadModel"]().load("wan2.2", "auto", "auto")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"]().sample(spec, **tiny_settings("wan2.2", frames=8))
    assert_clear(info.value, "frames = 8", "use 9")


def test_latent_from_another_model_is_refused_and_engine_stays_usable(headless, nodes, tiny_settings):
    (flux2,) = nodes["OmniLoadModel"]().load("flux2-klein", "auto", "auto")
    latent = nodes["OmniSample"]().sample(flux2, **tiny_settings("flux2-klein"))["result"][0]
    (sd3,) = nodes["OmniLoadModel"]().load("sd3", "auto", "auto")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniVAEDecode"]().decode(sd3, latent, 0, 64)
    assert_clear(info.value, "samples", "32", "16 channels", "flux2-klein")
    good = nodes["OmniSample"]().sample(sd3, **tiny_settings("sd3"))["result"][0]
    assert nodes["OmniVAEDecode"]().decode(sd3, good, 0, 64)["result"][0].shape[0] == 1


def test_workflow_that_is_not_json(headless, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(WorkflowError) as info:
        run_workflow(path)
    assert_clear(info.value, "not a JSON file")


def test_workflow_with_unknown_node(headless, tmp_path):
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps({"1": {"class_type": "KSampler", "inputs": {}},
                                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    with pytest.raises(WorkflowError) as info:
        run_workflow(path)
    assert_clear(info.value, "node 1", "KSampler", "ComfyUI itself")


def test_errors_are_omni_errors():
    assert issubclass(OmniInputError, OmniError) and issubclass(OmniInputError, ValueError)
