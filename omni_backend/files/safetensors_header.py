"""The header of a .safetensors file, checked completely before anything else reads the file.

A .safetensors file is an 8-byte little-endian length N, N bytes of JSON, then the tensors' bytes.
safetensors' own reader checks the header only when a tensor is read (and then raises an error that
names no file), and a hand-read header trusted as it is crashes on the first entry that is not what
it should be. `read_header` applies safetensors' rules (its `Metadata::validate`) up front, so every
reader in this pack (ComfyUI single files, LoRA files) refuses a broken or hostile file with one
message, before a weight is read:

- the JSON is an object; `__metadata__`, if there, maps strings to strings;
- every other entry is an object with a `dtype` safetensors knows, a `shape` of non-negative
  integers and `data_offsets` [begin, end] of non-negative integers with end >= begin;
- end - begin is the dtype's size times the number of elements;
- the tensors' bytes follow each other with no gap or overlap from 0, and end exactly at the end of
  the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit for the JSON header
METADATA_KEY = "__metadata__"
# safetensors' Dtype names (safetensors 0.8) and their size in bits.
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
              "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


class HeaderError(ValueError):
    """Why a file is not a valid safetensors file (`truncated`: it looks like an unfinished download or
    another format altogether, rather than a damaged header)."""

    def __init__(self, why: str, truncated: bool = False):
        super().__init__(why)
        self.why = why
        self.truncated = truncated


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    size: int  # the file's size in bytes
    header_length: int
    tensors: dict  # name -> TensorEntry, in the file's order
    metadata: dict  # __metadata__ (str -> str), {} when absent


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and check the header of `path`; raises HeaderError (say which file in the caller's error)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise HeaderError(f"{size} bytes: too short to hold a header", truncated=True)
        (length,) = struct.unpack("<Q", head)
        if length > HEADER_LIMIT:
            raise HeaderError(f"its first 8 bytes give a header of {length} bytes, over safetensors' limit",
                              truncated=True)
        if 8 + length > size:
            raise HeaderError(f"{size} bytes: its header runs past the end of the file", truncated=True)
        raw = handle.read(length)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HeaderError("its header is not readable JSON", truncated=True) from None
    except HeaderError:
        raise
    if not isinstance(header, dict):
        raise HeaderError(f"its header is a JSON {_kind(header)}, not an object of tensors")
    metadata = header.pop(METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(f"its {METADATA_KEY} is not a mapping of text to text")
    tensors = {name: _entry(name, value) for name, value in header.items()}
    data_length = size - 8 - length
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            why = "overlaps another tensor" if entry.begin < position else f"leaves a gap at byte {position}"
            raise HeaderError(f"tensor {name!r} at bytes {entry.begin}..{entry.end} {why}")
        position = entry.end
    if position > data_length:
        raise HeaderError(f"{size} bytes: its tensors need {8 + length + position} bytes", truncated=True)
    if position < data_length:
        raise HeaderError(f"{data_length - position} bytes after its last tensor are not covered by the header")
    return SafetensorsHeader(size=size, header_length=length, tensors=tensors, metadata=metadata)


def _entry(name: str, value) -> TensorEntry:
    if not isinstance(value, dict):
        raise HeaderError(f"header entry {name!r} is a JSON {_kind(value)}, not a tensor description")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in value]
    if missing:
        raise HeaderError(f"header entry {name!r} has no {' or '.join(missing)}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise HeaderError(f"tensor {name!r} has an unknown dtype {dtype!r} (safetensors knows "
                          f"{', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_count(dim) for dim in shape):
        raise HeaderError(f"tensor {name!r} has shape {shape!r}, not a list of non-negative whole numbers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
        raise HeaderError(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] byte offsets "
                          "(non-negative whole numbers)")
    begin, end = offsets
    if end < begin:
        raise HeaderError(f"tensor {name!r} ends (byte {end}) before it begins (byte {begin})")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        raise HeaderError(f"tensor {name!r} ({dtype} {tuple(shape)}) needs {bits / 8:g} bytes but its "
                          f"data_offsets hold {end - begin}")
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _no_duplicates(pairs):
    keys = [key for key, _value in pairs]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise HeaderError(f"its header names {twice!r} twice")
    return dict(pairs)


def _kind(value) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null", dict: "object"}.get(
        type(value), "number")
