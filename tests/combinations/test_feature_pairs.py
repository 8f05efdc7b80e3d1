"""vLLM-Omni's unverified feature pairs (the ❓ cells of tests/reference/vllm-omni-feature-compatibility.md),
run on tiny models.

Each test runs several features at once, so one run covers several pairs; the verdicts in
omni_backend/rules/feature_matrix.py name these tests (test_feature_matrix.py checks that every name
exists). What "supported" means here: the combination runs, each feature still does its job (a cache
still skips work, a LoRA still changes the output), lossless features stay lossless (offload equals
the run without it bit for bit; a parallel layout equals one process within float32 reduction
noise), and patch-parallel decode equals the one-device tiled decode.

Multi-process runs cost seconds per worker group, so each layout starts its group once and runs
every feature set on it (the group stays up while only the weights change).
"""

from __future__ import annotations

import pytest
import torch

from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import DecodeSettings, Engine
from omni_backend.lora import LoraSpec
from omni_backend.memory import MemoryConfig
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec
from omni_diffusion_nodes.headless.recipes import LORA_FILES
from parallel_support import assert_same

FP8_RELATIVE_ERROR = 0.2  # FP8 weight-only vs full precision on the tiny model: a bound, not a quality claim
CACHES = {
    # Thresholds high enough that the tiny model's few steps are skipped/cached at all.
    "teacache": TeaCacheConfig(rel_l1_thresh=0.4),
    "cache_dit": CacheDiTConfig(residual_diff_threshold=1.0, max_warmup_steps=2),
}


@pytest.fixture(scope="module")
def lora(models_dir):
    return LoraSpec(path=str(models_dir / "loras" / LORA_FILES[0]), strength=1.0)


def spec_for(models_dir, family="qwen-image", **features) -> ModelSpec:
    spec = ModelSpec.from_folder(str(models_dir / "diffusers" / family), dtype="fp32", device="cpu")
    return spec.replace(**features) if features else spec


def request_for(**changes) -> GenerationRequest:
    # guidance 4: Qwen-Image runs true CFG, so CFG-parallel has two branches to split.
    values = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=8, guidance=4.0,
                  width=128, height=96, seed=5)
    values.update(changes)
    return GenerationRequest(**values)


def cache_worked(result, cache: str) -> bool:
    if cache == "teacache":
        return any(branch["skipped"] for branch in result.report.sections["TeaCache"]["branches"].values())
    return any(result.report.sections["Cache-DiT"]["cached_steps"])


def relative_error(result, reference) -> float:
    return float((result - reference).norm() / reference.norm())


# ---- one process: LoRA, offload and FP8 under each cache ----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cache", list(CACHES))
def test_lora_offload_and_fp8_under_each_cache(models_dir, engine, lora, cache):
    config = CACHES[cache]
    request = request_for(width=64, height=48)  # no decode here: the smallest size
    cached = engine.generate(spec_for(models_dir, cache=config), request)
    with_lora = engine.generate(spec_for(models_dir, cache=config, loras=(lora,)), request)
    assert cache_worked(with_lora, cache), "the cache skipped nothing with a LoRA on"
    assert not torch.allclose(with_lora.latents, cached.latents), "the LoRA changed nothing under the cache"

    # Offload keeps the adapters unfused (lora/fusing.py): it is lossless against the same unfused run.
    lora_spec = spec_for(models_dir, cache=config, loras=(lora,))
    adapters = engine.loaded(lora_spec).state["lora"]
    adapters.fuse = False
    try:
        unfused = engine.generate(lora_spec, request)
    finally:
        adapters.fuse = True
    layerwise = MemoryConfig(offload="layerwise", blocks_on_device=1)
    offloaded = engine.generate(spec_for(models_dir, cache=config, loras=(lora,), memory=layerwise), request)
    assert offloaded.report.sections["memory"]["offload"] == "layerwise"
    assert offloaded.report.sections["LoRA"]["fused_layers"] == 0
    assert torch.equal(offloaded.latents, unfused.latents), "offload must stay lossless under a cache and a LoRA"
    assert relative_error(with_lora.latents, unfused.latents) < 1e-5, "fused and unfused LoRA must agree"

    fp8 = engine.generate(spec_for(models_dir, cache=config, loras=(lora,), memory=MemoryConfig(fp8="weight_only")),
                          request)
    assert fp8.report.sections["memory"]["fp8"] == "weight_only"
    assert cache_worked(fp8, cache), "the cache skipped nothing on FP8 weights"
    assert relative_error(fp8.latents, with_lora.latents) < FP8_RELATIVE_ERROR

    plain = spec_for(models_dir)
    assert torch.equal(engine.generate(plain, request).latents,
                       Engine().generate(plain, request).latents), "a feature leaked into the next plain run"


# ---- worker groups: every feature set on each layout equals one process -------------------------
# Ulysses with LoRA, FP8 and model offload runs in test_lora_combinations.py and test_memory.py, and
# Ulysses/ring with VAE patches in test_tensor_parallel.py: not again here.
LAYOUTS = {
    "cfg2-vae2": dict(cfg_parallel=2, vae_patch_parallel=2),
    "tp2-vae2": dict(tensor_parallel=2, vae_patch_parallel=2),
    "ulysses2-cfg2": dict(ulysses_degree=2, cfg_parallel=2),
}


def feature_sets(layout: str, lora) -> dict:
    sets = {
        "teacache+lora": dict(cache=CACHES["teacache"], loras=(lora,)),
        "cache_dit": dict(cache=CACHES["cache_dit"]),
        "model offload+fp8": dict(memory=MemoryConfig(offload="model", fp8="weight_only")),
    }
    if layout == "tp2-vae2":  # FP8 with tensor parallel is refused (rule memory.fp8_tensor_parallel)
        sets["model offload+fp8"] = dict(memory=MemoryConfig(offload="model"))
    if layout == "ulysses2-cfg2":  # 4 ranks: only what this layout adds (SP x CFG-parallel), under a cache
        sets = {"teacache": dict(cache=CACHES["teacache"])}
    return sets


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_feature_sets_on_a_parallel_layout_equal_one_process(models_dir, engine, lora, layout):
    degrees = LAYOUTS[layout]
    devices = ("cpu",) * (degrees.get("ulysses_degree", 1) * degrees.get("cfg_parallel", 1)
                          * degrees.get("tensor_parallel", 1))
    request = request_for()
    settings = DecodeSettings(tile_size=64, tile_overlap=16)
    for name, features in feature_sets(layout, lora).items():
        single_spec = spec_for(models_dir, **features)
        single = engine.generate(single_spec, request)
        parallel_spec = spec_for(models_dir, **features, parallel=ParallelConfig(devices=devices, **degrees))
        parallel = engine.generate(parallel_spec, request)
        assert_same(parallel.latents, single.latents)
        if "cache" in features:
            kind = "teacache" if isinstance(features["cache"], TeaCacheConfig) else "cache_dit"
            assert cache_worked(parallel, kind), f"{name}: the cache skipped nothing on {layout}"
        if "memory" in features:
            memory = parallel.report.sections["memory"]
            assert (memory["offload"], memory["fp8"]) == ("model", features["memory"].fp8), name
        if "loras" in features:
            assert "LoRA" in parallel.report.sections, f"{name}: no adapter ran on {layout}"
        if degrees.get("vae_patch_parallel", 1) > 1:
            one_device, _ = engine.decode_with_report(single_spec, single.latents, settings)
            patched, report = engine.decode_with_report(parallel_spec, single.latents, settings)
            assert (patched - one_device).abs().max() <= 1e-5, f"{name}: patch-parallel decode differs"
            assert len(report.sections["VAE"]["peak_bytes"]) == 2, f"{name}: the decode was not split"
