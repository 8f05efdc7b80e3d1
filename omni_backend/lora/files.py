"""LoRA files on disk: checking a name, reading a file once, and what identifies its content.

Only safetensors files are opened (safetensors' own reader; pickles are never opened, so a renamed
.ckpt cannot run code). `read_lora_file` is the one place a load reads a file: a single open gives
the tensors, their names as stored, and diffusers' adapter metadata from the header (rank, alpha,
... of files saved with diffusers), so nothing later in the load goes back to the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OmniInputError
from ..files.safetensors_header import HeaderError, read_header

INPUT = "lora_name"  # the Load LoRA input every file error names
SUFFIX = ".safetensors"
# The header entry where diffusers' `save_lora_weights` stores each component's peft LoraConfig.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"


@dataclass(frozen=True)
class LoraFile:
    path: str  # resolved absolute path
    keys: tuple  # tensor names in the file's header, as stored
    tensors: dict = field(default_factory=dict, repr=False)  # name -> tensor (empty when only checked)
    adapter_metadata: dict | None = None  # diffusers' LoraConfig entries per component, if saved by diffusers

    @property
    def name(self) -> str:
        return Path(self.path).name


NO_TENSORS = "holds no tensors"  # the problem of a valid file with nothing in it (Load LoRA's list says so)


def check_lora_file(path, shown_name: str | None = None) -> LoraFile:
    """The file is a readable safetensors file holding tensors (header only); raises OmniInputError naming it."""
    return _open(path, shown_name, with_tensors=False)


def read_lora_file(path, shown_name: str | None = None) -> LoraFile:
    """Check the file and read all of it in one open: tensors, names and diffusers' adapter metadata."""
    return _open(path, shown_name, with_tensors=True)


def _open(path, shown_name: str | None, with_tensors: bool) -> LoraFile:
    from safetensors import safe_open

    path = Path(path)
    shown = shown_name or path.name
    if path.suffix.lower() != SUFFIX:
        raise OmniInputError(INPUT, shown, "is not a .safetensors file; pickled LoRA files (.ckpt, .pt, .bin) "
                             "can run code when opened and are never read",
                             "use the .safetensors release of this LoRA (or convert it once, in a sandbox)")
    if not path.is_file():
        raise OmniInputError(INPUT, shown, f"not found ({path})", "put the file under models/loras and refresh")
    try:
        read_header(path)  # safetensors' rules, checked before its reader trusts the header
    except HeaderError as exc:
        raise OmniInputError(INPUT, shown, f"is not a valid safetensors file ({exc.why})",
                             "re-download the file; a partial download or a renamed pickle looks like this") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = tuple(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in keys} if with_tensors else {}
            header = handle.metadata() or {}
        metadata = json.loads(header[ADAPTER_METADATA_KEY]) if header.get(ADAPTER_METADATA_KEY) else None
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise OmniInputError(INPUT, shown, f"is not a valid safetensors file ({first_line(exc)})",
                             "re-download the file; a partial download or a renamed pickle looks like this") from exc
    if not keys:
        raise OmniInputError(INPUT, shown, NO_TENSORS, "re-download the file")
    for key, tensor in tensors.items():  # NaN factors give black images without any error
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise OmniInputError(INPUT, shown, f"{key} holds NaN or infinite values", "re-download the file, or "
                                 "retrain the LoRA (a training run that diverged saves weights like these)")
    return LoraFile(path=str(path.resolve()), keys=keys, tensors=tensors, adapter_metadata=metadata)


def file_identity(path: str) -> tuple:
    """What makes two loads of a path the same adapter: the file's place, size and modification time."""
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def adapter_name_for(identity: tuple, into: str) -> str:
    """A peft adapter name from the file's content identity: a changed file gets a new name."""
    digest = hashlib.sha1(repr((identity, into)).encode()).hexdigest()[:12]
    stem = re.sub(r"\W+", "_", Path(identity[0]).stem).strip("_")[:40] or "lora"
    return f"omni_{stem}_{digest}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
