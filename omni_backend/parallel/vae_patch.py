"""VAE Decode Patch-Parallel: ranks decode their share of the tiles, rank 0 stitches them.

Tiles come from the same plan as the one-device tiled decode (vae_tiling.py) and are blended by
the same order-independent weighted sum, so the result is the one-device tiled decode. Work is
balanced greedily, largest tile first, onto the least-loaded rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..vae_tiling import Tile, decode_tile, plan_tiles, stitch


def assign_tiles(tiles: list[Tile], ranks: int) -> list[list[int]]:
    """Tile indices per rank, balancing decoded area (deterministic on every rank)."""
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(tiles)), key=lambda i: (-tiles[i].area, i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += tiles[index].area
    return shares


def patches_for_ranks(latent_h: int, latent_w: int, ranks: int, overlap: int) -> list[Tile]:
    """A small latent that would decode in one piece: cut it into at least one square patch per
    rank, as large as possible (fewer seams), starting from ceil(sqrt(ranks)) per longer side."""
    tile = math.ceil(max(latent_h, latent_w) / math.ceil(math.sqrt(ranks))) + overlap
    while True:
        tiles = plan_tiles(latent_h, latent_w, tile, min(overlap, tile - 1))
        if len(tiles) >= ranks or tile <= 2:
            return tiles
        tile -= 1


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


def decode_on_ranks(family, vae, latents, scale: int, tiles: list[Tile], group):
    """Every rank of `group` decodes its tiles; returns (pixels on rank 0 else None, peak bytes per rank).

    Tiles travel as plain tensors (a shape, then the data) rather than pickled objects: nothing
    a rank receives is ever unpickled.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    shares = assign_tiles(tiles, world)
    with PeakActivation(vae, latents.device) as peak:
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
    return stitch(tiles, [parts[i] for i in range(len(tiles))], scale), [int(p.item()) for p in peaks]


_MAX_DIMS = 8  # decoded tiles are [B, C, H, W] or [B, C, F, H, W]
