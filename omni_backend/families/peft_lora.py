"""A LoRA loader for pipelines diffusers ships without one (LongCat-Image, Ovis-Image).

Their pipelines have no LoRA loader mixin, but their transformers have diffusers' PeftAdapterMixin:
`load_lora_adapter` injects peft LoRA layers and loads the factors, and `set_adapters` /
`enable_lora` / `disable_lora` / `delete_adapters` switch them. diffusers' LoraBaseMixin drives those
for every component named in `_lora_loadable_modules`; the part each model's own mixin adds is the
reading and saving of files. `TransformerLoraLoaderMixin` adds that part for a pipeline whose only
LoRA target is its transformer, so these pipelines get exactly the loading, per-run strengths,
stacking and LRU eviction every other family gets (omni_backend/lora/), with peft doing the work.

Layouts read (the keys are renamed, the factors kept):
- diffusers: `transformer.<module>.lora_A.weight` (what `save_lora_weights` writes; adapter
  config in the file's metadata);
- peft without a prefix: `<module>.lora_A.weight` (`get_peft_model_state_dict` of the transformer);
- ComfyUI: `diffusion_model.<module>.lora_A.weight` (or lora_down/lora_up) with an optional
  `<module>.alpha`, folded into lora_A as alpha / rank (peft then runs it at scale 1).
Only safetensors files reach here (omni_backend.lora.files reads them); nothing is unpickled.
"""

from __future__ import annotations

from functools import lru_cache

PREFIX = "transformer"
_FOREIGN_PREFIXES = ("diffusion_model.", "model.diffusion_model.")


def diffusers_lora_keys(state_dict: dict) -> dict:
    """The file's tensors under diffusers' `transformer.` naming, ComfyUI alphas folded into lora_A."""
    renamed, alphas = {}, {}
    for key, value in state_dict.items():
        for foreign in _FOREIGN_PREFIXES:
            if key.startswith(foreign):
                key = key[len(foreign):]
                break
        if not key.startswith(f"{PREFIX}."):
            key = f"{PREFIX}.{key}"
        key = key.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")
        if key.endswith(".alpha"):
            alphas[key[:-len(".alpha")]] = float(value)
            continue
        renamed[key] = value
    for module, alpha in alphas.items():
        down = renamed.get(f"{module}.lora_A.weight")
        if down is not None:
            renamed[f"{module}.lora_A.weight"] = down * (alpha / down.shape[0])
    return renamed


@lru_cache(maxsize=None)
def _mixin():
    from diffusers.loaders.lora_base import LoraBaseMixin

    class TransformerLoraLoaderMixin(LoraBaseMixin):
        _lora_loadable_modules = [PREFIX]
        transformer_name = PREFIX

        @classmethod
        def lora_state_dict(cls, state_dict, return_lora_metadata: bool = False, **_ignored):
            if not isinstance(state_dict, dict):
                raise TypeError("this loader takes tensors already read from a safetensors file (a dict)")
            converted = diffusers_lora_keys(state_dict)
            return (converted, None) if return_lora_metadata else converted

        def load_lora_weights(self, state_dict, adapter_name=None, hotswap: bool = False, **kwargs):
            converted = self.lora_state_dict(state_dict)
            self.load_lora_into_transformer(converted, transformer=self.transformer, adapter_name=adapter_name,
                                            metadata=kwargs.get("metadata"), _pipeline=self, hotswap=hotswap)

        @classmethod
        def load_lora_into_transformer(cls, state_dict, transformer, adapter_name=None, _pipeline=None,
                                       low_cpu_mem_usage=False, hotswap: bool = False, metadata=None):
            transformer.load_lora_adapter(state_dict, network_alphas=None, adapter_name=adapter_name,
                                          metadata=metadata, _pipeline=_pipeline,
                                          low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap, prefix=PREFIX)

        @classmethod
        def save_lora_weights(cls, save_directory, transformer_lora_layers=None, is_main_process: bool = True,
                              weight_name: str | None = None, save_function=None, safe_serialization: bool = True,
                              transformer_lora_adapter_metadata: dict | None = None):
            if not transformer_lora_layers:
                raise ValueError("pass transformer_lora_layers")
            cls._save_lora_weights(save_directory=save_directory, lora_layers={PREFIX: transformer_lora_layers},
                                   lora_metadata={PREFIX: transformer_lora_adapter_metadata},
                                   is_main_process=is_main_process, weight_name=weight_name,
                                   save_function=save_function, safe_serialization=safe_serialization)

    return TransformerLoraLoaderMixin


@lru_cache(maxsize=None)
def with_lora_loader(pipeline_class):
    """`pipeline_class` with the transformer LoRA loader mixed in. It keeps the class's name (cache-dit
    finds its block adapter by the pipeline's class name) and is made once per class (the run guard and
    the pipeline cache compare classes)."""
    return type(pipeline_class.__name__, (_mixin(), pipeline_class),
                {"__module__": __name__, "__doc__": pipeline_class.__doc__})
