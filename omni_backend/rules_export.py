"""What the browser extension needs to check a graph, as JSON-able data generated from the backend.

The web extension holds no rules of its own (DESIGN.md): it receives this export from the
/omni_diffusion/rules route (nodes/rules_route.py) and evaluates it on the graph being edited.
Everything here is derived from the registry and the rule definitions:
- rules: every compat RuleDef (id, the pair it is about, summary, message templates);
- families: capabilities per family (feature_matrix.family_support) plus what the rules read;
- models: per model folder found in the configured folders, the config facts the rules read
  (block counts, attention heads, tensor-parallel widths, true CFG, LoRA components);
- machine: how many local ranks a Parallel Config can have here;
- matrix: the feature x feature verdicts; cache_dit_presets: what Apply Cache-DiT's presets set.
"""

from __future__ import annotations

import importlib
import logging

EXPORT_VERSION = 1
# The modules that define rules register them on import: import them all before exporting.
RULE_MODULES = ("omni_backend.compat", "omni_backend.cache.teacache", "omni_backend.cache.cachedit",
                "omni_backend.lora.config", "omni_backend.parallel.config")

log = logging.getLogger("omni_diffusion")


def load_rule_modules() -> None:
    for name in RULE_MODULES:
        importlib.import_module(name)


def export_rules(model_folders: dict[str, str] | None = None, machine: dict | None = None) -> dict:
    """model_folders: {name shown in Load Omni Model: folder path}; machine: override machine_facts()
    (the committed test snapshot uses a fixed one)."""
    from .cache.cachedit import PRESETS
    from .compat import RULE_DEFS
    from .feature_matrix import FEATURES, PAIR_VERDICTS, family_support
    from .families import FAMILIES

    load_rule_modules()
    return {
        "version": EXPORT_VERSION,
        "features": dict(FEATURES),
        "rules": [definition.export() for definition in RULE_DEFS.values()],
        "families": {key: {"title": family.title, "supports": family_support(family),
                           "teacache": family.teacache_coefficients is not None,
                           "sequence_parallel": family.supports_sequence_parallel,
                           "tensor_parallel": family.supports_tensor_parallel}
                     for key, family in FAMILIES.items()},
        "models": {name: model_facts(path) for name, path in sorted((model_folders or {}).items())},
        "machine": machine if machine is not None else machine_facts(),
        "matrix": [{"pair": list(pair), **entry.export()} for pair, entry in PAIR_VERDICTS.items()],
        "cache_dit_presets": {name: dict(values) for name, values in PRESETS.items()},
    }


def model_facts(folder: str) -> dict:
    """What the rules read from one model folder's configs (no weights). A folder that does not load
    gives {"error": message}: Load Omni Model reports it, the other rules cannot run on it."""
    from .errors import OmniError
    from .lora.config import lora_components
    from .model_folder import inspect_model_folder
    from .spec import ModelSpec

    try:
        info = inspect_model_folder(folder)
    except OmniError as exc:
        return {"error": str(exc)}
    family = info.family
    config = info.transformer_config
    spec = ModelSpec(folder=info.path, family_key=family.key, dtype="float32", device="cpu")
    return {
        "family": family.key,
        "block_counts": family.block_counts(config),
        "attention_heads": family.attention_heads(config),
        "tensor_parallel_widths": family.tensor_parallel_widths(config),
        "has_true_cfg": family.has_true_cfg(info.model_index),
        "lora_components": lora_components(spec),
    }


def machine_facts() -> dict:
    """Local ranks available to a Parallel Config (parallel/config.py's available_local_ranks)."""
    import torch

    from .parallel.config import MAX_CPU_RANKS

    return {"cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "max_cpu_ranks": MAX_CPU_RANKS}
