"""ComfyUI's FP8 files stay FP8 in memory (omni_backend/single_file/stored_fp8.py): the DiT's and the
text encoder's layer linears hold the file's FP8 values and scales, the output equals dequantizing
first, Offload/FP8's fp8 on such a model adds nothing and says so, and tensor parallelism still equals
one process."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.memory import MemoryConfig
from omni_backend.memory.fp8 import FP8Linear
from omni_backend.memory.fp8_layers import dit_modulation_targets, dit_targets
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.single_file import model_files
from omni_backend.single_file.comfy_layout import write_comfy_files
from omni_backend.single_file.model_files import ModelFiles
from omni_backend.spec import ModelSpec

REQUEST = GenerationRequest(prompt="a red circle", negative_prompt="blurry", steps=3, guidance=4.0, width=64,
                            height=64)
# The plain and the scaled layout, and FLUX.1's key map, which cuts fused weights and swaps AdaLN halves.
CASES = [("qwen-image", "fp8_e4m3fn"), ("qwen-image", "fp8_scaled"), ("flux", "fp8_scaled")]


def files_of(written: dict) -> ModelFiles:
    return ModelFiles(**{name: str(path) for name, path in written.items()})


def dequantizing_first(monkeypatch):
    """Load as the pack did before FP8 was kept: every FP8 tensor converted to the dtype on reading."""
    monkeypatch.setattr(model_files, "StoredFP8", lambda: None)


def linear_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for m in module.modules()
               if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False))


@pytest.mark.parametrize("family_key,weights", CASES)
def test_fp8_files_stay_fp8_and_give_the_dequantized_output(tmp_path, monkeypatch, family_key, weights):
    spec = ModelSpec.from_files(files_of(write_comfy_files(family_key, tmp_path, weights)), dtype="fp32", device="cpu")
    engine = Engine()
    try:
        pipe = engine.loaded(spec).pipe
        family = FAMILIES[family_key]
        targets = [name for name, *_ in (*dit_targets(family, pipe.transformer),
                                         *dit_modulation_targets(family, pipe.transformer))]
        kept = [name for name, layer in pipe.transformer.named_modules() if isinstance(layer, FP8Linear)]
        assert targets == [] and len(kept) > 0, "every layer FP8 quantizes is FP8 already, none is left plain"
        assert all(layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
                   for layer in pipe.transformer.modules() if isinstance(layer, FP8Linear))
        kept_bytes = linear_bytes(pipe.transformer)
        latents = engine.generate(spec, REQUEST).latents
    finally:
        engine.unload_all()

    dequantizing_first(monkeypatch)
    engine = Engine()
    try:
        pipe = engine.loaded(spec).pipe
        assert not any(isinstance(layer, FP8Linear) for layer in pipe.transformer.modules())
        upcast_bytes = linear_bytes(pipe.transformer)
        assert torch.equal(engine.generate(spec, REQUEST).latents, latents), "same weights, same arithmetic"
    finally:
        engine.unload_all()
    # fp32 compute: a kept layer is 1 byte per weight instead of 4 (plus a scale per row).
    assert kept_bytes < 0.5 * upcast_bytes, (kept_bytes, upcast_bytes)


def test_the_files_fp8_values_are_kept_bit_for_bit_and_fp8_adds_nothing(tmp_path):
    written = write_comfy_files("qwen-image", tmp_path, "fp8_e4m3fn")
    spec = ModelSpec.from_files(files_of(written), dtype="fp32", device="cpu")
    raw = safetensors.torch.load_file(written["diffusion_model"])
    engine = Engine()
    try:
        plain = engine.generate(spec, REQUEST)
        layer = engine.loaded(spec).pipe.transformer.transformer_blocks[0].attn.to_q
        stored = raw["model.diffusion_model.transformer_blocks.0.attn.to_q.weight"]
        assert isinstance(layer, FP8Linear) and stored.dtype == torch.float8_e4m3fn
        assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))
        assert bool((layer.weight_scale == 1).all())
        encoder = engine.loaded(spec).pipe.text_encoder
        assert any(isinstance(module, FP8Linear) for module in encoder.modules())

        with_fp8 = engine.generate(spec.replace(memory=MemoryConfig(fp8="weight_only")), REQUEST)
        assert torch.equal(with_fp8.latents, plain.latents)
        assert any("FP8 as the model file stores them" in line for line in with_fp8.report.lines()), \
            with_fp8.report.lines()
    finally:
        engine.unload_all()


@pytest.mark.slow
def test_tensor_parallel_on_an_fp8_file_equals_one_process(tmp_path):
    spec = ModelSpec.from_files(files_of(write_comfy_files("qwen-image", tmp_path, "fp8_scaled")), dtype="fp32",
                                device="cpu")
    engine = Engine()
    try:
        one = engine.generate(spec, REQUEST).latents
        two = engine.generate(spec.replace(parallel=ParallelConfig(tensor_parallel=2)), REQUEST).latents
    finally:
        engine.unload_all()
    assert torch.allclose(two, one, atol=1e-5), float((two - one).abs().max())
