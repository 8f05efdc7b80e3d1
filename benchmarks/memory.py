"""Offload and FP8: DiT weight bytes resident during a step, time and PSNR, against the plain bf16 model.

    python benchmarks/memory.py --json
    {"mode": "layerwise", "resident_weight_ratio": ..., "time_ratio": ..., "psnr_db": ..., "peak_rss_mb": ...}

One line per mode, all from one run:
- resident_weight_ratio: the most DiT weight bytes holding storage on the execution device while a
  block runs, over the bf16 DiT's bytes without offload (so FP8 shows ~0.5 and layerwise shows the
  non-block parts plus the window);
- time_ratio: median seconds per generation over the plain run's (round robin, same process);
- psnr_db: decoded images against the plain run's (null when identical: offload is lossless);
- peak_rss_mb / peak_rss_over_start_mb: peak resident memory of a fresh process while it loads the
  model and runs once in that mode, and that peak over the process's memory before loading (on the
  CPU the offload device is the execution device, so offload does not lower it there; FP8 does).

PSNR is measured on the trained reference model (omni_backend/reference/qwen-image-shapes) when it is
present: random weights say little about quantization error. Without it a random-weight stand-in of
the same shape runs, and every line says so (`--model reference` insists on the trained one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _common import ROOT, round_robin  # offline mode and the pack on sys.path
import torch

from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.memory import MemoryConfig
from omni_backend.memory.apply import memory_state
from omni_backend.memory.residency import resident_parameter_bytes
from omni_backend.request import GenerationRequest
from omni_backend.run.sampling import RunControl
from omni_backend.spec import ModelSpec

REFERENCE_DIR = ROOT / "omni_backend" / "reference" / "qwen-image-shapes"
MODES = {
    "plain": None,
    "model": MemoryConfig(offload="model"),
    "layerwise": MemoryConfig(offload="layerwise", blocks_on_device=2),
    "fp8_weight_only": MemoryConfig(fp8="weight_only"),
    "fp8_w8a8": MemoryConfig(fp8="w8a8"),
    "layerwise+fp8": MemoryConfig(offload="layerwise", blocks_on_device=2, fp8="weight_only"),
}
PROMPTS = ("a red circle at the top left on a blue background",
           "a green square in the center on a white background",
           "a yellow triangle at the bottom right on a black background",
           "a blue circle at the top right on a red background")


def stand_in_model(directory: Path) -> Path:
    """A random-weight Qwen-Image with the reference model's DiT shape (6 blocks, 4 heads x 32)."""
    from diffusers import QwenImageTransformer2DModel

    family = FAMILIES["qwen-image"]
    torch.manual_seed(0)
    pipe = family.build_tiny()
    pipe.transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=6, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=32, axes_dims_rope=(8, 12, 12))
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def requests(args, prompts, negative_prompt=" ") -> list[GenerationRequest]:
    return [GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, steps=args.steps, guidance=4.0, seed=index,
                              width=args.size, height=args.size) for index, prompt in enumerate(prompts[:args.prompts])]


def follow_score(batch, images) -> float:
    """The reference model's prompt-following score of these images (training/evaluate.py)."""
    from omni_diffusion_nodes.training.evaluate import score_images

    followed = score_images([request.prompt for request in batch], images.permute(0, 2, 3, 1).float().numpy())
    return round(sum(followed) / len(followed), 3)


def spec_for(folder: str, mode: str, dtype: str) -> ModelSpec:
    spec = ModelSpec.from_folder(folder, dtype=dtype, device="cpu")
    return spec.replace(memory=MODES[mode]) if MODES[mode] is not None else spec


def generate_all(engine, spec, batch) -> torch.Tensor:
    control = RunControl(progress=lambda *_: None)
    images = [engine.decode(spec, engine.generate(spec, request, control).latents) for request in batch]
    return torch.cat(images)


def resident_peak_bytes(engine, spec, request) -> int:
    """Most DiT bytes holding storage while any block runs (measured inside the block's forward)."""
    pipe = engine.loaded(spec).pipe
    family = spec.family
    transformers = [module for _name, module in family.transformers(pipe)]
    peak = [0]

    def measure(*_):
        peak[0] = max(peak[0], sum(resident_parameter_bytes(t, spec.device) for t in transformers))

    handles = []
    for transformer in transformers:
        for _attr, blocks in family.block_lists(transformer):
            for block in blocks:
                first = next(m for m in block.modules() if m is not block)
                handles.append(first.register_forward_pre_hook(measure))
    try:
        engine.generate(spec, request, RunControl(progress=lambda *_: None))
    finally:
        for handle in handles:
            handle.remove()
    return peak[0]


def bf16_dit_bytes(engine, folder: str, dtype: str) -> int:
    spec = spec_for(folder, "plain", dtype)
    pipe = engine.loaded(spec).pipe
    return sum(p.numel() * 2 for _n, t in spec.family.transformers(pipe) for p in t.parameters())


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float | None:
    mse = torch.mean((image.float() - reference.float()) ** 2).item()
    return None if mse == 0 else round(10 * torch.log10(torch.tensor(1.0 / mse)).item(), 2)


def peak_rss_of(folder: str, mode: str, args) -> dict:
    """Peak RSS (MB) of a fresh process while it loads the model in `mode` and generates once."""
    command = [sys.executable, __file__, "--peak-of", mode, "--folder", folder, "--dtype", args.dtype,
               "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def run_one_for_peak(args) -> None:
    # Sampled rather than ru_maxrss: importing torch/transformers peaks higher than a small model's
    # load and run, and ru_maxrss would report that import spike for every mode alike.
    start = _rss_mb()
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    engine = Engine()
    spec = spec_for(args.folder, args.peak_of, args.dtype)
    engine.generate(spec, requests(args, PROMPTS)[0], RunControl(progress=lambda *_: None))
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mb())
    print(json.dumps({"peak_rss_mb": round(peak[0], 1), "peak_rss_over_start_mb": round(peak[0] - start, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON line per mode")
    parser.add_argument("--model", choices=("auto", "reference", "stand-in"), default="auto",
                        help="auto: the trained reference model when present, else the random stand-in")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 keeps timings steady on a shared 2-core machine")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        run_one_for_peak(args)
        return

    reference_present = (REFERENCE_DIR / "model_index.json").is_file()
    use_reference = args.model == "reference" or (args.model == "auto" and reference_present)
    if args.model == "reference" and not reference_present:
        parser.error(f"the trained reference model is not at {REFERENCE_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(REFERENCE_DIR if use_reference else stand_in_model(Path(tmp) / "qwen-image-stand-in"))
        model = ("trained reference Qwen-Image (qwen-image-shapes)" if use_reference else
                 "random-weight Qwen-Image stand-in of the reference shape: the reference model is missing, so "
                 "PSNR here says little about FP8's quality")
        if use_reference:
            from omni_diffusion_nodes.training.evaluate import default_prompts

            # Held-out captions, and the empty negative the model was trained with (caption dropout).
            batch = requests(args, default_prompts(), negative_prompt="")
        else:
            batch = requests(args, PROMPTS)
        engine = Engine(max_loaded=len(MODES))
        baseline_bytes = bf16_dit_bytes(engine, folder, args.dtype)
        specs = {mode: spec_for(folder, mode, args.dtype) for mode in MODES}
        images = {mode: generate_all(engine, spec, batch) for mode, spec in specs.items()}  # also loads each mode
        resident = {mode: resident_peak_bytes(engine, spec, batch[0]) for mode, spec in specs.items()}
        one_image = {mode: (lambda s=spec: generate_all(engine, s, batch[:1])) for mode, spec in specs.items()}
        seconds = round_robin(one_image, args.repeats)
        peaks = {mode: peak_rss_of(folder, mode, args) for mode in MODES}

        lines = []
        for mode, spec in specs.items():
            state = memory_state(engine.loaded(spec).pipe)
            line = {
                "mode": mode,
                "resident_weight_ratio": round(resident[mode] / baseline_bytes, 3),
                "time_ratio": round(seconds[mode] / seconds["plain"], 3),
                "psnr_db": psnr(images[mode], images["plain"]),
                **({"follow_score": follow_score(batch, images[mode])} if use_reference else {}),
                **peaks[mode],
                "seconds": round(seconds[mode], 3),
                "runs": f"{state.summary() if state else 'plain'}",
                "model": model,
                "setup": f"{args.dtype} on cpu ({args.threads} thread), {args.size}px, {args.steps} steps, true CFG 4, "
                         f"{len(batch)} prompts",
            }
            if state is not None and state.notices:
                line["notices"] = state.notices
            lines.append(line)
    for line in lines:
        print(json.dumps(line) if args.json else json.dumps(line, indent=2))


if __name__ == "__main__":
    main()
