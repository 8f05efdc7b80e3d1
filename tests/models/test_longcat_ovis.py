"""LongCat-Image, LongCat-Image-Edit and Ovis-Image: what their pipelines lack and we supply.

The generic suites already run the text-to-image ones (end-to-end, parity with the plain pipeline,
Ulysses/Ring/CFG-parallel, TP for LongCat, TeaCache for LongCat, Cache-DiT, offload, FP8, a LoRA);
here: step ends without `callback_on_step_end` (progress, Cancel, on one and two ranks), LongCat's
own options, the peft LoRA loader (strengths, stacking, hot swap, the ComfyUI layout) and the edit
model end to end.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cache_support import assert_report_counts_the_work
from image_support import assert_lora_acts_and_switches_off, picture
from parallel_support import assert_same, request_for, spec_for

from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import default_engine
from omni_backend.errors import OmniInputError, OmniInterrupted
from omni_backend.files.images import to_pil
from omni_backend.lora.adapters import STATE_KEY
from omni_backend.memory import MemoryConfig
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl
from omni_backend.tiny.lora import make_tiny_lora

LONGCAT, EDIT, OVIS = "longcat-image", "longcat-image-edit", "ovis-image"


def stopping_at(step: int):
    """A RunControl that records progress and asks to stop once `step` is reached."""
    seen = []
    return seen, RunControl(progress=lambda done, _total: seen.append(done), interrupted=lambda: bool(seen)
                            and seen[-1] >= step)


# ---- step ends from transformer calls -----------------------------------------------------------
@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["cfg", "no-cfg"])
def test_progress_and_cancel_without_a_step_callback(models_dir, engine, guidance):
    """LongCat's pipeline has no callback_on_step_end: every step is still reported once (two calls
    per step with CFG, one without), Cancel stops mid-run, and the next run is the plain one."""
    spec = spec_for(models_dir, LONGCAT)
    request = request_for(LONGCAT, steps=4, guidance=guidance)
    seen = []
    plain = engine.generate(spec, request, RunControl(progress=lambda done, _total: seen.append(done)))
    assert seen == [0, 1, 2, 3, 4]
    seen, control = stopping_at(2)
    with pytest.raises(OmniInterrupted):
        engine.generate(spec, request, control)
    assert seen == [0, 1, 2]
    assert torch.equal(engine.generate(spec, request).latents, plain.latents), "nothing of the stop remains"
    pipe = engine.loaded(spec).pipe
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks


@pytest.mark.slow
def test_cancel_stops_every_rank_at_the_same_step(models_dir, engine):
    """With CFG-parallel both ranks count their two calls per step and vote at each step end."""
    spec = spec_for(models_dir, LONGCAT, cfg_parallel=2)
    request = request_for(LONGCAT, steps=6)
    seen, control = stopping_at(2)
    with pytest.raises(OmniInterrupted):
        engine.generate(spec, request, control)
    assert seen and max(seen) < 6
    single = engine.generate(spec_for(models_dir, LONGCAT), request).latents
    assert_same(engine.generate(spec, request).latents, single)


# ---- LongCat's options --------------------------------------------------------------------------
def test_prompt_rewrite_is_off_unless_asked_and_reports_the_prompt_used(models_dir, engine):
    spec = spec_for(models_dir, LONGCAT)
    request = request_for(LONGCAT, steps=2)
    plain = engine.generate(spec, request)
    assert "Prompt" not in plain.report.sections
    rewritten = engine.generate(spec, dataclasses.replace(request, options={"prompt_rewrite": True}))
    prompt = rewritten.report.sections["Prompt"]["prompt"]
    assert prompt != request.prompt and "rewritten" in rewritten.report.text()
    assert not torch.equal(rewritten.latents, plain.latents), "the rewritten prompt was used"
    assert torch.equal(engine.generate(spec, dataclasses.replace(request, prompt=prompt)).latents,
                       rewritten.latents), "the reported prompt is exactly the one the run used"


def test_cfg_renorm_options_reach_the_pipeline(models_dir, engine):
    spec = spec_for(models_dir, LONGCAT)
    request = request_for(LONGCAT, steps=2, guidance=8.0)
    default = engine.generate(spec, request).latents
    off = engine.generate(spec, dataclasses.replace(request, options={"cfg_renorm": False})).latents
    assert not torch.equal(default, off)
    # cfg_renorm_min = 1 clamps the renorm scale to exactly 1: the same as renorm off.
    assert torch.equal(engine.generate(spec, dataclasses.replace(request, options={"cfg_renorm_min": 1.0})).latents, off)


def test_options_other_models_lack_are_refused_by_name(headless, nodes, tiny_settings):
    settings = {name: value for name, value in tiny_settings(OVIS).items() if name != "frames"}
    (ovis,) = nodes["OmniLoadModel"]().load(OVIS, "fp32", "cpu")
    (options,) = nodes["OmniLongCatOptions"]().options(prompt_rewrite=True, cfg_renorm=True, cfg_renorm_min=0.0)
    with pytest.raises(OmniInputError) as info:
        nodes["OmniSampleV2"]().sample(ovis, **settings, options=options)
    message = str(info.value)
    assert info.value.input_name == "options" and "Ovis-Image takes no Omni LongCat-Image Options" in message, message
    with pytest.raises(OmniInputError) as info:  # the old Sample's widget, set on a model without it
        nodes["OmniSample"]().sample(ovis, **tiny_settings(OVIS), prompt_rewrite=True)
    assert info.value.input_name == "prompt_rewrite" and "Ovis-Image takes no option" in str(info.value)
    (longcat,) = nodes["OmniLoadModel"]().load(LONGCAT, "fp32", "cpu")
    for bad, fragment in ((dict(cfg_renorm_min=1.5), "cfg_renorm_min"), (dict(prompt_rewrite="yes"), "true or false")):
        (options,) = nodes["OmniLongCatOptions"]().options(**{**dict(prompt_rewrite=False, cfg_renorm=True,
                                                                     cfg_renorm_min=0.0), **bad})
        with pytest.raises(OmniInputError, match=fragment):
            nodes["OmniSampleV2"]().sample(longcat, **settings, options=options)


# ---- LoRA through peft on a pipeline without a loader mixin -------------------------------------
@pytest.fixture(scope="module")
def loras(models_dir):
    folder = models_dir / "loras" / "longcat"
    names = {}
    for name, options in {"a": dict(seed=1), "b": dict(seed=2), "alpha": dict(seed=7, rank=4, alpha=2.0),
                          "alpha-comfyui": dict(seed=7, rank=4, alpha=2.0, layout="comfyui")}.items():
        make_tiny_lora(models_dir / "diffusers" / LONGCAT, folder / f"{name}.safetensors", **options)
        names[name] = f"longcat/{name}.safetensors"
    return names


def test_lora_strengths_stacking_and_hot_swap(headless, nodes, loras):
    engine = default_engine()
    (spec,) = nodes["OmniLoadModel"]().load(LONGCAT, "fp32", "cpu")
    request = request_for(LONGCAT, steps=2, guidance=1.0)

    def run(*stack):
        model = spec
        for name, strength in stack:
            (model,) = nodes["OmniLoadLoRA"]().apply(model, name, strength, "auto")
        return engine.generate(model, request).latents

    base = run()
    loads = engine.pipelines.load_count
    a = run((loras["a"], 1.0))
    assert not torch.allclose(a, base, atol=1e-4)
    assert torch.equal(run((loras["a"], 0.0)), base), "strength 0 is the base model"
    assert torch.equal(run((loras["a"], 0.5), (loras["a"], 0.5)), a), "one file twice adds its strengths"
    both = run((loras["a"], 1.0), (loras["b"], 1.0))
    assert not torch.allclose(both, a, atol=1e-4) and torch.equal(run((loras["a"], 1.0), (loras["b"], 0.0)), a)
    assert torch.equal(run(), base), "no LoRA node: the base model again"
    comfy = run((loras["alpha-comfyui"], 1.0))
    assert torch.allclose(comfy, run((loras["alpha"], 1.0)), atol=1e-6), "ComfyUI layout and alpha = diffusers'"
    adapters = engine.loaded(spec).state[STATE_KEY]
    assert engine.pipelines.load_count == loads, "LoRA changes never reload the base weights"
    assert adapters.file_loads == 4, "each file is read into the pipeline once"


# ---- LongCat-Image-Edit -------------------------------------------------------------------------
def edit_request(**changes) -> GenerationRequest:
    values = dict(prompt="make it red", negative_prompt="blurry", steps=2, guidance=4.0, seed=5,
                  images=(picture(1),))
    values.update(changes)
    return GenerationRequest(**values)


@pytest.fixture(scope="module")
def edited(engine, models_dir):
    return engine.generate(spec_for(models_dir, EDIT), edit_request())


@pytest.mark.slow
def test_edit_decides_its_size_from_the_image_and_reports_it(headless, nodes, tiny_settings):
    (model,) = nodes["OmniLoadModel"]().load(EDIT, "fp32", "cpu")
    settings = tiny_settings(EDIT, steps=1, guidance=1.0)
    first = nodes["OmniSample"]().sample(model, **settings, image=picture(1))
    # 56x40 px in: about 1 MP at 1.4:1, each side rounded up to 16 (diffusers' calculate_dimensions).
    assert "image(s) 56x40 px" in first["ui"]["text"][0] and "output 1216x880 px" in first["ui"]["text"][0]
    other = nodes["OmniSample"]().sample(model, **settings, image=picture(2))
    assert not torch.equal(first["result"][0]["samples"], other["result"][0]["samples"])
    pixels = nodes["OmniVAEDecode"]().decode(model, first["result"][0], 0, 64)["result"][0]
    assert pixels.shape == (1, 880 - 880 % 32, 1216, 3), "the tiny copy's 16x VAE floors to its multiple of 32"
    with pytest.raises(OmniInputError, match="needs an input image"):
        nodes["OmniSample"]().sample(model, **settings)


def test_edit_equals_the_plain_pipeline(models_dir, edited):
    from diffusers import LongCatImageEditPipeline

    spec = spec_for(models_dir, EDIT)
    pipe = LongCatImageEditPipeline.from_pretrained(spec.folder, dtype=torch.float32, local_files_only=True,
                                                    **spec.family.load_kwargs(spec.model_folder))
    pipe.set_progress_bar_config(disable=True)
    plain = edit_request()
    latents = pipe(image=to_pil(plain.images[0])[0], prompt=plain.prompt, negative_prompt=plain.negative_prompt,
                   guidance_scale=plain.guidance, num_inference_steps=plain.steps,
                   generator=torch.Generator().manual_seed(plain.seed), output_type="latent", return_dict=False)[0]
    assert torch.equal(spec.family.to_comfy_latent(pipe, latents, plain).float(), edited.latents)


@pytest.mark.slow
def test_edit_ulysses_equals_one_process(engine, models_dir, edited):
    """The input image's latents join the sequence the transformer splits (CFG-parallel and TP act on the
    same transformer calls as LongCat-Image's, tested in the generic suites)."""
    assert_same(engine.generate(spec_for(models_dir, EDIT, ulysses_degree=2), edit_request()).latents,
                edited.latents)


@pytest.mark.slow
def test_edit_caches_skip_work_and_lora_acts(headless, nodes, engine, models_dir, tiny_settings):
    spec = spec_for(models_dir, EDIT)
    pipe = engine.loaded(spec).pipe
    request = edit_request(steps=4, guidance=1.0)
    with count_block_work(pipe, spec.family) as plain_work:
        plain = engine.generate(spec, request).latents
    for cache in (CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=1),
                  TeaCacheConfig(rel_l1_thresh=50.0)):
        with count_block_work(pipe, spec.family) as cached_work:
            cached = engine.generate(spec.replace(cache=cache), request)
        assert cached_work.executed < plain_work.executed, cache.label
        assert_report_counts_the_work(cached, cache, cached_work, plain_work)
    assert torch.equal(engine.generate(spec, request).latents, plain), "no state leaks"
    assert_lora_acts_and_switches_off(nodes, headless.models_dir / "loras", models_dir, EDIT,
                                      tiny_settings(EDIT, steps=1, guidance=1.0))


def test_edit_layerwise_offload_is_lossless(models_dir, edited):
    from omni_backend.engine import Engine

    engine = Engine()  # offload holds the weights differently: a pipeline of its own
    try:
        spec = spec_for(models_dir, EDIT).replace(memory=MemoryConfig(offload="layerwise"))
        assert torch.equal(engine.generate(spec, edit_request()).latents, edited.latents)
    finally:
        engine.unload_all()
