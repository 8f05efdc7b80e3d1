"""MemoryConfig: the Offload/FP8 node's feature (see spec.py for the feature contract).

Everything here is weight-level: FP8 replaces layers and offload installs hooks once, when the
pipeline loads (`prepare_pipeline`), so every field that changes that work is in `weights_key()`
and a different choice loads its own pipeline; nothing leaks into a pipeline loaded without it.
The run session only reports what runs and puts the layerwise window back into its resting state
when a run ends early (an interrupt in the middle of a step).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from ..errors import OmniInputError
from ..rules.compat import alternative, define_rule, ways_out

OFFLOAD_CHOICES = ("none", "auto", "model", "layerwise")
FP8_CHOICES = ("off", "weight_only", "w8a8")
MAX_BLOCKS_ON_DEVICE = 64
MAX_BUDGET_GB = 1024


LAYERWISE_OFFLOAD_MULTI_DEVICE = define_rule(
    "memory.layerwise_offload_multi_device", ("offload", "parallel"),
    "layerwise offload streams one DiT's blocks through a single device; a multi-device layout splits "
    "each block across devices (model offload works)",
    first="Offload/FP8 (offload = layerwise)", second="Parallel Config ({devices} devices)",
    reason="layerwise offload streams one DiT's blocks through a single device, while a multi-GPU layout splits "
           "each block's work across devices (vLLM-Omni documents layerwise offload as single-card only)",
    fix="use offload = model (or none; auto never picks layerwise with several devices), or run on one device")
FP8_TENSOR_PARALLEL = define_rule(
    "memory.fp8_tensor_parallel", ("fp8", "tensor_parallel"),
    "tensor parallelism shards full-precision linears; FP8 replaces them with FP8 weights and scales the "
    "shards do not carry",
    first="Offload/FP8 (fp8 = {fp8})", second="Parallel Config (tensor_parallel = {degree})",
    reason="tensor parallelism shards each attention/MLP linear's full-precision weight across ranks, and FP8 "
           "replaces those same linears with FP8 weights and per-channel scales that its shards do not carry",
    fix="{instead}")  # FP8 off, or FP8 kept and a layout without tensor parallelism this model accepts


@dataclass(frozen=True)
class MemoryConfig:
    offload: str = "none"
    blocks_on_device: int = 2  # layerwise: DiT blocks resident at once, the running one included
    fp8: str = "off"
    fp8_text_encoder: bool = False
    device_budget_gb: float = 0.0  # layerwise/auto: choose the resident blocks within this (0 = blocks_on_device)

    def __post_init__(self):
        if self.offload not in OFFLOAD_CHOICES:
            raise OmniInputError("offload", self.offload, "unknown offload mode",
                                 f"choose one of {', '.join(OFFLOAD_CHOICES)}")
        if self.fp8 not in FP8_CHOICES:
            raise OmniInputError("fp8", self.fp8, "unknown FP8 mode", f"choose one of {', '.join(FP8_CHOICES)}")
        if isinstance(self.blocks_on_device, bool) or not isinstance(self.blocks_on_device, int) \
                or not 1 <= self.blocks_on_device <= MAX_BLOCKS_ON_DEVICE:
            raise OmniInputError("blocks_on_device", self.blocks_on_device,
                                 f"layerwise offload keeps between 1 and {MAX_BLOCKS_ON_DEVICE} blocks on the device",
                                 "use 2 (one block runs while the next one is copied in), or more for speed")
        budget = self.device_budget_gb
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget <= MAX_BUDGET_GB:
            raise OmniInputError("device_budget_gb", budget, f"a budget is a number of GB from 0 to {MAX_BUDGET_GB}",
                                 "use 0 (blocks_on_device decides), or about the GB of device memory the weights "
                                 "may take (for example 8 on a 12 GB card)")
        if budget > 0 and self.offload not in ("layerwise", "auto"):
            raise OmniInputError("device_budget_gb", budget, f"only layerwise and auto offload choose what stays on "
                                 f"the device from a budget (offload = {self.offload})",
                                 "set offload to layerwise or auto, or device_budget_gb to 0")
        if self.fp8_text_encoder and self.fp8 == "off":
            raise OmniInputError("fp8_text_encoder", self.fp8_text_encoder, "it quantizes the text encoder with the "
                                 "FP8 mode chosen in fp8, which is off", "set fp8 to weight_only (or w8a8), or turn "
                                 "fp8_text_encoder off")

    RULES = (LAYERWISE_OFFLOAD_MULTI_DEVICE, FP8_TENSOR_PARALLEL)

    def problems(self, spec) -> list:
        found = []
        if self.offload == "layerwise" and spec.world_size() > 1:
            found.append(LAYERWISE_OFFLOAD_MULTI_DEVICE.problem(devices=spec.world_size(), alternatives=[
                *(alternative(memory=dataclasses.replace(self, offload=mode)) for mode in ("model", "none", "auto")),
                alternative(parallel=None)]))
        degree = spec.parallel.tensor_parallel if spec.parallel is not None else 1
        if self.fp8 != "off" and degree > 1:
            fp8_off = ways_out(spec, FP8_TENSOR_PARALLEL, {"set fp8 = off with tensor parallelism": alternative(
                memory=dataclasses.replace(self, fp8="off", fp8_text_encoder=False))})
            layout, layouts = spec.parallel.instead(spec, FP8_TENSOR_PARALLEL, "tensor_parallel")
            found.append(FP8_TENSOR_PARALLEL.problem(fp8=self.fp8, degree=degree,
                                                     instead=", or ".join([*fp8_off, f"keep FP8 and {layout}"]),
                                                     alternatives=[*fp8_off.values(), *layouts.values()]))
        return found

    @property
    def is_noop(self) -> bool:
        return self.offload == "none" and self.fp8 == "off"

    @property
    def keeps_weights_off_device(self) -> bool:
        # With offload the master copies live on the CPU; with FP8 each layer goes to the device only
        # once quantized, so the full-precision model is never resident there (see memory/apply.py).
        return not self.is_noop

    def weights_key(self) -> tuple:
        window = None
        if self.offload in ("layerwise", "auto"):  # a budget decides the window in place of blocks_on_device
            window = ("budget", float(self.device_budget_gb)) if self.device_budget_gb else self.blocks_on_device
        return ("memory", self.offload, window, self.fp8, self.fp8_text_encoder)

    def describe(self) -> str:
        parts = [f"offload {self.offload}"]
        if self.device_budget_gb:
            parts.append(f"a {self.device_budget_gb:g} GB device budget")
        elif self.offload in ("layerwise", "auto"):
            parts.append(f"{self.blocks_on_device} blocks on device")
        parts.append(f"fp8 {self.fp8}" + (" (+ text encoder)" if self.fp8_text_encoder else ""))
        return ", ".join(parts)

    # ---- feature contract -----------------------------------------------------------------
    def prepare_pipeline(self, pipe, spec) -> None:
        from .apply import apply_memory

        apply_memory(pipe, spec, self)

    @contextlib.contextmanager
    def run_session(self, ctx):
        from .apply import memory_state

        state = memory_state(ctx.pipe)
        if state is None:  # pragma: no cover - the engine always prepares before it runs
            raise RuntimeError("Offload/FP8 was not applied to this pipeline")
        if not ctx.state.get("memory_cleanup_registered"):
            # Unloading the pipeline gives every parameter its storage back and removes our hooks.
            ctx.state.setdefault("cleanups", []).append(state.uninstall)
            ctx.state["memory_cleanup_registered"] = True
        ctx.report.add("memory", {"text": state.summary(), "offload": state.offload, "fp8": state.fp8_mode})
        for notice in state.notices:
            ctx.report.notice(notice)
        try:
            yield
        finally:
            for window in state.block_windows:
                window.settle()
