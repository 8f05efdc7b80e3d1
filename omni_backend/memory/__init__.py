"""Memory savers: CPU offload (model-level and layerwise) and FP8 weights, one idea per module.

config.py            MemoryConfig, the feature the Offload/FP8 node puts into a ModelSpec
apply.py             applying it to a loaded pipeline, and the record of what runs
residency.py         master copies, placeholders and real storage of a unit of parameters
(blocks/hooks.py      adding/removing our named diffusers hooks without a trace: shared with TeaCache)
model_offload.py     components take turns on the execution device
layerwise_offload.py a window of DiT blocks resident, the next one prefetched
auto_offload.py      offload = auto: the choice from free memory and model size
fp8.py               FP8Linear (e4m3 + per-channel scales), w8a8 via torch._scaled_mm
fp8_layers.py        which linears are quantized (attention/MLP only) and the swap
"""

from .config import FP8_CHOICES, OFFLOAD_CHOICES, MemoryConfig

__all__ = ["FP8_CHOICES", "OFFLOAD_CHOICES", "MemoryConfig"]
