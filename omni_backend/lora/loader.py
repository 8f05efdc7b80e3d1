"""Loading a LoRA file into a pipeline as a named peft adapter, and deleting it again.

One load reads the file once and converts its keys once:
1. `files.read_lora_file`: one open of the safetensors file (tensors, stored names, diffusers'
   adapter metadata).
2. `convert_for_pipeline`: the pipeline's own `lora_state_dict`, given the tensors in memory,
   converts the community layouts it knows for its family (kohya, ComfyUI, musubi, ...) to
   diffusers' naming; nothing is read from disk there.
3. `matching.match_lora`: every layer is checked against the pipeline before anything is loaded.
4. `load_adapter`: the converted tensors go into each component with the pipeline's per-component
   loaders (`load_lora_into_transformer`, `load_lora_into_text_encoder`), under the precision
   guard; on any failure the half-loaded adapter is deleted again, so the pipeline stays as it was.

Why not `pipe.load_lora_weights(state_dict)`: it runs `lora_state_dict` again on what it is given
and, for an in-memory dict, has no file header, so diffusers' adapter metadata (lora_alpha, rank
patterns) and FLUX's separated `.alpha` values would be lost and the adapter scaled as alpha = rank.
Handing the converted tensors and that metadata to the per-component loaders is what
`load_lora_weights` itself does after its own read. Its family extras do not apply here: FLUX
Control's norm layers and widened inputs, and Wan I2V's padding of T2V LoRAs, concern variants
whose files `match_lora` refuses (non-LoRA weights, shape mismatches) and pipelines not served.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings

from ..errors import OmniError, OmniInputError
from ..system.process_lock import process_lock
from .files import INPUT, SUFFIX, LoraFile, check_lora_file, first_line  # noqa: F401 (nodes import these here)
from .matching import PIPELINE, SECOND_EXPERT, KeyMatch, family_hint, load_targets, loadable_components, match_lora
from .precision import adapters_in_compute_dtype, low_precision_factors

__all__ = ["PIPELINE", "SECOND_EXPERT", "SUFFIX", "check_lora_file", "components_holding", "load_adapter",
           "remove_adapter"]


def convert_for_pipeline(pipe, family, lora: LoraFile) -> tuple[dict, dict | None]:
    """The file's tensors in diffusers' naming for this pipeline, and FLUX-style network alphas (or None)."""
    wants_alphas = "return_alphas" in inspect.signature(pipe.lora_state_dict).parameters
    try:
        with quiet():
            out = pipe.lora_state_dict(dict(lora.tensors), return_lora_metadata=True,
                                       **({"return_alphas": True} if wants_alphas else {}))
    except Exception as exc:  # diffusers' converters raise ValueError/KeyError/... on foreign layouts
        raise OmniInputError(INPUT, lora.name, f"diffusers cannot read it as a {family.title} LoRA "
                             f"({first_line(exc)}){family_hint(lora.keys, family)}",
                             f"pick a LoRA made for {family.title}") from exc
    state_dict, alphas = (out[0], out[1]) if wants_alphas else (out[0], None)
    return state_dict, alphas or None


def load_adapter(pipe, family, lora: LoraFile, adapter_name: str, into: str, compute_dtype) -> KeyMatch:
    """Check, then load the read file as peft adapter `adapter_name`; on failure nothing is left behind."""
    from ..parallel.tensor_parallel import is_tensor_parallel, reduce_after_lora, shard_lora_factors

    state_dict, alphas = convert_for_pipeline(pipe, family, lora)
    match = match_lora(pipe, family, lora, state_dict, into)
    targets = load_targets(pipe, family, into)
    models = [getattr(pipe, c) for c in targets]
    sharded = any(is_tensor_parallel(model) for model in models)
    if sharded:  # on tensor-parallel ranks every layer holds a shard: cut the factors to match
        state_dict = shard_lora_factors({prefix: getattr(pipe, c) for c, prefix in targets.items()}, state_dict)
    try:
        # peft injects the adapter under its init_empty_weights, which patches torch.nn.Module for the
        # whole process while it lasts (process_lock.py): no other load or run meanwhile.
        with process_lock(), adapters_in_compute_dtype(models, compute_dtype), quiet():
            for component, prefix in targets.items():
                _load_into(pipe, component, prefix, state_dict, alphas, lora.adapter_metadata, adapter_name)
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
                                 f"({first_line(exc)})", "check that the LoRA was made for this model") from exc
        raise
    return match


def _load_into(pipe, component: str, prefix: str, state_dict: dict, alphas, metadata, adapter_name: str) -> None:
    """Load the `prefix` part of the converted file into `component` with the pipeline's own loader."""
    from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

    if not any(key.startswith(f"{prefix}.") for key in state_dict):
        return
    model = getattr(pipe, component)
    common = dict(adapter_name=adapter_name, metadata=metadata, _pipeline=pipe,
                  low_cpu_mem_usage=_LOW_CPU_MEM_USAGE_DEFAULT_LORA)
    if _is_diffusers_model(model):  # the denoisers: their loader reads the `transformer.` keys
        loader = pipe.load_lora_into_transformer
        if "network_alphas" in inspect.signature(loader).parameters:
            common["network_alphas"] = alphas
        loader(state_dict, transformer=model, **common)
    else:
        pipe.load_lora_into_text_encoder(state_dict, network_alphas=alphas, text_encoder=model, prefix=prefix,
                                         lora_scale=pipe.lora_scale, **common)


def components_holding(pipe, adapter_name: str) -> tuple[str, ...]:
    return tuple(c for c in loadable_components(pipe)
                 if adapter_name in (getattr(getattr(pipe, c), "peft_config", None) or {}))


def remove_adapter(pipe, adapter_name: str) -> None:
    """Delete the adapter from every component; a component left with none gets its plain layers back."""
    with process_lock(), quiet():  # swaps modules in place, as a load does: one at a time in the process
        pipe.delete_adapters([adapter_name])
        for component in loadable_components(pipe):
            model = getattr(pipe, component)
            config = getattr(model, "peft_config", None)
            if config is not None and not _is_diffusers_model(model):
                # diffusers deletes a text encoder's layers but leaves its peft_config entry.
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


def _is_diffusers_model(model) -> bool:
    from diffusers import ModelMixin

    return isinstance(model, ModelMixin)


@contextlib.contextmanager
def quiet():
    """peft warns on every multi-adapter load and delete ("multiple adapters", "setting active adapter to");
    here that is the intended use, and the active set is set explicitly before each run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"peft(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(peft_config|active adapter|adapter).*")
        yield
