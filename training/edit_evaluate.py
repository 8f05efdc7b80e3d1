"""Does the reference edit model do what the instruction asks, and nothing else? A pixel check.

An output follows its edit when both hold:
- changed: it follows the edited scene's caption by the text-to-image check (`evaluate.follows`:
  the asked background dominates, the shape's colour sits at the asked position and mostly there);
  an unchanged input fails this, since every edit changes something that check looks at;
- kept: where the edit must not change anything, at least KEEP_FRACTION of the pixels carry the
  same palette colour as in the input. That region is, from the input image: for a recolour,
  everything but the shape (dilated by EDGE_MARGIN px); for a move, everything but the shape and
  the target position's window; for a new background, the shape's interior (eroded by INTERIOR_MARGIN).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .dataset import PALETTE
from .edit_dataset import Edit, held_out_edits, render_pairs
from .evaluate import colour_labels, follows, position_window

KEEP_FRACTION = 0.9
EDGE_MARGIN = 3  # px at 64 px: the anti-aliased rim and the VAE's softness around it
INTERIOR_MARGIN = 1  # px: a small triangle eroded by 3 px has no interior left

# Default generation settings of the evaluation (and the benchmarks' "plain" edit setting).
STEPS = 20
GUIDANCE = 4.0  # true CFG against the empty instruction (on the same input image)
SEEDS_PER_EDIT = 1  # edit i is generated with seed i
INPUT_SEED = 7  # the jitter of the held-out input renders


def _shift_or(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square (numpy only: no scipy needed for one small filter)."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    height, width = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def kept_region(edit: Edit, input_image: np.ndarray) -> np.ndarray:
    """[H, W] bool: where the output must keep the input's colours."""
    shape = colour_labels(input_image) == list(PALETTE).index(edit.source.colour)
    if edit.kind == "background":
        return ~_shift_or(~shape, INTERIOR_MARGIN)  # the shape's interior
    kept = ~_shift_or(shape, EDGE_MARGIN)
    if edit.kind == "move":
        rows, cols = position_window(edit.value, *shape.shape)
        kept[rows, cols] = False
    return kept


def keeps_the_rest(edit: Edit, input_image: np.ndarray, output_image: np.ndarray) -> bool:
    region = kept_region(edit, input_image)
    same = colour_labels(output_image)[region] == colour_labels(input_image)[region]
    return bool(region.any()) and float(same.mean()) >= KEEP_FRACTION


def edit_follows(edit: Edit, input_image: np.ndarray, output_image: np.ndarray) -> bool:
    """Images are float [H, W, 3] in 0..1."""
    return follows(edit.target, output_image) and keeps_the_rest(edit, input_image, output_image)


def score_edits(edits: list[Edit], inputs, outputs) -> list[bool]:
    """One bool per output: inputs and outputs are float [N, H, W, 3] in 0..1, outputs[i] made from inputs[i]."""
    inputs, outputs = np.asarray(inputs, dtype=np.float32), np.asarray(outputs, dtype=np.float32)
    if not len(edits) == len(inputs) == len(outputs):
        raise ValueError(f"{len(edits)} edits for {len(inputs)} inputs and {len(outputs)} outputs")
    return [edit_follows(edit, i, o) for edit, i, o in zip(edits, inputs, outputs)]


def held_out_inputs(edits: list[Edit] | None = None):
    """(edits, input renders [N, H, W, 3], target renders [N, H, W, 3]) of the held-out edits."""
    edits = list(edits) if edits is not None else held_out_edits()
    inputs, targets = render_pairs(edits, np.random.default_rng(INPUT_SEED))
    return edits, inputs.transpose(0, 2, 3, 1), targets.transpose(0, 2, 3, 1)


def generate_edits(engine, spec, edits: list[Edit], inputs, *, steps: int = STEPS, guidance: float = GUIDANCE,
                   seeds_per_edit: int = SEEDS_PER_EDIT, reports: list | None = None):
    """Outputs [len(edits) * seeds_per_edit, H, W, 3] in 0..1; edit i runs with seeds i*k .. i*k+k-1."""
    import torch

    from omni_backend.request import GenerationRequest
    from omni_backend.run.decode import to_comfy_images

    outputs = []
    for index, (edit, image) in enumerate(zip(edits, inputs)):
        for seed in range(index * seeds_per_edit, (index + 1) * seeds_per_edit):
            request = GenerationRequest(prompt=edit.instruction, negative_prompt="", steps=steps, guidance=guidance,
                                        seed=seed, width=image.shape[1], height=image.shape[0],
                                        images=(torch.from_numpy(np.ascontiguousarray(image))[None],))
            generation = engine.generate(spec, request)
            if reports is not None:
                reports.append(generation.report)
            outputs.append(to_comfy_images(engine.decode(spec, generation.latents)).numpy())
    return np.concatenate(outputs)


def evaluate_edits(model_dir, engine=None, *, steps: int = STEPS, guidance: float = GUIDANCE,
                   seeds_per_edit: int = SEEDS_PER_EDIT, edits: list[Edit] | None = None, with_feature=None) -> dict:
    """Generate every held-out edit through the engine and score it.

    Returns {"edits", "images", "score", "by_kind" (score per kind), "failed" (instructions of failing
    images), "seconds", "speedup_estimate" (a cache's own count; 1.0 without one), "pixels" [N, H, W, 3]}.
    """
    from omni_backend.engine import Engine
    from omni_backend.spec import ModelSpec

    engine = engine or Engine()
    edits, inputs, _targets = held_out_inputs(edits)
    spec = ModelSpec.from_folder(str(Path(model_dir)), dtype="fp32", device="cpu")
    if with_feature is not None:
        spec = with_feature(spec)
    start = time.time()
    reports: list = []
    pixels = generate_edits(engine, spec, edits, inputs, steps=steps, guidance=guidance,
                            seeds_per_edit=seeds_per_edit, reports=reports)
    estimates = [section["speedup_estimate"] for report in reports for section in report.sections.values()
                 if isinstance(section, dict) and "speedup_estimate" in section]
    asked = [edit for edit in edits for _ in range(seeds_per_edit)]
    repeated_inputs = np.repeat(inputs, seeds_per_edit, axis=0)
    followed = score_edits(asked, repeated_inputs, pixels)
    kinds = sorted({edit.kind for edit in asked})
    return {
        "edits": len(edits),
        "images": len(asked),
        "score": float(np.mean(followed)),
        "by_kind": {kind: float(np.mean([ok for edit, ok in zip(asked, followed) if edit.kind == kind]))
                    for kind in kinds},
        "failed": sorted({f"{edit.instruction} ({edit.source.caption})" for edit, ok in zip(asked, followed) if not ok}),
        "seconds": time.time() - start,
        "speedup_estimate": float(np.mean(estimates)) if estimates else 1.0,
        "pixels": pixels,
    }
