"""Does the reference model draw what the prompt asks? An automatic check by pixel statistics.

Each pixel is labelled with the palette colour it is near (within COLOUR_TOLERANCE in RGB;
farther pixels stay unlabelled, so a washed-out hue does not pass). An image follows its prompt
when:
- background: the most common label over the whole image is the asked background colour;
- presence: at least MIN_SHAPE_PIXELS pixels near the asked position carry the asked shape colour;
- placement: most (PLACEMENT_FRACTION) of the image's pixels of that colour lie near the asked
  position, so a shape drawn elsewhere, or a smear of colour, fails.
"Near the asked position" is a square window of WINDOW_HALF pixels around the nominal centre.

The shape type is reported separately (`shape_score`), not part of `score`: it is guessed from
how much of its bounding box the shape fills (circle pi/4, square 1, triangle 1/2), which is
reliable on clean renders but fragile on soft 64-pixel samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .dataset import IMAGE_SIZE, PALETTE, POSITIONS, Scene, held_out_scenes, parse_caption

COLOUR_TOLERANCE = 0.3  # RGB distance (0..1 scale); palette colours are at least 0.75 apart
WINDOW_HALF = 16  # pixels at 64 px: the position's quadrant (or the central square)
MIN_SHAPE_PIXELS = 30  # the smallest shape (a small triangle) covers about 64 pixels
PLACEMENT_FRACTION = 0.7
FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}

# Default generation settings of the evaluation (and the benchmark's "plain" setting).
STEPS = 25
GUIDANCE = 4.0  # true CFG against the empty negative prompt
IMAGES_PER_PROMPT = 2  # prompt i is generated with seed i


def colour_labels(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] in 0..1 -> [H, W] index into PALETTE, or -1 where no palette colour is near."""
    palette = np.asarray(list(PALETTE.values()), dtype=np.float32)
    distance = np.linalg.norm(image[:, :, None, :].astype(np.float32) - palette[None, None], axis=-1)
    labels = distance.argmin(axis=-1)
    labels[distance.min(axis=-1) > COLOUR_TOLERANCE] = -1
    return labels


def position_window(position: str, height: int, width: int) -> tuple[slice, slice]:
    fx, fy = POSITIONS[position]
    half_y, half_x = round(WINDOW_HALF * height / IMAGE_SIZE), round(WINDOW_HALF * width / IMAGE_SIZE)
    cy, cx = round(fy * height), round(fx * width)
    return slice(max(0, cy - half_y), cy + half_y), slice(max(0, cx - half_x), cx + half_x)


def follows(scene: Scene, image: np.ndarray) -> bool:
    labels = colour_labels(image)
    names = list(PALETTE)
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    if counts.sum() == 0 or names[int(counts.argmax())] != scene.background:
        return False
    shape_label = names.index(scene.colour)
    rows, cols = position_window(scene.position, *labels.shape)
    inside = int((labels[rows, cols] == shape_label).sum())
    return inside >= MIN_SHAPE_PIXELS and inside >= PLACEMENT_FRACTION * counts[shape_label]


def guess_shape(scene: Scene, image: np.ndarray) -> str | None:
    """The shape whose bounding-box fill ratio is closest to that of the asked colour's pixels."""
    rows, cols = position_window(scene.position, *image.shape[:2])
    mask = colour_labels(image)[rows, cols] == list(PALETTE).index(scene.colour)
    if mask.sum() < MIN_SHAPE_PIXELS:
        return None
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return min(FILL_RATIOS, key=lambda shape: abs(FILL_RATIOS[shape] - fill))


def score_images(prompts: list[str], images) -> list[bool]:
    """One bool per image: does it follow its prompt? `images` is float [N, H, W, 3] in 0..1."""
    images = np.asarray(images, dtype=np.float32)
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    return [follows(parse_caption(prompt), image) for prompt, image in zip(prompts, images)]


def default_prompts() -> list[str]:
    """The held-out captions (30): combinations the model never saw in training."""
    return [scene.caption for scene in held_out_scenes()]


def generate(engine, spec, prompts: list[str], *, steps: int = STEPS, guidance: float = GUIDANCE,
             images_per_prompt: int = IMAGES_PER_PROMPT, size: int = IMAGE_SIZE, reports: list | None = None):
    """Images [len(prompts) * images_per_prompt, H, W, 3] in 0..1; prompt i uses seed i. Each run's
    RunReport is appended to `reports` when given."""
    from omni_backend.request import GenerationRequest
    from omni_backend.run.decode import to_comfy_images

    batches = []
    for seed, prompt in enumerate(prompts):
        request = GenerationRequest(prompt=prompt, negative_prompt="", steps=steps, guidance=guidance, seed=seed,
                                    width=size, height=size, batch_size=images_per_prompt)
        generation = engine.generate(spec, request)
        if reports is not None:
            reports.append(generation.report)
        batches.append(to_comfy_images(engine.decode(spec, generation.latents)).numpy())
    return np.concatenate(batches)


def evaluate(model_dir, engine=None, *, steps: int = STEPS, guidance: float = GUIDANCE,
             images_per_prompt: int = IMAGES_PER_PROMPT, prompts: list[str] | None = None,
             with_feature=None) -> dict:
    """Generate every prompt through the engine and score it.

    `with_feature` turns the plain ModelSpec into one with an acceleration feature (see
    benchmarks/prompt_following.py). Returns {"prompts", "images", "score", "shape_score",
    "failed" (prompts with any failing image), "seconds", "speedup_estimate" (a cache's own count:
    transformer steps in all / computed; 1.0 without a cache), "pixels" (the images, [N, H, W, 3])}.
    """
    from omni_backend.engine import Engine
    from omni_backend.spec import ModelSpec

    engine = engine or Engine()
    prompts = list(prompts) if prompts is not None else default_prompts()
    spec = ModelSpec.from_folder(str(Path(model_dir)), dtype="fp32", device="cpu")
    if with_feature is not None:
        spec = with_feature(spec)
    start = time.time()
    reports: list = []
    pixels = generate(engine, spec, prompts, steps=steps, guidance=guidance, images_per_prompt=images_per_prompt,
                      reports=reports)
    estimates = [section["speedup_estimate"] for report in reports for section in report.sections.values()
                 if isinstance(section, dict) and "speedup_estimate" in section]
    asked = [prompt for prompt in prompts for _ in range(images_per_prompt)]
    followed = score_images(asked, pixels)
    shapes = [guess_shape(parse_caption(p), image) == parse_caption(p).shape for p, image in zip(asked, pixels)]
    return {
        "prompts": len(prompts),
        "images": len(asked),
        "score": float(np.mean(followed)),
        "shape_score": float(np.mean(shapes)),
        "failed": sorted({p for p, ok in zip(asked, followed) if not ok}),
        "seconds": time.time() - start,
        "speedup_estimate": float(np.mean(estimates)) if estimates else 1.0,
        "pixels": pixels,
    }
