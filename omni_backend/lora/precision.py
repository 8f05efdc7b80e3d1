"""Adapter weights stay in the compute dtype, also on layers whose own weights are stored in FP8.

peft gives a new LoRA layer the device and dtype of the layer it wraps
(`BaseTunerLayer._move_adapter_to_device_of_base_layer`), unless that layer has a `compute_dtype`
attribute, which it then uses instead (bitsandbytes' 4-bit layers have one). The FP8 feature swaps
`nn.Linear` for an `nn.Linear` subclass holding float8 weights that it upcasts in `forward`; peft
wraps that subclass like any Linear, and without a `compute_dtype` its lora_A/lora_B would be
created in float8: the file's values rounded to 3 mantissa bits, and no float8 arithmetic on CPU
(torch raises "mul_cpu_reduced_float not implemented for Float8_e4m3fn").

So for the length of a load, every layer whose weight is stored in fewer than 16 bits and that has
no `compute_dtype` of its own is given one (the pipeline's dtype), and it is taken away again
afterwards; after the load we check that every factor of the new adapter is high precision.
"""

from __future__ import annotations

import contextlib

_ATTRIBUTE = "compute_dtype"


def _is_low_precision(dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize < 2


@contextlib.contextmanager
def adapters_in_compute_dtype(models, compute_dtype):
    """Within the block, peft creates LoRA factors in `compute_dtype` on low-precision layers."""
    marked = []
    try:
        for model in models:
            for module in model.modules():
                weight = getattr(module, "weight", None)
                if (weight is not None and hasattr(weight, "dtype") and _is_low_precision(weight.dtype)
                        and not hasattr(module, _ATTRIBUTE)):
                    setattr(module, _ATTRIBUTE, compute_dtype)
                    marked.append(module)
        yield
    finally:
        for module in marked:
            with contextlib.suppress(AttributeError):
                delattr(module, _ATTRIBUTE)


def low_precision_factors(models, adapter_name: str) -> list[str]:
    """Names of the adapter's parameters that are not in a >= 16-bit float dtype (should be none)."""
    found = []
    for model in models:
        for name, parameter in model.named_parameters():
            if f".{adapter_name}." in f".{name}." and "lora_" in name and _is_low_precision(parameter.dtype):
                found.append(f"{name} ({parameter.dtype})")
    return found
