"""VAE Decode Patch-Parallel: ranks decode their share of the image, rank 0 puts it together.

Two strategies, as in vLLM-Omni's distributed VAE executor:
- Tiles, for latents the one-device decode would tile anyway (vae_tiling.py): the same tiles,
  blended by the same order-independent weighted sum, so the result is the one-device tiled decode.
- Patches, for latents the one-device decode takes whole: a near-square grid of cores, each decoded
  with a halo of half a core of latent context around it and cropped back to its core after decode
  (no blending). The decoder's mid block, whose attention sees the whole latent, is computed once on
  the whole latent (it runs at latent resolution: a small part of the work) and each patch takes its
  crop of that; only the convolutional up-sampling path, where the memory goes, runs per patch. On
  the trained reference VAE this gives 57 dB at 64 px and 46 dB at 256 px against the whole decode,
  where patches without the whole-latent mid block stay below 31 dB whatever the halo (the
  attention sees only the patch). There are at least 2 x 2 patches, so one patch with its halo is
  at most ~0.56 of the image and each rank's peak stays well under one device's.
Work is balanced greedily, largest piece first, onto the least-loaded rank.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..run.vae_tiling import Tile, decode_tile, stitch


def assign_tiles(tiles: list[Tile], ranks: int) -> list[list[int]]:
    """Tile indices per rank, balancing decoded area (deterministic on every rank)."""
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(tiles)), key=lambda i: (-tiles[i].area, i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += tiles[index].area
    return shares


@dataclass(frozen=True)
class Patch:
    core: Tile  # the latent pixels this patch delivers
    halo: Tile  # the core grown by the halo on every side, clipped to the latent: what is decoded

    @property
    def area(self) -> int:
        return self.halo.area


MIN_PATCHES = 4  # a 2 x 2 grid at least: one patch with its halo is then at most ~0.56 of the image


def _cuts(length: int, parts: int) -> list[int]:
    return [round(i * length / parts) for i in range(parts + 1)]


def plan_patches(latent_h: int, latent_w: int, ranks: int) -> list[Patch]:
    """A near-square grid of at least max(ranks, 4) cores, each with a halo of half its shorter side
    (vLLM-Omni's `min(core_h, core_w) / 2`)."""
    count = max(ranks, MIN_PATCHES)
    rows = min(latent_h, max(1, round(math.sqrt(count * latent_h / latent_w))))
    cols = min(latent_w, max(1, math.ceil(count / rows)))
    ys, xs = _cuts(latent_h, rows), _cuts(latent_w, cols)
    patches = []
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            halo = math.ceil(min(y1 - y0, x1 - x0) / 2)
            patches.append(Patch(Tile(y0, y1, x0, x1), Tile(max(0, y0 - halo), min(latent_h, y1 + halo),
                                                            max(0, x0 - halo), min(latent_w, x1 + halo))))
    return patches


class _StemDone(Exception):
    """Ends a decode once the decoder's mid block has run (the rest is not needed for the stem)."""


def _mid_block(vae):
    return getattr(getattr(vae, "decoder", None), "mid_block", None)


def whole_latent_stem(family, vae, latents):
    """The decoder's mid-block output for the whole latent, or None where patches decode on their own.

    Taken from the VAE's own decode (a forward hook stops it after the mid block), so no decoder code
    is copied. Only for image latents: a video VAE runs its mid block once per frame chunk, with a
    causal cache, and its patches decode without a shared stem.
    """
    mid = _mid_block(vae)
    if mid is None or latents.ndim != 4:
        return None
    captured = []

    def stop(_module, _inputs, output):
        captured.append(output)
        raise _StemDone

    handle = mid.register_forward_hook(stop)
    try:
        family.decode(vae, latents)
    except _StemDone:
        pass
    finally:
        handle.remove()
    return captured[0] if captured else None


@contextlib.contextmanager
def _mid_block_from(vae, stem, window: Tile):
    if stem is None:
        yield
        return
    crop = stem[..., window.y0:window.y1, window.x0:window.x1]
    handle = _mid_block(vae).register_forward_hook(lambda _module, _inputs, output: crop)
    try:
        yield
    finally:
        handle.remove()


def decode_patch(family, vae, latents, patch: Patch, scale: int, stem):
    """Pixels of the patch's core: its halo window decoded (mid block from the stem), then cropped."""
    with _mid_block_from(vae, stem, patch.halo):
        pixels = decode_tile(family, vae, latents, patch.halo)
    top, left = (patch.core.y0 - patch.halo.y0) * scale, (patch.core.x0 - patch.halo.x0) * scale
    height, width = (patch.core.y1 - patch.core.y0) * scale, (patch.core.x1 - patch.core.x0) * scale
    return pixels[..., top:top + height, left:left + width]


def place(patches: list[Patch], decoded: list, scale: int):
    """The cores side by side (they do not overlap: nothing to blend)."""
    first = decoded[0]
    height, width = max(p.core.y1 for p in patches) * scale, max(p.core.x1 for p in patches) * scale
    out = torch.empty(*first.shape[:-2], height, width, dtype=torch.float32)
    for patch, pixels in zip(patches, decoded):
        out[..., patch.core.y0 * scale:patch.core.y1 * scale, patch.core.x0 * scale:patch.core.x1 * scale] = \
            pixels.cpu()
    return out


class PeakActivation:
    """The largest activation tensor the VAE produces while decoding (bytes).

    On CUDA the allocator's peak is exact; the CPU has no peak counter, so we record the largest
    module output, which dominates a convolutional decoder's live memory and scales with tile area.
    """

    def __init__(self, vae, device):
        self.vae, self.device, self.bytes, self._handles = vae, device, 0, []

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            for module in self.vae.modules():
                self._handles.append(module.register_forward_hook(self._record))
        return self

    def _record(self, _module, _inputs, output):
        if isinstance(output, torch.Tensor):
            self.bytes = max(self.bytes, output.numel() * output.element_size())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        for handle in self._handles:
            handle.remove()


def decode_on_ranks(family, vae, latents, scale: int, tiles: list, group):
    """Every rank of `group` decodes its tiles (Tile: blended) or patches (Patch: placed); returns
    (pixels on rank 0 else None, peak bytes per rank).

    Tiles travel as plain tensors (a shape, then the data) rather than pickled objects: nothing
    a rank receives is ever unpickled.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    shares = assign_tiles(tiles, world)
    patches = isinstance(tiles[0], Patch)
    with PeakActivation(vae, latents.device) as peak:
        if patches:
            stem = whole_latent_stem(family, vae, latents) if shares[rank] else None
            decoded = {index: decode_patch(family, vae, latents, tiles[index], scale, stem) for index in shares[rank]}
        else:
            decoded = {index: decode_tile(family, vae, latents, tiles[index]) for index in shares[rank]}
    peaks = [torch.zeros(1, dtype=torch.int64, device=latents.device) for _ in range(world)]
    dist.all_gather(peaks, torch.tensor([peak.bytes], dtype=torch.int64, device=latents.device), group=group)
    first = dist.get_global_rank(group, 0)
    if rank != 0:
        for index in shares[rank]:
            tile = decoded[index].contiguous()
            shape = torch.tensor(list(tile.shape) + [0] * (_MAX_DIMS - tile.dim()), dtype=torch.int64,
                                 device=tile.device)
            dist.send(shape, dst=first, group=group)
            dist.send(tile, dst=first, group=group)
        return None, None
    parts = {index: tile.cpu() for index, tile in decoded.items()}
    for source in range(1, world):
        sender = dist.get_global_rank(group, source)
        for index in shares[source]:
            shape = torch.zeros(_MAX_DIMS, dtype=torch.int64, device=latents.device)
            dist.recv(shape, src=sender, group=group)
            tile = torch.empty([d for d in shape.tolist() if d > 0], dtype=vae.dtype, device=latents.device)
            dist.recv(tile, src=sender, group=group)
            parts[index] = tile.cpu()
    merge = place if patches else stitch
    return merge(tiles, [parts[i] for i in range(len(tiles))], scale), [int(p.item()) for p in peaks]


_MAX_DIMS = 8  # decoded tiles are [B, C, H, W] or [B, C, F, H, W]
