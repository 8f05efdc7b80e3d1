"""Compatibility rules between features, and between features and model families.

One source of truth: nodes, the CLI validator and the browser extension all ask this module.
A rule looks at a whole spec and returns the problems it finds; each problem names both sides,
the reason and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import OmniIncompatibleError


@dataclass(frozen=True)
class Problem:
    first: str
    second: str
    reason: str
    fix: str

    def error(self) -> OmniIncompatibleError:
        return OmniIncompatibleError(self.first, self.second, self.reason, self.fix)


Rule = Callable[["ModelSpec"], list]  # noqa: F821 - ModelSpec imported lazily to avoid a cycle
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def check_spec(spec) -> list[Problem]:
    problems: list[Problem] = []
    for check in RULES:
        problems.extend(check(spec))
    return problems


def validate_spec(spec):
    problems = check_spec(spec)
    if problems:
        raise problems[0].error()
    return spec


# ---- memory (Offload/FP8) ----------------------------------------------------------------------
@rule
def layerwise_offload_needs_one_device(spec) -> list[Problem]:
    memory = spec.memory
    if memory is None or memory.offload != "layerwise" or spec.world_size() <= 1:
        return []
    return [Problem(
        "Offload/FP8 (offload = layerwise)", f"Parallel Config ({spec.world_size()} devices)",
        "layerwise offload streams one DiT's blocks through a single device, while a multi-GPU layout splits "
        "each block's work across devices (vLLM-Omni documents layerwise offload as single-card only)",
        "use offload = model (or none; auto never picks layerwise with several devices), or run on one device")]


@rule
def cache_fits_family(spec) -> list[Problem]:
    """TeaCache needs a per-family extractor; Cache-DiT needs blocks left over after Fn + Bn."""
    return spec.cache.problems(spec) if spec.cache is not None else []


@rule
def parallel_layout_fits(spec) -> list[Problem]:
    """Devices, heads, sequence-parallel plans and true CFG for the chosen Parallel Config."""
    return spec.parallel.problems(spec) if spec.parallel is not None else []
