"""One generation request: the per-run settings that never change weights."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import OmniInputError


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    steps: int = 28
    guidance: float = 4.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    frames: int = 1  # video families only
    batch_size: int = 1

    def validate(self, pixel_multiple: int, video: bool) -> "GenerationRequest":
        if not isinstance(self.prompt, str):
            raise OmniInputError("prompt", self.prompt, "the prompt must be text", "connect or type a text prompt")
        if self.steps < 1:
            raise OmniInputError("steps", self.steps, "at least one denoising step is needed", "set steps to 1 or more")
        if self.batch_size < 1:
            raise OmniInputError("batch_size", self.batch_size, "the batch must hold at least one image",
                                 "set batch_size to 1 or more")
        if self.guidance < 0:
            raise OmniInputError("guidance", self.guidance, "guidance cannot be negative",
                                 "use 0-1 to turn guidance off, or a value like 4.0")
        for name, value in (("width", self.width), ("height", self.height)):
            if value < pixel_multiple or value % pixel_multiple:
                nearest = max(pixel_multiple, round(value / pixel_multiple) * pixel_multiple)
                raise OmniInputError(name, value, f"this model needs a multiple of {pixel_multiple} pixels",
                                     f"use {nearest}")
        if video:
            if self.frames < 1 or (self.frames - 1) % 4:
                nearest = max(1, round((self.frames - 1) / 4) * 4 + 1)
                raise OmniInputError("frames", self.frames, "video models need 4*k+1 frames (1, 5, 9, ... 81)",
                                     f"use {nearest}")
        elif self.frames != 1:
            raise OmniInputError("frames", self.frames, "this is an image model", "set frames to 1")
        if not 0 <= self.seed < 2**64:
            raise OmniInputError("seed", self.seed, "the seed must be between 0 and 2^64-1", "pick another seed")
        return self
