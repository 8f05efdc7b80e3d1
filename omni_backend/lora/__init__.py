"""LoRA: stacked adapters with per-run strengths, loaded once per pipeline and switched without reloading.

config.py    LoraSpec (the feature held in ModelSpec.loras) and its compatibility rule
loader.py    file checks, key/shape matching against the pipeline, loading with diffusers + peft
adapters.py  the adapters loaded into one pipeline: which are on this run, bounded and evictable
precision.py adapter factors stay in the compute dtype on FP8 layers
"""

from .config import COMPONENT_CHOICES, LoraSpec, lora_components

__all__ = ["COMPONENT_CHOICES", "LoraSpec", "lora_components"]
