"""The support matrix: family x feature (derived from the registry) and feature x feature (verdicts).

Feature x feature starts from vLLM-Omni's table ("Diffusion Advanced Features", "Feature
Compatibility"; a copy is in tests/reference/), where all but one pair were marked "not verified
yet". Each pair here is either
supported, naming the tests that run it on tiny models, or refused, naming the compat rule that
refuses it (so the reason shown is the one users get); "partly" is both, e.g. model offload runs
with a multi-device layout and layerwise offload is refused. docs/compatibility.md shows
`render_markdown()`; tests/structure/test_feature_matrix.py checks that the block there is current, that every
test named here exists and that every rule named here exists and is about that pair.

`python -m omni_backend.rules.feature_matrix` prints the block for docs/compatibility.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..families import FAMILIES
from ..lora.config import lora_components
from ..parallel.config import tensor_parallel_degrees, ulysses_degrees
from ..spec import ModelSpec, all_rules
from ..weights.model_folder import inspect_model_folder

# vLLM-Omni's table's columns, in its order.
FEATURES = {
    "teacache": "TeaCache",
    "cache_dit": "Cache-DiT",
    "sequence_parallel": "Seq Parallel",
    "tensor_parallel": "Tensor Parallel",
    "cfg_parallel": "CFG-Parallel",
    "lora": "LoRA",
    "offload": "CPU Offload",
    "fp8": "FP8",
    "vae_patch_parallel": "VAE Patch Parallel",
}
# Rules about "any multi-device layout" count against each parallel method.
PARALLEL_FEATURES = ("sequence_parallel", "tensor_parallel", "cfg_parallel", "vae_patch_parallel")


@dataclass(frozen=True)
class Verdict:
    status: str  # "supported" | "partly" | "refused"
    tested_by: tuple[str, ...] = ()  # pytest ids (path::name[param]) that run the pair on tiny models
    rule: str = ""  # the compat RuleDef id that refuses the pair (or its refused part)
    note: str = ""  # which part runs, when partly


def supported(*tests: str, note: str = "") -> Verdict:
    return Verdict("supported", tests, note=note)


def partly(rule: str, note: str, *tests: str) -> Verdict:
    return Verdict("partly", tests, rule, note)


def refused(rule: str) -> Verdict:
    return Verdict("refused", rule=rule)


_PAIRS = "tests/combinations/test_feature_pairs.py::"
UNDER_CACHES = _PAIRS + "test_lora_offload_and_fp8_under_each_cache"


def on_layout(layout: str) -> str:
    return f"{_PAIRS}test_feature_sets_on_a_parallel_layout_equal_one_process[{layout}]"


MODEL_OFFLOAD_ONLY = "model offload runs, layerwise offload does not"

LORA_COMBOS = "tests/lora/test_lora_combinations.py::"
MEMORY = "tests/memory/test_memory.py::"
FP8_OFFLOAD_ULYSSES = MEMORY + "test_fp8_and_model_offload_in_ulysses_worker_processes"
LAYERWISE_FP8_LORA = MEMORY + "test_lora_added_after_fp8_and_layerwise_offload_stays_high_precision"
CACHES_AGREE = "tests/parallel/test_parallel.py::test_caches_agree_across_sequence_parallel_ranks"
TP_WITH = "tests/parallel/test_tensor_parallel.py::test_tensor_parallel_combines_with_other_methods"

# (row, column) as in vLLM-Omni's lower triangle: the row's feature comes later in FEATURES.
PAIR_VERDICTS: dict[tuple[str, str], Verdict] = {
    ("cache_dit", "teacache"): refused("cache.one_method"),
    ("sequence_parallel", "teacache"): supported(CACHES_AGREE, on_layout("ulysses2-cfg2")),
    ("sequence_parallel", "cache_dit"): supported(CACHES_AGREE),
    ("tensor_parallel", "teacache"): supported(on_layout("tp2-vae2")),
    ("tensor_parallel", "cache_dit"): supported(on_layout("tp2-vae2")),
    ("tensor_parallel", "sequence_parallel"): supported(TP_WITH + "[tp2xulysses2]"),
    ("cfg_parallel", "teacache"): supported(on_layout("cfg2-vae2"), on_layout("ulysses2-cfg2")),
    ("cfg_parallel", "cache_dit"): supported(on_layout("cfg2-vae2")),
    ("cfg_parallel", "sequence_parallel"): supported(
        on_layout("ulysses2-cfg2"), "tests/nodes/test_workflows.py::test_workflow_runs_headless[wan2.2-ulysses2-cfg2.json]"),
    ("cfg_parallel", "tensor_parallel"): supported(TP_WITH + "[tp2xcfg2]"),
    ("lora", "teacache"): supported(LORA_COMBOS + "test_lora_with_teacache_runs_and_still_skips",
                                    UNDER_CACHES + "[teacache]"),
    ("lora", "cache_dit"): supported(UNDER_CACHES + "[cache_dit]"),
    ("lora", "sequence_parallel"): supported(LORA_COMBOS + "test_every_rank_applies_the_same_adapter[ulysses2]"),
    ("lora", "tensor_parallel"): supported(LORA_COMBOS + "test_every_rank_applies_the_same_adapter[tp2]",
                                           on_layout("tp2-vae2")),
    ("lora", "cfg_parallel"): supported(on_layout("cfg2-vae2")),
    ("offload", "teacache"): supported(UNDER_CACHES + "[teacache]"),
    ("offload", "cache_dit"): supported(UNDER_CACHES + "[cache_dit]"),
    ("offload", "sequence_parallel"): partly("memory.layerwise_offload_multi_device", MODEL_OFFLOAD_ONLY,
                                             FP8_OFFLOAD_ULYSSES),
    ("offload", "tensor_parallel"): partly("memory.layerwise_offload_multi_device", MODEL_OFFLOAD_ONLY,
                                           on_layout("tp2-vae2")),
    ("offload", "cfg_parallel"): partly("memory.layerwise_offload_multi_device", MODEL_OFFLOAD_ONLY,
                                        on_layout("cfg2-vae2")),
    ("offload", "lora"): supported(UNDER_CACHES + "[teacache]", LAYERWISE_FP8_LORA),
    ("fp8", "teacache"): supported(UNDER_CACHES + "[teacache]"),
    ("fp8", "cache_dit"): supported(UNDER_CACHES + "[cache_dit]"),
    ("fp8", "sequence_parallel"): supported(FP8_OFFLOAD_ULYSSES),
    ("fp8", "tensor_parallel"): refused("memory.fp8_tensor_parallel"),
    ("fp8", "cfg_parallel"): supported(on_layout("cfg2-vae2")),
    ("fp8", "lora"): supported(UNDER_CACHES + "[teacache]",
                               "tests/lora/test_lora.py::test_adapter_factors_stay_in_compute_dtype_on_float8_layers"),
    ("fp8", "offload"): supported(LAYERWISE_FP8_LORA, FP8_OFFLOAD_ULYSSES),
    ("vae_patch_parallel", "teacache"): supported(on_layout("cfg2-vae2"), on_layout("tp2-vae2")),
    ("vae_patch_parallel", "cache_dit"): supported(on_layout("cfg2-vae2")),
    ("vae_patch_parallel", "sequence_parallel"): supported(
        "tests/parallel/test_tensor_parallel.py::test_patch_parallel_decode_equals_one_device_tiled_decode"),
    ("vae_patch_parallel", "tensor_parallel"): supported(
        on_layout("tp2-vae2"), "tests/nodes/test_workflows.py::test_workflow_runs_headless[z-image-tp2-vae-patch2.json]"),
    ("vae_patch_parallel", "cfg_parallel"): supported(on_layout("cfg2-vae2")),
    ("vae_patch_parallel", "lora"): supported(on_layout("cfg2-vae2")),
    ("vae_patch_parallel", "offload"): partly("memory.layerwise_offload_multi_device", MODEL_OFFLOAD_ONLY,
                                              on_layout("cfg2-vae2")),
    ("vae_patch_parallel", "fp8"): supported(on_layout("cfg2-vae2")),
}


def verdict(first: str, second: str) -> Verdict:
    return PAIR_VERDICTS.get((first, second)) or PAIR_VERDICTS[(second, first)]


# ---- family x feature, from the registry ------------------------------------------------------
def family_support(family) -> dict[str, bool]:
    """What a family supports, read from its registry entry. Cache-DiT, offload, FP8 and VAE patch
    parallel work on any family's block lists, linears and VAE (each is tested on every family; VAE
    patches on every image/video family)."""
    pipeline = family.pipeline_class(family.pipeline_classes[0])  # with the LoRA loader a family mixes in
    return {
        "teacache": family.teacache_coefficients is not None,
        "cache_dit": True,
        "sequence_parallel": family.supports_sequence_parallel,
        "tensor_parallel": family.supports_tensor_parallel,
        "cfg_parallel": family.has_true_cfg({}),
        "lora": bool(getattr(pipeline, "_lora_loadable_modules", None) or family.peft_lora_components),
        "offload": True,
        "fp8": True,
        "vae_patch_parallel": not family.audio,  # a waveform latent has no height/width to split
    }


def model_support(info) -> dict[str, bool]:
    """What one model (an inspected folder) supports: its family's features, narrowed by its CFG (a
    distilled checkpoint runs no negative branch to split)."""
    support = family_support(info.family)
    return {**support, "cfg_parallel": support["cfg_parallel"] and info.family.has_true_cfg(info.model_index)}


# ---- markdown ---------------------------------------------------------------------------------
SYMBOLS = {"supported": "✅", "partly": "⚠️", "refused": "❌"}


def support_lines(folder: str) -> list[str]:
    """What one model folder supports, from its configs (shown under Load Omni Model): the family's
    features, narrowed by this model's heads, widths, CFG and LoRA components."""
    info = inspect_model_folder(folder)
    family, config = info.family, info.transformer_config
    spec = ModelSpec(folder=info.path, family_key=family.key, dtype="float32", device="cpu")
    supported, unsupported = [], []
    for key, ok in model_support(info).items():
        label = FEATURES[key]
        if key == "lora" and ok:
            label += f" ({', '.join(lora_components(spec))})"
        if key == "tensor_parallel" and ok:
            label += f" ({', '.join(str(d) for d in tensor_parallel_degrees(family, config)) or 'none'})"
        if key == "sequence_parallel" and ok:
            ulysses = [d for d in ulysses_degrees(family.attention_heads(config)) if d > 1]
            label += f" (ulysses {', '.join(str(d) for d in ulysses) or '-'}; ring any)"
        (supported if ok else unsupported).append(label)
    lines = [f"{family.title}: {', '.join(supported)}"]
    if unsupported:
        lines.append(f"not supported: {', '.join(unsupported)}")
    return lines


def render_markdown() -> str:
    rules = all_rules()
    keys = list(FEATURES)
    lines = ["| Family | " + " | ".join(FEATURES.values()) + " |", "|---|" + ":---:|" * len(keys)]
    for family in FAMILIES.values():
        support = family_support(family)
        lines.append(f"| {family.title} | " + " | ".join("✅" if support[k] else "❌" for k in keys) + " |")
    lines += ["", "|  | " + " | ".join(FEATURES[k] for k in keys[:-1]) + " |", "|---|" + ":---:|" * (len(keys) - 1)]
    for row_index, row in enumerate(keys[1:], start=1):
        cells = [SYMBOLS[verdict(row, column).status] for column in keys[:row_index]]
        lines.append(f"| **{FEATURES[row]}** | " + " | ".join(cells + [""] * (len(keys) - 1 - row_index)) + " |")
    lines += ["", "✅ runs together on tiny models (tests named below) · ⚠️ partly · ❌ refused by a rule, "
                  "with the reason below", ""]
    for row_index, row in enumerate(keys[1:], start=1):
        for column in keys[:row_index]:
            entry = verdict(row, column)
            parts = [entry.note] if entry.note else []
            if entry.tested_by:
                parts.append("tested by " + ", ".join(f"`{test}`" for test in entry.tested_by))
            if entry.rule:
                parts.append(f"refused by `{entry.rule}`: {rules[entry.rule].summary}")
            lines.append(f"- {FEATURES[row]} x {FEATURES[column]}: {SYMBOLS[entry.status]} " + "; ".join(parts))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
