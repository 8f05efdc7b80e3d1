"""Train the reference edit model on the CPU and save it as a QwenImageEditPipeline folder.

    python -m omni_diffusion_nodes.training.train_edit --out omni_backend/reference/qwen-image-edit-shapes

It reuses the text-to-image reference model (`--base`, the committed qwen-image-shapes): its
trained VAE as is (named, not copied, when `--out` sits beside `--base`), and its DiT's weights as
the start (QwenImageEditPipeline appends the input image's latent tokens to the sequence, so the
architecture is the same; the DiT learns to read them). The text side is new (edit_components.py).
Stages: build the tokenizer, the frozen text encoder and the processor; encode a pool of procedural
edits (edit_dataset.py); train the DiT with an EMA; save (float16 by default); score the held-out
edits through the engine (edit_evaluate.py).
Step counts, not time, decide the defaults (`--minutes` caps the DiT stage's wall time instead).
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
    from omni_backend.reference import MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m omni_diffusion_nodes.training.train_edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the pipeline to")
    parser.add_argument("--base", default=str(MODEL_DIR), help="the text-to-image reference model folder")
    parser.add_argument("--from-scratch", action="store_true", help="start the DiT from random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--pool", type=int, default=4096, help="training edits encoded up front")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap for the DiT stage")
    # One thread: this small a model gains little from a second one, and when other jobs share the cores
    # two threads wait on each other at every op (measured 5.5 s per step with 2 threads, 0.55 s with 1,
    # at load average 10 on 2 cores).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--skip-eval", action="store_true", help="do not score the saved model")
    parser.add_argument("--log-every", type=int, default=100)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    import torch

    threads = torch.get_num_threads()
    try:
        return _main(parse_args(argv), argv)
    finally:
        torch.set_num_threads(threads)  # the caller's (a test session) thread count again


def _main(args, argv) -> dict:
    import torch
    from diffusers import QwenImageTransformer2DModel

    from . import components, edit_components
    from .edit_training import build_edit_pool, train_edit_dit
    from .train import folder_size_mb, load_vae

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    begin = time.time()
    summary: dict = {"args": vars(args), "load_average": os.getloadavg()[0]}
    base = Path(args.base)

    torch.manual_seed(args.seed)
    tokenizer = edit_components.tokenizer()
    text_encoder = edit_components.text_encoder(tokenizer)
    processor = edit_components.processor(tokenizer)
    vae = load_vae(str(base / "vae"))
    if args.from_scratch:
        torch.manual_seed(args.seed + 5)
        transformer = components.transformer()
    else:
        transformer = QwenImageTransformer2DModel.from_pretrained(
            base / "transformer", torch_dtype=torch.float32, local_files_only=True, use_safetensors=True)
    log(f"tokenizer: {len(tokenizer)} tokens; vae and DiT from {base}"
        f"{' (DiT from scratch)' if args.from_scratch else ''}")
    pipe = edit_components.pipeline(vae, transformer, text_encoder, tokenizer, processor)

    pool = build_edit_pool(pipe, args.pool, args.seed + 4, log=log)
    summary["pool_seconds"] = time.time() - begin
    ema, summary["dit"] = train_edit_dit(
        transformer, pipe, pool, steps=args.steps, batch=args.batch, lr=args.lr, ema_decay=args.ema_decay,
        seed=args.seed + 6, max_seconds=args.minutes * 60 if args.minutes else None, log_every=args.log_every,
        log=log)

    out = Path(args.out)
    trained = edit_components.pipeline(vae, ema, text_encoder, tokenizer, processor)
    # The VAE is the base's, unchanged: a folder written beside the base names it instead of a copy.
    summary["shared_vae"] = out.resolve().parent == base.resolve().parent
    edit_components.save(trained, out, getattr(torch, args.store_dtype),
                         shared_vae=base / "vae" if summary["shared_vae"] else None)
    summary["size_mb"] = folder_size_mb(out)
    summary["train_seconds"] = time.time() - begin
    summary["load_average_end"] = os.getloadavg()[0]
    log(f"saved {out} ({summary['size_mb']:.1f} MB, {args.store_dtype}) after {summary['train_seconds']:.0f}s")

    if not args.skip_eval:
        from .edit_evaluate import evaluate_edits

        result = evaluate_edits(out)
        summary["eval"] = {k: v for k, v in result.items() if k != "pixels"}
        log(f"held-out edit following: {result['score']:.3f} of {result['images']} images "
            f"(by kind {result['by_kind']}) in {result['seconds']:.0f}s")
    summary["total_seconds"] = time.time() - begin
    write_model_card(out, summary, argv if argv is not None else sys.argv[1:])
    log("summary " + json.dumps(summary, default=_jsonable))
    return summary


def write_model_card(out: Path, summary: dict, argv: list[str]) -> None:
    """README.md next to the weights: how they were made and what they scored (diffusers ignores it)."""
    from .components import TRANSFORMER_CONFIG

    args, dit = summary["args"], summary["dit"]
    start = "random weights" if args["from_scratch"] else "the text-to-image reference DiT's weights"
    lines = [
        "# qwen-image-edit-shapes: a small Qwen-Image-Edit trained on procedural edits of the shape scenes",
        "",
        "Made by `training/train_edit.py` (see its docstring and `edit_dataset.py`) with:",
        "",
        f"    python -m omni_diffusion_nodes.training.train_edit {' '.join(argv)}",
        "",
        "- QwenImageEditPipeline: the input image's latent tokens join the denoised sequence; the pipeline "
        "resizes the input image to 64x64 px (model_index.json `_omni_input_image_area` 4096, which our "
        "qwen-image-edit family applies; diffusers alone would use about 1024x1024 px)",
        f"- VAE: the text-to-image reference's ({_shown(args['base'])}/vae), unchanged"
        + ("; kept once, in that folder: model_index.json's `_omni_shared_components` names it, and the "
           "engine loads it from there (diffusers alone: pass `vae=AutoencoderKLQwenImage.from_pretrained(...)`)"
           if summary.get("shared_vae") else ""),
        (f"- DiT (QwenImageTransformer2DModel, {TRANSFORMER_CONFIG['num_layers']} layers, "
         f"{TRANSFORMER_CONFIG['num_attention_heads']} heads x {TRANSFORMER_CONFIG['attention_head_dim']}) started "
         f"from {start}: {dit['steps']} steps at batch {args['batch']} on {args['pool']} edits, "
         f"loss {dit['first_loss']:.3f} -> {dit['loss']:.4f}, {dit['seconds'] / 60:.1f} min; EMA weights saved"),
        "- Text encoder: a 2-layer Qwen2.5-VL with a 1-layer vision tower, frozen at its seeded init (the text-to-"
        "image reference's recipe; its own tokenizer, since the edit template and the instructions differ)",
        (f"- Training wall time {summary['train_seconds'] / 60:.1f} min in all on this machine "
         f"({os.cpu_count()} CPU cores, load average {summary['load_average']:.1f} at the start and "
         f"{summary['load_average_end']:.1f} at the end: other jobs shared the cores); folder "
         f"{summary['size_mb']:.1f} MB ({args['store_dtype']} safetensors)"),
    ]
    if "eval" in summary:
        from .edit_evaluate import GUIDANCE, STEPS

        ev = summary["eval"]
        kinds = ", ".join(f"{kind} {score:.2f}" for kind, score in ev["by_kind"].items())
        lines.append(f"- Held-out edit following ({ev['edits']} (kind, shape, from, to) combinations never seen in "
                     f"training, {ev['images'] // ev['edits']} seed each, {STEPS} steps, true CFG {GUIDANCE:g}, "
                     f"weights loaded as float32): score {ev['score']:.3f} ({round(ev['score'] * ev['images'])} of "
                     f"{ev['images']} images: the asked change made and the rest kept; {kinds})")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _shown(folder: str) -> str:
    """The folder relative to the working directory where it is inside it (the card names no home)."""
    path = Path(folder).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else folder


def _jsonable(value):
    return float(value) if hasattr(value, "__float__") else str(value)


if __name__ == "__main__":
    main(sys.argv[1:])
