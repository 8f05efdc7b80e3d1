"""Procedural training data for the reference model: one coloured shape on a plain background.

A scene is a `Scene` (shape, colour, size, position, background) and its caption reads
"a small red circle at the top left on a blue background". Images are drawn with numpy,
anti-aliased by supersampling, so the same seed always gives the same pixels.

The held-out set (`held_out_combinations()`): 30 of the 450 (shape, colour, position,
background) combinations, built by a fixed rule so that every ordered (colour, background) pair
and every (colour, position) pair occurs exactly once and each shape 10 times. Training never
draws them (in either size); evaluation prompts are made only from them, so a good score means
the model composes words it has seen, not that it remembers captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

IMAGE_SIZE = 64

# Far apart in RGB and in lightness, so a small VAE keeps them apart and the evaluation can
# tell them apart by nearest colour.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
# Radius range in pixels at IMAGE_SIZE 64 (circumradius for the triangle).
SIZES: dict[str, tuple[float, float]] = {"small": (7.0, 9.0), "large": (11.0, 14.0)}
# Shape centre as a fraction of the image; jittered by up to POSITION_JITTER pixels.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "center": (0.5, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_JITTER = 3.0
SUPERSAMPLE = 4

HELD_OUT_COUNT = 30  # = len(PALETTE) * (len(PALETTE) - 1): one per (colour, background) pair


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    @property
    def combination(self) -> tuple[str, str, str, str]:
        """What the held-out split is defined on (size is not part of it)."""
        return (self.shape, self.colour, self.position, self.background)

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where} on a {self.background} background"


def parse_caption(caption: str) -> Scene:
    """The inverse of `Scene.caption` (raises ValueError for any other text)."""
    words = caption.strip().split()
    try:
        article, size, colour, shape, *where, on, a, background, last = words
        position = " ".join(where[2:]) if where[:2] in (["at", "the"], ["in", "the"]) else ""
        scene = Scene(shape, colour, size, position, background)
        known = (article == "a" and on == "on" and a == "a" and last == "background" and shape in SHAPES
                 and size in SIZES and colour in PALETTE and background in PALETTE and position in POSITIONS)
    except ValueError:
        known = False
    if not known or scene.caption != caption.strip():
        raise ValueError(f"not a caption of this dataset: {caption!r}")
    return scene


def all_combinations() -> list[tuple[str, str, str, str]]:
    """Every (shape, colour, position, background) with the shape visible (colour != background)."""
    return [(shape, colour, position, background)
            for shape in SHAPES for colour in PALETTE for position in POSITIONS for background in PALETTE
            if background != colour]


@lru_cache(maxsize=1)
def held_out_combinations() -> tuple[tuple[str, str, str, str], ...]:
    """Combination i: colour i % 6, background (i % 6 + 1 + i // 6) % 6, position i % 5, shape
    (i % 6 + i // 6) % 3 (indices into PALETTE, POSITIONS, SHAPES). Since 5 and 6 are coprime,
    i % 5 and i % 6 meet every (position, colour) pair once; i // 6 walks the five backgrounds."""
    colours, positions = list(PALETTE), list(POSITIONS)
    combos = []
    for i in range(HELD_OUT_COUNT):
        colour, turn = i % len(colours), i // len(colours)
        combos.append((SHAPES[(colour + turn) % len(SHAPES)], colours[colour], positions[i % len(positions)],
                       colours[(colour + 1 + turn) % len(colours)]))
    return tuple(combos)


@lru_cache(maxsize=1)
def training_combinations() -> tuple[tuple[str, str, str, str], ...]:
    held_out = set(held_out_combinations())
    return tuple(c for c in all_combinations() if c not in held_out)


def held_out_scenes() -> list[Scene]:
    """One scene per held-out combination; both size words, each colour asked in both sizes."""
    sizes = list(SIZES)
    return [Scene(shape, colour, sizes[(i + i // len(PALETTE)) % len(sizes)], position, background)
            for i, (shape, colour, position, background) in enumerate(held_out_combinations())]


def corpus() -> list[str]:
    """Every caption the model can be asked for (training and held-out): the tokenizer's corpus."""
    return [Scene(shape, colour, size, position, background).caption
            for shape, colour, position, background in all_combinations() for size in SIZES]


# ---- drawing ----------------------------------------------------------------------------------
def _shape_mask(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """Coverage in [0, 1] of each pixel (supersampled), for a shape centred at (cx, cy) in pixels."""
    fine = size * SUPERSAMPLE
    coords = (np.arange(fine, dtype=np.float32) + 0.5) / SUPERSAMPLE
    x, y = coords[None, :] - cx, coords[:, None] - cy
    if shape == "circle":
        inside = x * x + y * y <= radius * radius
    elif shape == "square":
        half = radius * 0.85  # about the circle's area, so "large" means the same for every shape
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        # Pointing up, centroid at the centre: apex at -radius, base at radius / 2.
        slope = np.sqrt(3.0)  # sides at 60 degrees
        inside = (y <= radius / 2) & (y >= -radius + slope * np.abs(x))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 [3, size, size] in [0, 1]; `rng` draws the jitter of position and radius."""
    scale = size / 64.0
    fx, fy = POSITIONS[scene.position]
    cx = fx * size + rng.uniform(-POSITION_JITTER, POSITION_JITTER) * scale
    cy = fy * size + rng.uniform(-POSITION_JITTER, POSITION_JITTER) * scale
    radius = rng.uniform(*SIZES[scene.size]) * scale
    coverage = _shape_mask(scene.shape, cx, cy, radius, size)[None]
    background = np.asarray(PALETTE[scene.background], dtype=np.float32)[:, None, None]
    colour = np.asarray(PALETTE[scene.colour], dtype=np.float32)[:, None, None]
    return (background * (1 - coverage) + colour * coverage).astype(np.float32)


def random_scenes(rng: np.random.Generator, count: int, combinations=None) -> list[Scene]:
    combinations = training_combinations() if combinations is None else combinations
    sizes = list(SIZES)
    scenes = []
    for _ in range(count):
        shape, colour, position, background = combinations[rng.integers(len(combinations))]
        scenes.append(Scene(shape, colour, sizes[rng.integers(len(sizes))], position, background))
    return scenes


def render_batch(scenes: list[Scene], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 [N, 3, size, size] in [0, 1]."""
    return np.stack([render(scene, rng, size) for scene in scenes])
