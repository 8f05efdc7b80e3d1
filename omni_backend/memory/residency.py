"""Where a module's weights live: a master copy off the execution device, real storage on it only when needed.

Both offload modes build on `ParameterSet`: the parameters of one unit that moves as a whole (a DiT
block for layerwise offload, a whole component for model offload).

- The master copy is the parameter's own tensor on the CPU, pinned when the execution device is a
  GPU (so host-to-device copies can be asynchronous). Nothing is ever copied back: inference never
  writes weights, so releasing a unit just drops its device copy (as vLLM-Omni's offloader does).
- A released parameter points at a placeholder: a one-element NaN tensor on the execution device,
  expanded to the parameter's shape. Shape, dtype and device stay right, so code that inspects a
  module between its turns (diffusers' `pipe.device`, peft wrapping a layer in a LoRA) sees the
  usual picture, while the storage is 1 element and any accidental compute on it gives NaN
  instead of a silently wrong number.
- On the CPU the execution device is the offload device. Materialising is then a zero-copy
  re-pointing to the master tensor, and released units still truly hold no storage of their
  own: the offload schedule is real and tests assert on it, at no cost.

We swap `param.data` rather than the Parameter objects: tied weights, peft's wrappers and anything
else holding a Parameter keep seeing the same object.
"""

from __future__ import annotations

import torch


def holds_storage(tensor: torch.Tensor) -> bool:
    """True when the tensor's storage can hold all of its elements (a placeholder's cannot)."""
    return tensor.untyped_storage().nbytes() >= tensor.numel() * tensor.element_size()


def resident_parameter_bytes(module: torch.nn.Module, device: torch.device | str | None = None) -> int:
    """Bytes of `module`'s parameters that hold real storage (on `device`, when given)."""
    device = torch.device(device) if device is not None else None
    total = 0
    for param in module.parameters():
        if holds_storage(param) and (device is None or param.device.type == device.type):
            total += param.numel() * param.element_size()
    return total


def _placeholder(param: torch.Tensor, device: torch.device, shared: dict) -> torch.Tensor:
    """A view of one shared NaN element per dtype, shaped like `param`."""
    if param.dtype not in shared:
        shared[param.dtype] = torch.full((1,), float("nan"), device=device).to(param.dtype)
    return shared[param.dtype].expand(param.shape)


def _master_copy(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    data = data.detach()
    if device.type == "cuda":
        # Pinned host memory is what lets the copy stream run while the compute stream works.
        return data.to("cpu").pin_memory()
    return data.to("cpu")


class ParameterSet:
    """The parameters of one unit (deduplicated: a tied weight moves once), resident or released."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device = torch.device(device)
        self.params = list(module.parameters())
        self.masters = [_master_copy(p.data, self.device) for p in self.params]
        shared: dict = {}
        self.placeholders = [_placeholder(p, self.device, shared) for p in self.params]
        self.copy_done = None  # CUDA event of an in-flight prefetch, waited for before first use
        # A unit starts out released; its owner materialises what it needs.
        for param, placeholder in zip(self.params, self.placeholders):
            param.data = placeholder
        self.resident = False

    @property
    def zero_copy(self) -> bool:
        return self.device.type == "cpu"

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masters)

    def materialise(self, stream=None) -> None:
        """Give every parameter real storage on the execution device (asynchronously on `stream`)."""
        if self.resident:
            return
        if self.zero_copy:
            for param, master in zip(self.params, self.masters):
                param.data = master
        elif stream is None:
            # Issued on the current stream, so it is ordered before the compute that needs it.
            for param, master in zip(self.params, self.masters):
                param.data = master.to(self.device, non_blocking=True)
        else:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                for param, master in zip(self.params, self.masters):
                    param.data = master.to(self.device, non_blocking=True)
                self.copy_done = torch.cuda.Event()
                self.copy_done.record(stream)
        self.resident = True

    def wait(self) -> None:
        """Make the compute stream wait for an in-flight prefetch of this unit."""
        if self.copy_done is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(self.copy_done)
        for param in self.params:
            # The copies were allocated on the copy stream; without this the allocator could hand
            # their memory to the next prefetch while the compute stream is still reading it.
            param.data.record_stream(current)
        self.copy_done = None

    def release(self) -> None:
        """Drop the device copy; parameters point at placeholders (no storage of their own)."""
        if not self.resident:
            return
        self.wait()
        for param, placeholder in zip(self.params, self.placeholders):
            param.data = placeholder
        self.resident = False

    def restore(self) -> None:
        """Undo: every parameter holds its master tensor again (on the CPU), as before offloading."""
        self.wait()
        for param, master in zip(self.params, self.masters):
            param.data = master
        self.resident = self.zero_copy
