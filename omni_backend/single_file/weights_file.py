"""One single-file checkpoint as ComfyUI users keep them: its header, its format, its tensors.

The header is read without touching a weight (it is JSON at the front of a .safetensors file), so a
loader can list, detect and refuse files in milliseconds. Reading the tensors then strips the key
prefix ComfyUI's checkpoints carry (`model.diffusion_model.`) and either turns ComfyUI's "fp8_scaled"
format back into real weights (FP8 values times their `.scale_weight`) or, for the loader that keeps
FP8 as stored, hands the FP8 values on with their scales (stored_fp8.py). diffusers' `from_single_file`
accepts such a file without an error and drops the scales (the weights come out wrong by the scale,
often by orders of magnitude), which is why this module reads the tensors itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OmniInputError
from ..files.safetensors_header import HeaderError, read_header
from .stored_fp8 import FP8, StoredFP8, is_fp8

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
# Prefixes ComfyUI strips before detecting a model (comfy/model_detection.unet_prefix_from_state_dict),
# plus the one diffusers' own exports of a lone transformer sometimes carry.
KEY_PREFIXES = ("model.diffusion_model.", "model.model.", "net.", "diffusion_model.")
SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale")
# The scale of `X.weight`: `X.scale_weight` in ComfyUI's fp8_scaled files, `X.weight_scale` in its newer
# per-layer quantized files (which also carry an `X.comfy_quant` JSON entry naming the format).
WEIGHT_SCALES = (".scale_weight", ".weight_scale")
QUANT_MARKERS = (".comfy_quant",)
FP8_DTYPES = {"F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2"}
READ_CHUNK_BYTES = 8 << 20  # what a tensor that changes dtype is read in at a time
# Floating dtypes by their safetensors names (tensors of other dtypes are always kept as stored).
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
# Checkpoints that bundle several parts (ComfyUI's checkpoints/, e.g. Stability's sd3.5_medium.safetensors:
# the DiT under model.diffusion_model., the VAE under first_stage_model.): the part an input reads.
# Stable-Audio-Open's model.safetensors: the DiT under model.model., its VAE under pretransform.model., the
# seconds conditioners (the pipeline's projection model) under conditioner.conditioners.
BUNDLE_PREFIXES = {"diffusion_model": ("model.diffusion_model.", "model.model."),
                   "vae": ("first_stage_model.", "vae.", "pretransform.model."),
                   "projection_model": ("conditioner.conditioners.",)}


@dataclass(frozen=True)
class WeightsFile:
    """What the header of a .safetensors file says (no weights read)."""

    path: str
    tensors: dict = field(hash=False, compare=False)  # key without prefix -> (safetensors dtype, shape)
    metadata: dict = field(hash=False, compare=False)
    prefix: str = ""
    input_name: str = field(default="", compare=False)  # the loader input it was given on (for errors)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def scaled_fp8(self) -> bool:
        """ComfyUI's fp8_scaled layouts: FP8 weights with a `.scale_weight` (or `.weight_scale`) beside them."""
        return any(key.endswith(tuple(WEIGHT_SCALES)) or key == "scaled_fp8" for key in self.tensors)

    @property
    def weight_format(self) -> str:
        """bf16, fp16, fp32, fp8_e4m3fn, fp8_e5m2 or fp8_scaled: the dtype most weights are stored in."""
        if self.scaled_fp8:
            return "fp8_scaled"
        counts: dict[str, int] = {}
        for dtype, shape in self.tensors.values():
            if len(shape) >= 2:
                counts[dtype] = counts.get(dtype, 0) + 1
        stored = max(counts, key=counts.get) if counts else "F32"
        return FP8_DTYPES.get(stored, {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}.get(stored, stored.lower()))

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return tuple(entry[1]) if entry else None

    def has(self, *keys: str) -> bool:
        return all(key in self.tensors for key in keys)

    def count(self, prefix: str, suffix: str) -> int:
        """How many numbered children `prefix.N.suffix` exist (e.g. transformer blocks)."""
        numbers = set()
        for key in self.tensors:
            if key.startswith(prefix) and key.endswith(suffix):
                middle = key[len(prefix):len(key) - len(suffix)].strip(".")
                if middle.isdigit():
                    numbers.add(int(middle))
        return len(numbers)


def inspect_weights_file(path: str | Path, input_name: str) -> WeightsFile:
    """Read and check a single file's header; refuse pickles, truncated files and non-safetensors."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise OmniInputError(input_name, path.name, f"{path.suffix} files are Python pickles, which can run code "
                             "when loaded; this pack loads weights only from .safetensors",
                             "download the .safetensors release of this model (ComfyUI's templates link them)")
    if path.suffix.lower() != ".safetensors":
        raise OmniInputError(input_name, path.name, "not a .safetensors file",
                             "choose a .safetensors file (GGUF and other formats are not read by this pack)")
    try:
        checked = read_header(path)
    except HeaderError as exc:
        raise header_problem(input_name, path, exc) from None
    header = {name: (entry.dtype, entry.shape) for name, entry in checked.tensors.items()}
    metadata = checked.metadata
    prefix = _bundle_prefix(header, input_name) or _common_prefix(header)
    tensors = {key[len(prefix):]: entry for key, entry in header.items() if key.startswith(prefix)}
    _refuse_packed_weights(tensors, input_name, path)
    return WeightsFile(path=str(path), tensors=tensors, metadata=metadata, prefix=prefix, input_name=input_name)


def _refuse_packed_weights(tensors: dict, input_name: str, path: Path) -> None:
    """Weights stored as packed integers with block scales (ComfyUI's nvfp4 / mxfp8 / int8 quantized
    files) would load as garbage if cast: refuse them by name before anything is read."""
    for key, (dtype, shape) in tensors.items():
        if key.endswith(".weight") and len(shape) >= 2 and dtype in ("U8", "I8", "U4", "I4"):
            fmt = "nvfp4" if f"{key[:-len('.weight')]}.weight_scale_2" in tensors else f"{dtype} integer"
            raise OmniInputError(input_name, path.name, f"its weights are stored in a packed quantized format "
                                 f"({fmt}: {key} is {dtype}), which this pack does not read",
                                 "use the bf16, fp16, fp8_e4m3fn or fp8_scaled release of this file")


def header_problem(input_name: str, path: Path, error: HeaderError) -> OmniInputError:
    """The refusal of a file whose header breaks safetensors' rules, naming the file and the rule."""
    if error.truncated:
        return OmniInputError(input_name, path.name, f"the file is incomplete or not a safetensors file "
                              f"({error.why})", "download it again (an interrupted download leaves a file like this)")
    return OmniInputError(input_name, path.name, f"the file is not a valid safetensors file: {error.why}",
                          "download it again from the model's source (the file was damaged or written by a "
                          "broken tool)")


def _bundle_prefix(header: dict, input_name: str) -> str:
    """The prefix of this input's part when the file bundles parts (a DiT-only file gives the same
    prefix either way; a VAE-only file has none of these)."""
    for prefix in BUNDLE_PREFIXES.get(input_name, ()):
        if any(key.startswith(prefix) for key in header):
            return prefix
    return ""


def _common_prefix(header: dict) -> str:
    """The prefix (of KEY_PREFIXES) most keys carry, as ComfyUI decides it; "" when none does."""
    counts = {prefix: sum(key.startswith(prefix) for key in header) for prefix in KEY_PREFIXES}
    best = max(counts, key=counts.get)
    return best if counts[best] > len(header) // 2 else ""


def read_tensors(file: WeightsFile, dtype, *, fp8: StoredFP8 | None = None,
                 float32_keys: frozenset = frozenset()) -> dict:
    """The file's tensors under their prefix-free keys, as `dtype`.

    Scaled FP8 weights are multiplied by their scale (their `.scale_*` keys and the `scaled_fp8`
    marker are dropped), so no caller can forget the scale. Given `fp8` (stored_fp8.py), FP8 tensors,
    plain or scaled, stay as stored instead, and `fp8` keeps their scales. `float32_keys`
    (prefix-free) are read as float32 whatever `dtype` is (modules a class keeps in float32).

    Memory: a tensor kept as stored is a view of the memory-mapped file (nothing copied; its pages are
    the bytes the model keeps). A tensor that changes dtype is read with plain file reads, a few MiB at
    a time, and converted into its result: mapping it instead would leave its stored bytes resident
    beside the converted ones until the whole file is read (a bf16 file loaded in fp32 peaked at 1.5
    times the model).
    """
    from safetensors import safe_open

    layout = read_header(file.path)
    data_start = 8 + layout.header_length
    out, buffer = {}, bytearray()
    with safe_open(file.path, framework="pt", device="cpu") as handle, open(file.path, "rb") as raw:
        keys = [file.prefix + key for key in file.tensors]
        scales = {key[:-len(suffix)] + ".weight": handle.get_tensor(key)
                  for key in keys for suffix in WEIGHT_SCALES if key.endswith(suffix)}
        for full_key in keys:
            key = full_key[len(file.prefix):]
            if key == "scaled_fp8" or key.endswith(SCALE_SUFFIXES) or key.endswith(QUANT_MARKERS):
                continue
            entry = layout.tensors[full_key]
            stored = TORCH_DTYPES.get(entry.dtype)
            wanted = torch.float32 if key in float32_keys else dtype
            scale = scales.get(full_key)
            if scale is not None and scale.numel() not in (1, entry.shape[0] if entry.shape else 1):
                raise OmniInputError(file.input_name or "file", file.name, f"{key} is quantized with block scales "
                                     f"({tuple(scale.shape)}), a format this pack does not read",
                                     "use the bf16, fp16, fp8_e4m3fn or fp8_scaled release of this file")
            if stored is None or (fp8 is not None and stored in FP8) or (scale is None and stored == wanted):
                tensor = handle.get_tensor(full_key)  # kept as stored (integers too, e.g. tokenizer bytes)
                if fp8 is not None and is_fp8(tensor):
                    fp8.add(key, tensor, scale)
            else:
                tensor = _read_converted(raw, data_start + entry.begin, entry.shape, stored, wanted, scale, buffer)
            out[key] = tensor
    return out


def _read_converted(raw, offset: int, shape, stored, wanted, scale, buffer: bytearray):
    """One tensor read with plain file reads (not mapped) a few MiB of rows at a time into `buffer` (one
    per file, reused), each chunk converted into the result (times its scale, for scaled FP8) with the
    arithmetic the loader always used, `(values.float() * scale).to(wanted)`. One whole-tensor buffer per
    tensor instead would pile up: glibc keeps such freed buffers in its heap (its mmap threshold rises
    after the first is freed), measured as 1.5 times the model on a bf16 file read as float32."""
    out = torch.empty(tuple(shape), dtype=wanted)
    if not out.numel():
        return out
    rows = out.reshape(shape[0], -1) if len(shape) >= 2 else out.reshape(1, -1)
    per_row = rows.shape[1]
    step = max(1, READ_CHUNK_BYTES // (per_row * stored.itemsize))
    needed = min(step, rows.shape[0]) * per_row * stored.itemsize
    if len(buffer) < needed:
        buffer.extend(bytes(needed - len(buffer)))
    if scale is not None:  # one number, one per row, or (a vector's) one per value
        scale = scale.to(torch.float32)
        scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, 1) if len(shape) >= 2 \
            else scale.reshape(1, -1)
    raw.seek(offset)
    for first in range(0, rows.shape[0], step):
        count = min(step, rows.shape[0] - first)
        size = count * per_row * stored.itemsize
        raw.readinto(memoryview(buffer)[:size])
        values = torch.frombuffer(buffer, dtype=stored, count=count * per_row).reshape(count, per_row)
        if scale is None:
            rows[first:first + count].copy_(values)
        else:
            part = scale[first:first + count] if scale.dim() and len(shape) >= 2 else scale
            rows[first:first + count].copy_(values.to(torch.float32) * part)
    return out
