"""The engine: loaded pipelines, runs and decodes, with a single-process executor.

Nodes and the `Omni` facade both talk to an Engine. It owns the pipeline cache; everything a
feature changes for one run is undone when the run ends, so the cached pipeline is always the
plain model plus its weight-level features (dtype, FP8, offload, parallel layout).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from .loading import load_pipeline
from .pipeline_cache import LoadedPipeline, PipelineCache
from .request import GenerationRequest
from .sampling import RunContext, RunControl, RunReport, sample

log = logging.getLogger("omni_diffusion")


@dataclass
class Generation:
    latents: Any  # raw VAE latents, ComfyUI layout, float32 on CPU
    family: str
    request: GenerationRequest
    report: RunReport = field(default_factory=RunReport)


@dataclass(frozen=True)
class DecodeSettings:
    tile_size: int = 0  # pixels; 0 decodes the whole latent at once
    tile_overlap: int = 64  # pixels


class Engine:
    def __init__(self, max_loaded: int = 1):
        self.pipelines = PipelineCache(max_loaded)
        self._lock = threading.RLock()  # one run at a time per engine (ComfyUI runs prompts serially)
        self._groups = None  # GroupExecutor, created on the first multi-process run

    # ---- public --------------------------------------------------------------------------
    def generate(self, spec, request: GenerationRequest, control: RunControl | None = None) -> Generation:
        request = request.validate(spec.family.pixel_multiple, spec.family.video)
        control = control or RunControl()
        with self._lock:
            control.check_interrupt()
            executor = self._executor(spec)
            return executor.generate(spec, request, control)

    def decode(self, spec, latents, settings: DecodeSettings = DecodeSettings()):
        """Raw latents (ComfyUI layout) -> pixels in [0, 1], `[B,3,H,W]` or `[B,3,F,H,W]`."""
        return self.decode_with_report(spec, latents, settings)[0]

    def decode_with_report(self, spec, latents, settings: DecodeSettings = DecodeSettings()):
        """(pixels, RunReport): the report says how the decode was split and its memory per rank."""
        with self._lock:
            return self._executor(spec).decode(spec, latents, settings)

    def unload_all(self) -> None:
        """Free every loaded pipeline and end the worker processes."""
        with self._lock:
            self.pipelines.clear()
            if self._groups is not None:
                self._groups.shutdown()

    # ---- internals -----------------------------------------------------------------------
    def _executor(self, spec):
        from .parallel.runtime import current_context

        if spec.world_size() == 1 or current_context() is not None:
            return InProcessExecutor(self)  # a worker rank runs its share in-process
        if self._groups is None:
            from .parallel.group import GroupExecutor

            self._groups = GroupExecutor()
        return self._groups.for_spec(spec)

    def loaded(self, spec) -> LoadedPipeline:
        def load():
            pipe = load_pipeline(spec)
            for feature in spec.features():
                prepare = getattr(feature, "prepare_pipeline", None)
                if prepare is not None:
                    prepare(pipe, spec)
            return pipe

        return self.pipelines.get(spec.weights_key(), load)


class InProcessExecutor:
    """World size 1: run in this process."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(self, spec, request, control) -> Generation:
        entry = self.engine.loaded(spec)
        report = RunReport()
        ctx = RunContext(pipe=entry.pipe, spec=spec, request=request, control=control, report=report,
                         state=entry.state)
        latents = sample(ctx)
        return Generation(latents=latents, family=spec.family_key, request=request, report=report)

    def decode(self, spec, latents, settings: DecodeSettings):
        import torch

        from .parallel.runtime import current_context
        from .parallel.vae_patch import PeakActivation, decode_on_ranks, patches_for_ranks
        from .vae_tiling import decode_tiled, plan_for

        entry = self.engine.loaded(spec)
        vae = entry.pipe.vae
        scale = spec.family.vae_scale(entry.pipe)
        latents = latents.to(vae.device)
        tiles = plan_for(latents, scale, settings.tile_size, settings.tile_overlap)
        report = RunReport()
        context = current_context()
        ranks = spec.parallel.vae_patch_parallel if spec.parallel is not None else 1
        with torch.inference_mode():
            if context is not None and ranks > 1:
                if len(tiles) == 1:
                    tiles = patches_for_ranks(latents.shape[-2], latents.shape[-1], ranks,
                                              settings.tile_overlap // scale)
                if context.rank >= ranks:
                    return None, None  # not in the VAE group: nothing to decode
                pixels, peaks = decode_on_ranks(spec.family, vae, latents, scale, tiles, context.group("vae"))
            else:
                with PeakActivation(vae, latents.device) as peak:
                    pixels = decode_tiled(spec.family, vae, latents, scale, tiles)
                peaks = [peak.bytes]
        if pixels is None:
            return None, None
        megabytes = ", ".join(f"{p / 2**20:.1f}" for p in peaks)
        report.add("VAE", {"text": f"{len(tiles)} tile(s) on {len(peaks)} rank(s); peak decode activation per "
                                   f"rank (MiB): {megabytes}", "tiles": len(tiles), "peak_bytes": peaks})
        return (pixels / 2 + 0.5).clamp(0, 1), report


_default_engine: Engine | None = None


def default_engine() -> Engine:
    """The process-wide engine the nodes share (one pipeline cache for the whole ComfyUI)."""
    global _default_engine
    if _default_engine is None:
        import os

        _default_engine = Engine(max_loaded=int(os.environ.get("OMNI_MAX_LOADED_MODELS", "1")))
    return _default_engine
