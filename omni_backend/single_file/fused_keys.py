"""A key map between an original checkpoint layout and diffusers', written once as a table of rules and
applied in both directions (the loader reads files, `make-tiny --layout comfy` writes them).

Original DiT releases fuse what diffusers keeps apart (FLUX.1's `img_attn.qkv` is diffusers' to_q,
to_k and to_v stacked along the output rows) and order some modulations differently (shift before
scale). A rule names one original tensor, the diffusers tensors it holds in row order and, for an
adaLN output, that its two halves are swapped. One table gives both directions, so the writer's
inverse can never drift from the reader's map.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    original: str
    parts: tuple[str, ...]  # diffusers keys stacked along dim 0 in the original tensor, in this order
    sizes: tuple[int, ...] | None = None  # rows of each part (None: equal parts)
    swap_halves: bool = False  # original (shift, scale) = diffusers (scale, shift)


def linear(original: str, *parts: str, sizes: tuple[int, ...] | None = None, swap_halves: bool = False,
           bias: bool = True) -> list[Rule]:
    """The rules of one linear layer (weight, and bias unless bias=False)."""
    suffixes = ("weight", "bias") if bias else ("weight",)
    return [Rule(f"{original}.{suffix}", tuple(f"{part}.{suffix}" for part in parts), sizes, swap_halves)
            for suffix in suffixes]


def rename(original: str, diffusers: str) -> Rule:
    return Rule(original, (diffusers,))


def to_diffusers(state: dict, rules: list[Rule]) -> dict:
    """Original keys -> diffusers keys. Keys no rule names are kept as they are (the loader's strict
    check then reports them)."""
    import torch

    out = {}
    handled = set()
    for rule in rules:
        if rule.original not in state:
            continue
        tensor = state[rule.original]
        handled.add(rule.original)
        if rule.swap_halves:
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        pieces = (tensor.split(list(rule.sizes), dim=0) if rule.sizes
                  else tensor.chunk(len(rule.parts), dim=0))
        out.update(zip(rule.parts, pieces))
    out.update({key: value for key, value in state.items() if key not in handled})
    return out


def to_original(state: dict, rules: list[Rule]) -> dict:
    """Diffusers keys -> original keys (the exact inverse of `to_diffusers`)."""
    import torch

    out = {}
    handled = set()
    for rule in rules:
        if not all(part in state for part in rule.parts):
            continue
        tensor = torch.cat([state[part] for part in rule.parts], dim=0)
        if rule.swap_halves:
            scale, shift = tensor.chunk(2, dim=0)
            tensor = torch.cat([shift, scale], dim=0)
        out[rule.original] = tensor
        handled.update(rule.parts)
    out.update({key: value for key, value in state.items() if key not in handled})
    return out
