"""Where a LoRA's layers go in a pipeline, checked before anything is loaded.

Every LoRA layer of the converted file (diffusers' naming, see `loader.convert_for_pipeline`) is
checked against the module it targets: the module exists, lora_A/lora_B fit its in/out features and
share one rank. diffusers itself only warns about keys it cannot place (a FLUX LoRA "loads" into
Qwen-Image's identically named double-stream layers), so this is where a wrong file becomes a clear
error naming the file, the layer and what the file looks like instead.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..errors import OmniInputError
from .files import INPUT, LoraFile

PIPELINE = "pipeline"  # load target: wherever diffusers puts each part of the file
SECOND_EXPERT = "transformer_2"  # load target: Wan2.2's low-noise expert (diffusers' load_into_transformer_2)


@dataclass
class KeyMatch:
    """Where a file's LoRA layers go in one pipeline."""

    layers: dict = field(default_factory=dict)  # component -> number of adapted layers
    ignored: dict = field(default_factory=dict)  # key prefix -> layers diffusers does not load here


_FACTOR = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                     r"lora_linear_layer\.down|lora_linear_layer\.up)\.(?P<kind>weight|bias)$")
_EXTRA = re.compile(r"^(?P<module>.+?)\.(alpha|lora_magnitude_vector|dora_scale|lokr_\w+)$")
_DOWN_PARTS = {"lora_A", "lora_down", "lora.down", "lora_linear_layer.down"}


def loadable_components(pipe) -> list[str]:
    # Read from the instance: the peft stand-in (peft_pipeline.py) lists its components there.
    return [name for name in getattr(pipe, "_lora_loadable_modules", [])
            if getattr(pipe, name, None) is not None]


def load_targets(pipe, family, into: str = PIPELINE) -> dict[str, str]:
    """component -> the prefix of the file's keys that go into it. diffusers fills Wan2.2's second
    expert only when asked (`load_into_transformer_2`), and then from the file's `transformer` part."""
    if into == SECOND_EXPERT:
        if getattr(pipe, SECOND_EXPERT, None) is None:
            raise OmniInputError("component", SECOND_EXPERT, f"{family.title} has no second expert (transformer_2)",
                                 "choose auto or transformer")
        return {SECOND_EXPERT: "transformer"}
    return {c: c for c in loadable_components(pipe) if c != SECOND_EXPERT}


def match_lora(pipe, family, lora: LoraFile, state_dict: dict, into: str = PIPELINE) -> KeyMatch:
    """Check every LoRA layer of the converted `state_dict` against the pipeline's modules; raise naming
    what does not fit."""
    groups: dict[tuple[str, str], dict] = {}
    not_lora = []
    for key, value in state_dict.items():
        found = _FACTOR.match(key)
        if found is not None:
            prefix, _, module = found["module"].partition(".")
            part = "A" if found["part"] in _DOWN_PARTS else "B"
            if found["kind"] == "weight":
                groups.setdefault((prefix, module), {})[part] = tuple(value.shape)
            else:
                groups.setdefault((prefix, module), {})
        elif (extra := _EXTRA.match(key)) is not None:
            prefix, _, module = extra["module"].partition(".")
            groups.setdefault((prefix, module), {})
        else:
            not_lora.append(key)
    if not_lora:
        raise OmniInputError(INPUT, lora.name, f"holds {len(not_lora)} weights that are not LoRA factors "
                             f"(e.g. {_examples(not_lora)}); full weights and control-LoRA norm layers would "
                             "change the base model itself", "use a plain LoRA (lora_A/lora_B or lora_down/lora_up)")

    targets = load_targets(pipe, family, into)
    component_for_prefix = {prefix: component for component, prefix in targets.items()}
    ignored, layers, missing, problems = Counter(), Counter(), [], []
    modules: dict[str, dict] = {}
    for (prefix, module), parts in groups.items():
        target = component_for_prefix.get(prefix)
        if target is None:
            ignored[prefix] += 1
            continue
        model = getattr(pipe, target)
        if target not in modules:
            modules[target] = dict(model.named_modules())
        layer = _find_layer(model, modules[target], module)
        if layer is None:
            missing.append(f"{target}.{module}")
            continue
        problem = _shape_problem(f"{target}.{module}", layer, parts)
        if problem:
            problems.append(problem)
            continue
        layers[target] += 1

    where = f"{family.title}'s " + " / ".join(targets or ["transformer"])
    if not layers:
        raise OmniInputError(INPUT, lora.name, f"has no keys for {where}{family_hint(lora.keys, family)}",
                             f"pick a LoRA made for {family.title}")
    if missing:
        raise OmniInputError(INPUT, lora.name, f"{len(missing)} of its {len(groups)} layers are not in {where} "
                             f"(e.g. {_examples(missing)}){family_hint(lora.keys, family)}",
                             f"use a LoRA made for this {family.title} model (same family and size)")
    if problems:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise OmniInputError(INPUT, lora.name, problems[0] + more,
                             f"use a LoRA made for this {family.title} model; one for a larger or smaller "
                             "variant does not fit")
    return KeyMatch(layers=dict(layers), ignored=dict(ignored))


def _find_layer(model, modules: dict, path: str):
    layer = modules.get(path)
    if layer is None and path.startswith("text_model.") and not hasattr(model, "text_model"):
        layer = modules.get(path[len("text_model."):])  # as diffusers' text-encoder loader strips it
    if layer is not None and hasattr(layer, "get_base_layer"):
        layer = layer.get_base_layer()  # already wrapped by peft for another adapter
    return layer


def _shape_problem(where: str, layer, parts: dict) -> str | None:
    a, b = parts.get("A"), parts.get("B")
    if a is None and b is None:
        return None  # LoKr / DoRA-only entries: peft checks those itself
    if a is None or b is None:
        return f"{where} has lora_{'B' if a is None else 'A'} but no lora_{'A' if a is None else 'B'}"
    if len(a) < 2 or len(b) < 2:
        return f"{where}: lora_A {list(a)} and lora_B {list(b)} are not matrices"
    if a[0] != b[1]:
        return f"rank mismatch at {where}: lora_A {list(a)} has rank {a[0]} but lora_B {list(b)} has rank {b[1]}"
    # A tensor-parallel shard is checked against the whole layer it was cut from.
    inputs = getattr(layer, "full_in_features", None) or getattr(layer, "in_features", None) \
        or getattr(layer, "in_channels", None)
    outputs = getattr(layer, "full_out_features", None) or getattr(layer, "out_features", None) \
        or getattr(layer, "out_channels", None)
    if (inputs is not None and a[1] != inputs) or (outputs is not None and b[0] != outputs):
        return (f"shape mismatch at {where}: the model's layer maps {inputs} -> {outputs} features, the LoRA's "
                f"lora_A {list(a)} / lora_B {list(b)} map {a[1]} -> {b[0]}")
    return None


# Substrings (with "_" read as ".") that give away which model a LoRA was made for: (label, family key, needles).
_FAMILY_HINTS = (
    ("an SD1.x/SDXL (UNet)", None, ("down.blocks", "up.blocks", "input.blocks", "output.blocks", "mid.block")),
    ("a FLUX.2", "flux2-klein", ("to.qkv.mlp.proj", "double.stream.modulation", "single.stream.modulation")),
    ("a FLUX.1", "flux", ("double.blocks", "single.blocks", "single.transformer.blocks")),
    ("a Qwen-Image", "qwen-image", ("img.mlp", "txt.mlp", "img.mod", "txt.mod")),
    ("a Z-Image", "z-image", ("noise.refiner", "context.refiner", "feed.forward.w1")),
    ("a Wan", "wan2.2", ("attn1", "ffn.", "cross.attn")),
    ("an SD3", "sd3", ("joint.blocks", "context.block", "x.block")),
)


def family_hint(keys, family) -> str:
    """' (it looks like a FLUX.1 LoRA: keys like ...)' or ' (keys like ...)', for an error message."""
    keys = list(keys)
    normal = [k.replace("_", ".") for k in keys]
    for label, key, needles in _FAMILY_HINTS:
        telling = [raw for raw, k in zip(keys, normal) if any(n in k for n in needles)]
        if telling:
            if key == family.key:
                break  # its own family: then it is a question of variant or size, not of family
            return f" (it looks like {label} LoRA: keys like {_examples(telling, 2)})"
    return f" (keys like {_examples(keys, 2)})"


def _examples(items, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")
