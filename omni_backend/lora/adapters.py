"""The LoRA adapters loaded into one pipeline, and which of them the current run switches on.

Lives in `LoadedPipeline.state["lora"]`, so it goes when the pipeline goes. Adapters are loaded
once per file (named by the file's content identity, see `files.adapter_name_for`; a loaded file
is only stat'ed again, never reopened) and stay loaded, switched off, between runs. A run switches
on the ones its spec names with diffusers' pipeline-level `set_adapters(names, adapter_weights=
[{component: strength}, ...])`, once its whole stack is pushed, and ends with `disable_lora()`.
Disabled, peft's LoRA layers return `base_layer(x)` untouched, so a run without LoRA nodes, or
with every strength at 0, is bitwise the base model (tested). The number of loaded adapters is
bounded: beyond `OMNI_MAX_LOADED_LORAS` (default 8) the least recently used one that the run does
not need is deleted (`delete_adapters`), and a component left with none gets its plain layers back.

Every rank of a worker group builds the same spec and runs the same sessions, so all ranks load
and switch on the same adapters.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import OmniInputError
from . import files, loader
from .fusing import FusedRun

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
        from .peft_pipeline import lora_api

        self.source = pipe  # the loaded pipeline these adapters live in
        self.pipe = lora_api(pipe, family)  # its LoRA loader calls (diffusers', or peft's where it has none)
        self.family = family
        self.compute_dtype = compute_dtype
        self.max_loaded = max(1, int(max_loaded or os.environ.get("OMNI_MAX_LOADED_LORAS", "8")))
        self._loaded: OrderedDict[tuple, LoadedAdapter] = OrderedDict()  # (realpath, into) -> adapter, LRU order
        self._active: list[_Active] = []
        self._switched_on = False  # whether any LoRA layer may be active (then the run's end switches off)
        self._fused = FusedRun()  # layers whose adapters are added into the weights for this run
        self.fuse = os.environ.get("OMNI_FUSE_LORA", "1") != "0"  # 0: keep every adapter unfused (debugging)
        self.file_loads = 0  # adapter files read into the pipeline (tests and the benchmark count them)

    @classmethod
    def of(cls, ctx) -> "PipelineAdapters":
        from ..system.devices import torch_dtype

        adapters = ctx.state.get(STATE_KEY)
        if adapters is None or adapters.source is not ctx.pipe:
            adapters = ctx.state[STATE_KEY] = cls(ctx.pipe, ctx.family, torch_dtype(ctx.spec.dtype))
            ctx.state.setdefault("cleanups", []).append(adapters.release)  # run when the pipeline is evicted
        return adapters

    def release(self) -> None:
        """Drop the references to the pipeline and its adapters (the weights go with the pipeline)."""
        self._loaded.clear()
        self._active.clear()
        self.pipe = self.source = None

    # ---- per run -------------------------------------------------------------------------
    def push(self, lora, stack_size: int = 1) -> tuple[object, LoadedAdapter]:
        """Add `lora` to this run's stack; returns a token for `pop`. The adapters are switched on once,
        when the run's whole stack (`stack_size` entries) is in: one `set_adapters` per run, not per node."""
        adapter = self._acquire(lora)
        if lora.component not in ("auto", loader.SECOND_EXPERT) and lora.component not in adapter.components:
            raise OmniInputError("component", lora.component,
                                 f"{adapter.file} has no layers for {lora.component} (it adapts "
                                 f"{', '.join(adapter.components)})", "choose auto or one of those")
        token = object()
        self._active.append(_Active(token, lora, adapter))
        if len(self._active) >= stack_size:
            self.switch_on()
        return token, adapter

    def pop(self, token) -> None:
        """Take an entry off the stack. The run is over once one leaves: everything is switched off."""
        self._active = [a for a in self._active if a.token is not token]
        self.switch_off()

    def switch_on(self) -> None:
        """Make the pushed adapters, with their per-component strengths, the pipeline's active set.

        diffusers' `set_adapters` takes one weight per adapter and component; a component not named
        in an adapter's weights would get 1.0, so every component holding the adapter is named, with 0
        where the run's Load LoRA node did not choose it (adding 0 * its output leaves the floats
        unchanged). An adapter whose strengths are all 0 is left out, and with none left the LoRA
        layers are disabled: they then return the base layer's output untouched and cost nothing.
        """
        weights = self.weights_by_adapter()
        if not weights:
            self.switch_off()
            return
        self._fused.restore()  # a stack switched on twice in one run fuses from the original weights
        with loader.quiet():
            self.pipe.enable_lora()
            self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        self._switched_on = True
        if self.fuse and not self._weights_held_by_offload():
            components = {c for entry in self._active for c in entry.adapter.components}
            self._fused.fuse([getattr(self.pipe, c) for c in sorted(components)])

    def switch_off(self) -> None:
        self._fused.restore()
        if self._switched_on:
            with loader.quiet():
                self.pipe.disable_lora()
            self._switched_on = False

    @property
    def fused_layers(self) -> int:
        return self._fused.layers

    def _weights_held_by_offload(self) -> bool:
        # Offload keeps each weight's master copy apart from `param.data` (which may be a placeholder
        # between turns), so a fuse would not reach the weights that run: such layers stay unfused.
        from ..memory.apply import memory_state

        state = memory_state(self.pipe)
        return state is not None and state.offload not in (None, "none")

    def weights_by_adapter(self) -> dict[str, dict[str, float]]:
        """adapter name -> {component: strength} for the pushed entries; all-zero adapters left out."""
        weights: dict[str, dict[str, float]] = {}
        for entry in self._active:
            chosen = self._targets(entry)
            per_component = weights.setdefault(entry.adapter.name, dict.fromkeys(entry.adapter.components, 0.0))
            for component in chosen:
                # The same file twice adds up: LoRA is linear in its strength.
                per_component[component] += float(entry.lora.strength)
        return {name: w for name, w in weights.items() if any(value != 0.0 for value in w.values())}

    def describe(self) -> dict:
        entries = [{"file": a.adapter.file, "strength": float(a.lora.strength), "component": a.lora.component}
                   for a in self._active]
        text = ", ".join(f"{e['file']} x{e['strength']:g}"
                         + ("" if e["component"] == "auto" else f" ({e['component']})") for e in entries)
        if self._fused.layers:
            text += f" (fused into {self._fused.layers} layers for this run)"
        return {"text": text, "adapters": entries, "loaded_in_pipeline": len(self._loaded),
                "files_loaded": self.file_loads, "fused_layers": self._fused.layers}

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
        try:
            identity = files.file_identity(lora.path)  # a stat: a loaded file is not opened again
        except OSError:
            files.check_lora_file(lora.path)  # raises the error naming the file
            raise
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
        name = files.adapter_name_for(identity, into)
        lora_file = files.read_lora_file(lora.path)
        try:
            match = loader.load_adapter(self.pipe, self.family, lora_file, name, into, self.compute_dtype)
        finally:
            self._switched_on = True  # loading makes the new adapter active: switch off after the run
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
