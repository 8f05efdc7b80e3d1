"""The bytes the host and its workers exchange: plain JSON plus raw tensors, never pickle.

A message is a value built from None, bool, int, float, str, list, tuple, dict, torch tensors and
the dataclasses named in `WIRE_TYPES`. It is written as

    b"OMW1" | 8-byte JSON length | JSON | safetensors bytes (the message's tensors, by name)

Decoding builds only those types: a dataclass is rebuilt by calling its class (so its own
validation runs) with the fields it declares, and any other tag is refused. Nothing in a message
can name a function to call, which is what makes pickle unfit for a socket.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..request import GenerationRequest
from ..run.conditioning import TextEmbedding
from ..run.runner import DecodeSettings, Generation
from ..run.sampling import RunReport
from ..single_file.model_files import ModelFiles
from ..spec import FEATURE_TYPES, ModelSpec

MAGIC = b"OMW1"

# The only classes a message can rebuild: what a spec, a request and a result are made of.
WIRE_TYPES = {cls.__name__: cls for cls in (
    ModelSpec, ModelFiles, *FEATURE_TYPES, GenerationRequest, TextEmbedding, DecodeSettings, Generation,
    RunReport)}


class WireError(ValueError):
    """A message that is not one we write: refused, never half-built."""


def encode(value) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(_to_json(value, tensors), separators=(",", ":")).encode()
    blob = save_tensors(tensors) if tensors else b""
    return MAGIC + len(text).to_bytes(8, "big") + text + blob


def decode(data: bytes):
    if data[:4] != MAGIC or len(data) < 12:
        raise WireError("not an Omni worker message")
    size = int.from_bytes(data[4:12], "big")
    if 12 + size > len(data):
        raise WireError("truncated message")
    try:
        tree = json.loads(data[12:12 + size])
        tensors = load_tensors(bytes(data[12 + size:])) if len(data) > 12 + size else {}
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same refusal
        raise WireError(f"malformed message: {exc}") from None
    return _from_json(tree, tensors)


def _to_json(value, tensors: dict):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else {"$": "float", "v": repr(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
        return {"$": "tensor", "v": name}
    if isinstance(value, list):
        return [_to_json(item, tensors) for item in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "v": [_to_json(item, tensors) for item in value]}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[_to_json(k, tensors), _to_json(v, tensors)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and WIRE_TYPES.get(type(value).__name__) is type(value):
        fields = {f.name: _to_json(getattr(value, f.name), tensors) for f in dataclasses.fields(value) if f.init}
        return {"$": "dataclass", "type": type(value).__name__, "v": fields}
    raise TypeError(f"{type(value).__name__} cannot cross to a worker process (not a wire type)")


def _from_json(tree, tensors: dict):
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_from_json(item, tensors) for item in tree]
    if not isinstance(tree, dict) or "$" not in tree:
        raise WireError("untagged object")
    tag, body = tree["$"], tree.get("v")
    if tag == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "tensor" and isinstance(body, str) and body in tensors:
        return tensors[body]
    if tag == "tuple" and isinstance(body, list):
        return tuple(_from_json(item, tensors) for item in body)
    if tag == "dict" and isinstance(body, list):
        pairs = [(_from_json(pair[0], tensors), _from_json(pair[1], tensors)) for pair in body
                 if isinstance(pair, list) and len(pair) == 2]
        if len(pairs) != len(body):
            raise WireError("malformed dict")
        return dict(pairs)
    if tag == "dataclass" and isinstance(body, dict):
        cls = WIRE_TYPES.get(tree.get("type"))
        if cls is None:
            raise WireError(f"{tree.get('type')!r} is not a type a worker message may hold")
        allowed = {f.name for f in dataclasses.fields(cls) if f.init}
        if not set(body) <= allowed:
            raise WireError(f"unknown fields for {cls.__name__}: {sorted(set(body) - allowed)}")
        return cls(**{name: _from_json(item, tensors) for name, item in body.items()})
    raise WireError(f"unknown tag {tag!r}")
