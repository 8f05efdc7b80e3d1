"""Reading, checking and loading LoRA files into a pipeline, with diffusers' loaders and peft.

Order of work, so that a bad file costs nothing and leaves nothing behind:
1. `check_lora_file`: the name ends in .safetensors and the file's header parses (safetensors'
   own reader; pickles are never opened, so a renamed .ckpt cannot run code).
2. `match_lora`: diffusers converts the file's keys for this pipeline (`pipe.lora_state_dict`,
   which knows the kohya/ComfyUI/musubi layouts of each family), and every LoRA layer is checked
   against the module it targets: the module exists, lora_A/lora_B fit its in/out features and
   share one rank. diffusers itself only warns about keys it cannot place (a FLUX LoRA "loads"
   into Qwen-Image's identically named double-stream layers), so this is where a wrong file
   becomes a clear error.
3. `load_adapter`: `pipe.load_lora_weights(..., adapter_name=...)` under the precision guard;
   on any failure the half-loaded adapter is deleted again, so the pipeline stays as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OmniError, OmniInputError
from .precision import adapters_in_compute_dtype, low_precision_factors

log = logging.getLogger("omni_diffusion")

INPUT = "lora_name"  # the Load LoRA input every file error names
SUFFIX = ".safetensors"
PIPELINE = "pipeline"  # load target: wherever diffusers puts each part of the file
SECOND_EXPERT = "transformer_2"  # load target: Wan2.2's low-noise expert (diffusers' load_into_transformer_2)


@dataclass(frozen=True)
class LoraFile:
    path: str  # resolved absolute path
    keys: tuple  # tensor names in the file's header, as stored

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass
class KeyMatch:
    """Where a file's LoRA layers go in one pipeline."""

    layers: dict = field(default_factory=dict)  # component -> number of adapted layers
    ignored: dict = field(default_factory=dict)  # key prefix -> layers diffusers does not load here


# ---- the file ------------------------------------------------------------------------------
def check_lora_file(path, shown_name: str | None = None) -> LoraFile:
    """The file is a readable safetensors file holding tensors; raises OmniInputError naming it."""
    from safetensors import safe_open

    path = Path(path)
    shown = shown_name or path.name
    if path.suffix.lower() != SUFFIX:
        raise OmniInputError(INPUT, shown, "is not a .safetensors file; pickled LoRA files (.ckpt, .pt, .bin) "
                             "can run code when opened and are never read",
                             "use the .safetensors release of this LoRA (or convert it once, in a sandbox)")
    if not path.is_file():
        raise OmniInputError(INPUT, shown, f"not found ({path})", "put the file under models/loras and refresh")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = tuple(handle.keys())
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise OmniInputError(INPUT, shown, f"is not a valid safetensors file ({_first_line(exc)})",
                             "re-download the file; a partial download or a renamed pickle looks like this") from exc
    if not keys:
        raise OmniInputError(INPUT, shown, "holds no tensors", "re-download the file")
    return LoraFile(path=str(path.resolve()), keys=keys)


def file_identity(path: str) -> tuple:
    """What makes two loads of a path the same adapter: the file's place, size and modification time."""
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def adapter_name_for(identity: tuple, into: str) -> str:
    """A peft adapter name from the file's content identity: a changed file gets a new name."""
    digest = hashlib.sha1(repr((identity, into)).encode()).hexdigest()[:12]
    stem = re.sub(r"\W+", "_", Path(identity[0]).stem).strip("_")[:40] or "lora"
    return f"omni_{stem}_{digest}"


# ---- matching the file against the pipeline ------------------------------------------------
_FACTOR = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up|"
                     r"lora_linear_layer\.down|lora_linear_layer\.up)\.(?P<kind>weight|bias)$")
_EXTRA = re.compile(r"^(?P<module>.+?)\.(alpha|lora_magnitude_vector|dora_scale|lokr_\w+)$")
_DOWN_PARTS = {"lora_A", "lora_down", "lora.down", "lora_linear_layer.down"}


def loadable_components(pipe) -> list[str]:
    return [name for name in getattr(type(pipe), "_lora_loadable_modules", [])
            if getattr(pipe, name, None) is not None]


def match_lora(pipe, family, lora: LoraFile, into: str = PIPELINE) -> KeyMatch:
    """Check every LoRA layer of the file against the pipeline's modules; raise naming what does not fit."""
    if into == SECOND_EXPERT and getattr(pipe, SECOND_EXPERT, None) is None:
        raise OmniInputError("component", SECOND_EXPERT, f"{family.title} has no second expert (transformer_2)",
                             "choose auto or transformer")
    state_dict = _converted_state_dict(pipe, family, lora)
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

    loadable = loadable_components(pipe)
    ignored, layers, missing, problems = Counter(), Counter(), [], []
    modules: dict[str, dict] = {}
    for (prefix, module), parts in groups.items():
        target = (SECOND_EXPERT if prefix == "transformer" else None) if into == SECOND_EXPERT else (
            prefix if prefix in loadable else None)
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

    where = f"{family.title}'s " + " / ".join(
        [SECOND_EXPERT] if into == SECOND_EXPERT else (loadable or ["transformer"]))
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


def _converted_state_dict(pipe, family, lora: LoraFile) -> dict:
    """The file's tensors in diffusers' naming for this pipeline (community layouts converted)."""
    try:
        with _quiet():
            out = pipe.lora_state_dict(lora.path, use_safetensors=True, return_lora_metadata=True)
    except OmniError:
        raise
    except Exception as exc:  # diffusers' converters raise ValueError/KeyError/... on foreign layouts
        raise OmniInputError(INPUT, lora.name, f"diffusers cannot read it as a {family.title} LoRA "
                             f"({_first_line(exc)}){family_hint(lora.keys, family)}",
                             f"pick a LoRA made for {family.title}") from exc
    return out[0] if isinstance(out, tuple) else out


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


# ---- loading into the pipeline -------------------------------------------------------------
def load_adapter(pipe, family, lora: LoraFile, adapter_name: str, into: str, compute_dtype) -> KeyMatch:
    """Check, then load the file as peft adapter `adapter_name`; on failure nothing is left behind."""
    from ..parallel.tensor_parallel import is_tensor_parallel, reduce_after_lora, shard_lora_factors

    match = match_lora(pipe, family, lora, into)
    models = [getattr(pipe, c) for c in loadable_components(pipe)]
    kwargs = {"load_into_transformer_2": True} if into == SECOND_EXPERT else {}
    sharded = any(is_tensor_parallel(model) for model in models)
    # On tensor-parallel ranks every layer holds a shard: cut the factors to match.
    source = shard_lora_factors(pipe, _converted_state_dict(pipe, family, lora)) if sharded else lora.path
    try:
        with adapters_in_compute_dtype(models, compute_dtype), _quiet():
            pipe.load_lora_weights(source, adapter_name=adapter_name, use_safetensors=True, **kwargs)
        if sharded:
            for model in models:
                reduce_after_lora(model)
        wrong = low_precision_factors(models, adapter_name)
        if wrong:  # the guard above failed: never run an adapter rounded to 8 bits
            raise RuntimeError(f"LoRA factors were created in low precision: {', '.join(wrong[:3])}")
    except BaseException as exc:
        remove_adapter(pipe, adapter_name)
        if isinstance(exc, Exception) and not isinstance(exc, OmniError):
            raise OmniInputError(INPUT, lora.name, f"diffusers could not load it into {family.title} "
                                 f"({_first_line(exc)})", "check that the LoRA was made for this model") from exc
        raise
    return match


def components_holding(pipe, adapter_name: str) -> tuple[str, ...]:
    return tuple(c for c in loadable_components(pipe)
                 if adapter_name in (getattr(getattr(pipe, c), "peft_config", None) or {}))


def remove_adapter(pipe, adapter_name: str) -> None:
    """Delete the adapter from every component; a component left with none gets its plain layers back."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for component in loadable_components(pipe):
        model = getattr(pipe, component)
        with _quiet():
            if adapter_name in (getattr(model, "peft_config", None) or {}) or _has_layers_of(model, adapter_name):
                if _is_diffusers_model(model):
                    model.delete_adapters([adapter_name])
                else:
                    delete_adapter_layers(model, adapter_name)
                    config = getattr(model, "peft_config", None)
                    if config is not None:
                        config.pop(adapter_name, None)
            if not getattr(model, "peft_config", None) and _has_tuner_layers(model):
                _remove_tuner_layers(model)


def _remove_tuner_layers(model) -> None:
    from diffusers.loaders.lora_base import _remove_text_encoder_monkey_patch

    if _is_diffusers_model(model):
        model.unload_lora()
    else:
        _remove_text_encoder_monkey_patch(model)


def _has_tuner_layers(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _has_layers_of(model, adapter_name: str) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and adapter_name in getattr(m, "lora_A", {}) for m in model.modules())


def _is_diffusers_model(model) -> bool:
    from diffusers import ModelMixin

    return isinstance(model, ModelMixin)


@contextlib.contextmanager
def _quiet():
    """peft warns on every multi-adapter load and delete ("multiple adapters", "setting active adapter to");
    here that is the intended use, and the active set is set explicitly right after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"peft(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(peft_config|active adapter|adapter).*")
        yield


def _examples(items, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
