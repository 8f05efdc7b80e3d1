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


@pytest.mark.slow
@pytest.mark.parametrize("layout", [dict(ulysses_degree=2), dict(tensor_parallel=2)], ids=["ulysses2", "tp2"])
def test_every_rank_applies_the_same_adapter(engine, lora_spec, layout):
    """With tensor parallel each rank holds a cut of the adapter, like its layers."""
    base, with_lora = lora_spec
    single = engine.generate(with_lora, REQUEST).latents
    assert (single - engine.generate(base, REQUEST).latents).abs().max() > 1e-3, "the LoRA changes the output"
    parallel = engine.generate(with_lora.replace(parallel=ParallelConfig(**layout)), REQUEST).latents
    assert (parallel - single).abs().max() <= 1e-5 * single.abs().max()


# Every kind of shard tensor parallelism makes: column (to_q, the timestep MLP's first layer), row (to_out,
# img_mlp.net.2, its second layer) and gathered column (img_mod/txt_mod, norm_out's AdaLN).
SHARD_KINDS = (r".*(to_q|to_out\.0|img_mlp\.net\.2|img_mod\.1|txt_mod\.1|timestep_embedder\.linear_1|"
               r"timestep_embedder\.linear_2|norm_out\.linear)")


@pytest.mark.slow
def test_tensor_parallel_adapter_on_every_shard_kind_and_a_reloaded_file(engine, models_dir, tmp_path):
    """The file changes on disk between the runs: its old adapter, the only one, is deleted (peft puts the
    plain layers back, whose row-parallel reduction must be whole again) and the new one loaded."""
    folder = models_dir / "diffusers" / "qwen-image"
    path = tmp_path / "every-shard.safetensors"
    base = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu")
    spec = base.replace(loras=(LoraSpec(str(path), 1.0),))
    plain = engine.generate(base, REQUEST).latents
    for seed in (11, 12):
        make_tiny_lora(folder, path, seed=seed, rank=4, target_modules=SHARD_KINDS)
        single_run = engine.generate(spec, REQUEST)
        single = single_run.latents
        assert (single - plain).abs().max() > 1e-3, "the LoRA changes the output"
        parallel = engine.generate(spec.replace(parallel=ParallelConfig(tensor_parallel=2)), REQUEST)
        assert (parallel.latents - single).abs().max() <= 1e-5 * single.abs().max(), f"LoRA seed {seed}"
        # Every shard kind was fused into its piece of the weights (lora/fusing.py), not left to peft.
        fused = single_run.report.sections["LoRA"]["fused_layers"]
        assert fused > 0 and parallel.report.sections["LoRA"]["fused_layers"] == fused


@pytest.mark.slow
def test_tensor_parallel_adapter_into_wan_second_expert(engine, models_dir, tmp_path):
    """A LoRA for transformer_2 is cut by transformer_2's shards (its keys say `transformer.`)."""
    folder = models_dir / "diffusers" / "wan2.2"
    path = make_tiny_lora(folder, tmp_path / "second.safetensors", seed=7, rank=4, component="transformer_2")
    request = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=3, guidance=4.0, width=64,
                                height=48, frames=5)
    base = ModelSpec.from_folder(str(folder), dtype="fp32", device="cpu")
    spec = base.replace(loras=(LoraSpec(str(path), 1.0, component="transformer_2"),))
    single = engine.generate(spec, request).latents
    assert (single - engine.generate(base, request).latents).abs().max() > 1e-3, "the LoRA changes the output"
    parallel = engine.generate(spec.replace(parallel=ParallelConfig(tensor_parallel=2)), request).latents
    assert (parallel - single).abs().max() <= 1e-5 * single.abs().max()
