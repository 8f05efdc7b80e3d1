"""Image-to-video families through the nodes, against the plain diffusers pipeline, under the
features: Wan2.2-I2V A14B (first frame, optional last frame, two experts) and Wan2.2-TI2V 5B (a
WanPipeline folder; with an image it runs as WanImageToVideoPipeline on the same components)."""

from __future__ import annotations

import pytest
import torch
from cache_support import assert_report_counts_the_work
from image_support import assert_lora_acts_and_switches_off, assert_offload_lossless_and_fp8_close, picture
from parallel_support import assert_same

from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.files.images import to_pil
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

I2V, TI2V = "wan2.2-i2v", "wan2.2-ti2v"
FAMILIES = [I2V, TI2V]
SIZE = {I2V: (64, 48), TI2V: (64, 64)}  # TI2V: multiples of 32



def request(family: str, image=None, **changes) -> GenerationRequest:
    width, height = SIZE[family]
    values = dict(prompt="the disc rolls away", negative_prompt="blurry", steps=2, guidance=4.0, width=width,
                  height=height, frames=5, seed=5, images=(picture(1) if image is None else image,))
    values.update(changes)
    return GenerationRequest(**values)


@pytest.fixture(scope="module")
def engine():
    engine = Engine()
    yield engine
    engine.unload_all()


def spec_of(models_dir, family: str) -> ModelSpec:
    return ModelSpec.from_folder(str(models_dir / "diffusers" / family), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def single(engine, models_dir):
    return {family: engine.generate(spec_of(models_dir, family), request(family)).latents for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_nodes_animate_an_image_deterministically_and_follow_it(headless, nodes, tiny_settings, family):
    width, height = SIZE[family]
    (model,) = nodes["OmniLoadModel"]().load(family, "fp32", "cpu")
    settings = tiny_settings(family, width=width, height=height, frames=5, steps=2)
    first = nodes["OmniSample"]().sample(model, **settings, image=picture(1))
    latents = first["result"][0]["samples"]
    again = nodes["OmniSample"]().sample(model, **settings, image=picture(1))["result"][0]["samples"]
    other = nodes["OmniSample"]().sample(model, **settings, image=picture(2))["result"][0]["samples"]
    assert torch.equal(latents, again), "same seed, same image: same latents"
    assert not torch.equal(latents, other), "another image changes the video"
    if family == I2V:
        last = nodes["OmniSample"]().sample(model, **settings, image=picture(1), last_image=picture(3))
        assert not torch.equal(latents, last["result"][0]["samples"]), "a last frame changes the video"
    else:
        text_only = nodes["OmniSample"]().sample(model, **settings)["result"][0]["samples"]
        assert text_only.shape == latents.shape and not torch.equal(latents, text_only)
    assert "image(s) 56x40 px" in first["ui"]["text"][0]
    frames = nodes["OmniVAEDecode"]().decode(model, first["result"][0], 0, 64)["result"][0]
    assert frames.shape == (5, height, width, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_the_plain_diffusers_pipeline(models_dir, single, family):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    spec = spec_of(models_dir, family)
    plain_class = WanImageToVideoPipeline if family == I2V else WanPipeline
    pipe = plain_class.from_pretrained(spec.folder, dtype=torch.float32, local_files_only=True)
    if family == TI2V:
        pipe = WanImageToVideoPipeline(**pipe.components, image_processor=None, image_encoder=None,
                                       expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    plain = request(family)
    latents = pipe(image=to_pil(plain.images[0])[0], prompt=plain.prompt, negative_prompt=plain.negative_prompt,
                   guidance_scale=plain.guidance, num_inference_steps=plain.steps, width=plain.width,
                   height=plain.height, num_frames=plain.frames, generator=torch.Generator().manual_seed(plain.seed),
                   output_type="latent", return_dict=False)[0]
    assert torch.equal(spec.family.to_comfy_latent(pipe, latents, plain).float(), single[family])


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(cfg_parallel=2)], ids=["ulysses2", "cfg2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_parallel_methods_equal_one_process(engine, models_dir, single, family, layout):
    """The conditioning (I2V: channels; TI2V: the clean first frame and per-token timesteps) is split with
    the sequence (Ulysses), and both CFG branches carry it. Ring splits the sequence the same way and
    differs only in how attention exchanges it, and tensor parallelism cuts the weights of Wan2.2's
    transformer, the same class and plan as here: both run on wan2.2 in tests/parallel/test_parallel.py and
    tests/parallel/test_tensor_parallel.py."""
    spec = spec_of(models_dir, family).replace(parallel=ParallelConfig(**layout))
    assert_same(engine.generate(spec, request(family)).latents, single[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_dit_skips_work_and_leaves_nothing_behind(engine, models_dir, single, family):
    spec = spec_of(models_dir, family)
    entry = engine.loaded(spec)
    cache = CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1)
    with count_block_work(entry.pipe, spec.family) as plain_work:
        engine.generate(spec, request(family, steps=6))
    with count_block_work(entry.pipe, spec.family) as cached_work:
        cached = engine.generate(spec.replace(cache=cache), request(family, steps=6))
    assert cached_work.executed < plain_work.executed
    assert_report_counts_the_work(cached, cache, cached_work, plain_work)
    assert torch.equal(engine.generate(spec, request(family)).latents, single[family]), "no state leaks"


def test_ti2v_refuses_sizes_off_its_multiple_of_32(headless, nodes, tiny_settings):
    (model,) = nodes["OmniLoadModel"]().load(TI2V, "fp32", "cpu")
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"]().sample(model, **tiny_settings(TI2V, width=64, height=48), image=picture(1))
    message = str(info.value)
    assert "multiple of 32" in message and "use 64" in message and "height" in message, message


def test_i2v_needs_an_image_and_ti2v_takes_no_last_frame(headless, nodes, tiny_settings):
    (i2v,) = nodes["OmniLoadModel"]().load(I2V, "fp32", "cpu")
    with pytest.raises(OmniInputError, match="needs an input image"):
        nodes["OmniSample"]().sample(i2v, **tiny_settings(I2V, frames=5))
    (ti2v,) = nodes["OmniLoadModel"]().load(TI2V, "fp32", "cpu")
    with pytest.raises(OmniInputError, match="takes no last frame"):
        nodes["OmniSample"]().sample(ti2v, **tiny_settings(TI2V, frames=5), image=picture(1), last_image=picture(2))


@pytest.mark.parametrize("family", FAMILIES)
def test_offload_and_fp8_run_the_same_video(models_dir, single, family):
    assert_offload_lossless_and_fp8_close(spec_of(models_dir, family), request(family), single[family],
                                          offloads=("model", "layerwise"))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_acts_on_the_image_to_video_model(headless, nodes, models_dir, tiny_settings, family):
    assert_lora_acts_and_switches_off(nodes, headless.models_dir / "loras", models_dir, family,
                                      tiny_settings(family, frames=5, steps=2))
