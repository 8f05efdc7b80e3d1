"""One table of bad values, tried through every entry point: the Python API, the Sample node, the CLI.

Each case must be refused with an OmniInputError (the CLI: exit 1 and one line) that names the
input and carries a fix, and the next good run must give the same latents as before, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from omni_backend import Omni
from omni_backend.engine import Engine, max_loaded_from_environment
from omni_backend.errors import OmniError, OmniInputError
from omni_diffusion_nodes.headless import cli
from omni_diffusion_nodes.headless.recipes import base_workflow

FAMILY = "z-image"
FAMILIES_REAL_NAME = "Z-Image-Turbo"  # the tests' stand-in is linked under the real model's name too
GOOD = dict(prompt="a red circle", negative_prompt="", seed=3, steps=2, guidance=0.0, width=64, height=64,
            batch_size=1)
# Sample's input -> Omni.generate's keyword (vLLM-Omni's names)
API_NAMES = {"steps": "num_inference_steps", "guidance": "guidance_scale", "frames": "num_frames",
             "batch_size": "num_images_per_prompt"}

CASES = [
    ("steps", 0), ("steps", "20"), ("steps", 2.5), ("steps", 10**6), ("steps", True),
    ("guidance", math.nan), ("guidance", math.inf), ("guidance", -1.0), ("guidance", "4"), ("guidance", 1e9),
    ("width", 17), ("width", 0), ("height", 10**9), ("height", "64"),
    ("seed", -1), ("seed", 2**64), ("seed", 1.5),
    ("batch_size", 0), ("batch_size", 10**4),
    ("prompt", 123), ("prompt", None), ("negative_prompt", ["a", "list"]),
]
IDS = [f"{name}={value!r}" for name, value in CASES]


@pytest.fixture(scope="module")
def reference(models_dir):
    engine = Engine()
    omni = Omni(model=str(models_dir / "diffusers" / FAMILY), engine=engine, dtype="fp32", device="cpu")
    latents = omni.generate(**api_arguments(GOOD)).latents
    yield omni, latents
    engine.unload_all()


def api_arguments(settings: dict) -> dict:
    return {API_NAMES.get(name, name): value for name, value in settings.items()}


def assert_names(error: Exception, name: str):
    assert isinstance(error, OmniInputError), f"{type(error).__name__}: {error}"
    assert error.input_name == name and error.fix, str(error)


@pytest.mark.parametrize("name, value", CASES, ids=IDS)
def test_the_python_api_refuses(reference, name, value):
    omni, latents = reference
    with pytest.raises(OmniError) as info:
        omni.generate(**api_arguments({**GOOD, name: value}))
    assert_names(info.value, API_NAMES.get(name, name))  # the keyword the caller passed
    assert torch.equal(omni.generate(**api_arguments(GOOD)).latents, latents), "the next run is unharmed"


@pytest.mark.parametrize("name, value", CASES, ids=IDS)
def test_the_sample_node_refuses(headless, nodes, reference, name, value):
    _omni, latents = reference
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    with pytest.raises(OmniError) as info:
        nodes["OmniSampleV2"]().sample(model, **{**GOOD, name: value})
    assert_names(info.value, name)
    good = nodes["OmniSampleV2"]().sample(model, **GOOD)["result"][0]
    assert torch.equal(good["samples"], latents)


def test_an_image_model_refuses_video_frames_by_name(headless, nodes, reference):
    """Frames belong to video models: the Python API refuses num_frames, Sample refuses the option node."""
    omni, _latents = reference
    with pytest.raises(OmniError) as info:
        omni.generate(**api_arguments(GOOD), num_frames=5)
    assert_names(info.value, "num_frames")
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    (options,) = nodes["OmniVideoOptions"]().options(frames=5)
    with pytest.raises(OmniError, match="takes no Omni Video Options") as info:
        nodes["OmniSampleV2"]().sample(model, **GOOD, options=options)
    assert_names(info.value, "options")


@pytest.mark.parametrize("name, value", [case for case in CASES if case[0] in ("steps", "guidance", "width", "seed")],
                         ids=[i for i, case in zip(IDS, CASES) if case[0] in ("steps", "guidance", "width", "seed")])
def test_the_cli_refuses_in_one_line(headless, tmp_path, capsys, name, value):
    settings = {k: v for k, v in GOOD.items() if k not in ("prompt", "seed")}
    workflow = base_workflow(FAMILY, sample={**settings, **({} if name == "seed" else {name: value})})
    if name == "seed":  # the recipe sets the seed itself: put the bad one into the saved widget values
        sample = next(node for node in workflow["nodes"] if node["type"] == "OmniSampleV2")
        sample["widgets_values"][2] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(workflow))
    arguments = [str(path), "--models-dir", str(headless.models_dir)]
    assert cli.main(["validate", *arguments]) == 1
    checked = capsys.readouterr().out
    assert name in checked and "Traceback" not in checked
    assert cli.main(["run", *arguments, "--output-dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert name in error and "Fix:" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing half-written"


@pytest.mark.parametrize("backend, options, name", [
    ("tea_cache", {"rel_l1_thresh": math.nan}, "rel_l1_thresh"),
    ("tea_cache", {"rel_l1_thresh": math.inf}, "rel_l1_thresh"),
    ("tea_cache", {"coefficients": [1, 2, math.nan, 4, 5]}, "coefficients"),
    ("tea_cache", {"start_percent": "0"}, "start_percent"),
    ("cache_dit", {"residual_diff_threshold": math.nan}, "residual_diff_threshold"),
    ("cache_dit", {"Fn_compute_blocks": "1"}, "Fn_compute_blocks"),
    ("cache_dit", {"max_warmup_steps": 1.5}, "max_warmup_steps"),
], ids=lambda v: repr(v) if isinstance(v, dict) else str(v))
def test_cache_options_are_refused_by_name(models_dir, backend, options, name):
    options = {"start_fraction" if k == "start_percent" else k: v for k, v in options.items()}
    with pytest.raises(OmniInputError) as info:
        Omni(model=str(models_dir / "diffusers" / FAMILY), cache_backend=backend, cache_config=options)
    assert_names(info.value, name if name != "start_percent" else "start_percent")


@pytest.mark.parametrize("widget, value", [("strength", math.nan), ("strength", math.inf), ("strength", "1")])
def test_lora_strengths_must_be_finite_numbers(headless, nodes, widget, value):
    from omni_diffusion_nodes.headless.recipes import LORA_FILES

    (model,) = nodes["OmniLoadModel"]().load("qwen-image", "fp32", "cpu")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniLoadLoRA"]().apply(model, LORA_FILES[0], value, "auto")
    assert_names(info.value, widget)


@pytest.mark.parametrize("degrees, name", [({"ulysses_degree": "2"}, "ulysses_degree"),
                                           ({"ring_degree": 2.5}, "ring_degree"),
                                           ({"remote_ranks": -1}, "remote_ranks"),
                                           ({"rendezvous": "no-port"}, "rendezvous"),
                                           ({"rendezvous": "host:99999"}, "rendezvous")])
def test_parallel_layouts_from_the_api_are_refused_by_name(degrees, name):
    from omni_backend.parallel.config import ParallelConfig

    with pytest.raises(OmniInputError) as info:
        ParallelConfig(**degrees)
    assert_names(info.value, name)


@pytest.mark.parametrize("tile_size, tile_overlap, name", [("512", 64, "tile_size"), (-16, 64, "tile_size"),
                                                           (512, math.nan, "tile_overlap")])
def test_decode_settings_are_refused_by_name(tile_size, tile_overlap, name):
    from omni_backend.engine import DecodeSettings

    with pytest.raises(OmniInputError) as info:
        DecodeSettings(tile_size, tile_overlap)
    assert_names(info.value, name)


@pytest.mark.parametrize("text", ["abc", "0", "-1", "1.5", ""])
def test_the_loaded_models_setting_is_parsed_with_a_clear_error(monkeypatch, text):
    monkeypatch.setenv("OMNI_MAX_LOADED_MODELS", text)
    with pytest.raises(OmniInputError) as info:
        max_loaded_from_environment()
    assert_names(info.value, "OMNI_MAX_LOADED_MODELS")


def test_prompts_with_control_characters_or_broken_surrogates_are_cleaned(reference):
    omni, _latents = reference
    clean = omni.generate(**api_arguments({**GOOD, "prompt": "a red circle"})).latents
    dirty = omni.generate(**api_arguments({**GOOD, "prompt": "a red\x00 circle\x07"})).latents
    assert torch.equal(clean, dirty), "control characters are dropped"
    lone = omni.generate(**api_arguments({**GOOD, "prompt": "a red circle \ud800"})).latents
    assert lone.shape == clean.shape and torch.isfinite(lone).all(), "a lone surrogate becomes U+FFFD"


def test_the_table_covers_every_sample_input():
    sample_inputs = set(GOOD)
    assert {name for name, _value in CASES} == sample_inputs, "every input of Sample has bad values above"
    assert Path(__file__).name == "test_bad_values.py"


# ---- workflow files: malformed structures, loops, wrong slots, writing outside the output folder ------

def _workflow_cases():
    from omni_diffusion_nodes.headless.runner import to_prompt

    base = base_workflow(FAMILY, sample={k: v for k, v in GOOD.items() if k not in ("prompt", "seed")})
    api = to_prompt(base)
    sample = next(k for k, v in api.items() if v["class_type"] == "OmniSampleV2")
    decode = next(k for k, v in api.items() if v["class_type"] == "OmniVAEDecodeImages")

    def changed(data, change):
        data = json.loads(json.dumps(data))
        change(data)
        return data

    def save_prefix(prefix):
        def change(data):
            next(n for n in data["nodes"] if n["type"] == "SaveImage")["widgets_values"] = [prefix]
        return change

    return {
        "cycle": (changed(api, lambda d: d[sample]["inputs"].update(model=[decode, 0])), "cycle"),
        "missing-output-slot": (changed(api, lambda d: d[decode]["inputs"].update(samples=[sample, 5])),
                                "output 5"),
        "inputs-as-list": (changed(api, lambda d: d[sample].update(inputs=["x"])), "not a mapping"),
        "link-of-three": (changed(base, lambda d: d["links"].__setitem__(0, d["links"][0][:3])), "is not [id"),
        "node-without-id": (changed(base, lambda d: d["nodes"][0].pop("id")), "has no id"),
        "save-with-dot-dot": (changed(base, save_prefix("../../escaped/evil")), "outside the output folder"),
        "save-absolute": (changed(base, save_prefix("/tmp/omni-escaped/evil")), "outside the output folder"),
    }


WORKFLOW_CASES = _workflow_cases()


@pytest.mark.parametrize("case", sorted(WORKFLOW_CASES))
def test_validate_and_run_refuse_a_bad_workflow_alike_in_one_line(headless, tmp_path, capsys, case):
    workflow, fragment = WORKFLOW_CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(workflow))
    arguments = [str(path), "--models-dir", str(headless.models_dir)]
    assert cli.main(["validate", *arguments]) == 1
    checked = capsys.readouterr().out
    output = tmp_path / "out"
    assert cli.main(["run", *arguments, "--output-dir", str(output)]) == 1
    error = capsys.readouterr().err
    for text in (checked, error):
        assert fragment in text and "Traceback" not in text, text
    assert not output.exists() or not any(output.rglob("*")), "nothing ran, nothing was written"
    assert not any(tmp_path.parent.rglob("evil*")) and not Path("/tmp/omni-escaped").exists()


def test_save_image_takes_subfolders_inside_the_output_folder(headless, tmp_path):
    from omni_diffusion_nodes.headless.runner import run_workflow

    workflow = json.loads(json.dumps(WORKFLOW_CASES["save-absolute"][0]))
    next(n for n in workflow["nodes"] if n["type"] == "SaveImage")["widgets_values"] = ["omni/cat"]
    run = run_workflow(workflow, models_dir=headless.models_dir, output_dir=tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").parts[0] for p in run.files] == ["omni"]


def test_weights_that_do_not_match_their_config_are_named(headless, nodes, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = headless.models_dir / "diffusers" / "z-image-renamed-keys"
    shutil.copytree(headless.models_dir / "diffusers" / FAMILY, folder)
    try:
        weights = next((folder / "transformer").glob("*.safetensors"))
        tensors = load_file(weights)
        save_file({f"renamed.{key}": value for key, value in tensors.items()}, weights)
        (model,) = nodes["OmniLoadModel"]().load(folder.name, "fp32", "cpu")
        with pytest.raises(OmniInputError) as info:
            nodes["OmniSampleV2"]().sample(model, **GOOD)
        message = str(info.value)
        assert "transformer/" + weights.name in message and "restore transformer/" in message
        assert "meta" not in message
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("samples, fragment", [
    ("text", "float tensor"), (torch.zeros(0, 16, 8, 8), "empty"),
    (torch.full((1, 16, 8, 8), math.nan), "not finite"), (torch.zeros(1, 16, 8, 8, dtype=torch.long), "float tensor"),
], ids=["text", "empty", "nan", "integers"])
def test_the_decoder_refuses_latents_it_cannot_decode(headless, nodes, reference, samples, fragment):
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniVAEDecodeImages"]().decode(model, {"samples": samples}, 0, 64)
    assert_names(info.value, "samples")
    assert fragment in str(info.value)


def test_a_link_loop_in_the_model_folders_does_not_hang_the_lists(headless):
    """A folder linked to its own parent: each real folder is listed once and the walk ends."""
    import threading

    from omni_diffusion_nodes.nodes import comfy_bridge

    loop = headless.models_dir / "diffusers" / "looping"
    loras_loop = headless.models_dir / "loras" / "looping"
    loop.mkdir()
    (loop / "back-up").symlink_to(headless.models_dir / "diffusers", target_is_directory=True)
    loras_loop.symlink_to(headless.models_dir / "loras", target_is_directory=True)
    found = {}
    try:
        worker = threading.Thread(target=lambda: found.update(models=comfy_bridge.list_model_folders(),
                                                              loras=comfy_bridge.list_files("loras", (".safetensors",))))
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "listing the folders hung"
    finally:
        (loop / "back-up").unlink()
        loop.rmdir()
        loras_loop.unlink()
    assert FAMILY in found["models"] and FAMILIES_REAL_NAME in found["models"], "linked names are still listed"
    assert not any(name.startswith("looping/") for name in found["models"]), "a link to an ancestor is not entered"
    assert found["loras"] and not any(name.startswith("looping/") for name in found["loras"])


# ---- conditioning images ------------------------------------------------------------------------------

@pytest.mark.parametrize("images, last_image, fragment", [
    ((torch.rand(1, 32, 32, 3),), None, "takes no input image"),
    ((), torch.rand(1, 32, 32, 3), "takes no option 'last_image'"),
    ((torch.rand(3, 32, 32, 3),), None, "a batch of 3"),
    ((torch.rand(1, 1, 1, 3),), None, "at least 8 pixels"),
    ((torch.rand(1, 32, 32),), None, "expected a ComfyUI IMAGE"),
    ((torch.full((1, 32, 32, 3), math.nan),), None, "not finite"),
], ids=["to-a-text-model", "last-frame", "batch", "1x1", "wrong-shape", "nan"])
def test_images_a_model_cannot_take_are_refused_at_the_node(headless, nodes, reference, images, last_image, fragment):
    _omni, latents = reference
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    inputs = dict(zip(("image", "image2", "image3"), images))
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"]().sample(model, **GOOD, **inputs, last_image=last_image)
    assert fragment in str(info.value) and info.value.fix
    good = nodes["OmniSample"]().sample(model, **GOOD)["result"][0]
    assert torch.equal(good["samples"], latents)


# ---- values ComfyUI never produces ----------------------------------------------------------------------

def _image(fill=None, size=(32, 32), **kwargs):
    image = torch.rand(1, *size, 3, **kwargs) if fill is None else fill
    return image


@pytest.mark.parametrize("image, fragment", [
    (torch.rand(1, 32, 32, 3) * 255, "0..1"),
    (torch.rand(1, 32, 32, 3) * 2 - 1, "0..1"),
    (torch.empty(1, 32, 32, 3, device="meta"), "no data"),
    (torch.rand(1, 8, 4096, 3), "512:1"),
    (torch.rand(1, 4096, 8, 3), "1:512"),
], ids=["0-255", "below-0", "meta-device", "8x4096", "4096x8"])
def test_images_comfyui_never_makes_are_refused_by_name(headless, nodes, image, fragment):
    for family in (FAMILY, "qwen-image-edit"):  # the refusal comes before the model's own image checks
        (model,) = nodes["OmniLoadModel"]().load(family, "fp32", "cpu")
        with pytest.raises(OmniInputError) as info:
            nodes["OmniSampleV2"]().sample(model, **{**GOOD, "image": image})
        assert_names(info.value, "image")
        assert fragment in str(info.value), str(info.value)


def test_resampling_overshoot_is_clamped_not_refused():
    """Bicubic/Lanczos resizes (core Upscale Image) overshoot 0..1 a little: that is clamped, not refused."""
    from omni_backend.families import FAMILIES
    from omni_backend.request import GenerationRequest

    image = torch.rand(1, 32, 32, 3) * 1.04 - 0.02
    request = GenerationRequest(prompt="x", images=(image,), options={"last_image": image})
    request = request.validate_images(FAMILIES["wan2.2-i2v"])
    for kept in (request.images[0], request.options["last_image"]):
        assert kept.min() >= 0 and kept.max() <= 1 and torch.allclose(kept, image.clamp(0, 1))


@pytest.mark.parametrize("mask, fragment", [
    (torch.zeros(1, 6), "keeps no token"),
    (torch.tensor([[1.0, 1.0, 7.0, 1.0, 0.0, 0.0]]), "0 or 1"),
    (torch.tensor([[1.0, math.nan, 1.0, 1.0, 0.0, 0.0]]), "0 or 1"),
], ids=["all-zero", "seven", "nan"])
@pytest.mark.parametrize("role", ["positive", "negative"])
def test_conditioning_masks_comfyui_never_makes_are_refused_by_name(headless, nodes, mask, fragment, role):
    from omni_backend.run.conditioning import TextEmbedding

    good = [[torch.rand(1, 6, 32), {"attention_mask": torch.ones(1, 6)}]]
    bad = [[torch.rand(1, 6, 32), {"attention_mask": mask}]]
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    inputs = {"positive": good, "negative": good, role: bad}
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSampleV2"]().sample(model, **GOOD, **inputs)
    assert_names(info.value, role)
    assert fragment in str(info.value), str(info.value)
    with pytest.raises(OmniInputError):  # the Python API's value refuses it alike
        TextEmbedding(torch.rand(1, 6, 32), mask, role=role)


@pytest.mark.parametrize("start, end", [(1.0, 1.0), (2.0, 1.0), (0.0, 0.0), (0.0, math.nan)])
def test_an_empty_or_reversed_audio_window_is_refused(models_dir, start, end):
    omni = Omni(model=str(models_dir / "diffusers" / "stable-audio"), engine=Engine(), dtype="fp32", device="cpu")
    loads = omni.engine.pipelines.load_count
    with pytest.raises(OmniInputError) as info:
        omni.generate(prompt="rain", num_inference_steps=2, audio_start_in_s=start, audio_end_in_s=end)
    assert_names(info.value, "audio_end_in_s")
    assert omni.engine.pipelines.load_count == loads, "refused before weights load"


def test_a_lora_with_nan_weights_is_refused_through_the_python_api(models_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from omni_backend.lora.config import LoraSpec
    from omni_backend.request import GenerationRequest
    from omni_backend.spec import ModelSpec
    from omni_diffusion_nodes.headless.recipes import LORA_FILES

    tensors = load_file(models_dir / "loras" / LORA_FILES[0])
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], math.nan)
    save_file(tensors, tmp_path / "nan-lora.safetensors")
    engine = Engine()
    try:
        spec = ModelSpec.from_folder(str(models_dir / "diffusers" / "qwen-image"), dtype="fp32", device="cpu")
        spec = spec.replace(loras=(LoraSpec(str(tmp_path / "nan-lora.safetensors"), 1.0),))
        request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64)
        with pytest.raises(OmniInputError) as info:
            engine.generate(spec, request)
        assert_names(info.value, "lora_name")
        assert "nan-lora.safetensors" in str(info.value) and first in str(info.value)
    finally:
        engine.unload_all()
