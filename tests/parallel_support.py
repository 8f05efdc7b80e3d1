"""Helpers shared by the multi-process tests: specs with a layout, small requests, the tolerance."""

from __future__ import annotations

from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

# Parallel latents must match the single-process ones to 1e-5 of their largest value (float32
# reductions in another order); the CFG split is exact.
RELATIVE_TOLERANCE = 1e-5


def spec_for(models_dir, family, **parallel):
    spec = ModelSpec.from_folder(str(models_dir / "diffusers" / family), dtype="fp32", device="cpu")
    return spec.replace(parallel=ParallelConfig(**parallel)) if parallel else spec


def request_for(family, **changes):
    from omni_backend.families import FAMILIES

    values = dict(prompt="a red circle on a blue background", negative_prompt="blurry, dark", steps=3,
                  guidance=4.0, width=64, height=48, frames=5 if FAMILIES[family].video else 1)
    sizes = FAMILIES[family].tiny_request_overrides()  # e.g. Wan2.2-TI2V: multiples of 32
    values.update({name: sizes[name] for name in ("width", "height") if name in sizes})
    values.update(changes)
    return GenerationRequest(**values)


def assert_same(parallel, single):
    scale = single.abs().max()
    difference = (parallel - single).abs().max()
    assert difference <= RELATIVE_TOLERANCE * scale, f"max |diff| {difference:.3g} vs scale {scale:.3g}"
