"""Image-conditioned families through the nodes, against the plain diffusers pipeline, under every
feature: Qwen-Image-Edit (one image to edit)."""

from __future__ import annotations

import pytest
import torch
from cache_support import assert_report_counts_the_work
from image_support import assert_lora_acts_and_switches_off, assert_offload_lossless_and_fp8_close, picture
from parallel_support import assert_same

from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import Engine
from omni_backend.errors import OmniInputError
from omni_backend.files.images import to_pil
from omni_backend.memory import MemoryConfig
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

FAMILY = "qwen-image-edit"



def request(image=None, **changes) -> GenerationRequest:
    values = dict(prompt="make the disc green", negative_prompt="blurry", steps=3, guidance=4.0, width=64,
                  height=48, seed=5, images=(picture(1) if image is None else image,))
    values.update(changes)
    return GenerationRequest(**values)


@pytest.fixture(scope="module")
def spec(models_dir):
    return ModelSpec.from_folder(str(models_dir / "diffusers" / FAMILY), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def engine():
    engine = Engine()
    yield engine
    engine.unload_all()


@pytest.fixture(scope="module")
def single(engine, spec):
    return engine.generate(spec, request())


@pytest.mark.slow
def test_nodes_edit_an_image_deterministically_and_follow_the_image(headless, nodes, tiny_settings):
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    settings = tiny_settings(FAMILY, width=64, height=48)
    first = nodes["OmniSample"]().sample(model, **settings, image=picture(1))
    again = nodes["OmniSample"]().sample(model, **settings, image=picture(1))
    other = nodes["OmniSample"]().sample(model, **settings, image=picture(2))
    latents = first["result"][0]["samples"]
    assert torch.equal(latents, again["result"][0]["samples"]), "same seed, same image: same latents"
    assert not torch.equal(latents, other["result"][0]["samples"]), "another image changes the edit"
    assert "image(s) 56x40 px" in first["ui"]["text"][0] and "output 64x48" in first["ui"]["text"][0]
    images = nodes["OmniVAEDecode"]().decode(model, first["result"][0], 0, 64)["result"][0]
    assert images.shape == (1, 48, 64, 3)


@pytest.mark.slow
def test_equals_the_plain_diffusers_pipeline(models_dir, spec, single):
    from diffusers import QwenImageEditPipeline

    family = spec.family
    pipe = QwenImageEditPipeline.from_pretrained(spec.folder, dtype=torch.float32, local_files_only=True,
                                                 **family.load_kwargs(spec.model_folder))
    pipe.set_progress_bar_config(disable=True)
    plain = request()
    latents = pipe(image=to_pil(plain.images[0])[0], prompt=plain.prompt, negative_prompt=plain.negative_prompt,
                   true_cfg_scale=plain.guidance, num_inference_steps=plain.steps, width=plain.width,
                   height=plain.height, generator=torch.Generator().manual_seed(plain.seed), output_type="latent",
                   return_dict=False)[0]
    assert torch.equal(family.to_comfy_latent(pipe, latents, plain).float(), single.latents)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(cfg_parallel=2)], ids=["ulysses2", "cfg2"])
def test_every_parallel_method_equals_one_process(engine, spec, single, layout):
    """The image's latents join the denoised sequence: under sequence parallelism they are split with it,
    and both CFG branches carry them. Ring splits the sequence as Ulysses does (only the attention
    exchange differs), and tensor parallelism cuts the weights of Qwen-Image's transformer, the same
    class and plan as here, whatever the sequence holds: both run on qwen-image in tests/parallel/test_parallel.py
    and tests/parallel/test_tensor_parallel.py."""
    assert_same(engine.generate(spec.replace(parallel=ParallelConfig(**layout)), request()).latents, single.latents)


@pytest.mark.slow
def test_offload_and_fp8_run_the_same_edit(spec, single):
    assert_offload_lossless_and_fp8_close(spec, request(), single.latents)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [TeaCacheConfig(rel_l1_thresh=50.0),
                                   CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1)],
                         ids=["teacache", "cache-dit"])
def test_caches_skip_work_and_leave_nothing_behind(engine, spec, single, cache):
    entry = engine.loaded(spec)
    with count_block_work(entry.pipe, spec.family) as plain_work:
        engine.generate(spec, request(steps=6))
    with count_block_work(entry.pipe, spec.family) as cached_work:
        cached = engine.generate(spec.replace(cache=cache), request(steps=6))
    assert cached_work.executed < plain_work.executed
    assert_report_counts_the_work(cached, cache, cached_work, plain_work)
    assert torch.equal(engine.generate(spec, request()).latents, single.latents), "no state leaks"


@pytest.mark.slow
def test_lora_acts_on_the_edit_model(headless, nodes, tmp_path, models_dir, tiny_settings):
    assert_lora_acts_and_switches_off(nodes, headless.models_dir / "loras", models_dir, FAMILY,
                                      tiny_settings(FAMILY, width=64, height=48))


@pytest.mark.slow
@pytest.mark.parametrize("inputs, fragment", [
    ({}, "needs an input image"),
    ({"image": picture(1), "image2": picture(2)}, "at most 1 image"),
    ({"image": torch.rand(1, 1, 1, 3)}, "at least 8 pixels"),
    ({"image": torch.rand(4, 32, 32, 3)}, "a batch of 4"),
], ids=["no-image", "two-images", "1x1", "video-sized-batch"])
def test_bad_images_are_refused_and_the_next_run_works(headless, nodes, tiny_settings, inputs, fragment):
    (model,) = nodes["OmniLoadModel"]().load(FAMILY, "fp32", "cpu")
    settings = tiny_settings(FAMILY, width=64, height=48)
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSample"]().sample(model, **settings, **inputs)
    assert fragment in str(info.value) and "Fix:" in str(info.value)
    assert nodes["OmniSample"]().sample(model, **settings, image=picture(1))["result"][0]["samples"].shape[0] == 1


# ---- Qwen-Image-Edit-2509: up to three reference images -----------------------------------------------
PLUS = "qwen-image-edit-2509"


@pytest.mark.slow
def test_edit_2509_takes_up_to_three_images_like_the_plain_pipeline(headless, nodes, models_dir,
                                                                                      tiny_settings):
    from diffusers import QwenImageEditPlusPipeline

    (model,) = nodes["OmniLoadModel"]().load(PLUS, "fp32", "cpu")
    settings = tiny_settings(PLUS, width=64, height=48)
    two = nodes["OmniSample"]().sample(model, **settings, image=picture(1), image2=picture(2))
    latents = two["result"][0]["samples"]
    other = nodes["OmniSample"]().sample(model, **settings, image=picture(1), image2=picture(3))
    assert not torch.equal(latents, other["result"][0]["samples"]), "the second image counts"
    three = nodes["OmniSample"]().sample(model, **settings, image=picture(1), image2=picture(2), image3=picture(4))
    assert "image(s) 56x40, 56x40, 56x40 px" in three["ui"]["text"][0]

    family = model.family
    pipe = QwenImageEditPlusPipeline.from_pretrained(model.folder, dtype=torch.float32, local_files_only=True,
                                                     **family.load_kwargs(model.model_folder))
    pipe.set_progress_bar_config(disable=True)
    plain = GenerationRequest(prompt=settings["prompt"], negative_prompt=settings["negative_prompt"],
                              steps=settings["steps"], guidance=settings["guidance"], seed=settings["seed"],
                              width=64, height=48, images=(picture(1), picture(2)))
    reference = pipe(image=[to_pil(i)[0] for i in plain.images], prompt=plain.prompt,
                     negative_prompt=plain.negative_prompt, true_cfg_scale=plain.guidance,
                     num_inference_steps=plain.steps, width=64, height=48,
                     generator=torch.Generator().manual_seed(plain.seed), output_type="latent", return_dict=False)[0]
    assert torch.equal(family.to_comfy_latent(pipe, reference, plain).float(), latents)
    # Under Ulysses the images' latents are split with the sequence: test_edit_2511_under_ulysses_offload_and_caches
    # runs that on the same pipeline class. A fourth image is refused.
    with pytest.raises(OmniInputError, match="at most 3 image"):
        Engine().generate(model, request(images=tuple(picture(i) for i in range(4))))




# ---- Qwen-Image-Edit-2511: the reference images at timestep 0 -------------------------------------------
# What 2511 changes is the DiT's per-token modulation (zero_cond_t): its tests are where that token index
# travels (the plain pipeline, the sequence split, the block hooks of offload and the caches). CFG-parallel,
# FP8 and LoRA act on the class, weights and pipeline 2511 shares with Edit-2509 and Qwen-Image.
EDIT_2511 = "qwen-image-edit-2511"


def edit_2511_request(**changes) -> GenerationRequest:
    return request(**changes)  # one reference image: each costs a 1 MP VAE encode


@pytest.fixture(scope="module")
def spec_2511(models_dir):
    return ModelSpec.from_folder(str(models_dir / "diffusers" / EDIT_2511), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def single_2511(engine, spec_2511):
    return engine.generate(spec_2511, edit_2511_request())


@pytest.mark.slow
def test_edit_2511_is_told_from_2509_by_its_dit_and_equals_the_plain_pipeline(headless, nodes, spec_2511,
                                                                              tiny_settings):
    """Both folders name QwenImageEditPlusPipeline; 2511's DiT config sets zero_cond_t. Through Sample and Omni
    Reference Images (two images) it gives the plain pipeline's latents, and the reference images really are
    held at timestep 0: the same weights without zero_cond_t give another edit."""
    from diffusers import QwenImageEditPlusPipeline, QwenImageTransformer2DModel

    assert spec_2511.family.key == EDIT_2511 and spec_2511.model_folder.transformer_config["zero_cond_t"] is True
    (plus,) = nodes["OmniLoadModel"]().load(PLUS, "fp32", "cpu")
    assert plus.family.key == PLUS
    (model,) = nodes["OmniLoadModel"]().load(EDIT_2511, "fp32", "cpu")
    settings = {k: v for k, v in tiny_settings(EDIT_2511, width=64, height=48, steps=2).items() if k != "frames"}
    (references,) = nodes["OmniReferenceImages"]().options(image2=picture(2))
    latents = nodes["OmniSampleV2"]().sample(model, **settings, image=picture(1), options=references)["result"][0]

    pipe = QwenImageEditPlusPipeline.from_pretrained(model.folder, dtype=torch.float32, local_files_only=True,
                                                     **model.family.load_kwargs(model.model_folder))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.zero_cond_t

    def plain_run():
        return pipe(image=[to_pil(picture(1))[0], to_pil(picture(2))[0]], prompt=settings["prompt"],
                    negative_prompt=settings["negative_prompt"], true_cfg_scale=settings["guidance"],
                    num_inference_steps=settings["steps"], width=64, height=48,
                    generator=torch.Generator().manual_seed(settings["seed"]), output_type="latent",
                    return_dict=False)[0]

    plain = request(images=(picture(1), picture(2)), steps=settings["steps"], seed=settings["seed"])
    assert torch.equal(model.family.to_comfy_latent(pipe, plain_run(), plain).float(), latents["samples"])
    config = {key: value for key, value in pipe.transformer.config.items() if not key.startswith("_")}
    without = QwenImageTransformer2DModel.from_config({**config, "zero_cond_t": False})
    without.load_state_dict(pipe.transformer.state_dict())
    pipe.transformer = without.eval()
    assert not torch.allclose(model.family.to_comfy_latent(pipe, plain_run(), plain).float(), latents["samples"])


@pytest.mark.slow
def test_edit_2511_under_ulysses_offload_and_caches(engine, spec_2511, single_2511):
    """Ulysses splits the per-token modulate_index with the sequence (diffusers' plan); layerwise offload's
    block hooks pass it on; TeaCache (its extractor picks each token's modulation by it: vLLM-Omni #3166) and
    Cache-DiT skip work and leave nothing behind."""
    ulysses = engine.generate(spec_2511.replace(parallel=ParallelConfig(ulysses_degree=2)), edit_2511_request())
    assert_same(ulysses.latents, single_2511.latents)
    offloaded = Engine()
    try:
        layerwise = offloaded.generate(spec_2511.replace(memory=MemoryConfig(offload="layerwise")), edit_2511_request())
    finally:
        offloaded.unload_all()
    assert torch.equal(layerwise.latents, single_2511.latents)
    entry = engine.loaded(spec_2511)
    with count_block_work(entry.pipe, spec_2511.family) as plain_work:
        plain = engine.generate(spec_2511, edit_2511_request(steps=6)).latents
    for cache in (TeaCacheConfig(rel_l1_thresh=50.0), CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1)):
        with count_block_work(entry.pipe, spec_2511.family) as cached_work:
            cached = engine.generate(spec_2511.replace(cache=cache), edit_2511_request(steps=6))
        assert cached_work.executed < plain_work.executed
        assert_report_counts_the_work(cached, cache, cached_work, plain_work)
    assert torch.equal(engine.generate(spec_2511, edit_2511_request(steps=6)).latents, plain), "no state leaks"
