"""Prompt following of the trained reference models, per acceleration setting.

    python benchmarks/prompt_following.py --json

Prints one line per setting and task: {"setting", "task", "prompts", "score", "psnr_db", "images",
"speedup_estimate", "seconds"}. Task "text-to-image" is the reference model on its held-out prompts;
task "edit" is the reference edit model on its held-out edits ("prompts" counts the edits; "score"
is the fraction of outputs that make the asked change and keep the rest, see
training/edit_evaluate.py; EDIT_SETTINGS are run).
`score` is the fraction of images that follow their held-out prompt (see
training/evaluate.py); `psnr_db` compares the setting's images with the plain
run's (null for plain itself); `speedup_estimate` is the cache's own count of transformer work
skipped (total / computed steps). A lossy feature should keep the score and report its PSNR.

To add a setting, add an entry to SETTINGS: a name and a function that turns the plain
ModelSpec into a spec with that feature, e.g.
    "teacache": lambda spec: spec.replace(cache=TeaCacheConfig(rel_l1_thresh=0.2)),
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")



def _teacache(**options):
    from omni_backend.cache import TeaCacheConfig

    return lambda spec: spec.replace(cache=TeaCacheConfig(**options))


def _cache_dit(preset: str):
    from omni_backend.cache import CacheDiTConfig

    return lambda spec: spec.replace(cache=CacheDiTConfig().with_preset(preset))


def _fp8(mode: str):
    from omni_backend.memory import MemoryConfig

    return lambda spec: spec.replace(memory=MemoryConfig(fp8=mode))


def _fitted_teacache():
    from omni_backend.reference import TEACACHE_COEFFICIENTS

    return _teacache(rel_l1_thresh=0.2, coefficients=TEACACHE_COEFFICIENTS)


# Each lossy feature at its default setting (the target: within 0.05 of plain).
SETTINGS = {
    "plain": lambda spec: spec,
    "teacache": _teacache(rel_l1_thresh=0.2),  # Qwen-Image's published polynomial
    "teacache-fitted": lambda spec: _fitted_teacache()(spec),  # this model's own (fit-teacache)
    "cache-dit": _cache_dit("vllm-omni default (Fn1 B0 W4)"),
    "dbcache-taylorseer": _cache_dit("DBCache + TaylorSeer (Fn1 B0 W8)"),
    "fp8": _fp8("weight_only"),
}


# The edit task's settings: plain and each lossy feature at its default.
EDIT_SETTINGS = ("plain", "teacache", "cache-dit", "fp8")


def psnr_db(images, reference) -> float | None:
    """PSNR of images against the reference (both 0..1); None when they are identical."""
    import numpy as np

    mse = float(np.mean((np.asarray(images, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def main(argv=None) -> list[dict]:
    from omni_backend.engine import Engine
    from omni_diffusion_nodes.training.evaluate import GUIDANCE, IMAGES_PER_PROMPT, STEPS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--images-per-prompt", type=int, default=IMAGES_PER_PROMPT)
    parser.add_argument("--prompts", type=int, default=None, help="use only the first N held-out prompts")
    parser.add_argument("--tasks", nargs="*", default=["text-to-image", "edit"], choices=["text-to-image", "edit"])
    args = parser.parse_args(argv)

    engine = Engine()
    lines = []
    if "text-to-image" in args.tasks:
        lines += text_to_image(engine, args)
    if "edit" in args.tasks:
        lines += edit(engine, args)
    return lines


def _print(line: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(line), flush=True)
        return
    psnr = "-" if line["psnr_db"] is None else f"{line['psnr_db']:.1f} dB"
    print(f"{line['task']:>13} {line['setting']:>10}: score {line['score']:.3f} on {line['images']} images of "
          f"{line['prompts']} prompts, PSNR vs plain {psnr}, work skipped {line['speedup_estimate']:.2f}x, "
          f"{line['seconds']:.1f}s", flush=True)


def edit(engine, args) -> list[dict]:
    from omni_backend.reference import edit_model_path
    from omni_diffusion_nodes.training.edit_evaluate import GUIDANCE, SEEDS_PER_EDIT, STEPS, evaluate_edits

    names = [name for name in EDIT_SETTINGS if name in args.settings or name == "plain"]
    plain_pixels, lines = None, []
    for name in names:
        result = evaluate_edits(edit_model_path(), engine, steps=STEPS, guidance=GUIDANCE,
                                seeds_per_edit=SEEDS_PER_EDIT, with_feature=SETTINGS[name])
        if plain_pixels is None:
            plain_pixels = result["pixels"]
        line = {"setting": name, "task": "edit", "prompts": result["edits"], "score": round(result["score"], 4),
                "psnr_db": None if name == "plain" else _rounded(psnr_db(result["pixels"], plain_pixels)),
                "images": result["images"], "speedup_estimate": round(result["speedup_estimate"], 2),
                "seconds": round(result["seconds"], 2),
                "by_kind": {kind: round(score, 3) for kind, score in result["by_kind"].items()}}
        if name in args.settings:
            lines.append(line)
            _print(line, args.json)
    return lines


def text_to_image(engine, args) -> list[dict]:
    from omni_backend.reference import model_path
    from omni_diffusion_nodes.training.evaluate import default_prompts, evaluate

    prompts = default_prompts()[:args.prompts]
    names = ["plain"] + [name for name in args.settings if name != "plain"]  # plain is every PSNR's reference
    plain_pixels, lines = None, []
    for name in names:
        result = evaluate(model_path(), engine, steps=args.steps, guidance=args.guidance,
                          images_per_prompt=args.images_per_prompt, prompts=prompts, with_feature=SETTINGS[name])
        if plain_pixels is None:
            plain_pixels = result["pixels"]
        line = {"setting": name, "task": "text-to-image", "prompts": result["prompts"],
                "score": round(result["score"], 4),
                "psnr_db": None if name == "plain" else _rounded(psnr_db(result["pixels"], plain_pixels)),
                "images": result["images"], "speedup_estimate": round(result["speedup_estimate"], 2),
                "seconds": round(result["seconds"], 2)}
        if name in args.settings:
            lines.append(line)
            _print(line, args.json)
    return lines


def _rounded(value):
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    main()
