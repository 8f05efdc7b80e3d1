"""Bad input gets an error naming the input, the value and the fix, before weights load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from omni_backend.engine import default_engine
from omni_backend.errors import OmniError, OmniInputError
from omni_backend.spec import ModelSpec
from omni_diffusion_nodes.graph.workflow_format import WorkflowError
from omni_diffusion_nodes.headless.runner import run_workflow


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


def test_a_16_bit_png_loads_as_comfyui_loads_it(headless, tmp_path):
    """ComfyUI's Load Image scales 16-bit (mode I) pixels by 1/255 before making RGB: mid-grey stays
    mid-grey (Pillow's plain RGB conversion clips everything above 255, a nearly white image)."""
    import numpy as np
    from PIL import Image

    from omni_diffusion_nodes.headless.core_nodes import LoadImage

    ramp = (np.arange(48 * 64, dtype=np.float64).reshape(48, 64) * 65535 / (48 * 64 - 1)).astype(np.uint16)
    Image.fromarray(ramp).save(headless.input_dir / "deep.png")
    image, mask = LoadImage().load_image("deep.png")
    expected = np.clip(np.floor(ramp / 255), 0, 255) / 255  # i * (1 / 255), then 8-bit RGB
    assert image.shape == (1, 48, 64, 3) and not mask.any()
    assert abs(float(image.mean()) - 0.5) < 0.02, float(image.mean())
    assert np.abs(image[0, ..., 0].numpy() - expected).max() <= 1 / 255 + 1e-6


def test_validate_takes_the_input_folder_run_takes(headless, tmp_path, capsys):
    from conftest import write_example_image

    from omni_diffusion_nodes.headless import cli
    from omni_diffusion_nodes.headless.recipes import EXAMPLE_IMAGE, base_workflow

    elsewhere = write_example_image(tmp_path / "my-inputs" / "photo.png").parent
    workflow = base_workflow("qwen-image-edit", sample=dict(steps=1, width=64, height=48))
    next(n for n in workflow["nodes"] if n["type"] == "LoadImage")["widgets_values"][0] = "photo.png"
    path = tmp_path / "edit.json"
    path.write_text(json.dumps(workflow))
    assert EXAMPLE_IMAGE != "photo.png"
    assert cli.main(["validate", str(path), "--models-dir", str(headless.models_dir), "--input-dir",
                     str(elsewhere)]) == 0, capsys.readouterr()
    assert capsys.readouterr().out.strip() == "valid"
    assert cli.main(["validate", str(path), "--models-dir", str(headless.models_dir), "--input-dir",
                     str(tmp_path / "empty")]) == 1
    assert "photo.png" in capsys.readouterr().out


@pytest.mark.parametrize("keyword, value, named", [
    ("num_images_per_prompt", 0, "num_images_per_prompt"), ("num_inference_steps", 0, "num_inference_steps"),
    ("guidance_scale", -1.0, "guidance_scale"), ("num_frames", 5, "num_frames"), ("seed", -1, "seed"),
])
def test_the_python_api_names_the_keyword_the_caller_passed(headless, keyword, value, named):
    from omni_backend import Omni

    omni = Omni(model=str(headless.models_dir / "diffusers" / "z-image"), dtype="fp32", device="cpu")
    with pytest.raises(OmniInputError) as info:
        omni.generate(prompt="a red circle", width=64, height=64, **{keyword: value})
    assert info.value.input_name == named and str(info.value).startswith(f"{named} = "), str(info.value)


def test_a_single_file_whose_shapes_do_not_fit_is_named_not_called_a_folder(headless, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from omni_backend.engine import Engine
    from omni_backend.request import GenerationRequest
    from omni_backend.single_file.comfy_layout import template_file_names
    from omni_backend.single_file.model_files import ModelFiles

    names = template_file_names("flux", "bf16")
    source = headless.models_dir / "diffusion_models" / names["diffusion_model"]
    with safe_open(str(source), "pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    config = json.loads(metadata["config"])
    broken = tmp_path / "flux1-dev-edited.safetensors"
    save_file(tensors, broken, metadata={**metadata, "config": json.dumps({**config, "in_channels": 7})})
    encoders = headless.models_dir / "text_encoders"
    files = ModelFiles(str(broken), str(encoders / names["text_encoder"]),
                       str(headless.models_dir / "vae" / names["vae"]),
                       text_encoder_2=str(encoders / names["text_encoder_2"]))
    engine = Engine()
    try:
        with pytest.raises(OmniInputError) as info:
            engine.generate(ModelSpec.from_files(files, dtype="fp32", device="cpu"),
                            GenerationRequest(prompt="x", steps=1, width=64, height=64))
    finally:
        engine.unload_all()
    assert_clear(info.value, "diffusion_model", "flux1-dev-edited.safetensors", "shapes")
    assert "folder" not in str(info.value) and "diffusers model" not in str(info.value)

