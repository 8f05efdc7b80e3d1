"""Choosing the execution device and dtype, with a clear refusal where they cannot work."""

from __future__ import annotations

from ..errors import OmniInputError

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", "", None):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    known = available_devices()
    if device not in known:
        raise OmniInputError("device", device, f"this machine has only {', '.join(known)}",
                             "choose auto or one of those devices")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """Returns a torch dtype name ("float32", ...) that runs on `device`."""
    import torch

    if dtype not in DTYPE_CHOICES:
        raise OmniInputError("dtype", dtype, "unknown dtype", f"choose one of {', '.join(DTYPE_CHOICES)}")
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if device == "cpu" and dtype == "fp16":
        raise OmniInputError("dtype", dtype, "half precision has slow and incomplete kernels on the CPU",
                             "use fp32 (or bf16) on the CPU")
    if device.startswith("cuda") and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise OmniInputError("dtype", dtype, f"{device} does not support bfloat16", "use fp16 on this GPU")
    return _DTYPE_NAMES[dtype]


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
