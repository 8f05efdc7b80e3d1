"""The model registry: every family we load, found by its pipeline class in model_index.json.

A family is one folder here (`families/<name>/`): its class (`family.py`), ComfyUI's single-file layout
(`single_file.py`, where ComfyUI ships the model as files), its tiny builder, TeaCache extractor and
coefficients and parallel plans (hooks of the class). The folder's `__init__.py` lists its families in
`FAMILIES` and the registry finds the folder: adding a family changes no shared module. The modules
beside the folders (`base.py`, `flux_like.py`, `peft_lora.py`, `qwen_vl_processor.py`) are what two or
more families build on.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

from .base import GuidanceStyle, ModelFamily


def family_packages() -> list[str]:
    """The family folders' package names, in name order (the order families are listed in)."""
    return [f"{__name__}.{info.name}" for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
            if info.ispkg]


FAMILIES: dict[str, ModelFamily] = {
    family.key: family for package in family_packages()
    for family in importlib.import_module(package).FAMILIES
}


def single_file_profiles() -> tuple:
    """Every family folder's single-file layouts (its `single_file.py`'s PROFILES), in the families' order."""
    profiles = []
    for package in family_packages():
        if importlib.util.find_spec(f"{package}.single_file") is not None:
            profiles += importlib.import_module(f"{package}.single_file").PROFILES
    return tuple(profiles)


def most_specific(candidates: list, key=lambda candidate: candidate.key) -> list:
    """The candidates no other candidate refines (`refines`: the family keys its claims set apart)."""
    refined = {name for candidate in candidates for name in candidate.refines}
    return [candidate for candidate in candidates if key(candidate) not in refined]


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
    """The family of a pipeline class; where families share a class (Wan2.2 T2V and TI2V 5B are both
    WanPipeline), the one whose `claims(model_index, folder)` accepts the folder's configs, the most
    specific (`refines`) where several do."""
    candidates = [f for f in FAMILIES.values() if class_name in f.pipeline_classes]
    if len(candidates) > 1:
        claimed = most_specific([f for f in candidates if f.claims(model_index or {}, folder)])
        candidates = claimed or candidates
    return candidates[0] if candidates else None


__all__ = ["FAMILIES", "GuidanceStyle", "ModelFamily", "family", "family_for_pipeline", "family_packages",
           "most_specific", "option_groups", "single_file_profiles"]
