"""LoRA for pipelines that diffusers has no LoRA loader for (Stable Audio), done with peft directly.

The LoRA feature (adapters.py, loader.py) speaks to a pipeline through diffusers' LoRA loader calls:
`lora_state_dict`, `load_lora_into_transformer`, `set_adapters`, `enable_lora`/`disable_lora` and
`delete_adapters`. `PeftLoraPipeline` answers the same calls for the components the family names
(`ModelFamily.peft_lora_components`), with the functions diffusers' own mixins are made of: peft's
`inject_adapter_in_model` and `set_peft_model_state_dict`, and diffusers' `peft_utils` helpers that
switch, weight and delete adapters on every peft layer. So files, strengths, stacking, the
adapters kept loaded between runs and their eviction behave exactly as for the other families.

Files it reads: diffusers' layout (`transformer.<module>.lora_A/lora_B.weight`, the peft config in
the header, as `save_lora_weights` writes it), peft's own (`<module>.lora_A.weight`, or with
`base_model.model.`), and lora_down/lora_up with `.alpha` on the same module names. diffusers has no
converter from other trainers' layouts for this model (ComfyUI's names its layers differently), so
such files are refused by the key check with what their keys look like.
"""

from __future__ import annotations

import re

_PEFT_PREFIX = "base_model.model."
# First key parts of other parts or trainers' layouts (text encoders, ComfyUI, kohya), never module names.
_OTHER_LAYOUTS = ("text_encoder", "diffusion_model", "model", "lora_unet", "lora_te")
_KOHYA_PART = re.compile(r"\.(lora_down|lora_up)\.weight$")


def lora_api(pipe, family):
    """The pipeline itself where diffusers gives it a LoRA loader; else a peft stand-in for it."""
    if getattr(type(pipe), "_lora_loadable_modules", None) or not family.peft_lora_components:
        return pipe
    return PeftLoraPipeline(pipe, family.peft_lora_components)


class PeftLoraPipeline:
    """The pipeline, with diffusers' LoRA loader calls answered by peft on `components`."""

    lora_scale = 1.0

    def __init__(self, pipe, components: tuple[str, ...]):
        self._pipe = pipe
        self._lora_loadable_modules = [c for c in components if getattr(pipe, c, None) is not None]

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def _models(self):
        return [getattr(self._pipe, c) for c in self._lora_loadable_modules]

    # ---- reading ---------------------------------------------------------------------------------
    def lora_state_dict(self, state_dict: dict, return_lora_metadata: bool = False, return_alphas: bool = False):
        """The file's tensors as `<component>.<module>.lora_A/lora_B.weight`, its network alphas
        (`<component>.<module>.alpha` -> value, for lora_down/up files) and diffusers' metadata (passed on)."""
        component = self._lora_loadable_modules[0]
        converted, alphas = {}, {}
        for key, value in state_dict.items():
            name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
            head = name.split(".", 1)[0]
            if head not in self._lora_loadable_modules and not head.startswith(_OTHER_LAYOUTS):
                name = f"{component}.{name}"  # peft's own file: module names without a component
            # Other layouts keep their keys: the key check (matching.py) then says what they look like.
            if name.endswith(".alpha"):
                alphas[name] = float(value.item() if hasattr(value, "item") else value)
                continue
            name = _KOHYA_PART.sub(lambda m: ".lora_A.weight" if m[1] == "lora_down" else ".lora_B.weight", name)
            converted[name] = value
        out = (converted,)
        if return_alphas:
            out += (alphas or None,)
        if return_lora_metadata:
            out += (None,)  # the loader passes the file's own metadata (LoraFile.adapter_metadata)
        return out if len(out) > 1 else converted

    # ---- loading -----------------------------------------------------------------------------------
    def load_lora_into_transformer(self, state_dict, transformer, adapter_name, metadata=None, network_alphas=None,
                                   low_cpu_mem_usage=False, prefix: str = "transformer", **_ignored):
        """As diffusers' `load_lora_adapter`: a LoraConfig from the file's metadata (or from the factors'
        shapes and alphas), the adapter injected by peft, the file's factors set into it."""
        from diffusers.utils.peft_utils import _create_lora_config
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        component = next(c for c in self._lora_loadable_modules if getattr(self._pipe, c) is transformer)
        start = f"{component}."
        layers = {k[len(start):]: v for k, v in state_dict.items() if k.startswith(start)}
        if not layers:
            return
        if metadata is not None:
            metadata = {k[len(start):]: v for k, v in metadata.items() if k.startswith(start)} or None
        alphas = {k[len(start):]: v for k, v in (network_alphas or {}).items() if k.startswith(start)} or None
        ranks = {f"^{key}": value.shape[1] for key, value in layers.items() if "lora_B" in key and value.ndim > 1}
        # is_unet=True: diffusers then reads each `<module>.alpha` as that module's lora_alpha.
        config = _create_lora_config(layers, alphas, metadata, ranks, is_unet=True,
                                     model_state_dict=transformer.state_dict(), adapter_name=adapter_name)
        inject_adapter_in_model(config, transformer, adapter_name=adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
        result = set_peft_model_state_dict(transformer, layers, adapter_name=adapter_name,
                                           low_cpu_mem_usage=low_cpu_mem_usage)
        missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k and adapter_name in k]
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
        if missing or unexpected:
            raise ValueError(f"the adapter's factors do not fit its layers (missing {missing[:2]}, "
                             f"unexpected {unexpected[:2]})")

    # ---- switching ---------------------------------------------------------------------------------
    def set_adapters(self, adapter_names, adapter_weights=None):
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        adapter_weights = adapter_weights or [1.0] * len(adapter_names)
        for component, model in zip(self._lora_loadable_modules, self._models()):
            if not getattr(model, "peft_config", None):
                continue
            weights = [w.get(component, 0.0) if isinstance(w, dict) else w for w in adapter_weights]
            named = [(n, w) for n, w in zip(adapter_names, weights) if n in model.peft_config]
            if named:
                set_weights_and_activate_adapters(model, [n for n, _ in named], [w for _, w in named])

    def enable_lora(self):
        self._switch(True)

    def disable_lora(self):
        self._switch(False)

    def _switch(self, enabled: bool) -> None:
        from diffusers.utils.peft_utils import set_adapter_layers

        for model in self._models():
            if getattr(model, "peft_config", None):
                set_adapter_layers(model, enabled=enabled)

    def delete_adapters(self, adapter_names):
        """Delete the adapters; a component left with none gets its plain layers back (no peft wrapper)."""
        from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers

        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for model in self._models():
            config = getattr(model, "peft_config", None)
            if config is None:
                continue
            for name in names:
                if name in config:
                    delete_adapter_layers(model, name)
                    config.pop(name, None)
            if not config:
                recurse_remove_peft_layers(model)
                del model.peft_config
