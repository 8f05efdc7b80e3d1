"""Train the reference model from scratch on the CPU and save it as a QwenImagePipeline folder.

    python -m omni_diffusion_nodes.training.train --out omni_backend/reference/qwen-image-shapes

Stages: build a tokenizer and a frozen random text encoder; train the VAE; encode a pool of
training images and write the latents' per-channel mean/std into the VAE config (so the
pipeline de-normalises exactly as for the real Qwen-Image); train the DiT with an EMA; save
(float16 by default); evaluate prompt following on the held-out prompts through the engine.
Step counts, not time, decide the defaults, so a run is reproducible; `--minutes-vae` /
`--minutes-dit` cap a stage's wall time instead (then the steps reached depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m omni_diffusion_nodes.training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the pipeline to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-crop", type=int, default=32,
                        help="train the VAE on random crops of this many pixels (it is convolutional)")
    parser.add_argument("--vae-lr", type=float, default=1e-4)
    parser.add_argument("--vae-centred-crops", type=float, default=0.0,
                        help="fraction of VAE batches cropped around the shape (0.75 keeps shapes better; "
                             "off in the committed model)")
    parser.add_argument("--vae-edge-weight", type=float, default=0.0,
                        help="weight of an L1 loss on pixel differences (edges); 1.0 keeps shapes better")
    parser.add_argument("--vae-eval-images", type=int, default=128, help="held-out images for the VAE's PSNR")
    parser.add_argument("--vae-checkpoint", default=None, help="also save the trained VAE here (diffusers folder)")
    parser.add_argument("--vae-from", default=None, help="skip VAE training: load this saved VAE folder instead")
    parser.add_argument("--dit-steps", type=int, default=2000)
    parser.add_argument("--dit-batch", type=int, default=64)
    parser.add_argument("--dit-lr", type=float, default=1e-3)
    parser.add_argument("--dit-ema-decay", type=float, default=0.995,
                        help="EMA of the DiT weights (the saved ones); 0.995 averages about the last 200 steps")
    parser.add_argument("--pool", type=int, default=8192, help="training images encoded for the DiT")
    parser.add_argument("--minutes-vae", type=float, default=None, help="wall-time cap for the VAE stage")
    parser.add_argument("--minutes-dit", type=float, default=None, help="wall-time cap for the DiT stage")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--fp32-copy", default=None, help="also save the float32 weights here (to compare)")
    parser.add_argument("--skip-eval", action="store_true", help="do not score the saved model")
    parser.add_argument("--log-every", type=int, default=100)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from . import components
    from .dit_training import build_latent_pool, caption_embeddings, train_dit
    from .vae_training import check_palette, evaluate_vae, held_out_images, shape_round_trip, train_vae

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    begin = time.time()
    summary: dict = {"args": vars(args)}

    torch.manual_seed(args.seed)
    tokenizer = components.tokenizer()
    text_encoder = components.text_encoder(tokenizer)
    log(f"tokenizer: {len(tokenizer)} tokens; text encoder frozen at its seeded init")

    eval_images = held_out_images(args.vae_eval_images, args.seed + 3)
    if args.vae_from:
        vae = load_vae(args.vae_from)
        summary["vae"] = {"from": args.vae_from, "psnr_db": evaluate_vae(vae, eval_images)}
        log(f"vae loaded from {args.vae_from}: held-out psnr {summary['vae']['psnr_db']:.2f} dB")
    else:
        torch.manual_seed(args.seed + 1)
        vae = components.vae()
        summary["vae"] = train_vae(
            vae, steps=args.vae_steps, batch=args.vae_batch, crop=args.vae_crop, lr=args.vae_lr,
            seed=args.seed + 2, max_seconds=args.minutes_vae * 60 if args.minutes_vae else None,
            log_every=args.log_every, eval_images=eval_images, centred_crops=args.vae_centred_crops,
            edge_weight=args.vae_edge_weight, log=log)
        if args.vae_checkpoint:
            vae.save_pretrained(args.vae_checkpoint, safe_serialization=True)
    summary["vae"]["palette"] = check_palette(vae)
    log(f"vae palette round trip: {summary['vae']['palette']}")
    summary["vae"]["shape_kept"] = shape_round_trip(vae)
    log(f"vae round trip keeps the shape of {summary['vae']['shape_kept']:.3f} of held-out renders")

    pool = build_latent_pool(vae, args.pool, args.seed + 4, log=log)
    vae.register_to_config(latents_mean=pool.mean.tolist(), latents_std=pool.std.tolist())

    torch.manual_seed(args.seed + 5)
    transformer = components.transformer()
    pipe = components.pipeline(vae, transformer, text_encoder, tokenizer)
    embeddings = caption_embeddings(pipe, pool.captions)
    ema, summary["dit"] = train_dit(
        transformer, pipe, pool, embeddings, steps=args.dit_steps, batch=args.dit_batch, lr=args.dit_lr,
        ema_decay=args.dit_ema_decay,
        seed=args.seed + 6, max_seconds=args.minutes_dit * 60 if args.minutes_dit else None,
        log_every=args.log_every, log=log)

    out = Path(args.out)
    trained = components.pipeline(vae, ema, text_encoder, tokenizer)
    if args.fp32_copy:
        save(trained, Path(args.fp32_copy), torch.float32)
    save(trained, out, getattr(torch, args.store_dtype))
    summary["size_mb"] = folder_size_mb(out)
    summary["train_seconds"] = time.time() - begin
    log(f"saved {out} ({summary['size_mb']:.1f} MB, {args.store_dtype}) after {summary['train_seconds']:.0f}s")

    if not args.skip_eval:
        from .evaluate import evaluate

        result = evaluate(out)
        summary["eval"] = {k: v for k, v in result.items() if k != "pixels"}
        log(f"held-out prompt following: {result['score']:.3f} of {result['images']} images "
            f"(shape guessed right: {result['shape_score']:.3f}) in {result['seconds']:.0f}s")
    summary["total_seconds"] = time.time() - begin
    write_model_card(out, summary, argv if argv is not None else sys.argv[1:])
    log("summary " + json.dumps(summary, default=_jsonable))
    return summary


def load_vae(folder: str):
    import torch
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True,
                                                  use_safetensors=True).eval()


def save(pipe, out: Path, dtype) -> None:
    """Casts `pipe` to `dtype` in place (so save the float32 copy first) and writes the folder."""
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(dtype)
    pipe.save_pretrained(out, safe_serialization=True)


def write_model_card(out: Path, summary: dict, argv: list[str]) -> None:
    """README.md next to the weights: how they were made and what they scored (diffusers ignores it)."""
    from .components import TRANSFORMER_CONFIG, VAE_CONFIG

    args, vae, dit = summary["args"], summary["vae"], summary["dit"]
    if "from" in vae:
        vae_line = f"- VAE: loaded from {vae['from']}"
    else:
        vae_line = (f"- VAE (AutoencoderKLQwenImage, base_dim {VAE_CONFIG['base_dim']}, z {VAE_CONFIG['z_dim']}): "
                    f"{vae['steps']} steps at batch {args['vae_batch']} on {args['vae_crop']} px crops, "
                    f"{vae['seconds'] / 60:.1f} min")
    lines = [
        "# qwen-image-shapes: a small Qwen-Image trained from scratch on procedural shapes",
        "",
        "Made by `training/train.py` (see its docstring and `dataset.py`) with:",
        "",
        f"    python -m omni_diffusion_nodes.training.train {' '.join(argv)}",
        "",
        (f"{vae_line}; held-out reconstruction {vae.get('psnr_db', float('nan')):.2f} dB PSNR "
        f"({args['vae_eval_images']} images), palette round trip max error {vae['palette']['max_error']:.3f} "
        f"(all six colours kept: {vae['palette']['all_kept']}); the shape survives the round trip for "
        f"{vae['shape_kept']:.3f} of held-out renders (the evaluation's shape guess; 1.000 on the renders "
        "themselves), which bounds the model's shape score"),
        (f"- DiT (QwenImageTransformer2DModel, {TRANSFORMER_CONFIG['num_layers']} layers, "
        f"{TRANSFORMER_CONFIG['num_attention_heads']} heads x {TRANSFORMER_CONFIG['attention_head_dim']}): "
        f"{dit['steps']} steps at batch {args['dit_batch']}, loss {dit['first_loss']:.3f} -> {dit['loss']:.4f}, "
        f"{dit['seconds'] / 60:.1f} min; EMA weights saved. Text encoder: a 2-layer Qwen2.5-VL frozen at its "
        "seeded init"),
        (f"- Training wall time {summary['train_seconds'] / 60:.1f} min in all on this machine "
        f"({os.cpu_count()} CPU cores); folder {summary['size_mb']:.1f} MB ({args['store_dtype']} safetensors)"),
    ]
    if "eval" in summary:
        from .dataset import SHAPES
        from .evaluate import GUIDANCE, STEPS

        ev = summary["eval"]
        lines.append(f"- Held-out prompt following ({ev['prompts']} caption combinations never seen in training, "
                     f"{ev['images'] // ev['prompts']} seeds each, {STEPS} steps, true CFG {GUIDANCE:g}, weights loaded as float32): "
                     f"score {ev['score']:.3f} ({round(ev['score'] * ev['images'])} of {ev['images']} images: right "
                     f"colour, at the right place, on the right background); the shape guess is right for "
                     f"{ev['shape_score']:.3f} of them (chance: {1 / len(SHAPES):.3f})")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _jsonable(value):
    return float(value) if hasattr(value, "__float__") else str(value)


if __name__ == "__main__":
    main(sys.argv[1:])
