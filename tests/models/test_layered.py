"""Qwen-Image-Layered through the nodes: one RGBA image in, `layers` RGBA layers out (IMAGE + MASK), the
same as the plain diffusers pipeline, under every feature, and its own inputs refused elsewhere."""

from __future__ import annotations

import pytest
import torch
from cache_support import assert_report_counts_the_work
from image_support import (assert_lora_acts_and_switches_off, assert_offload_lossless_and_fp8_close, picture,
                           transparency)
from parallel_support import assert_same

from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

FAMILY = "qwen-image-layered"
LAYERS = 2


def request(**changes) -> GenerationRequest:
    values = dict(prompt="a red disc on a blue wall", negative_prompt=" ", steps=2, guidance=4.0, seed=5,
                  images=(picture(1),), options={"layers": LAYERS, "mask": transparency()})
    values.update(changes)
    return GenerationRequest(**values)


@pytest.fixture(scope="module")
def spec(models_dir):
    return ModelSpec.from_folder(str(models_dir / "diffusers" / FAMILY), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def single(engine, spec):
    return engine.generate(spec, request())


@pytest.mark.slow
def test_layers_come_out_as_images_with_masks_in_the_pipelines_order(headless, nodes, tiny_settings, models_dir):
    """Sample -> Decode gives `layers` RGB images and their masks, equal to the plain pipeline's RGBA layers
    (decoded from its own latents, in its order); the mask and a 4-channel image are the same input."""
    from diffusers import QwenImageLayeredPipeline
    from omni_diffusion_nodes.nodes.comfy_bridge import ExecutionBlocker

    from omni_backend.files.images import rgba_pil

    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    settings = tiny_settings(FAMILY, steps=2, negative_prompt=" ")
    out = nodes["OmniSample"]().sample(model, **settings, image=picture(1), mask=transparency())
    latent = out["result"][0]
    width, height = model.family.output_size(request().validate_images(model.family))
    scale = 16  # the tiny VAE's downsampling (the real model's is 8)
    assert latent["samples"].shape == (1, 16, LAYERS + 1, height // scale, width // scale), "frame 0: the composite"
    assert f"{LAYERS} RGBA layers at {width}x{height} px" in out["ui"]["text"][0]
    images, audio, masks = nodes["OmniVAEDecode"]().decode(model, latent, 0, 64)["result"]
    assert isinstance(audio, ExecutionBlocker)
    assert images.shape == (LAYERS, height, width, 3) and masks.shape == (LAYERS, height, width)

    pipe = QwenImageLayeredPipeline.from_pretrained(model.folder, dtype=torch.float32, local_files_only=True,
                                                    **model.family.load_kwargs(model.model_folder))
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(image=rgba_pil(picture(1), transparency()), prompt=settings["prompt"], negative_prompt=" ",
                 true_cfg_scale=settings["guidance"], layers=LAYERS, resolution=640, use_en_prompt=True,
                 num_inference_steps=2, generator=torch.Generator().manual_seed(settings["seed"]),
                 output_type="pt", return_dict=False)[0][0]  # [layers, 4, H, W], the first prompt's layers
    assert plain.shape == (LAYERS, 4, height, width)
    # Float rounding only: the pipeline denormalises with `latents / (1 / std) + mean`, we with `* std + mean`.
    torch.testing.assert_close(images, plain[:, :3].permute(0, 2, 3, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(masks, 1 - plain[:, 3], atol=1e-4, rtol=0)
    assert (images[0] - images[1]).abs().max() > 1e-3, "two different layers"

    rgba = torch.cat([picture(1), 1 - transparency()[..., None]], dim=-1)
    four = nodes["OmniSample"]().sample(model, **settings, image=rgba)["result"][0]["samples"]
    assert torch.equal(four, latent["samples"]), "a 4-channel IMAGE's alpha is the same input as the mask"
    opaque = nodes["OmniSample"]().sample(model, **settings, image=picture(1))["result"][0]["samples"]
    assert not torch.equal(opaque, latent["samples"]), "the transparency reaches the model"


@pytest.mark.slow
def test_tiled_decode_gives_every_layer(engine, spec, single):
    """Tiles cut the layers' frame axis nowhere: every layer is decoded tile by tile and blended."""
    from omni_backend.engine import DecodeSettings

    whole = engine.decode(spec, single.latents)
    tiled = engine.decode(spec, single.latents, DecodeSettings(tile_size=256, tile_overlap=64))
    assert tiled.shape == whole.shape == (LAYERS, 4, *whole.shape[-2:])
    assert (tiled - whole).abs().mean() < 0.05, "tiles blend into the whole decode"


def test_empty_prompt_is_captioned_by_the_pipeline(engine, spec):
    generation = engine.generate(spec, request(prompt="", guidance=1.0, steps=2))
    assert "captions the image" in generation.report.text()
    assert torch.isfinite(generation.latents).all()
    assert generation.latents.shape[2] == LAYERS + 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(cfg_parallel=2)], ids=["ulysses2", "cfg2"])
def test_every_parallel_method_equals_one_process(engine, spec, single, layout):
    """The layers, the composite and the input image share one sequence (layer-3D RoPE): SP splits it whole.
    Ring splits it the same way (only the attention exchange differs) and tensor parallelism cuts the
    weights of Qwen-Image's transformer class with its plan: both run on qwen-image in
    tests/parallel/test_parallel.py and tests/parallel/test_tensor_parallel.py."""
    assert_same(engine.generate(spec.replace(parallel=ParallelConfig(**layout)), request()).latents, single.latents)


def test_offload_and_fp8_run_the_same_layers(spec, single):
    assert_offload_lossless_and_fp8_close(spec, request(), single.latents)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [TeaCacheConfig(rel_l1_thresh=50.0),
                                   CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1)],
                         ids=["teacache", "cache-dit"])
def test_caches_skip_work_and_leave_nothing_behind(engine, spec, single, cache):
    """TeaCache reads the first block's modulated input as for Qwen-Image: the same block class, with the
    extra "is RGB" embedding already inside `temb`."""
    entry = engine.loaded(spec)
    with count_block_work(entry.pipe, spec.family) as plain_work:
        engine.generate(spec, request(steps=5, guidance=1.0))
    with count_block_work(entry.pipe, spec.family) as cached_work:
        cached = engine.generate(spec.replace(cache=cache), request(steps=5, guidance=1.0))
    assert cached_work.executed < plain_work.executed
    assert_report_counts_the_work(cached, cache, cached_work, plain_work)
    assert cached.latents.shape == single.latents.shape
    assert torch.equal(engine.generate(spec, request()).latents, single.latents), "no state leaks"


def test_lora_acts_on_the_layered_model(headless, nodes, models_dir, tiny_settings):
    assert_lora_acts_and_switches_off(nodes, headless.models_dir / "loras", models_dir, FAMILY,
                                      tiny_settings(FAMILY, steps=2, guidance=1.0))


@pytest.mark.parametrize("family, inputs, name, fragment", [
    ("qwen-image", {"mask": transparency()}, "mask", "Qwen-Image takes no option 'mask'"),
    ("qwen-image", {"layers": 3}, "layers", "Qwen-Image takes no option 'layers'"),
    ("qwen-image-edit", {"image": picture(1), "resolution": "1024"}, "resolution", "takes no option 'resolution'"),
    (FAMILY, {"image": picture(1), "resolution": "800"}, "resolution", "640 or 1024"),
    (FAMILY, {"image": picture(1), "mask": torch.full((1, 20, 20), 0.5)}, "mask", "same size"),
    (FAMILY, {"image": picture(1), "layers": 0}, "layers", "between 1 and 20"),
    (FAMILY, {}, "image", "needs an input image"),
], ids=["mask-elsewhere", "layers-elsewhere", "resolution-elsewhere", "resolution-800", "mask-size", "no-layers",
        "no-image"])
@pytest.mark.slow
def test_layered_inputs_are_refused_by_name(headless, nodes, tiny_settings, family, inputs, name, fragment):
    (model,) = nodes["OmniLoadModel"]().load(family, "fp32", "cpu")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"].check_inputs(model, **dict(tiny_settings(family), **inputs))
    assert info.value.input_name == name and fragment in str(info.value) and "Fix:" in str(info.value)


def test_core_load_images_mask_of_a_file_without_alpha_means_opaque(engine, spec):
    """Load Image gives a 64x64 zero mask for an RGB file, whatever its size: that is no transparency."""
    from omni_backend.files.images import rgba_pil

    pil = rgba_pil(picture(1), torch.zeros(1, 64, 64))
    assert pil.mode == "RGBA" and pil.size == (56, 40) and pil.getextrema()[3] == (255, 255)


@pytest.mark.slow
def test_comfyui_single_files_give_the_folder_twins_layers(tmp_path):
    """qwen_image_layered_*.safetensors (Qwen-Image's layout plus the extra time condition, found by
    `auto`), the Qwen2.5-VL encoder and the RGBA VAE give the diffusers-folder twin's latents."""
    from omni_backend.families import FAMILIES
    from omni_backend.single_file.comfy_layout import write_comfy_files
    from omni_backend.single_file.model_files import ModelFiles

    written = write_comfy_files("qwen-image-layered", tmp_path / "files", "fp32")
    folder = FAMILIES["qwen-image-layered"].make_tiny(tmp_path / "folder")
    files = ModelFiles(*(str(written[name]) for name in ("diffusion_model", "text_encoder", "vae")))
    engine = Engine()
    try:
        spec = ModelSpec.from_files(files, dtype="fp32", device="cpu")
        assert spec.family_key == "qwen-image-layered"
        from_files = engine.generate(spec, request())
        assert from_files.latents.shape[2] == LAYERS + 1
        twin = engine.generate(ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu"), request()).latents
        assert (from_files.latents - twin).abs().max() <= 1e-4 * twin.abs().max()
    finally:
        engine.unload_all()
