"""Fit TeaCache coefficients for a model of a supported family (e.g. a user's fine-tune).

TeaCache's polynomial maps the relative L1 change of the first block's modulated input between
two steps to the relative L1 change of the model's output (its noise prediction) between them.
We measure both along real sampling runs and fit a degree-4 polynomial with np.polyfit, the
method of vLLM-Omni's coefficient estimator (its TeaCache `coefficient_estimator.py`). The result pastes
into Apply TeaCache's `coefficients` input (highest order first).

    omni-diffusion fit-teacache MODEL_FOLDER [--prompt ...] [--steps 25] [--seeds 2]

Recording uses plain torch hooks for the length of the runs (no caching happens) and removes them
afterwards, so the loaded model is left as it was.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OmniInputError

DEGREE = 4


@dataclass(frozen=True)
class TeaCacheFit:
    coefficients: tuple[float, ...]  # highest order first, like numpy.poly1d and Apply TeaCache
    input_changes: np.ndarray  # x: relative L1 change of the modulated input, one per step pair
    output_changes: np.ndarray  # y: relative L1 change of the model output for the same pair

    @property
    def r_squared(self) -> float:
        """How much of the output change the polynomial explains (1 = all of it)."""
        predicted = np.polyval(self.coefficients, self.input_changes)
        residual = float(((self.output_changes - predicted) ** 2).sum())
        total = float(((self.output_changes - self.output_changes.mean()) ** 2).sum())
        return 1.0 - residual / total if total > 0 else 1.0

    def text(self) -> str:
        return ", ".join(f"{c:.6g}" for c in self.coefficients)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous|, TeaCache's measure (in float64)."""
    current, previous = current.double(), previous.double()
    return float((current - previous).abs().mean() / (previous.abs().mean() + 1e-8))


def step_pairs(calls: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> tuple[list[float], list[float]]:
    """(x, y) from one run's transformer calls in order. A step makes the same number of calls
    (two for a family that runs its CFG branches as separate calls), so call i belongs to branch
    i % calls_per_step, and each branch's consecutive steps make one pair."""
    if steps < 2 or len(calls) % steps:
        raise ValueError(f"{len(calls)} transformer calls do not split into {steps} steps")
    per_step = len(calls) // steps
    xs, ys = [], []
    for branch in range(per_step):
        sequence = calls[branch::per_step]
        for (m_prev, out_prev), (m_now, out_now) in zip(sequence, sequence[1:]):
            xs.append(relative_l1(m_now, m_prev))
            ys.append(relative_l1(out_now, out_prev))
    return xs, ys


@contextlib.contextmanager
def recording_calls(family, transformer):
    """Collect (modulated input of the first block, transformer output) for every transformer call."""
    calls: list[list] = []
    first_block = family.block_lists(transformer)[0][1][0]

    def before_first_block(block, args, kwargs):
        calls.append([family.teacache_modulated_input(block, args, kwargs).detach().float().cpu(), None])

    def after_transformer(_module, _args, _kwargs, output):
        sample = output.sample if hasattr(output, "sample") else output[0]
        if isinstance(sample, (list, tuple)):  # Z-Image returns one tensor per batch item
            sample = torch.cat([item.flatten() for item in sample])
        calls[-1][1] = sample.detach().float().cpu()

    handles = [first_block.register_forward_pre_hook(before_first_block, with_kwargs=True),
               transformer.register_forward_hook(after_transformer, with_kwargs=True)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def fit_teacache(engine, spec, requests) -> TeaCacheFit:
    """Run each GenerationRequest on the plain `spec` (world size 1), recording, then fit."""
    from .teacache import TeaCacheConfig

    family = spec.family
    for problem in TeaCacheConfig().problems(spec):  # a family without an extractor
        raise problem.error()
    if spec.world_size() > 1 or spec.cache is not None:
        raise OmniInputError("model", spec.name, "fit on the plain model: no cache, one process",
                             "fit with Load Omni Model's output alone, then apply the coefficients anywhere")
    (_name, transformer), *_others = family.transformers(engine.loaded(spec).pipe)
    xs, ys = [], []
    for request in requests:
        with recording_calls(family, transformer) as calls:
            engine.generate(spec, request)
        x, y = step_pairs([tuple(call) for call in calls], request.steps)
        xs += x
        ys += y
    if len(xs) <= DEGREE:
        raise OmniInputError("steps", requests[0].steps if requests else 0,
                             f"{len(xs)} step pairs cannot fit a degree-{DEGREE} polynomial",
                             "use more steps, prompts or seeds")
    x, y = np.asarray(xs), np.asarray(ys)
    coefficients = tuple(float(c) for c in np.polyfit(x, y, DEGREE))
    return TeaCacheFit(coefficients, x, y)
