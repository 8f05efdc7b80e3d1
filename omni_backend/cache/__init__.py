"""Cache acceleration: TeaCache (our hooks) and Cache-DiT (the cache-dit library).

`CACHE_BACKENDS` maps the vLLM-Omni names accepted by `Omni(cache_backend=...)` to a factory that
turns its `cache_config` dict (vLLM-Omni's keys) into our feature config.
"""

from __future__ import annotations

import dataclasses

from ..errors import OmniInputError
from .cachedit import CacheDiTConfig
from .teacache import TeaCacheConfig

# vLLM-Omni's cache_config keys that are named differently here.
_RENAMED = {"scm_steps_mask_policy": "scm_policy", "scm_steps_policy": "scm_mode"}


def _from_dict(config_class, options: dict):
    accepted = {f.name for f in dataclasses.fields(config_class)}
    values = {}
    for key, value in options.items():
        key = _RENAMED.get(key, key)
        if key not in accepted:
            raise OmniInputError("cache_config", key, f"not a {config_class.label} option",
                                 f"use one of {', '.join(sorted(accepted))}")
        values[key] = value
    if values.get("scm_policy", "") is None:
        values["scm_policy"] = "none"
    if isinstance(values.get("coefficients"), list):
        values["coefficients"] = tuple(values["coefficients"])
    return config_class(**values)


CACHE_BACKENDS = {
    "tea_cache": lambda options: _from_dict(TeaCacheConfig, options),
    "cache_dit": lambda options: _from_dict(CacheDiTConfig, options),
}

__all__ = ["CACHE_BACKENDS", "CacheDiTConfig", "TeaCacheConfig"]
