"""Parallel methods vs one process on the same tiny model, in the same run.

    python benchmarks/parallel_scaling.py --json
    {"method": "ulysses", "degree": 2, "family": "qwen-image", "speedup": ..., "max_abs_diff": ...}

Methods ulysses, ring, cfg, hybrid (ulysses 2 x ring 2) and tp time the denoising; tp rows add
`rank_weight_bytes_ratio` (the largest rank's DiT weight bytes over the whole model's). vae_patch
rows time the decode of the same latent on 2 ranks against one device decoding it whole, with
`rank_peak_bytes_ratio` (the largest rank's peak decode activation over the one-device peak) and
`max_abs_diff` against that whole decode (pixels in 0..1). `--families reference` gives vae_patch rows
only, on the trained reference model's VAE (real images: rendered scenes encoded by it) at its size
(64 px) and 4x it (256 px), with `psnr_db` against the whole decode.

Each row times a warm run (workers up, weights loaded) against the warm single-process run; the
single process may use every core, each rank gets cores / ranks threads. `--comm` prints the
communication volume per denoising step that Ulysses and Ring need for the real Qwen-Image at
1024 and 2048 px on 2-8 GPUs, computed from the model's shapes, and what one TP-2 rank holds of the
real Qwen-Image, FLUX.1-dev and Wan2.2 DiTs (built on the meta device, no weights).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time

import torch

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
    "tp": dict(tensor_parallel=2),
}
VAE_PATCH = dict(cfg_parallel=2, vae_patch_parallel=2)


def timed_runs(engine, spec, request, repeats):
    engine.generate(spec, request)  # warm-up: starts workers, loads weights
    times, generation = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        generation = engine.generate(spec, request)
        times.append(time.perf_counter() - start)
    return statistics.median(times), generation


def timed_decodes(engine, spec, latents, repeats):
    engine.decode_with_report(spec, latents)  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = engine.decode_with_report(spec, latents)
        times.append(time.perf_counter() - start)
    pixels, report = result
    return statistics.median(times), pixels, max(report.sections["VAE"]["peak_bytes"])


def input_images(family, size: int) -> tuple:
    """A seeded picture for the image-conditioned families (edit, image-to-video), none otherwise."""
    if not family.image_inputs:
        return ()
    return (torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0)),)


def dit_weight_bytes(engine, spec) -> int:
    pipe = engine.loaded(spec).pipe
    return sum(p.numel() * p.element_size() for _name, transformer in spec.family.transformers(pipe)
               for p in transformer.parameters())


def psnr_db(image, reference) -> float:
    mse = float(((image - reference) ** 2).mean())
    return round(10 * math.log10(1 / mse), 2) if mse > 0 else float("inf")


def vae_patch_row(engine, spec, latents, repeats, family, model) -> dict:
    one_time, one_pixels, one_peak = timed_decodes(engine, spec, latents, repeats)
    config = ParallelConfig(**VAE_PATCH)
    patch_time, pixels, patch_peak = timed_decodes(engine, spec.replace(parallel=config), latents, repeats)
    return {"method": "vae_patch", "degree": config.vae_patch_parallel, "family": family,
            "speedup": round(one_time / patch_time, 3),
            "max_abs_diff": float((pixels - one_pixels).abs().max()),
            "psnr_db": psnr_db(pixels, one_pixels),
            "rank_peak_bytes_ratio": round(patch_peak / one_peak, 3),
            "seconds": {"single": round(one_time, 3), "parallel": round(patch_time, 3)}, "model": model}


def measure_reference_vae(repeats: int) -> list[dict]:
    """vae_patch rows on the trained reference model's VAE, at 64 px and 256 px."""
    from omni_backend.reference import model_path
    from omni_diffusion_nodes.training.vae_training import scene_latents

    spec = ModelSpec.from_folder(str(model_path()), dtype="fp32", device="cpu")
    engine = Engine()
    try:
        vae = engine.loaded(spec).pipe.vae
        return [vae_patch_row(engine, spec, scene_latents(vae, size, count=1, seed=size), repeats, "reference",
                              f"reference model's VAE, {size}px (rendered scenes)") for size in (64, 256)]
    finally:
        engine.unload_all()


def measure(family: str, methods: list[str], size: int, steps: int, repeats: int) -> list[dict]:
    if family == "reference":
        return measure_reference_vae(repeats) if "vae_patch" in methods else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(FAMILIES[family].make_tiny(f"{tmp}/{family}"))
        spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
        request = GenerationRequest(prompt="a red fox in the snow", negative_prompt="blurry", steps=steps,
                                    guidance=4.0, width=size, height=size,
                                    frames=9 if FAMILIES[family].video else 1,
                                    images=input_images(FAMILIES[family], size),
                                    **({"layers": 2} if FAMILIES[family].layered else {}))
        engine = Engine()
        try:
            single_time, single = timed_runs(engine, spec, request, repeats)
            model = f"tiny {family}, {size}px, {steps} steps"
            if FAMILIES[family].layered:  # the size comes from the 640 bucket at the input's aspect
                model = f"tiny {family}, {size}px input, 640 bucket, 2 layers, {steps} steps"
            for method in [m for m in methods if m != "vae_patch"]:
                config = ParallelConfig(**METHODS[method])
                parallel_spec = spec.replace(parallel=config)
                parallel_time, generation = timed_runs(engine, parallel_spec, request, repeats)
                rows.append({"method": method, "degree": config.world_size, "family": family,
                             "speedup": round(single_time / parallel_time, 3),
                             "max_abs_diff": float((generation.latents - single.latents).abs().max()),
                             "seconds": {"single": round(single_time, 3), "parallel": round(parallel_time, 3)},
                             "model": model})
                if method == "tp":
                    per_rank = generation.report.sections["Parallel"]["rank_weight_bytes"]
                    rows[-1]["rank_weight_bytes_ratio"] = round(max(per_rank) / dit_weight_bytes(engine, spec), 3)
            if "vae_patch" in methods:
                rows.append(vae_patch_row(engine, spec, single.latents, repeats, family, f"tiny {family} VAE, {size}px"))
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


# The released Wan2.2 transformers' configs (the Wan team's wan_*_14B.py / wan_ti2v_5B.py: dim 5120 =
# 40 heads x 128, ffn 13824, 40 layers for the A14B experts; dim 3072 = 24 x 128, ffn 14336, 30 layers
# for TI2V-5B); Qwen-Image's and FLUX.1-dev's are diffusers' class defaults.
_WAN_A14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096,
                 freq_dim=256, out_channels=16, qk_norm="rms_norm_across_heads", cross_attn_norm=True)
REAL_DITS = (
    ("qwen-image", "QwenImageTransformer2DModel", {}),
    ("flux", "FluxTransformer2DModel", {}),
    ("wan2.2", "WanTransformer3DModel", dict(_WAN_A14B, in_channels=16)),
    ("wan2.2-i2v", "WanTransformer3DModel", dict(_WAN_A14B, in_channels=36)),
    ("wan2.2-ti2v", "WanTransformer3DModel", dict(_WAN_A14B, num_attention_heads=24, ffn_dim=14336, num_layers=30,
                                                  in_channels=48, out_channels=48)),
)


def real_model_tp_shares(degree: int = 2) -> list[dict]:
    """What one TP rank holds of the real DiTs (REAL_DITS), built on the meta device, so no weights: with
    diffusers' attention/MLP plan alone (where the class has one), and with the family's whole plan
    (modulation, final AdaLN, embedding MLPs)."""
    import diffusers

    from omni_backend.parallel.tensor_parallel import module_glob

    rows = []
    for family, class_name, config in REAL_DITS:
        with torch.device("meta"):
            transformer = getattr(diffusers, class_name)(**config)
        full = sum(p.numel() for p in transformer.parameters())
        plans = {"with_extras": FAMILIES[family].tensor_parallel_plan(transformer)}
        if getattr(transformer, "_tp_plan", None):
            plans = {"attention_mlp_only": transformer._tp_plan, **plans}
        shares = {}
        for name, plan in plans.items():
            patterns = [(module_glob(glob), style) for glob, style in plan.items()]
            held = 0
            for parameter_name, parameter in transformer.named_parameters():
                module_name, _, kind = parameter_name.rpartition(".")
                style = next((style for pattern, style in patterns if pattern.match(module_name)), None)
                whole = style is None or (kind == "bias" and "row" in str(style).lower())  # row-parallel bias
                held += parameter.numel() if whole else parameter.numel() // degree
            shares[name] = round(held / full, 3)
        rows.append({"tp_share_of_real_dit": family, "degree": degree, "parameters": full, **shares})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--families", default="qwen-image,wan2.2,reference")
    parser.add_argument("--methods", default="ulysses,ring,cfg,hybrid,tp,vae_patch")
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
        rows += real_model_tp_shares()
    for row in rows:
        print(json.dumps(row) if args.json else row)


if __name__ == "__main__":
    main()
