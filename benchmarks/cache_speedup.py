"""Cache methods against the uncached run of the same model, seed and prompts, in one process.

    python benchmarks/cache_speedup.py --json
    {"model": "reference", "method": "teacache", "settings": "rel_l1_thresh=0.2", "speedup": ...,
     "block_exec_ratio": ..., "psnr_db": ..., "follow_score": ...}

- "reference": the trained reference model (real denoising trajectories, so thresholds mean what
  they mean on real models): quality and dynamic-cache speed. `follow_score` is the fraction of
  its images that draw what their held-out prompt asks (training/evaluate.py;
  the uncached run's is in the "none" row).
- "reference-edit": the trained reference edit model (QwenImageEditPipeline) on held-out edits of
  rendered scenes; `follow_score` is the fraction of its outputs that make the asked change and keep
  the rest (training/edit_evaluate.py). No peer rows (their calls take no input image).
- "random-heavy": a random Qwen-Image transformer big enough that compute dominates; random
  weights never look alike between steps, so it measures overhead, not cache quality.
- Quality-target rows ("method": "tea-quality" / "dit-quality", on both reference models): the cache
  calibrates its threshold for `target_db` on one prompt the held-out set does not hold, then runs the
  held-out prompts with it. `psnr_db` is the worst held-out prompt's; `speedup` counts block
  computations (uncached over cached: deterministic, unlike wall time on a shared CPU), and
  `best_fixed_speedup` is that of the best threshold of a fixed sweep whose worst held-out prompt meets
  the same target (`best_fixed_threshold`): the calibration should come within 10% of it.
Block executions are counted on each block's attention projection (a hook on a skipped block
would still fire). Peer rows run on the plain diffusers pipeline with the same weights: diffusers'
FirstBlockCache and cache-dit applied directly as its README shows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path)

from omni_backend.blocks.diagnostics import count_block_work
from omni_backend.cache import CacheDiTConfig, TeaCacheConfig
from omni_backend.engine import Engine
from omni_backend.families import FAMILIES
from omni_backend.request import GenerationRequest
from omni_backend.run.decode import to_comfy_images
from omni_backend.spec import ModelSpec

OURS = {
    ("teacache", "rel_l1_thresh=0.2"): TeaCacheConfig(rel_l1_thresh=0.2),
    ("teacache", "rel_l1_thresh=0.3"): TeaCacheConfig(rel_l1_thresh=0.3),
    ("cache_dit", "vllm-omni defaults"): CacheDiTConfig(),
    ("cache_dit", "+ TaylorSeer"): CacheDiTConfig(enable_taylorseer=True),
    ("cache_dit", "+ TaylorSeer + SCM fast"): CacheDiTConfig(enable_taylorseer=True, scm_policy="fast"),
}


def psnr(images, reference) -> float:
    mse = float(((images - reference) ** 2).mean())
    return float("inf") if mse == 0 else round(10 * torch.log10(torch.tensor(1.0 / mse)).item(), 2)


class Runner:
    """Generates a fixed prompt set with one spec or one peer, timing and counting block work."""

    def __init__(self, engine, spec, prompts, steps, guidance, size, images=None):
        """`images`: one input image (ComfyUI IMAGE [1, H, W, 3]) per prompt, for an edit model."""
        self.engine, self.spec, self.prompts = engine, spec, prompts
        inputs = [(image,) for image in images] if images is not None else [()] * len(prompts)
        self.requests = [GenerationRequest(prompt=p, negative_prompt="", steps=steps, guidance=guidance, seed=i,
                                           width=size, height=size, images=image)
                         for i, (p, image) in enumerate(zip(prompts, inputs))]

    def ours(self, cache):
        spec = self.spec.replace(cache=cache) if cache is not None else self.spec
        return lambda: [self.engine.generate(spec, request).latents for request in self.requests]

    def peer(self, enable, disable):
        pipe = self.engine.loaded(self.spec).pipe
        family = self.spec.family

        def run():
            enable(pipe)
            try:
                outputs = []
                for request in self.requests:
                    latents = pipe(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                   true_cfg_scale=request.guidance, num_inference_steps=request.steps,
                                   height=request.height, width=request.width, output_type="latent",
                                   generator=torch.Generator().manual_seed(request.seed), return_dict=False)[0]
                    outputs.append(family.to_comfy_latent(pipe, latents, request).float())
                return outputs
            finally:
                disable(pipe)
        return run

    def measure(self, run, repeats):
        pipe = self.engine.loaded(self.spec).pipe
        with count_block_work(pipe, self.spec.family) as work:
            latents = run()
        blocks = work.executed
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        return sorted(seconds)[len(seconds) // 2], blocks, self.decode(latents)

    def decode(self, latents):
        return torch.cat([to_comfy_images(self.engine.decode(self.spec, x)) for x in latents])


def peers():
    from diffusers.hooks import FirstBlockCacheConfig

    def fbcache(threshold):
        return (lambda pipe: pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold)),
                lambda pipe: pipe.transformer.disable_cache())

    def cache_dit_direct():
        import cache_dit

        config = cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=4,
                                         residual_diff_threshold=0.24, max_continuous_cached_steps=3)
        return (lambda pipe: cache_dit.enable_cache(pipe, cache_config=config),
                lambda pipe: cache_dit.disable_cache(pipe))

    return {("peer: diffusers FirstBlockCache", "threshold=0.1"): fbcache(0.1),
            ("peer: diffusers FirstBlockCache", "threshold=0.2"): fbcache(0.2),
            ("peer: cache-dit on the pipeline", "Fn1 B0 W4 thr 0.24"): cache_dit_direct()}


def benchmark(model: str, folder: str, prompts, steps, guidance, size, repeats, with_peers: bool,
              extra: dict | None = None, score=None, images=None):
    engine = Engine()
    spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
    runner = Runner(engine, spec, prompts, steps, guidance, size, images)
    base_time, base_blocks, base_images = runner.measure(runner.ours(None), repeats)
    rows = [{"model": model, "method": "none", "settings": "uncached", "speedup": 1.0, "block_exec_ratio": 1.0,
             "psnr_db": None}]
    candidates = {key: runner.ours(config) for key, config in {**OURS, **(extra or {})}.items()}
    if with_peers:
        candidates.update({key: runner.peer(*hooks) for key, hooks in peers().items()})
    for (method, settings), run in candidates.items():
        seconds, blocks, images = runner.measure(run, repeats)
        rows.append({"model": model, "method": method, "settings": settings,
                     "speedup": round(base_time / seconds, 3), "block_exec_ratio": round(blocks / base_blocks, 3),
                     "psnr_db": psnr(images, base_images)})
        if score is not None:
            rows[-1]["follow_score"] = score(images)
    if score is not None:
        rows[0]["follow_score"] = score(base_images)
    engine.unload_all()
    return rows


# Fixed thresholds swept to find the best one that meets each target on the held-out prompts.
QUALITY_METHODS = {
    "tea-quality": (TeaCacheConfig, "rel_l1_thresh", (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 2.0)),
    "dit-quality": (CacheDiTConfig, "residual_diff_threshold", (0.03, 0.06, 0.1, 0.15, 0.24, 0.35, 0.5, 0.75, 1.0)),
}
TARGETS = (40.0, 35.0, 30.0)


def quality_rows(model: str, folder: str, prompts, calibration_prompt: str, steps, guidance, size, images=None,
                 calibration_image=None):
    engine = Engine()
    spec = ModelSpec.from_folder(folder, dtype="fp32", device="cpu")
    held_out = Runner(engine, spec, prompts, steps, guidance, size, images)

    def worst_psnr_and_blocks(cache):
        with count_block_work(engine.loaded(spec).pipe, spec.family) as work:
            latents = held_out.ours(cache)()
        decoded = held_out.decode(latents)
        return min(psnr(decoded[i:i + 1], base_images[i:i + 1]) for i in range(len(prompts))), work.executed

    with count_block_work(engine.loaded(spec).pipe, spec.family) as work:
        base_images = held_out.decode(held_out.ours(None)())
    base_blocks = work.executed
    rows = []
    for method, (config_class, field, sweep) in QUALITY_METHODS.items():
        fixed = []  # (threshold, worst psnr, speedup)
        for threshold in sweep:
            worst, blocks = worst_psnr_and_blocks(config_class(**{field: threshold}))
            fixed.append((threshold, worst, round(base_blocks / blocks, 3)))
        for target in TARGETS:
            engine.calibrations.clear()
            cache = config_class(target_db=target)
            inputs = (calibration_image,) if calibration_image is not None else ()
            calibrated = engine.generate(spec.replace(cache=cache), GenerationRequest(
                prompt=calibration_prompt, negative_prompt="", steps=steps, guidance=guidance, seed=len(prompts),
                width=size, height=size, images=inputs)).report.sections["Quality target"]
            worst, blocks = worst_psnr_and_blocks(cache)  # the held-out runs reuse the calibration
            meeting = [entry for entry in fixed if entry[1] >= target]
            best = max(meeting, key=lambda entry: entry[2]) if meeting else (None, None, 1.0)
            speedup = round(base_blocks / blocks, 3)
            rows.append({"model": model, "method": method, "target_db": target,
                         "threshold": round(calibrated["threshold"], 4), "psnr_db": worst, "speedup": speedup,
                         "calibration_psnr_db": round(calibrated["psnr_db"], 2),
                         "calibration_runs": calibrated["runs"], "best_fixed_threshold": best[0],
                         "best_fixed_speedup": best[2], "met": worst >= target,
                         "within_10_percent": speedup >= 0.9 * best[2]})
        rows.append({"model": model, "method": method, "settings": "fixed sweep",
                     "sweep": [{"threshold": t, "psnr_db": p, "speedup": x} for t, p, x in fixed]})
    engine.unload_all()
    return rows


def follow_score(prompts):
    from omni_diffusion_nodes.training.evaluate import score_images

    return lambda images: round(sum(score_images(prompts, images.numpy())) / len(prompts), 3)


def edit_follow_score(edits, inputs):
    from omni_diffusion_nodes.training.edit_evaluate import score_edits

    return lambda images: round(sum(score_edits(edits, inputs, images.numpy())) / len(edits), 3)


def reference_edits(count: int):
    """(edits, input renders [N, H, W, 3]): the first `count` held-out edits, kinds taken in turn."""
    from omni_diffusion_nodes.training.edit_evaluate import held_out_inputs

    edits, _inputs, _targets = held_out_inputs()
    per_kind = len(edits) // 3
    order = [kind * per_kind + i for i in range(per_kind) for kind in range(3)][:count]
    return held_out_inputs([edits[i] for i in order])[:2]


def reference_prompts(count: int):
    from omni_diffusion_nodes.training.evaluate import default_prompts

    return default_prompts()[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts of the reference model (0: skip it)")
    parser.add_argument("--edits", type=int, default=6, help="held-out edits of the reference edit model (0: skip it)")
    parser.add_argument("--skip-heavy", action="store_true", help="only the reference models")
    parser.add_argument("--quality-only", action="store_true", help="only the quality-target rows")
    args = parser.parse_args()
    rows = []
    from omni_backend.reference import MODEL_DIR

    if Path(MODEL_DIR, "model_index.json").exists() and args.prompts:
        from omni_backend.reference import TEACACHE_COEFFICIENTS

        prompts = reference_prompts(args.prompts + 1)
        prompts, calibration_prompt = prompts[:-1], prompts[-1]
        fitted = {("teacache", "rel_l1_thresh=0.2, this model's fitted coefficients"):
                  TeaCacheConfig(rel_l1_thresh=0.2, coefficients=TEACACHE_COEFFICIENTS)}
        if not args.quality_only:
            rows += benchmark("reference", str(MODEL_DIR), prompts, steps=25, guidance=4.0, size=64,
                              repeats=args.repeats, with_peers=True, extra=fitted, score=follow_score(prompts))
        rows += quality_rows("reference", str(MODEL_DIR), prompts, calibration_prompt, steps=25, guidance=4.0,
                             size=64)
    from omni_backend.reference import EDIT_MODEL_DIR

    if Path(EDIT_MODEL_DIR, "model_index.json").exists() and args.edits:
        edits, inputs = reference_edits(args.edits + 1)
        (edits, calibration_edit), (inputs, calibration_input) = (edits[:-1], edits[-1]), (inputs[:-1], inputs[-1])
        images = [torch.from_numpy(i)[None] for i in inputs]
        if not args.quality_only:
            rows += benchmark("reference-edit", str(EDIT_MODEL_DIR), [edit.instruction for edit in edits], steps=20,
                              guidance=4.0, size=64, repeats=args.repeats, with_peers=False,
                              score=edit_follow_score(edits, inputs), images=images)
        rows += quality_rows("reference-edit", str(EDIT_MODEL_DIR), [edit.instruction for edit in edits],
                             calibration_edit.instruction, steps=20, guidance=4.0, size=64, images=images,
                             calibration_image=torch.from_numpy(calibration_input)[None])
    if not args.skip_heavy and not args.quality_only:
        with tempfile.TemporaryDirectory() as tmp:
            folder = heavy_random_model(Path(tmp) / "qwen-heavy")
            rows += benchmark("random-heavy", str(folder), ["a cat on a windowsill"], steps=28, guidance=1.0,
                              size=256, repeats=max(1, args.repeats - 1), with_peers=False)
    for row in rows:
        print(json.dumps(row) if args.json else row)


def heavy_random_model(folder: Path) -> Path:
    """The tiny Qwen-Image pipeline with a 12-layer x 384-wide transformer: compute dominates."""
    from diffusers import QwenImageTransformer2DModel

    family = FAMILIES["qwen-image"]
    torch.manual_seed(0)
    pipe = family.build_tiny()
    pipe.transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=12,
                                                   attention_head_dim=64, num_attention_heads=6,
                                                   joint_attention_dim=32, axes_dims_rope=(16, 24, 24)).eval()
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


if __name__ == "__main__":
    main()
