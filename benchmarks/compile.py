"""Regional torch.compile (Compile DiT Blocks) on the trained reference model, against eager.

    python benchmarks/compile.py --json
    {"model": "reference", "compile_speedup": ..., "psnr_db": ..., "first_run_overhead_s": ...}

compile_speedup: median time of a warm compiled run over the eager run's (same process, same
request, runs alternated). psnr_db: the compiled run's decoded image against the eager one's.
first_run_overhead_s: the first compiled run's time minus an eager run's (what Dynamo and the
backend spend compiling the block graphs; true CFG calls the blocks with two text lengths, so that
includes one recompile with dynamic shapes). Also reported: Dynamo's compiled frames in the first
compiled run and in the warm ones (0: no recompile between runs).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path)

import torch

from omni_backend.compile import CompileConfig
from omni_backend.engine import Engine
from omni_backend.reference import model_path
from omni_diffusion_nodes.training.evaluate import default_prompts
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec


def frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values())


def timed_generate(engine, spec, request):
    start = time.perf_counter()
    generation = engine.generate(spec, request)
    return time.perf_counter() - start, generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    eager_spec = ModelSpec.from_folder(str(model_path()), dtype="fp32", device="cpu")
    compiled_spec = eager_spec.replace(compile=CompileConfig(args.backend))
    request = GenerationRequest(prompt=default_prompts()[0], negative_prompt="", steps=args.steps, guidance=4.0,
                                seed=0, width=64, height=64)
    engine = Engine()
    try:
        engine.generate(eager_spec, request)  # load and warm up
        eager_first, eager = timed_generate(engine, eager_spec, request)
        before = frames()
        first, _ = timed_generate(engine, compiled_spec, request)
        first_frames = frames() - before
        eager_times, compiled_times, compiled = [eager_first], [], None
        before = frames()
        for _ in range(args.repeats):
            seconds, compiled = timed_generate(engine, compiled_spec, request)
            compiled_times.append(seconds)
            eager_times.append(timed_generate(engine, eager_spec, request)[0])
        warm_frames = frames() - before
        eager_pixels = engine.decode(eager_spec, eager.latents)
        compiled_pixels = engine.decode(eager_spec, compiled.latents)
    finally:
        engine.unload_all()
    mse = float(((compiled_pixels - eager_pixels) ** 2).mean())
    eager_time, compiled_time = statistics.median(eager_times), statistics.median(compiled_times)
    result = {
        "model": "reference",
        "compile_speedup": round(eager_time / compiled_time, 3),
        "psnr_db": round(10 * math.log10(1 / mse), 2) if mse > 0 else float("inf"),
        "first_run_overhead_s": round(first - eager_time, 2),
        "backend": args.backend,
        "seconds": {"eager": round(eager_time, 3), "compiled": round(compiled_time, 3), "first_compiled": round(first, 2)},
        "compiled_frames": {"first_run": first_frames, "warm_runs": warm_frames},
        "settings": f"64 px, {args.steps} steps, true CFG 4, fp32, {torch.get_num_threads()} threads",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
