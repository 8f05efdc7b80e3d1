"""GLM-Image: the autoregressive stage and the DiT stage, with reference images, Cancel, CFG-parallel
and Cache-DiT. Text-to-image parity, the node graph and text-to-image CFG-parallel run in the generic
suites (test_parity.py, test_families.py, test_parallel.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from parallel_support import assert_same, spec_for

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.errors import OmniInputError, OmniInterrupted
from omni_backend.families import FAMILIES
from omni_backend.families.glm_image.family import reference_images
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl

FAMILY = FAMILIES["glm-image"]
REQUEST = GenerationRequest(prompt='a sign that says "open"', negative_prompt="", steps=3, guidance=1.5,
                            width=64, height=64)


def pictures():
    """Two reference pictures of different sizes (ComfyUI IMAGE tensors)."""
    generator = torch.Generator().manual_seed(3)
    return (torch.rand(1, 64, 64, 3, generator=generator), torch.rand(1, 96, 64, 3, generator=generator))


def plain_pipeline_latents(models_dir, request):
    """What a user of diffusers gets for the same inputs (our reference-image resize applied)."""
    pipe = FAMILY.pipeline_class("GlmImagePipeline").from_pretrained(str(models_dir / "diffusers" / "glm-image"))
    image = reference_images(request.images) if request.images else None
    latents = pipe(prompt=request.prompt, image=image, height=request.height, width=request.width,
                   num_inference_steps=request.steps, guidance_scale=request.guidance, output_type="latent",
                   generator=torch.Generator().manual_seed(request.seed), return_dict=False)[0]
    return FAMILY.to_comfy_latent(pipe, latents, request)


def test_progress_covers_the_autoregressive_stage_then_the_steps(models_dir, engine):
    seen = []
    engine.generate(spec_for(models_dir, "glm-image"), REQUEST, RunControl(progress=lambda *p: seen.append(p)))
    tokens = FAMILY.prior_stage_calls(REQUEST)
    assert tokens == 2 * 2 + 16 * 16 + 1  # a 2x2 grid of 32 px tokens after the 16x16 preview, and the end
    assert seen[1:tokens + 1] == [(count, tokens) for count in range(1, tokens + 1)], "one report per token"
    assert seen[tokens + 1:] == [(step, 3) for step in (1, 2, 3)]


def test_reference_images_equal_the_plain_pipeline(models_dir, engine):
    request = replace(REQUEST, images=pictures())
    result = engine.generate(spec_for(models_dir, "glm-image"), request)
    assert torch.equal(result.latents, plain_pipeline_latents(models_dir, request))
    assert not torch.allclose(result.latents, engine.generate(spec_for(models_dir, "glm-image"), REQUEST).latents)
    assert FAMILY.prior_stage_calls(request) == 2 * 2 + 1  # editing: no preview grid


def test_cancel_in_the_autoregressive_stage_stops_before_any_step_and_leaves_no_hook(models_dir, engine):
    spec = spec_for(models_dir, "glm-image")
    calls = []

    def interrupted():
        calls.append(1)
        return len(calls) > 10

    steps = []
    with pytest.raises(OmniInterrupted):
        engine.generate(spec, REQUEST, RunControl(progress=lambda step, total: steps.append(total),
                                                  interrupted=interrupted))
    assert 3 not in steps[1:], "no denoising step ran"
    pipe = engine.loaded(spec).pipe
    assert not pipe.vision_language_encoder._forward_hooks, "the stage's hook is removed"
    assert torch.equal(engine.generate(spec, REQUEST).latents, plain_pipeline_latents(models_dir, REQUEST))


@pytest.mark.slow
def test_cfg_parallel_with_reference_images_equals_one_process(models_dir, engine):
    """The reference images fill a KV cache that the positive branch reads and the negative one skips:
    the positive call deferred by CFG-parallel must still read it."""
    request = replace(REQUEST, images=pictures()[:1], guidance=4.0)
    single = engine.generate(spec_for(models_dir, "glm-image"), request).latents
    parallel = engine.generate(spec_for(models_dir, "glm-image", cfg_parallel=2), request).latents
    assert_same(parallel, single)


def test_cache_dit_with_reference_images_is_refused_and_the_next_run_is_plain(models_dir, engine):
    """cache-dit tells the branches apart by counting calls; the reference images' cache-filling calls
    would shift that count (text-to-image Cache-DiT: test_cache.py)."""
    request = replace(REQUEST, images=pictures()[:1], guidance=4.0)
    spec = spec_for(models_dir, "glm-image")
    with pytest.raises(OmniInputError, match="reference images"):
        engine.generate(spec.replace(cache=CacheDiTConfig()), request)
    assert torch.equal(engine.generate(spec, request).latents, plain_pipeline_latents(models_dir, request))


@pytest.mark.parametrize("change, fragment", [
    (dict(parallel=ParallelConfig(ulysses_degree=2)), "sequence"),
    (dict(parallel=ParallelConfig(tensor_parallel=2)), "tensor"),
    (dict(cache=TeaCacheConfig()), "TeaCache"),
])
def test_what_cannot_work_is_refused_with_the_reason(models_dir, engine, change, fragment):
    with pytest.raises(Exception) as error:
        engine.generate(spec_for(models_dir, "glm-image").replace(**change), REQUEST)
    assert fragment.lower() in str(error.value).lower() and "GLM-Image" in str(error.value)


@pytest.mark.slow
def test_model_offload_moves_the_autoregressive_model_off_while_the_dit_runs(models_dir):
    from omni_backend.engine import Engine
    from omni_backend.memory import MemoryConfig
    from omni_backend.memory.apply import memory_state

    def has_storage(param):
        return param.untyped_storage().nbytes() >= param.numel() * param.element_size()

    engine = Engine()
    try:
        spec = spec_for(models_dir, "glm-image").replace(memory=MemoryConfig(offload="model"))
        pipe = engine.loaded(spec).pipe
        resident_during_dit = []
        hook = pipe.transformer.register_forward_pre_hook(lambda *_: resident_during_dit.append(
            any(has_storage(p) for p in pipe.vision_language_encoder.parameters())))
        try:
            offloaded = engine.generate(spec, REQUEST).latents
        finally:
            hook.remove()
        turns = memory_state(pipe).turns.turns
        assert turns.index("vision_language_encoder") < turns.index("transformer"), turns
        assert resident_during_dit and not any(resident_during_dit), "the AR model is off the device during the DiT"
        assert torch.equal(offloaded, plain_pipeline_latents(models_dir, REQUEST))
    finally:
        engine.unload_all()
