"""Running requests in this process: the loaded-pipeline cache, one run, one decode.

The engine uses it for world size 1, and every worker rank uses it for its share of a
multi-process run (inside a worker the parallel context is set, so features shard and
communicate). It knows nothing of how worker processes are started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..parallel.runtime import current_context
from ..parallel.vae_patch import PeakActivation, decode_on_ranks, plan_patches
from ..request import GenerationRequest
from ..rules.checks import whole_number
from ..system.process_lock import process_lock
from ..weights.loading import load_pipeline
from ..weights.pipeline_cache import LoadedPipeline, PipelineCache
from .sampling import RunContext, RunReport, sample
from .vae_tiling import decode_tiled, plan_for


@dataclass
class Generation:
    latents: Any  # raw VAE latents, ComfyUI layout, float32 on CPU
    family: str
    request: GenerationRequest
    report: RunReport = field(default_factory=RunReport)

    def latent(self, spec) -> dict:
        """Sample's ComfyUI LATENT: the samples, and what the decode needs to read them."""
        return {"samples": self.latents, "omni_family": self.family,
                **spec.family.latent_fields(spec.model_folder, self.request)}


@dataclass(frozen=True)
class DecodeSettings:
    tile_size: int = 0  # pixels; 0 decodes the whole latent at once
    tile_overlap: int = 64  # pixels

    def __post_init__(self):
        object.__setattr__(self, "tile_size", whole_number("tile_size", self.tile_size, 0, 8192,
                                                           fix="use 0 (whole) or a tile size such as 512"))
        object.__setattr__(self, "tile_overlap", whole_number("tile_overlap", self.tile_overlap, 0, 1024))


class LocalRunner:
    """Loads, runs and decodes hold the process-wide lock (process_lock.py): whatever engine or thread
    asks, one of them at a time in this process, since a load or a LoRA adapter patches torch for the
    whole process and a run reads what it patches."""

    def __init__(self, max_loaded: int = 1):
        self.pipelines = PipelineCache(max_loaded)

    def loaded(self, spec) -> LoadedPipeline:
        with process_lock():
            return self._loaded(spec)

    def _loaded(self, spec) -> LoadedPipeline:
        def load():
            pipe = load_pipeline(spec)
            for feature in spec.features():
                prepare = getattr(feature, "prepare_pipeline", None)
                if prepare is not None:
                    prepare(pipe, spec)
            return pipe

        return self.pipelines.get(spec.weights_key(), load)

    def generate(self, spec, request, control) -> Generation:
        with process_lock():
            return self._generate(spec, request, control)

    def _generate(self, spec, request, control) -> Generation:
        entry = self._loaded(spec)
        report = RunReport()
        ctx = RunContext(pipe=entry.pipe, spec=spec, request=request, control=control, report=report,
                         state=entry.state)
        latents = sample(ctx)
        return Generation(latents=latents, family=spec.family_key, request=request, report=report)

    def decode(self, spec, latents, settings: DecodeSettings):
        """(pixels in [0, 1], RunReport); (None, None) on a worker rank that holds no result."""
        with process_lock():
            return self._decode(spec, latents, settings)

    def _decode(self, spec, latents, settings: DecodeSettings):
        entry = self._loaded(spec)
        vae = entry.pipe.vae
        if spec.family.audio:
            return decode_waveform(spec, vae, latents)
        scale = spec.family.vae_scale(entry.pipe)
        latents = latents.to(vae.device)
        tiles = plan_for(latents, scale, settings.tile_size, settings.tile_overlap)
        report = RunReport()
        context = current_context()
        ranks = spec.parallel.vae_patch_parallel if spec.parallel is not None else 1
        with torch.inference_mode():
            if context is not None and ranks > 1:
                if len(tiles) == 1:  # small enough to decode whole: patches with halos instead
                    tiles = plan_patches(latents.shape[-2], latents.shape[-1], ranks)
                if context.rank >= ranks:
                    return None, None  # not in the VAE group: nothing to decode
                pixels, peaks = decode_on_ranks(spec.family, vae, latents, scale, tiles, context.group("vae"))
            elif context is not None and context.rank != 0:
                return None, None  # vae_patch_parallel 1: rank 0 decodes alone, the others wait for nothing
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

    def unload_all(self) -> None:
        self.pipelines.clear()


def decode_waveform(spec, vae, latents):
    """(the whole window's waveform [B, C, T], RunReport): one piece, since a 1-D latent has no spatial
    tiles; every rank of a group decodes it (the group keeps rank 0's), as a one-rank image decode does."""
    report = RunReport()
    latents = latents.to(vae.device)
    with torch.inference_mode(), PeakActivation(vae, latents.device) as peak:
        waveform = spec.family.decode(vae, latents)
    report.add("VAE", {"text": f"waveform {tuple(waveform.shape)} in one piece; peak decode activation "
                               f"{peak.bytes / 2**20:.1f} MiB", "tiles": 1, "peak_bytes": [peak.bytes]})
    return waveform.float().cpu(), report
