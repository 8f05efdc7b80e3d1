"""`Omni`: the engine's scripting face, shaped like vLLM-Omni's quick start.

    omni = Omni(model="/models/diffusers/Qwen-Image", cache_backend="tea_cache",
                cache_config={"rel_l1_thresh": 0.2})
    out = omni.generate(prompt="A cat sitting on a windowsill", num_inference_steps=50)
    out.images[0].save("cat.png")

The graph nodes build exactly the same ModelSpec; a script and a workflow run the same engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .cache import CACHE_BACKENDS
from .engine import DecodeSettings, Engine, default_engine
from .errors import OmniInputError
from .files.images import to_pil
from .request import GenerationRequest
from .rules.checks import real_number
from .run.decode import decode_to_audio, to_comfy_images
from .run.sampling import RunControl, RunReport
from .spec import ModelSpec


# Sample's input -> the keyword generate() takes for it (vLLM-Omni's and diffusers' names): a refusal
# names what the caller passed.
KEYWORDS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "frames": "num_frames",
            "batch_size": "num_images_per_prompt", "start": "audio_start_in_s", "seconds": "audio_end_in_s"}


@dataclass
class OmniOutput:
    images: list  # PIL images (video: every frame, in order); empty for audio models
    latents: Any  # raw VAE latents, ComfyUI layout
    report: RunReport = field(default_factory=RunReport)
    audio: Any = None  # audio models: ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate": int}


def audio_window(start: float, end: float | None) -> dict:
    """diffusers' audio_start_in_s / audio_end_in_s as the Omni Audio Window's options (none when left
    at their defaults, so that image and video models do not see them)."""
    window = {}
    if start:
        window["start"] = start
    if end is not None:
        window["seconds"] = end - start
    return window


class Omni:
    def __init__(self, model: str, cache_backend: str | None = None, cache_config: dict | None = None,
                 dtype: str = "auto", device: str = "auto", engine: Engine | None = None, **features):
        spec = ModelSpec.from_folder(model, dtype=dtype, device=device)
        if cache_backend is not None:
            if cache_backend not in CACHE_BACKENDS:
                raise OmniInputError("cache_backend", cache_backend, "unknown cache backend",
                                     f"use None or one of {', '.join(sorted(CACHE_BACKENDS))}")
            spec = spec.replace(cache=CACHE_BACKENDS[cache_backend](dict(cache_config or {})))
        elif cache_config:
            raise OmniInputError("cache_config", cache_config, "given without a cache_backend",
                                 "also pass cache_backend='tea_cache' or 'cache_dit'")
        if features:
            raise OmniInputError("Omni", sorted(features), "unknown keyword arguments",
                                 "see docs/python-and-cli.md for the supported options")
        self.spec = spec
        self.engine = engine or default_engine()

    def generate(self, prompt: str, negative_prompt: str = "", num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 num_frames: int = 1, num_images_per_prompt: int = 1, tile_size: int = 0,
                 progress: Callable[[int, int], None] | None = None, audio_start_in_s: float = 0.0,
                 audio_end_in_s: float | None = None, **options) -> OmniOutput:
        """`options`: the model's own options by name, as its family declares them (omni_backend/options.py:
        layers=, resolution=, prompt_rewrite=, last_image=, ...); a model refuses those it does not take."""
        family = self.spec.family
        audio_start_in_s = real_number("audio_start_in_s", audio_start_in_s, 0.0, fix="use 0.0 or a few seconds")
        if audio_end_in_s is not None:
            audio_end_in_s = real_number("audio_end_in_s", audio_end_in_s, fix="use an end after audio_start_in_s, "
                                         "or None for the rest of the model's window")
            if audio_end_in_s <= audio_start_in_s:  # 0 seconds would mean "the rest of the window" below
                raise OmniInputError("audio_end_in_s", audio_end_in_s, f"the window ends at or before its start "
                                     f"(audio_start_in_s = {audio_start_in_s!r})",
                                     "use an end after the start, or None for the rest of the model's window")
        try:
            request = GenerationRequest(
                prompt=prompt, negative_prompt=negative_prompt,
                steps=num_inference_steps if num_inference_steps is not None else family.default_steps,
                guidance=guidance_scale if guidance_scale is not None else family.default_guidance,
                seed=seed, width=width, height=height, frames=num_frames, batch_size=num_images_per_prompt,
                options={**options, **audio_window(audio_start_in_s, audio_end_in_s)},
            )
            result = self.engine.generate(self.spec, request, RunControl(progress=progress))
        except OmniInputError as exc:
            if exc.input_name not in KEYWORDS:
                raise
            keyword = KEYWORDS[exc.input_name]
            value = audio_end_in_s if exc.input_name == "seconds" else exc.value
            raise OmniInputError(keyword, value, exc.problem,
                                 exc.fix.replace(f"set {exc.input_name} ", f"set {keyword} ")) from None
        if family.audio:  # diffusers' audio_start_in_s/audio_end_in_s; the AUDIO cut to them
            audio, _report = decode_to_audio(self.engine, self.spec, result.latent(self.spec), DecodeSettings())
            return OmniOutput(images=[], latents=result.latents, report=result.report, audio=audio)
        pixels = self.engine.decode(self.spec, result.latents, DecodeSettings(tile_size=tile_size))
        return OmniOutput(images=to_pil(to_comfy_images(pixels)), latents=result.latents, report=result.report)
