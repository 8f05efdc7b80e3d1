"""Parallel methods vs one process on the same tiny model, in the same run.

    python benchmarks/parallel_scaling.py --json
    {"method": "ulysses", "degree": 2, "family": "qwen-image", "speedup": ..., "max_abs_diff": ...}

Each row times a warm run (workers up, weights loaded) against the warm single-process run; the
single process may use every core, each rank gets cores / ranks threads. `--comm` prints the
communication volume per denoising step that Ulysses and Ring need for the real Qwen-Image at
1024 and 2048 px on 2-8 GPUs, computed from the model's shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path)

from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.parallel.config import ParallelConfig
from omni_backend.request import GenerationRequest
from omni_backend.spec import ModelSpec

METHODS = {
    "ulysses": dict(ulysses_degree=2),
    "ring": dict(ring_degree=2),
    "cfg": dict(cfg_parallel=2),
    "hybrid": dict(ulysses_degree=2, ring_degree=2, devices=("cpu",) * 4),
}


def timed_runs(engine, spec, request, repeats):
    engine.generate(spec, request)  # warm-up: starts workers, loads weights
    times, latents = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        latents = engine.generate(spec, request).latents
        times.append(time.perf_counter() - start)
    return statistics.median(times), latents


def measure(family: str, methods: list[str], size: int, steps: int, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(FAMILIES[family].make_tiny(f"{tmp}/{family}"))
        spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
        request = GenerationRequest(prompt="a red fox in the snow", negative_prompt="blurry", steps=steps,
                                    guidance=4.0, width=size, height=size,
                                    frames=9 if FAMILIES[family].video else 1)
        engine = Engine()
        try:
            single_time, single = timed_runs(engine, spec, request, repeats)
            for method in methods:
                config = ParallelConfig(**METHODS[method])
                parallel_time, latents = timed_runs(engine, spec.replace(parallel=config), request, repeats)
                rows.append({"method": method, "degree": config.world_size, "family": family,
                             "speedup": round(single_time / parallel_time, 3),
                             "max_abs_diff": float((latents - single).abs().max()),
                             "seconds": {"single": round(single_time, 3), "parallel": round(parallel_time, 3)},
                             "model": f"tiny {family}, {size}px, {steps} steps"})
        finally:
            engine.unload_all()
    return rows


def communication_per_step(tokens: int, hidden: int, layers: int, degree: int, bytes_per_value: int = 2) -> dict:
    """Bytes each rank sends per transformer pass (one CFG branch) for Qwen-Image-sized models.

    Ulysses: all-to-all of Q, K, V before attention and of the output after it: 4 tensors of the
    rank's S/P tokens, of which (P-1)/P leaves the rank. Ring: every rank receives the other P-1
    ranks' K and V chunks (S/P tokens each) once per layer.
    """
    share = tokens / degree * hidden * bytes_per_value
    ulysses = 4 * share * (degree - 1) / degree * layers
    ring = 2 * share * (degree - 1) * layers
    return {"ulysses_MB": round(ulysses / 1e6, 1), "ring_MB": round(ring / 1e6, 1)}


def communication_table() -> list[dict]:
    rows = []
    hidden, layers, text_tokens = 3072, 60, 256  # Qwen-Image: 24 heads x 128, 60 blocks; a typical prompt
    for pixels in (1024, 2048):
        tokens = (pixels // 16) ** 2 + text_tokens
        for degree in (2, 4, 8):
            rows.append({"resolution": pixels, "degree": degree, "tokens": tokens,
                         **communication_per_step(tokens, hidden, layers, degree)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--families", default="qwen-image,wan2.2")
    parser.add_argument("--methods", default="ulysses,ring,cfg,hybrid")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--comm", action="store_true", help="also print the communication-volume table")
    args = parser.parse_args()
    rows = []
    for family in args.families.split(","):
        rows += measure(family, args.methods.split(","), args.size, args.steps, args.repeats)
    if args.comm:
        rows += [{"communication": row} for row in communication_table()]
    for row in rows:
        print(json.dumps(row) if args.json else row)


if __name__ == "__main__":
    main()
