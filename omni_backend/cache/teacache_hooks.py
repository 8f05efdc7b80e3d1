"""TeaCache as diffusers hooks on the transformer blocks.

Per step and per CFG branch, the head hook (first block of the first block list) asks the
family's extractor for the first block's modulated input, measures its relative L1 change since
the previous step, rescales it with the family's polynomial and accumulates it. Below the
threshold the whole stack is skipped: the first block of each block list returns its input plus
the residual that list added at the last computed step, and every other block passes its input
through. Otherwise every block runs and each list's residual is refreshed.

One state per cache context ("cond"/"uncond"), kept by diffusers' StateManager, so the two CFG
branches never share residuals. The skip decision goes through `agree`, the point where ranks
of a multi-process run reduce their statistics so that all of them decide the same thing
(a rank that skips while another computes would hang the next collective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.hooks.hooks import BaseState, CacheContext, ModelHook, StateManager

from ..blocks.hooks import add_hook, remove_hook

from ..blocks.block_io import make_output, stream_inputs_as_computed, stream_outputs

BLOCK_HOOK = "omni_teacache_block"
CONTEXT_HOOK = "omni_teacache_default_context"


@dataclass(frozen=True)
class TeaCacheSchedule:
    """Which step indices may reuse the cache."""

    steps: int
    start_fraction: float
    end_fraction: float
    compute_last_step: bool

    def may_skip(self, step: int) -> bool:
        if step == 0 or step >= self.steps:
            return False
        if self.compute_last_step and step == self.steps - 1:
            return False
        return self.start_fraction * self.steps <= step < self.end_fraction * self.steps


class TeaCacheState(BaseState):
    def __init__(self):
        self.reset()

    def reset(self):
        self.calls = 0
        self.previous_modulated: torch.Tensor | None = None
        self.accumulated = 0.0
        self.should_compute = True
        self.list_inputs: dict[int, tuple] = {}
        self.residuals: dict[int, tuple] = {}


def relative_l1_sums(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """[sum |current - previous|, sum |previous|] in float32: summable across ranks."""
    current, previous = current.float(), previous.float()
    return torch.stack([(current - previous).abs().sum(), previous.abs().sum()])


class TeaCacheBlockHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager: StateManager, list_index: int, first: bool, last: bool,
                 decider: "TeaCacheDecider | None" = None):
        super().__init__()
        self.state_manager = state_manager
        self.list_index = list_index
        self.first, self.last = first, last
        self.decider = decider

    def new_forward(self, module, *args, **kwargs):
        state: TeaCacheState = self.state_manager.get_state()
        hidden, encoder = stream_inputs_as_computed(module, args, kwargs)
        if self.decider is not None:
            branch = self.state_manager.context.name
            state.should_compute = self.decider.decide(state, branch, module, args, kwargs, hidden)
        if not state.should_compute:
            if not self.first:
                return make_output(module, hidden, encoder)
            hidden_residual, encoder_residual = state.residuals[self.list_index]
            if encoder is not None and encoder_residual is not None:
                encoder = encoder + encoder_residual
            return make_output(module, hidden + hidden_residual, encoder)
        if self.first:
            state.list_inputs[self.list_index] = (hidden, encoder)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            start_hidden, start_encoder = state.list_inputs.pop(self.list_index)
            out_hidden, out_encoder = stream_outputs(module, output)
            encoder_residual = None if out_encoder is None or start_encoder is None else out_encoder - start_encoder
            state.residuals[self.list_index] = (out_hidden - start_hidden, encoder_residual)
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class TeaCacheDecider:
    """The TeaCache rule, evaluated once per step and branch by the head block's hook.

    It also records which steps each branch computed: the pipeline resets hook state when it
    finishes (maybe_free_model_hooks), so the record cannot live in the state.
    """

    def __init__(self, extractor: Callable, coefficients: tuple[float, ...], threshold: float,
                 schedule: TeaCacheSchedule, agree: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.extractor = extractor
        self.polynomial = torch.tensor(coefficients, dtype=torch.float64)
        self.threshold = threshold
        self.schedule = schedule
        self.agree = agree or (lambda sums: sums)
        self.steps: dict[str, dict[str, list[int]]] = {}  # branch -> {"computed": [...], "skipped": [...]}
        self.closest: float | None = None  # the least accumulated change at a step that could have skipped

    def rescale(self, relative: float) -> float:
        value = 0.0
        for coefficient in self.polynomial.tolist():  # highest order first, like numpy.poly1d
            value = value * relative + coefficient
        return abs(value)

    def decide(self, state: TeaCacheState, branch: str, block, args, kwargs, hidden) -> bool:
        record = self.steps.setdefault(branch, {"computed": [], "skipped": []})
        step = state.calls
        state.calls += 1
        modulated = self.extractor(block, args, kwargs).detach()
        previous, state.previous_modulated = state.previous_modulated, modulated
        cached = state.residuals.get(0)
        can_reuse = (previous is not None and previous.shape == modulated.shape and cached is not None
                     and cached[0].shape == hidden.shape and self.schedule.may_skip(step))
        if can_reuse:
            difference, magnitude = self.agree(relative_l1_sums(modulated, previous)).tolist()
            state.accumulated += self.rescale(difference / (magnitude + 1e-8))
            self.closest = state.accumulated if self.closest is None else min(self.closest, state.accumulated)
            if state.accumulated < self.threshold:
                record["skipped"].append(step)
                return False
        state.accumulated = 0.0
        record["computed"].append(step)
        return True


class DefaultContextHook(ModelHook):
    """Z-Image and SD3 batch CFG into one call and never enter a cache context: give them one."""

    def __init__(self, state_manager: StateManager):
        super().__init__()
        self.state_manager = state_manager
        self._entered = False

    def pre_forward(self, module, *args, **kwargs):
        self._entered = self.state_manager._context is None
        if self._entered:
            self.state_manager.set_context(CacheContext("cond"))
        return args, kwargs

    def post_forward(self, module, output):
        if self._entered:
            self.state_manager.set_context(None)
        return output


def attach(transformer, block_lists, decider: TeaCacheDecider) -> StateManager:
    """Register the hooks; returns the state manager holding one state per CFG branch."""
    manager = StateManager(TeaCacheState)
    add_hook(transformer, DefaultContextHook(manager), CONTEXT_HOOK)
    for list_index, blocks in enumerate(block_lists):
        for position, block in enumerate(blocks):
            hook = TeaCacheBlockHook(manager, list_index, first=position == 0, last=position == len(blocks) - 1,
                                     decider=decider if list_index == 0 and position == 0 else None)
            add_hook(block, hook, BLOCK_HOOK)
    # diffusers caches which child modules carry hooks; cache_context() must now see ours.
    transformer._diffusers_hook.invalidate_child_registries_cache()
    return manager


def detach(transformer, block_lists) -> None:
    """Remove every hook `attach` added and leave the modules as they were."""
    for blocks in block_lists:
        for block in blocks:
            remove_hook(block, BLOCK_HOOK)
    remove_hook(transformer, CONTEXT_HOOK)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.invalidate_child_registries_cache()
