"""The LoRA adapters loaded into one pipeline, and which of them the current run switches on.

Lives in `LoadedPipeline.state["lora"]`, so it goes when the pipeline goes. Adapters are loaded
once per file (named by the file's content identity, see `loader.adapter_name_for`) and stay
loaded, switched off, between runs; a run switches on the ones its spec names with their strengths
(`set_adapters`) and switches everything off again when it ends. Switched off, peft's LoRA layers
return `base_layer(x)` untouched, so a run without LoRA nodes, or with every strength at 0, is
bitwise the base model (tested). The number of loaded adapters is bounded: beyond
`OMNI_MAX_LOADED_LORAS` (default 8) the least recently used one that the run does not need is
deleted (`delete_adapters`), and a component left with none gets its plain layers back.

Every rank of a worker group builds the same spec and runs the same sessions, so all ranks load
and switch on the same adapters.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import OmniInputError
from . import loader

log = logging.getLogger("omni_diffusion")
STATE_KEY = "lora"


@dataclass
class LoadedAdapter:
    name: str  # the peft adapter name
    file: str  # the file's name, for reports
    identity: tuple  # (realpath, size, mtime_ns)
    into: str  # loader.PIPELINE or loader.SECOND_EXPERT
    components: tuple  # components holding its layers
    ignored: dict = field(default_factory=dict)  # parts of the file diffusers does not load here


@dataclass
class _Active:
    token: object
    lora: object  # LoraSpec
    adapter: LoadedAdapter


class PipelineAdapters:
    def __init__(self, pipe, family, compute_dtype, max_loaded: int | None = None):
        self.pipe = pipe
        self.family = family
        self.compute_dtype = compute_dtype
        self.max_loaded = max(1, int(max_loaded or os.environ.get("OMNI_MAX_LOADED_LORAS", "8")))
        self._loaded: OrderedDict[tuple, LoadedAdapter] = OrderedDict()  # (realpath, into) -> adapter, LRU order
        self._active: list[_Active] = []
        self.file_loads = 0  # adapter files read into the pipeline (tests and the benchmark count them)
        self.load_seconds = 0.0

    @classmethod
    def of(cls, ctx) -> "PipelineAdapters":
        from ..devices import torch_dtype

        adapters = ctx.state.get(STATE_KEY)
        if adapters is None or adapters.pipe is not ctx.pipe:
            adapters = ctx.state[STATE_KEY] = cls(ctx.pipe, ctx.family, torch_dtype(ctx.spec.dtype))
            ctx.state.setdefault("cleanups", []).append(adapters.release)  # run when the pipeline is evicted
        return adapters

    def release(self) -> None:
        """Drop the references to the pipeline and its adapters (the weights go with the pipeline)."""
        self._loaded.clear()
        self._active.clear()
        self.pipe = None

    # ---- per run -------------------------------------------------------------------------
    def push(self, lora) -> tuple[object, LoadedAdapter]:
        """Switch `lora` on on top of the ones already pushed in this run; returns a token for `pop`."""
        try:
            adapter = self._acquire(lora)
            if lora.component not in ("auto", loader.SECOND_EXPERT) and lora.component not in adapter.components:
                raise OmniInputError("component", lora.component,
                                     f"{adapter.file} has no layers for {lora.component} (it adapts "
                                     f"{', '.join(adapter.components)})", "choose auto or one of those")
            token = object()
            self._active.append(_Active(token, lora, adapter))
        finally:
            self.apply()  # also after a failed load: the pipeline's switches always match `_active`
        return token, adapter

    def pop(self, token) -> None:
        self._active = [a for a in self._active if a.token is not token]
        self.apply()

    def apply(self) -> None:
        """Set every component's active adapters and strengths to what `_active` asks for."""
        from diffusers.loaders.lora_base import (disable_lora_for_text_encoder, enable_lora_for_text_encoder,
                                                 set_adapters_for_text_encoder)

        wanted: dict[str, dict[str, float]] = {}
        for entry in self._active:
            for component in self._targets(entry):
                weights = wanted.setdefault(component, {})
                # The same file twice adds up: LoRA is linear in its strength.
                weights[entry.adapter.name] = weights.get(entry.adapter.name, 0.0) + float(entry.lora.strength)
        for component in sorted({c for a in self._loaded.values() for c in a.components}):
            model = getattr(self.pipe, component, None)
            if model is None or not getattr(model, "peft_config", None):
                continue
            # Strength 0 switches the adapter off rather than scaling it by 0: the base output exactly.
            chosen = {name: weight for name, weight in wanted.get(component, {}).items() if weight != 0.0}
            with loader._quiet():
                if loader._is_diffusers_model(model):
                    if chosen:
                        model.enable_lora()
                        model.set_adapters(list(chosen), list(chosen.values()))
                    else:
                        model.disable_lora()
                elif chosen:
                    enable_lora_for_text_encoder(model)
                    set_adapters_for_text_encoder(list(chosen), model, list(chosen.values()))
                else:
                    disable_lora_for_text_encoder(model)

    def describe(self) -> dict:
        entries = [{"file": a.adapter.file, "strength": float(a.lora.strength), "component": a.lora.component}
                   for a in self._active]
        text = ", ".join(f"{e['file']} x{e['strength']:g}"
                         + ("" if e["component"] == "auto" else f" ({e['component']})") for e in entries)
        return {"text": text, "adapters": entries, "loaded_in_pipeline": len(self._loaded),
                "files_loaded": self.file_loads}

    # ---- loading and eviction ------------------------------------------------------------
    @property
    def loaded_names(self) -> list[str]:
        return [a.name for a in self._loaded.values()]

    def _targets(self, entry: _Active) -> tuple:
        component = entry.lora.component
        if component in ("auto", loader.SECOND_EXPERT):
            return entry.adapter.components
        return (component,)

    def _acquire(self, lora) -> LoadedAdapter:
        into = loader.SECOND_EXPERT if lora.component == loader.SECOND_EXPERT else loader.PIPELINE
        lora_file = loader.check_lora_file(lora.path)
        identity = loader.file_identity(lora_file.path)
        key = (identity[0], into)
        adapter = self._loaded.get(key)
        if adapter is not None and adapter.identity == identity:
            self._loaded.move_to_end(key)
            return adapter
        if adapter is not None:  # the file changed on disk since it was loaded: load it again
            if any(a.adapter is adapter for a in self._active):
                return adapter  # changed during this very run: the next run picks the new content up
            self._forget(key)
        self._make_room()
        name = loader.adapter_name_for(identity, into)
        start = time.perf_counter()
        match = loader.load_adapter(self.pipe, self.family, lora_file, name, into, self.compute_dtype)
        self.load_seconds += time.perf_counter() - start
        self.file_loads += 1
        adapter = LoadedAdapter(name=name, file=lora_file.name, identity=identity, into=into,
                                components=loader.components_holding(self.pipe, name), ignored=match.ignored)
        self._loaded[key] = adapter
        log.info("LoRA %s loaded as %s into %s", adapter.file, name, ", ".join(adapter.components))
        return adapter

    def _make_room(self) -> None:
        in_use = {id(a.adapter) for a in self._active}
        for key in list(self._loaded):
            if len(self._loaded) < self.max_loaded:
                return
            if id(self._loaded[key]) not in in_use:
                self._forget(key)

    def _forget(self, key) -> None:
        adapter = self._loaded.pop(key)
        loader.remove_adapter(self.pipe, adapter.name)
        log.info("LoRA %s unloaded", adapter.file)

    def unload_all(self) -> None:
        for key in list(self._loaded):
            if not any(a.adapter is self._loaded[key] for a in self._active):
                self._forget(key)
