"""LoRA with the other features: caches, FP8, and the worker group (Ulysses, tensor parallel)."""

from __future__ import annotations

import pytest
import torch

from omni_backend.cache import TeaCacheConfig
from omni_backend.lora.config import LoraSpec
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec
from omni_backend.tiny.lora import make_tiny_lora


@pytest.fixture(scope="module")
def lora_spec(models_dir, tmp_path_factory):
    folder = models_dir / "diffusers" / "qwen-image"
    # alpha != rank: the scale 0.5 lives only in the file's diffusers metadata, which every rank must use.
    path = make_tiny_lora(folder, tmp_path_factory.mktemp("loras") / "combo.safetensors", seed=5, rank=4, alpha=2.0)
    base = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu")
    return base, base.replace(loras=(LoraSpec(str(path), 1.0),))


REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=4, guidance=4.0, width=64,
                            height=48)


def test_lora_with_teacache_runs_and_still_skips(engine, lora_spec):
    base, with_lora = lora_spec
    plain = engine.generate(with_lora, REQUEST).latents
    cached = engine.generate(with_lora.replace(cache=TeaCacheConfig(rel_l1_thresh=50.0)), REQUEST)
    assert "LoRA" in cached.report.text() and "TeaCache" in cached.report.text()
    assert cached.report.sections["TeaCache"]["speedup_estimate"] > 1
    assert not torch.equal(cached.latents, engine.generate(base, REQUEST).latents)
    assert (cached.latents - plain).abs().max() > 0  # steps were skipped


@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(tensor_parallel=2)], ids=["ulysses2", "tp2"])
def test_every_rank_applies_the_same_adapter(engine, lora_spec, layout):
    """With tensor parallel each rank holds a cut of the adapter, like its layers."""
    base, with_lora = lora_spec
    single = engine.generate(with_lora, REQUEST).latents
    assert (single - engine.generate(base, REQUEST).latents).abs().max() > 1e-3, "the LoRA changes the output"
    parallel = engine.generate(with_lora.replace(parallel=ParallelConfig(**layout)), REQUEST).latents
    assert (parallel - single).abs().max() <= 1e-5 * single.abs().max()
