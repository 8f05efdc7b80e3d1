"""The model registry: every family we load, found by its pipeline class in model_index.json.

Adding a family is one module with a ModelFamily subclass, listed here.
"""

from __future__ import annotations

from .base import GuidanceStyle, ModelFamily
from .flux import Flux
from .flux2_klein import Flux2Klein
from .glm_image import GlmImage
from .longcat_image import LongCatImage, LongCatImageEdit
from .ovis_image import OvisImage
from .qwen_image import QwenImage
from .qwen_image_edit import QwenImageEdit, QwenImageEdit2511, QwenImageEditPlus
from .qwen_image_layered import QwenImageLayered
from .sd3 import StableDiffusion3
from .stable_audio import StableAudio
from .wan import Wan
from .wan_image import WanI2V, WanTI2V
from .z_image import ZImage

FAMILIES: dict[str, ModelFamily] = {
    family.key: family for family in (QwenImage(), ZImage(), Flux(), Flux2Klein(), StableDiffusion3(), Wan(),
                                      QwenImageEdit(), QwenImageEditPlus(), QwenImageEdit2511(), WanI2V(), WanTI2V(), StableAudio(),
                                      LongCatImage(), LongCatImageEdit(), OvisImage(), GlmImage(),
                                      QwenImageLayered())
}


def option_groups() -> list:
    """Every option group some family takes (options.py), once each, in the families' order."""
    groups = {group.key: group for entry in FAMILIES.values() for group in entry.option_groups}
    return list(groups.values())


def family(key: str) -> ModelFamily:
    try:
        return FAMILIES[key]
    except KeyError:
        raise KeyError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None


def family_for_pipeline(class_name: str, model_index: dict | None = None, folder=None) -> ModelFamily | None:
    """The family of a pipeline class; where two families share a class (Wan2.2 T2V and TI2V 5B are
    both WanPipeline, Qwen-Image-Edit-2509 and -2511 QwenImageEditPlusPipeline), the one whose
    `claims(model_index, folder)` accepts the folder's configs."""
    candidates = [f for f in FAMILIES.values() if class_name in f.pipeline_classes]
    if len(candidates) > 1:
        claimed = [f for f in candidates if f.claims(model_index or {}, folder)]
        candidates = claimed or candidates
    return candidates[0] if candidates else None


__all__ = ["FAMILIES", "GuidanceStyle", "ModelFamily", "family", "family_for_pipeline", "option_groups"]
