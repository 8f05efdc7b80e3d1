"""Real-size checkpoints on this machine: load them as a user would and take one Sample step.

For each case, weights with the released model's shapes and random values are written (streamed tensor
by tensor, in row chunks: never whole in memory), then a fresh process loads them as a user would, takes
one step at 256 px and decodes, and the weights are deleted. Single files are named the way ComfyUI's
templates name them and load through the single-file loader (what Load Omni Model (ComfyUI files)
calls); a folder is laid out as the release's diffusers download and loads through ModelSpec.from_folder
(what Load Omni Model calls): model_index.json, scheduler/ and tokenizer/ from the tiny test folder,
and transformer/, text_encoder/, vae/ each with its config.json (the tiny one with the released sizes)
beside weights in the library's own key names, sharded as Hugging Face releases are (at most 5 GB a
shard, with a .safetensors.index.json; one unindexed file when it fits in one shard). Nothing is
downloaded: the shapes come from the released configs the single-file profiles already hold
(each family folder's single_file.py). Tokenizers are the tiny test ones (the token count, not the vocabulary,
decides the work); every token id they give is inside the real embedding.

One JSON row per case:
  {"model", "weights", "file_gb", "load_s", "peak_rss_gb", "kept_gb", "peak_rss_ratio", "step_s", "ok"}
peak_rss_gb: the loading process's peak resident memory (VmHWM, read right after the load; file pages
of the memory-mapped weights count once touched); kept_gb: the bytes of every parameter and buffer the
pipeline keeps; peak_rss_ratio = peak_rss_gb / kept_gb. Weights kept as stored are views of the mapped
files, read from disk when they first run, so the load itself stays small: run_peak_rss_gb (VmHWM after
the step, every weight touched) over kept_gb, run_peak_rss_ratio, is the figure that says whether the
model fits (the interpreter and libraries add about 0.6 GB).

Cases: z-image-fp8_e4m3fn and z-image-bf16 (ComfyUI's files: the DiT in that format beside
qwen_3_4b.safetensors and ae.safetensors), z-image-bf16-folder (the diffusers folder, all bf16).

Disk and memory: Z-Image-Turbo fp8_e4m3fn writes 13.4 GB and peaks at about 15 GB resident; the bf16
case writes 19 GB and needs about 21 GB. The folder case writes the same 19.1 GB (20.5 * 10^9 bytes),
from the shapes: transformer/ 11.5 GB in 3 shards (4.64, 4.64, 2.18), text_encoder/ 7.5 GB in 2 (4.63,
2.87: Qwen3Model, the embedding tied, no lm_head), vae/ 0.16 GB in one file; it peaked at 19.0 GB resident after the step
(docs/benchmarks.md). GB here are GiB, as in the rows. CI does not run this.

    python benchmarks/real_scale.py --json [--cases z-image-fp8_e4m3fn,z-image-bf16,z-image-bf16-folder]
                                    [--dir /tmp/x] [--blocks 1]
"""

from __future__ import annotations

import argparse
import importlib
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

from omni_backend.families import FAMILIES
from omni_backend.families.flux import single_file as flux
from omni_backend.families.z_image import single_file as z_image
from omni_backend.single_file import text_encoders
from omni_backend.single_file.comfy_layout import DIT_PREFIX, write_comfy_files
from omni_backend.single_file.model_files import PROFILES

GB = 1024 ** 3  # the rows' gb are GiB
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
CHUNK_VALUES = 1 << 24  # rows are generated and written about 16 M values at a time

# (family, DiT weights, layout) -> the released configs the weights are written from. "files": ComfyUI's
# single files, whose DiT is what the weight format names (ComfyUI's templates pair Z-Image's DiT with
# qwen_3_4b.safetensors in bf16 either way); "folder": the release's diffusers folder.
CASES = {
    "z-image-fp8_e4m3fn": ("z-image", "fp8_e4m3fn", "files"),
    "z-image-bf16": ("z-image", "bf16", "files"),
    "z-image-bf16-folder": ("z-image", "bf16", "folder"),
}
# The profiles' released configs leave out what the loader reads from the shapes (e.g. the VAE's block types).
FLUX_VAE = {**flux.VAE, "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
RELEASED = {"z-image": {"diffusion_model": z_image.TRANSFORMER, "text_encoder": text_encoders._QWEN3_4B,
                        "vae": FLUX_VAE}}


def meta_module(library: str, class_name: str, config: dict) -> torch.nn.Module:
    """The model built on the meta device (no weights): its state_dict() has the library's keys and shapes."""
    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name)
    with init_empty_weights():
        return cls.from_config(config) if library == "diffusers" else cls(cls.config_class(**config))


def meta_state(component, config: dict) -> dict:
    """The component's single-file keys and shapes, from a model built on the meta device."""
    module = meta_module(component.library, component.class_name, config)
    state = {key: value for key, value in module.state_dict().items() if key not in component.stand_ins}
    return component.to_file_keys(state, config)


def stored_dtype(key: str, shape, weights: str) -> torch.dtype:
    """FP8 files store their matrices in FP8 and the rest (norms, biases, pad tokens) in bf16."""
    if weights == "fp8_e4m3fn" and len(shape) == 2 and key.endswith(".weight"):
        return torch.float8_e4m3fn
    return torch.bfloat16


def stored_bytes(key: str, shape, weights: str) -> int:
    return math.prod(shape) * torch.empty((), dtype=stored_dtype(key, shape, weights)).element_size()


def write_streamed(path: Path, shapes: dict, weights: str, metadata: dict | None = None) -> int:
    """A .safetensors file of random values with these shapes, written tensor by tensor; its bytes.
    `metadata`: the header's __metadata__ (what save_pretrained writes: {"format": "pt"})."""
    header, offset, layout = ({"__metadata__": metadata} if metadata else {}), 0, []
    for key, shape in shapes.items():
        dtype = stored_dtype(key, shape, weights)
        size = stored_bytes(key, shape, weights)
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


def released_configs(family: str, blocks: int = 0) -> dict:
    """The released configs by single-file input name; with `blocks`, that many blocks."""
    return {part: {**config, **({key: blocks for key in BLOCK_COUNTS if key in config} if blocks else {})}
            for part, config in RELEASED[family].items()}


def write_case(name: str, directory: Path, blocks: int = 0) -> dict:
    """The case's weights on disk: {"files": {input: path}} or {"folder": path}, and their "file_gb"."""
    family, weights, layout = CASES[name]
    if layout == "folder":
        return write_folder(family, weights, directory, blocks)
    return write_files(family, weights, directory, blocks)


def write_files(family: str, weights: str, directory: Path, blocks: int = 0) -> dict:
    profile = PROFILES[family]
    released = released_configs(family, blocks)
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


# The folder's weights components -> the single-file input whose released config they take.
FOLDER_PARTS = {"transformer": "diffusion_model", "text_encoder": "text_encoder", "vae": "vae"}
# Weights file names without ".safetensors": diffusers' SAFETENSORS_WEIGHTS_NAME / SAFE_WEIGHTS_INDEX_NAME
# (diffusers/utils/constants.py), transformers' SAFE_WEIGHTS_NAME / SAFE_WEIGHTS_INDEX_NAME.
WEIGHTS_STEMS = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}
# Hugging Face releases are saved with max_shard_size="5GB", which huggingface_hub reads as 5 * 10^9 bytes.
SHARD_BYTES = 5 * 10 ** 9
# With --blocks the weights are too small to shard at 5 GB: a tenth of that keeps the index (and a tensor
# larger than a shard, the text encoder's embedding) in the quick check's path, as in the real folder's.
QUICK_SHARD_BYTES = 5 * 10 ** 8


def write_folder(family: str, weights: str, directory: Path, blocks: int = 0) -> dict:
    """The release's diffusers folder: the tiny folder's model_index.json, scheduler/ and tokenizer/, and
    each weights component with the released sizes in its config.json and weights in the library's own
    key names (state_dict() of the class model_index.json names: no key mapping, as diffusers and
    transformers save them). A tied weight is written as state_dict() holds it (Qwen3Model has no lm_head)."""
    FAMILIES[family].make_tiny(directory)
    index = json.loads((directory / "model_index.json").read_text())
    released, total = released_configs(family, blocks), 0
    for name, part in FOLDER_PARTS.items():
        library, class_name = index[name]
        sub = directory / name
        config = folder_config(json.loads((sub / "config.json").read_text()), released[part])
        (sub / "config.json").write_text(json.dumps(config, indent=2))
        for tiny_weights in sub.glob("*.safetensors*"):
            tiny_weights.unlink()
        module = meta_module(library, class_name, config)
        shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        limit = QUICK_SHARD_BYTES if blocks else SHARD_BYTES
        total += write_sharded(sub, WEIGHTS_STEMS[library], shapes, weights, limit)
    return {"folder": str(directory), "file_gb": round(total / GB, 2)}


def folder_config(tiny: dict, released: dict) -> dict:
    """The tiny config with the released sizes. Qwen3's per-layer attention kinds are one per layer (the
    tiny list is as long as its 2 layers), and a transformers config names the weights' dtype (the tiny
    copy was saved in float32)."""
    config = {**tiny, **released}
    if "layer_types" in config:
        config["layer_types"] = ["full_attention"] * config["num_hidden_layers"]
    if "dtype" in config:
        config["dtype"] = "bfloat16"
    return config


def write_sharded(folder: Path, stem: str, shapes: dict, weights: str, limit: int) -> int:
    """The weights as save_pretrained writes them: one `stem.safetensors` when they fit in one shard, else
    `stem-00001-of-0000n.safetensors`... and `stem.safetensors.index.json` (metadata.total_size: the
    tensors' bytes; weight_map: each tensor's shard). The files' bytes."""
    shards = split_shards(shapes, weights, limit)
    count = len(shards)
    names = [f"{stem}.safetensors"] if count == 1 else [f"{stem}-{i:05d}-of-{count:05d}.safetensors"
                                                        for i in range(1, count + 1)]
    total = sum(write_streamed(folder / name, shard, weights, {"format": "pt"})
                for name, shard in zip(names, shards))
    if count > 1:
        index = {"metadata": {"total_size": sum(stored_bytes(key, shape, weights) for key, shape in shapes.items())},
                 "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def split_shards(shapes: dict, weights: str, limit: int) -> list[dict]:
    """huggingface_hub's split_torch_state_dict_into_shards: tensors in state_dict order, a new shard when
    the next one would pass the limit, a tensor larger than the limit alone in its own shard."""
    shards, current, size = [], {}, 0
    for key, shape in shapes.items():
        nbytes = stored_bytes(key, shape, weights)
        if nbytes > limit:
            shards.append({key: shape})
            continue
        if size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = shape
        size += nbytes
    return shards + ([current] if current else [])


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


def load_spec(source: dict):
    """The spec Load Omni Model makes of a folder ({"folder": path}), or Load Omni Model (ComfyUI files)
    of single files ({"files": {input: path}})."""
    from omni_backend.single_file.model_files import ModelFiles
    from omni_backend.spec import ModelSpec

    if "folder" in source:
        return ModelSpec.from_folder(source["folder"], dtype="bf16", device="cpu")
    return ModelSpec.from_files(ModelFiles(**source["files"]), dtype="bf16", device="cpu")


def measure(source: dict) -> dict:
    """In this (fresh) process: load the weights as the user's node does (load_spec), one step, decode."""
    from omni_backend.engine import Engine
    from omni_backend.request import GenerationRequest

    spec = load_spec(source)
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
    family, weights, _layout = CASES[name]
    directory = root / name
    row = {"model": family, "weights": weights, **({"blocks": blocks} if blocks else {})}
    try:
        row.update(write_case(name, directory, blocks))
        source = {key: row.pop(key) for key in ("files", "folder") if key in row}
        done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(source)], check=False,
                              capture_output=True, text=True)
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
