"""Tiled VAE decode that any VAE can use, and that splits cleanly across ranks.

diffusers' VAEs each carry their own tiled_decode with different blending; we need one tiling
whose tiles can be decoded on different processes and stitched to exactly the one-device result.
So tiles are planned in latent space, decoded independently, and blended by a weighted sum with
linear ramps across every overlap: the result does not depend on which rank decoded which tile
or in what order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OmniInputError


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last tile flush with the edge, so every tile is full size
    return sorted(set(starts))


def plan_tiles(latent_h: int, latent_w: int, tile: int, overlap: int) -> list[Tile]:
    """Overlapping latent tiles covering the whole latent (tile and overlap in latent pixels)."""
    if tile <= 0:
        return [Tile(0, latent_h, 0, latent_w)]
    if not 0 <= overlap < tile:
        raise OmniInputError("tile_overlap", overlap, "the overlap must be smaller than the tile",
                             "use an overlap of about 1/8 of the tile size")
    stride = tile - overlap
    return [Tile(y, min(y + tile, latent_h), x, min(x + tile, latent_w))
            for y in _starts(latent_h, tile, stride) for x in _starts(latent_w, tile, stride)]


def _ramp(length: int, before: int, after: int):
    """1-D blend weights: rise over `before` samples, fall over `after`, 1 in between."""
    import torch

    weights = torch.ones(length)
    if before:
        weights[:before] = torch.linspace(0, 1, before + 2)[1:-1]
    if after:
        weights[length - after:] = torch.linspace(1, 0, after + 2)[1:-1]
    return weights


def tile_weights(tile: Tile, tiles: list[Tile], scale: int):
    """Pixel-space weight map of one tile: ramps only where it overlaps a neighbour."""
    import torch

    def overlap_before(lo, axis_lo, axis_hi):
        return max((axis_hi(o) - lo for o in tiles if axis_lo(o) < lo < axis_hi(o)), default=0)

    def overlap_after(hi, axis_lo, axis_hi):
        return max((hi - axis_lo(o) for o in tiles if axis_lo(o) < hi < axis_hi(o)), default=0)

    top = overlap_before(tile.y0, lambda o: o.y0, lambda o: o.y1) * scale
    bottom = overlap_after(tile.y1, lambda o: o.y0, lambda o: o.y1) * scale
    left = overlap_before(tile.x0, lambda o: o.x0, lambda o: o.x1) * scale
    right = overlap_after(tile.x1, lambda o: o.x0, lambda o: o.x1) * scale
    h, w = (tile.y1 - tile.y0) * scale, (tile.x1 - tile.x0) * scale
    return torch.outer(_ramp(h, top, bottom), _ramp(w, left, right))


def decode_tile(family, vae, latents, tile: Tile):
    return family.decode(vae, latents[..., tile.y0:tile.y1, tile.x0:tile.x1]).float()


def stitch(tiles: list[Tile], decoded: list, scale: int):
    """Blend decoded tiles (any order) into one image tensor; spatial dims are the last two."""
    import torch

    first = decoded[0]
    height = max(t.y1 for t in tiles) * scale
    width = max(t.x1 for t in tiles) * scale
    total = torch.zeros(*first.shape[:-2], height, width, dtype=torch.float32)
    weight_sum = torch.zeros(height, width, dtype=torch.float32)
    for tile, pixels in zip(tiles, decoded):
        weights = tile_weights(tile, tiles, scale)
        ys, xs = slice(tile.y0 * scale, tile.y1 * scale), slice(tile.x0 * scale, tile.x1 * scale)
        total[..., ys, xs] += pixels.cpu() * weights
        weight_sum[ys, xs] += weights
    return total / weight_sum


AUTO_TILE_ABOVE = 1024  # pixels: larger images decode in tiles when tile_size is 0 (automatic)
AUTO_TILE_SIZE = 512


def plan_for(latents, scale: int, tile_size_px: int, overlap_px: int) -> list[Tile]:
    """Tiles for a decode request given in pixels; tile_size 0 picks tiles only for large images."""
    height, width = latents.shape[-2], latents.shape[-1]
    if tile_size_px == 0:
        tile_size_px = AUTO_TILE_SIZE if max(height, width) * scale > AUTO_TILE_ABOVE else 0
    if tile_size_px and tile_size_px < 2 * scale:
        raise OmniInputError("tile_size", tile_size_px, f"tiles must span at least {2 * scale} pixels",
                             "use 0 (automatic) or a size like 512")
    return plan_tiles(height, width, tile_size_px // scale, overlap_px // scale if tile_size_px else 0)


def decode_tiled(family, vae, latents, scale: int, tiles: list[Tile]):
    if len(tiles) == 1:
        return family.decode(vae, latents).float().cpu()
    return stitch(tiles, [decode_tile(family, vae, latents, t) for t in tiles], scale)
