"""The model registry: every family we load, found by its pipeline class in model_index.json.

Adding a family is one module with a ModelFamily subclass, listed here.
"""

from __future__ import annotations

from .base import GuidanceStyle, ModelFamily
from .flux import Flux
from .flux2_klein import Flux2Klein
from .qwen_image import QwenImage
from .qwen_image_edit import QwenImageEdit, QwenImageEditPlus
from .sd3 import StableDiffusion3
from .wan import Wan
from .z_image import ZImage

FAMILIES: dict[str, ModelFamily] = {
    family.key: family for family in (QwenImage(), ZImage(), Flux(), Flux2Klein(), StableDiffusion3(), Wan(),
                                      QwenImageEdit(), QwenImageEditPlus())
}


def family(key: str) -> ModelFamily:
    try:
        return FAMILIES[key]
    except KeyError:
        raise KeyError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None


def family_for_pipeline(class_name: str) -> ModelFamily | None:
    for candidate in FAMILIES.values():
        if class_name in candidate.pipeline_classes:
            return candidate
    return None


__all__ = ["FAMILIES", "GuidanceStyle", "ModelFamily", "family", "family_for_pipeline"]
