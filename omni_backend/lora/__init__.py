"""LoRA: stacked adapters with per-run strengths, loaded once per pipeline and switched without reloading.

config.py    LoraSpec (the feature held in ModelSpec.loras) and its compatibility rule
files.py     file checks, the one read of a file per load, content identity
matching.py  key/shape matching of a converted file against the pipeline, clear errors
loader.py    key conversion (once) and loading/deleting an adapter with diffusers' loaders + peft
adapters.py  the adapters loaded into one pipeline: which are on this run (diffusers' set_adapters),
             bounded and evictable
precision.py adapter factors stay in the compute dtype on FP8 layers
"""

from .config import COMPONENT_CHOICES, LoraSpec, lora_components

__all__ = ["COMPONENT_CHOICES", "LoraSpec", "lora_components"]
