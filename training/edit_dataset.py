"""Procedural edits of the reference scenes: an input render, an instruction, the edited render.

An `Edit` changes one thing of a `Scene` and keeps the rest, down to the pixel jitter of the
shape (the target is drawn with the same random offsets as the input):
- recolour:   "make the circle green"             (the shape's colour)
- move:       "move the square to the top right"  (the shape's position)
- background: "make the background blue"          (the background colour)

The held-out split (`held_out_combinations()`): 30 (kind, shape, from, to) combinations, 10 per
kind, built by a fixed rule so that every shape and every target value occurs. Training never
draws them; evaluation edits are made only from them, so a good score means the model applies
instructions it has read to sources it has not seen them applied to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from .dataset import IMAGE_SIZE, PALETTE, POSITION_JITTER, POSITIONS, SHAPES, SIZES, Scene, _shape_mask

KINDS = ("recolour", "move", "background")
HELD_OUT_PER_KIND = 10


@dataclass(frozen=True)
class Edit:
    source: Scene
    kind: str
    value: str  # the new colour, position or background

    @property
    def target(self) -> Scene:
        field = {"recolour": "colour", "move": "position", "background": "background"}[self.kind]
        return replace(self.source, **{field: self.value})

    @property
    def old_value(self) -> str:
        return {"recolour": self.source.colour, "move": self.source.position,
                "background": self.source.background}[self.kind]

    @property
    def combination(self) -> tuple[str, str, str, str]:
        """What the held-out split is defined on: (kind, shape, from, to)."""
        return (self.kind, self.source.shape, self.old_value, self.value)

    @property
    def instruction(self) -> str:
        if self.kind == "recolour":
            return f"make the {self.source.shape} {self.value}"
        if self.kind == "move":
            return f"move the {self.source.shape} to the {self.value}"
        return f"make the background {self.value}"


def instructions() -> list[str]:
    """Every instruction the model can be asked (the tokenizer's corpus)."""
    texts = [f"make the {shape} {colour}" for shape in SHAPES for colour in PALETTE]
    texts += [f"move the {shape} to the {position}" for shape in SHAPES for position in POSITIONS]
    texts += [f"make the background {colour}" for colour in PALETTE]
    return texts


def all_combinations() -> list[tuple[str, str, str, str]]:
    """Every (kind, shape, from, to) with a real change. Which of them leave the shape visible depends
    on the colours of the scene, so sources are checked when drawn (`_valid`)."""
    colours, positions = list(PALETTE), list(POSITIONS)
    combos = []
    for shape in SHAPES:
        combos += [("recolour", shape, a, b) for a in colours for b in colours if a != b]
        combos += [("move", shape, a, b) for a in positions for b in positions if a != b]
        combos += [("background", shape, a, b) for a in colours for b in colours if a != b]
    return combos


@lru_cache(maxsize=1)
def held_out_combinations() -> tuple[tuple[str, str, str, str], ...]:
    """Combination i of a kind: shape i % 3, target value i % n, source value (i % n + 1 + i // n) % n
    (n values of that kind): the 10 targets of each kind cover every colour / position, each shape
    three or four times, and no two share their (from, to) pair."""
    combos = []
    for kind in KINDS:
        values = list(POSITIONS) if kind == "move" else list(PALETTE)
        n = len(values)
        for i in range(HELD_OUT_PER_KIND):
            to = i % n
            combos.append((kind, SHAPES[i % len(SHAPES)], values[(to + 1 + i // n) % n], values[to]))
    return tuple(combos)


@lru_cache(maxsize=1)
def training_combinations() -> tuple[tuple[str, str, str, str], ...]:
    held_out = set(held_out_combinations())
    return tuple(c for c in all_combinations() if c not in held_out)


def _valid(edit: Edit) -> bool:
    """The shape stays visible before and after (its colour differs from the background)."""
    return edit.source.colour != edit.source.background and edit.target.colour != edit.target.background


def _edit(combo, colour_or_bg: str, other: str, size: str) -> Edit:
    """An Edit for `combo`, the free scene attributes given: for recolour/move `colour_or_bg` is the
    background (and, for move, `other` the colour); for background it is the shape colour."""
    kind, shape, old, new = combo
    if kind == "recolour":
        scene = Scene(shape, old, size, other, colour_or_bg)
    elif kind == "move":
        scene = Scene(shape, other, size, old, colour_or_bg)
    else:
        scene = Scene(shape, colour_or_bg, size, other, old)
    return Edit(scene, kind, new)


# How often training draws each kind. A new background keeps only the shape, a small part of the latent,
# so the copy from the input image is learned slowest there (a run with equal shares: recolour 1.0,
# move 0.8, background 0.3 of the held-out edits).
TRAINING_KIND_SHARES = {"recolour": 0.25, "move": 0.35, "background": 0.4}


def random_edits(rng: np.random.Generator, count: int, combinations=None, shares=None) -> list[Edit]:
    """`count` valid edits drawn from `combinations` (training ones by default), kinds equally likely
    unless `shares` ({kind: probability}) says otherwise."""
    combinations = training_combinations() if combinations is None else combinations
    probabilities = [(shares or {}).get(kind, 1.0 / len(KINDS)) for kind in KINDS]
    by_kind = {kind: [c for c in combinations if c[0] == kind] for kind in KINDS}
    colours, positions, sizes = list(PALETTE), list(POSITIONS), list(SIZES)
    edits = []
    while len(edits) < count:
        pool = by_kind[KINDS[rng.choice(len(KINDS), p=probabilities)]]
        combo = pool[rng.integers(len(pool))]
        free = colours[rng.integers(len(colours))]
        other = positions[rng.integers(len(positions))] if combo[0] != "move" else colours[rng.integers(len(colours))]
        edit = _edit(combo, free, other, sizes[rng.integers(len(sizes))])
        if _valid(edit):
            edits.append(edit)
    return edits


def held_out_edits() -> list[Edit]:
    """One edit per held-out combination, its free attributes by a fixed rule (both sizes, every
    position and colour where free), each one visible."""
    colours, positions, sizes = list(PALETTE), list(POSITIONS), list(SIZES)
    edits = []
    for i, combo in enumerate(held_out_combinations()):
        for shift in range(len(colours)):
            free = colours[(i * 5 + 3 + shift) % len(colours)]
            other = positions[i % len(positions)] if combo[0] != "move" else colours[(i * 7 + 2 + shift) % len(colours)]
            edit = _edit(combo, free, other, sizes[i % len(sizes)])
            if _valid(edit) and not (combo[0] == "move" and edit.source.colour == free):
                edits.append(edit)
                break
    return edits


# ---- drawing ----------------------------------------------------------------------------------
def render_pair(edit: Edit, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """(input, target) float32 [3, size, size] in [0, 1], with the same jitter and radius."""
    scale = size / 64.0
    jitter = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2) * scale
    radius = rng.uniform(*SIZES[edit.source.size]) * scale
    return _draw(edit.source, jitter, radius, size), _draw(edit.target, jitter, radius, size)


def _draw(scene: Scene, jitter, radius: float, size: int) -> np.ndarray:
    fx, fy = POSITIONS[scene.position]
    coverage = _shape_mask(scene.shape, fx * size + jitter[0], fy * size + jitter[1], radius, size)[None]
    background = np.asarray(PALETTE[scene.background], dtype=np.float32)[:, None, None]
    colour = np.asarray(PALETTE[scene.colour], dtype=np.float32)[:, None, None]
    return (background * (1 - coverage) + colour * coverage).astype(np.float32)


def render_pairs(edits: list[Edit], rng: np.random.Generator, size: int = IMAGE_SIZE):
    """(inputs, targets), each float32 [N, 3, size, size] in [0, 1], quantised to 8 bits as the
    pipeline receives an image (PIL)."""
    pairs = [render_pair(edit, rng, size) for edit in edits]
    inputs = np.stack([p[0] for p in pairs])
    targets = np.stack([p[1] for p in pairs])
    return (np.round(inputs * 255) / 255).astype(np.float32), (np.round(targets * 255) / 255).astype(np.float32)
