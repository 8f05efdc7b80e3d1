"""Compile DiT Blocks: regional torch.compile, equal to eager, composed with caches, LoRA, offload, parallel.

Dynamo's counters tell compiles apart from reuse: `frames.ok` counts frames Dynamo compiled. The
composition cases use the "aot_eager" backend (the same graph capture, no code generation: the
inductor compile of a block takes a minute on these cores); one case runs inductor itself.
"""

from __future__ import annotations

import pytest
import torch
from parallel_support import assert_same, request_for, spec_for

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.compile import CompileConfig
from omni_backend.memory import MemoryConfig
from omni_backend.tiny.lora import make_tiny_lora


def compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values())


def blocks_of(engine, spec):
    transformer = engine.loaded(spec).pipe.transformer
    return [m for m in transformer.modules() if type(m).__name__ in transformer._repeated_blocks]


@pytest.mark.slow
def test_inductor_output_equals_eager_and_the_blocks_are_plain_after_the_run(models_dir, engine):
    spec = spec_for(models_dir, "qwen-image")
    request = request_for("qwen-image", guidance=1.0, steps=2)
    eager = engine.generate(spec, request).latents
    result = engine.generate(spec.replace(compile=CompileConfig("inductor")), request)
    assert result.report.sections["Compile"]["blocks"] == len(blocks_of(engine, spec)) > 0
    assert_same(result.latents, eager)
    assert all(block._compiled_call_impl is None for block in blocks_of(engine, spec)), "compile leaked"
    assert torch.equal(engine.generate(spec, request).latents, eager)


@pytest.mark.slow
def test_a_lora_strength_change_does_not_recompile_and_a_new_size_does(models_dir, engine, tmp_path):
    lora = make_tiny_lora(models_dir / "diffusers" / "qwen-image", tmp_path / "a.safetensors", seed=1)
    from omni_backend.lora import LoraSpec

    spec = spec_for(models_dir, "qwen-image")
    request = request_for("qwen-image", guidance=1.0, steps=2)
    compiled = spec.replace(compile=CompileConfig("aot_eager"))
    results = {}
    for strength in (0.5, 0.9, 0.5):
        before = compiled_frames()
        results[strength] = engine.generate(compiled.replace(loras=(LoraSpec(str(lora), strength),)), request).latents
        frames = compiled_frames() - before
        if strength == 0.9:
            assert frames == 0, "a strength change recompiled"
    eager = engine.generate(spec.replace(loras=(LoraSpec(str(lora), 0.9),)), request).latents
    assert_same(results[0.9], eager)
    assert not torch.allclose(results[0.9], results[0.5], atol=1e-4), "the strength acted"
    before = compiled_frames()
    engine.generate(compiled.replace(loras=(LoraSpec(str(lora), 0.9),)), request_for(
        "qwen-image", guidance=1.0, steps=2, width=96))
    assert compiled_frames() > before, "a new size compiles (Dynamo specialised on the shapes)"


@pytest.mark.slow
@pytest.mark.parametrize("features", [
    dict(cache=TeaCacheConfig(rel_l1_thresh=0.2)),
    dict(cache=CacheDiTConfig()),
    dict(memory=MemoryConfig(offload="layerwise", blocks_on_device=2)),
    dict(memory=MemoryConfig(fp8="weight_only")),
], ids=["teacache", "cache_dit", "layerwise_offload", "fp8"])
def test_compile_composes_with_caches_and_offload(models_dir, engine, features):
    spec = spec_for(models_dir, "qwen-image").replace(**features)
    request = request_for("qwen-image", steps=4)
    eager = engine.generate(spec, request)
    compiled = engine.generate(spec.replace(compile=CompileConfig("aot_eager")), request)
    assert_same(compiled.latents, eager.latents)
    assert compiled.report.sections["Compile"]["blocks"] > 0
    if "cache" in features:
        assert compiled.report.sections.keys() >= {"Compile"}
        cache_section = next(k for k in compiled.report.sections if k not in ("Compile", "memory", "Parallel"))
        assert compiled.report.sections[cache_section] == eager.report.sections[cache_section], "same skips"


# The layouts that put collectives inside the compiled transformer. CFG-parallel is left out: each rank
# runs the one-process transformer on its branch, the graph compiled above.
@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(tensor_parallel=2)], ids=["ulysses2", "tp2"])
def test_compile_on_a_parallel_layout_equals_one_process(models_dir, engine, layout):
    request = request_for("qwen-image", steps=2)
    single = engine.generate(spec_for(models_dir, "qwen-image"), request).latents
    spec = spec_for(models_dir, "qwen-image", **layout).replace(compile=CompileConfig("aot_eager"))
    result = engine.generate(spec, request)
    assert_same(result.latents, single)
    assert result.report.sections["Compile"]["blocks"] > 0
