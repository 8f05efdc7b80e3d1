"""Real-size checkpoints on this machine: load them as a user would and take one Sample step.

For each case, single files with the released model's shapes and random values are written the way
ComfyUI's templates name them (streamed tensor by tensor, in row chunks: never whole in memory), then a
fresh process loads them through the single-file loader (what Load Omni Model (ComfyUI files) calls),
takes one step at 256 px and decodes, and the files are deleted. Nothing is downloaded: the shapes
come from the released configs the single-file profiles already hold (omni_backend/single_file/).
Tokenizers are the tiny test ones (the token count, not the vocabulary, decides the work); every
token id they give is inside the real embedding.

One JSON row per case:
  {"model", "weights", "file_gb", "load_s", "peak_rss_gb", "kept_gb", "peak_rss_ratio", "step_s", "ok"}
peak_rss_gb: the loading process's peak resident memory (VmHWM, read right after the load; file pages
of the memory-mapped weights count once touched); kept_gb: the bytes of every parameter and buffer the
pipeline keeps; peak_rss_ratio = peak_rss_gb / kept_gb. Weights kept as stored are views of the mapped
files, read from disk when they first run, so the load itself stays small: run_peak_rss_gb (VmHWM after
the step, every weight touched) over kept_gb, run_peak_rss_ratio, is the figure that says whether the
model fits (the interpreter and libraries add about 0.6 GB).

Disk and memory: Z-Image-Turbo fp8_e4m3fn writes 13.4 GB and peaks at about 15 GB resident; the bf16
case writes 19 GB and needs about 21 GB. CI does not run this.

    python benchmarks/real_scale.py --json [--cases z-image-fp8_e4m3fn,z-image-bf16] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT  # noqa: F401  (offline mode and the pack on sys.path)

from omni_backend.single_file import flux, text_encoders, z_image
from omni_backend.single_file.comfy_layout import DIT_PREFIX, write_comfy_files
from omni_backend.single_file.model_files import PROFILES

GB = 1024 ** 3  # the rows' gb are GiB
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
CHUNK_VALUES = 1 << 24  # rows are generated and written about 16 M values at a time

# (family, DiT weights) -> the released configs the files are written from; the DiT is what the weight
# format names (ComfyUI's templates pair Z-Image's DiT with qwen_3_4b.safetensors in bf16 either way).
CASES = {
    "z-image-fp8_e4m3fn": ("z-image", "fp8_e4m3fn"),
    "z-image-bf16": ("z-image", "bf16"),
}
# The profiles' released configs leave out what the loader reads from the shapes (e.g. the VAE's block types).
FLUX_VAE = {**flux.VAE, "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
RELEASED = {"z-image": {"diffusion_model": z_image.TRANSFORMER, "text_encoder": text_encoders._QWEN3_4B,
                        "vae": FLUX_VAE}}


def meta_state(component, config: dict) -> dict:
    """The component's file keys and shapes, from a model built on the meta device (no weights)."""
    import importlib

    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(component.library), component.class_name)
    with init_empty_weights():
        module = cls.from_config(config) if component.library == "diffusers" else cls(cls.config_class(**config))
    state = {key: value for key, value in module.state_dict().items() if key not in component.stand_ins}
    return component.to_file_keys(state, config)


def stored_dtype(key: str, shape, weights: str) -> torch.dtype:
    """FP8 files store their matrices in FP8 and the rest (norms, biases, pad tokens) in bf16."""
    if weights == "fp8_e4m3fn" and len(shape) == 2 and key.endswith(".weight"):
        return torch.float8_e4m3fn
    return torch.bfloat16


def write_streamed(path: Path, shapes: dict, weights: str) -> int:
    """A .safetensors file of random values with these shapes, written tensor by tensor; its bytes."""
    header, offset, layout = {}, 0, []
    for key, shape in shapes.items():
        dtype = stored_dtype(key, shape, weights)
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        layout.append((key, tuple(shape), dtype))
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)) + blob)
        for key, shape, dtype in layout:
            for chunk in _values(key, shape, generator):
                out.write(chunk.to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


def _values(key: str, shape: tuple, generator):
    """The tensor's values, row chunk by row chunk: norms 1, other vectors small, matrices scaled by
    1/sqrt(fan-in) so that activations stay finite through every block."""
    if len(shape) < 2:
        yield torch.ones(shape) if "norm" in key else torch.randn(shape, generator=generator) * 0.02
        return
    rows, rest = shape[0], shape[1:]
    per_row = math.prod(rest)
    step = max(1, CHUNK_VALUES // per_row)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        yield torch.randn((count, *rest), generator=generator) / math.sqrt(per_row)


# The config fields that count blocks, for --blocks (a quick check of the path, not a measurement).
BLOCK_COUNTS = ("n_layers", "num_hidden_layers")


def write_case(name: str, directory: Path, blocks: int = 0) -> dict:
    family, weights = CASES[name]
    profile = PROFILES[family]
    released = {part: {**config, **({key: blocks for key in BLOCK_COUNTS if key in config} if blocks else {})}
                for part, config in RELEASED[family].items()}
    names, plain_names = profile.template_names(weights), profile.template_names("bf16")
    files, total = {}, 0
    for input_name, component in (("diffusion_model", profile.transformer), ("text_encoder", profile.text_encoder),
                                  ("vae", profile.vae)):
        shapes = {key: tuple(value.shape) for key, value in meta_state(component, released[input_name]).items()}
        if input_name == "diffusion_model":
            shapes = {DIT_PREFIX + key: shape for key, shape in shapes.items()}
        folder = {"diffusion_model": "diffusion_models", "text_encoder": "text_encoders", "vae": "vae"}[input_name]
        # ComfyUI's Z-Image template pairs either DiT with qwen_3_4b.safetensors (bf16), as written here.
        path = directory / folder / (names if input_name == "diffusion_model" else plain_names)[input_name]
        total += write_streamed(path, shapes, weights if input_name == "diffusion_model" else "bf16")
        files[input_name] = str(path)
    # The tiny tokenizer, where the loader looks first (beside the text encoder file).
    tiny = write_comfy_files(family, directory / "tiny", "bf16")
    for folder in Path(tiny["text_encoder"]).parent.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, directory / "text_encoders" / folder.name, dirs_exist_ok=True)
    shutil.rmtree(directory / "tiny")
    return {"files": files, "file_gb": round(total / GB, 2)}


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def kept_bytes(pipe) -> int:
    seen, total = set(), 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in (*module.parameters(), *module.buffers()):
                if tensor.data_ptr() not in seen:
                    seen.add(tensor.data_ptr())
                    total += tensor.numel() * tensor.element_size()
    return total


def measure(files: dict) -> dict:
    """In this (fresh) process: load the files as Load Omni Model (ComfyUI files) does, one step, decode."""
    from omni_backend.engine import Engine
    from omni_backend.request import GenerationRequest
    from omni_backend.single_file.model_files import ModelFiles
    from omni_backend.spec import ModelSpec

    spec = ModelSpec.from_files(ModelFiles(**files), dtype="bf16", device="cpu")
    engine = Engine()
    started = time.perf_counter()
    pipe = engine.loaded(spec).pipe
    load_s, peak, kept = time.perf_counter() - started, peak_rss_gb(), kept_bytes(pipe) / GB
    started = time.perf_counter()
    result = engine.generate(spec, GenerationRequest(prompt="a lighthouse on a cliff at dawn", negative_prompt="",
                                                     steps=1, guidance=0.0, seed=0, width=256, height=256))
    step_s = time.perf_counter() - started
    run_peak = peak_rss_gb()
    return {"load_s": round(load_s, 1), "peak_rss_gb": round(peak, 2), "kept_gb": round(kept, 2),
            "peak_rss_ratio": round(peak / kept, 3), "step_s": round(step_s, 1),
            "run_peak_rss_gb": round(run_peak, 2), "run_peak_rss_ratio": round(run_peak / kept, 3),
            "ok": bool(torch.isfinite(result.latents).all())}


def run_case(name: str, root: Path, blocks: int = 0) -> dict:
    family, weights = CASES[name]
    directory = root / name
    row = {"model": family, "weights": weights, **({"blocks": blocks} if blocks else {})}
    try:
        row.update(write_case(name, directory, blocks))
        files = row.pop("files")
        done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(files)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            return {**row, "ok": False, "error": done.stderr.strip().splitlines()[-1:]}
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        return row
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    parser.add_argument("--blocks", type=int, default=0, help="keep only this many blocks (a quick check of the "
                        "path with real widths; not a measurement of the model)")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="omni-real-scale-"))
    for name in args.cases.split(","):
        row = {"case": name, **run_case(name, root, args.blocks)}
        print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
