"""Helpers shared by the image-conditioned families' tests: input pictures, a LoRA round trip."""

from __future__ import annotations

import torch

from omni_backend.engine import Engine
from omni_backend.memory import MemoryConfig
from omni_backend.tiny.lora import make_tiny_lora


def picture(seed: int, height: int = 40, width: int = 56) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] of random colours, the same for the same seed."""
    return torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))


def transparency(height: int = 40, width: int = 56) -> torch.Tensor:
    """A ComfyUI MASK (1 - alpha): the left third transparent, a soft edge, the rest opaque."""
    mask = torch.zeros(1, height, width)
    mask[:, :, : width // 3] = 1.0
    mask[:, :, width // 3] = 0.5
    return mask


def assert_lora_acts_and_switches_off(nodes, loras_dir, models_dir, family: str, settings: dict) -> None:
    """A tiny LoRA on the family's model changes its output, and the same graph without the Load LoRA
    node gives the plain output again (nothing stays switched on)."""
    lora = loras_dir / f"{family}-style.safetensors"
    make_tiny_lora(models_dir / "diffusers" / family, lora, seed=3)
    try:
        (model,) = nodes["OmniLoadModel"]().load(family, "fp32", "cpu")

        def sample(spec):
            return nodes["OmniSample"]().sample(spec, **settings, image=picture(1))["result"][0]["samples"]

        plain = sample(model)
        (styled,) = nodes["OmniLoadLoRA"]().apply(model, lora.name, 1.0, "auto")
        assert not torch.equal(plain, sample(styled))
        assert torch.equal(plain, sample(model)), "the LoRA is off again without the node"
    finally:
        lora.unlink()


def assert_offload_lossless_and_fp8_close(spec, request, single_latents, offloads=("layerwise",)) -> None:
    """Each offload gives the single run's latents bit for bit; FP8 weight-only stays within 5% (mean
    relative error)."""
    engine = Engine()
    try:
        for offload in offloads:
            result = engine.generate(spec.replace(memory=MemoryConfig(offload=offload)), request)
            assert torch.equal(result.latents, single_latents), f"{offload} offload is lossless"
        fp8 = engine.generate(spec.replace(memory=MemoryConfig(fp8="weight_only")), request).latents
        error = (fp8 - single_latents).abs().mean() / single_latents.abs().mean()
        assert error < 0.05, f"FP8 weights: relative error {error:.3f}"
    finally:
        engine.unload_all()
