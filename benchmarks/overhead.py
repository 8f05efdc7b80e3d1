"""Engine overhead: our Sample vs the plain diffusers call, and a warm run vs the first (cold) one.

    python benchmarks/overhead.py --json
    {"sample_vs_diffusers_ratio": ..., "second_run_vs_first_ratio": ...}
    {"family": "qwen-image-edit", "sample_vs_diffusers_ratio": ...}

Same tiny folder, same settings, same process; runs alternate (round robin) and the median is
taken, so background noise hits both sides alike. The edit row passes one input image to both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from _common import round_robin  # offline mode and the pack on sys.path
import torch

from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl
from omni_backend.spec import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    family = FAMILIES["qwen-image"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(family.make_tiny(f"{tmp}/qwen-image"))
        request = GenerationRequest(prompt="a cat on a windowsill", negative_prompt=" ", steps=args.steps,
                                    guidance=4.0, seed=0, width=args.size, height=args.size)

        engine = Engine()
        spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
        start = time.perf_counter()
        engine.generate(spec, request, RunControl(progress=lambda *_: None))
        first = time.perf_counter() - start

        plain = family.pipeline_class("QwenImagePipeline").from_pretrained(folder, dtype=torch.float32,
                                                                            local_files_only=True)
        plain.set_progress_bar_config(disable=True)

        def diffusers_call():
            plain(prompt=request.prompt, negative_prompt=request.negative_prompt, true_cfg_scale=request.guidance,
                  num_inference_steps=request.steps, height=request.height, width=request.width,
                  generator=torch.Generator().manual_seed(request.seed), output_type="latent")

        def our_sample():
            engine.generate(spec, request, RunControl(progress=lambda *_: None, interrupted=lambda: False))

        medians = round_robin({"diffusers": diffusers_call, "ours": our_sample}, args.repeats)

    result = {
        "sample_vs_diffusers_ratio": round(medians["ours"] / medians["diffusers"], 3),
        "second_run_vs_first_ratio": round(medians["ours"] / first, 3),
        "seconds": {"diffusers": round(medians["diffusers"], 3), "ours": round(medians["ours"], 3),
                    "first_run_with_load": round(first, 3)},
        "model": f"tiny qwen-image, {args.size}px, {args.steps} steps, true CFG",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    edit = edit_row(args)
    print(json.dumps(edit) if args.json else json.dumps(edit, indent=2))


def edit_row(args) -> dict:
    """Qwen-Image-Edit: our Sample with an input image vs QwenImageEditPipeline with the same image."""
    from omni_backend.files.images import to_pil

    family = FAMILIES["qwen-image-edit"]
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(family.make_tiny(f"{tmp}/qwen-image-edit"))
        request = GenerationRequest(prompt="make it green", negative_prompt=" ", steps=args.steps, guidance=4.0,
                                    seed=0, width=args.size, height=args.size, images=(image,))
        engine = Engine()
        spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
        engine.generate(spec, request)
        plain = family.pipeline_class(family.pipeline_classes[0]).from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, **family.load_kwargs(spec.model_folder))
        plain.set_progress_bar_config(disable=True)
        picture = to_pil(image)[0]

        def diffusers_call():
            plain(image=picture, prompt=request.prompt, negative_prompt=request.negative_prompt,
                  true_cfg_scale=request.guidance, num_inference_steps=request.steps, height=request.height,
                  width=request.width, generator=torch.Generator().manual_seed(request.seed), output_type="latent")

        medians = round_robin({"diffusers": diffusers_call, "ours": lambda: engine.generate(spec, request)},
                              args.repeats)
    return {"family": family.key, "sample_vs_diffusers_ratio": round(medians["ours"] / medians["diffusers"], 3),
            "seconds": {"diffusers": round(medians["diffusers"], 3), "ours": round(medians["ours"], 3)},
            "model": f"tiny qwen-image-edit, {args.size}px, {args.steps} steps, true CFG, one input image"}

if __name__ == "__main__":
    main()
