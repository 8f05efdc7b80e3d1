"""LoraSpec: one LoRA file in the model's stack, with its strength and the component it acts on.

Chained Load LoRA nodes give `ModelSpec.loras` = (LoraSpec, ...). A LoraSpec is a runtime feature:
it never enters `weights_key()`, so adding, removing or re-weighting LoRAs never reloads the base
weights. Its `run_session` loads the file into the pipeline the first time (kept for later runs,
see adapters.py), switches it on with its strength for this run, and off again at the end.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import OmniInputError
from ..rules.compat import alternative, define_rule

# "auto": every part of the file, where diffusers puts it. "transformer_2": the file's denoiser
# part into Wan2.2 A14B's second (low-noise) expert. Others: only that part of the file acts.
COMPONENT_CHOICES = ("auto", "transformer", "transformer_2", "text_encoder", "text_encoder_2")


NO_LORA_LOADER = define_rule(
    "lora.loader", ("lora", "family"), "diffusers has no LoRA loader for the family's pipeline",
    first="Load Omni LoRA ({lora})", second="{family}", reason="diffusers has no LoRA loader for this pipeline",
    fix="remove the Load Omni LoRA node")
LORA_COMPONENT_MISSING = define_rule(
    "lora.component", ("lora", "family"), "a LoRA's component must be one the model loads LoRA layers into",
    first="Load Omni LoRA ({lora}, component={component})", second="{family}",
    reason="this model takes LoRA layers only in {available}", fix="set component to auto or one of those")


@dataclass(frozen=True)
class LoraSpec:
    path: str  # a .safetensors file (absolute; nodes resolve it inside models/loras)
    strength: float = 1.0  # multiplies the adapter's own alpha/rank scale; negative subtracts it
    component: str = "auto"

    def __post_init__(self):
        if self.component not in COMPONENT_CHOICES:
            raise OmniInputError("component", self.component, "unknown component",
                                 f"choose one of {', '.join(COMPONENT_CHOICES)}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not math.isfinite(self.strength):
            raise OmniInputError("strength", self.strength, "must be a finite number", "use e.g. 1.0, 0.5 or -0.5")
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "path", str(self.path))

    RULES = (NO_LORA_LOADER, LORA_COMPONENT_MISSING)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def problems(self, spec) -> list:
        available = lora_components(spec)
        if not available:
            return [NO_LORA_LOADER.problem(lora=self.name, family=spec.family.title,
                                           alternatives=[self._replaced(spec)])]
        if self.component != "auto" and self.component not in available:
            return [LORA_COMPONENT_MISSING.problem(
                lora=self.name, component=self.component, family=spec.family.title, available=", ".join(available),
                alternatives=[self._replaced(spec, replace(self, component=c)) for c in ("auto", *available)])]
        return []

    def _replaced(self, spec, by: "LoraSpec | None" = None):
        """The spec's LoRA stack with this LoRA replaced by `by` (None: removed), as a fix offers it."""
        stack = [by if lora is self else lora for lora in spec.loras]
        return alternative(loras=tuple(lora for lora in stack if lora is not None))

    @contextlib.contextmanager
    def run_session(self, ctx):
        from .adapters import PipelineAdapters

        adapters = PipelineAdapters.of(ctx)
        token, adapter = adapters.push(self, stack_size=len(ctx.spec.loras))
        try:
            ctx.report.add("LoRA", adapters.describe())
            for prefix, layers in adapter.ignored.items():
                ctx.report.notice(f"{adapter.file}: its {layers} {prefix} layers are not applied (diffusers loads "
                                  f"{ctx.family.title} LoRAs into {', '.join(adapter.components) or 'none'} only)")
            yield
        finally:
            adapters.pop(token)


def lora_components(spec) -> list[str]:
    """The components of this model that diffusers loads LoRA layers into (or, for a pipeline diffusers
    has no LoRA loader for, those the family names for peft: see peft_pipeline.py)."""
    folder = spec.model_folder
    pipeline_class = spec.family.pipeline_class(folder.pipeline_class)
    loadable = getattr(pipeline_class, "_lora_loadable_modules", None) or spec.family.peft_lora_components
    return [c for c in loadable if c in folder.components]
