"""Compatibility rules between features, and between features and model families.

One source of truth: nodes, the CLI validator and the browser extension all ask this module.
A rule looks at a whole spec and returns the problems it finds; each problem names both sides,
the reason and the fix.

Every problem is worded by a `RuleDef`: the rule's id, the two things it is about, a one-line
summary (the README's matrix) and `str.format` templates for the message. The browser extension
receives these templates through the rules export (rules_export.py) and fills them with the same
values, so a message is written once, here and in the feature modules, never in JavaScript.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

from .errors import OmniIncompatibleError


@dataclass(frozen=True)
class Problem:
    first: str
    second: str
    reason: str
    fix: str
    rule: str = ""  # the RuleDef id that worded it

    def error(self) -> OmniIncompatibleError:
        return OmniIncompatibleError(self.first, self.second, self.reason, self.fix, rule=self.rule)


@dataclass(frozen=True)
class RuleDef:
    """What a rule is about and how it words a problem. Templates name their values as {name};
    values are plain text or whole numbers, so JavaScript fills them exactly like str.format."""

    id: str
    between: tuple[str, str]  # feature keys (FEATURES in feature_matrix.py), "family" or "machine"
    summary: str  # why, in one line, without values (the README's matrix and the web page)
    first: str
    second: str
    reason: str
    fix: str

    def problem(self, **values) -> Problem:
        return Problem(self.first.format(**values), self.second.format(**values), self.reason.format(**values),
                       self.fix.format(**values), rule=self.id)

    def export(self) -> dict:
        return {"id": self.id, "between": list(self.between), "summary": self.summary, "first": self.first,
                "second": self.second, "reason": self.reason, "fix": self.fix}


RULE_DEFS: dict[str, RuleDef] = {}


def define_rule(id: str, between: tuple[str, str], summary: str, first: str, second: str, reason: str,
                fix: str) -> RuleDef:
    if id in RULE_DEFS:
        raise ValueError(f"rule id {id!r} is defined twice")
    RULE_DEFS[id] = RuleDef(id, between, summary, first, second, reason, fix)
    return RULE_DEFS[id]


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


# A graph validator wants every problem of a graph, not the first one: inside `collecting_problems()`
# validate_spec and refuse record what they find and let the node return its spec, so the nodes after
# it are checked too. Outside it (every real run) the first problem raises, before any weight loads.
_collector: ContextVar[list | None] = ContextVar("omni_problem_collector", default=None)


@contextlib.contextmanager
def collecting_problems():
    found: list[Problem] = []
    token = _collector.set(found)
    try:
        yield found
    finally:
        _collector.reset(token)


def refuse(problem: Problem) -> None:
    """A node-level refusal (one that no spec can show, e.g. a second cache node): raise, or record."""
    collector = _collector.get()
    if collector is None:
        raise problem.error()
    collector.append(problem)


def validate_spec(spec):
    problems = check_spec(spec)
    collector = _collector.get()
    if collector is not None:
        collector.extend(problems)
    elif problems:
        raise problems[0].error()
    return spec


# ---- memory (Offload/FP8) ----------------------------------------------------------------------
LAYERWISE_OFFLOAD_MULTI_DEVICE = define_rule(
    "memory.layerwise_offload_multi_device", ("offload", "parallel"),
    "layerwise offload streams one DiT's blocks through a single device; a multi-device layout splits "
    "each block across devices (model offload works)",
    first="Offload/FP8 (offload = layerwise)", second="Parallel Config ({devices} devices)",
    reason="layerwise offload streams one DiT's blocks through a single device, while a multi-GPU layout splits "
           "each block's work across devices (vLLM-Omni documents layerwise offload as single-card only)",
    fix="use offload = model (or none; auto never picks layerwise with several devices), or run on one device")


@rule
def layerwise_offload_needs_one_device(spec) -> list[Problem]:
    memory = spec.memory
    if memory is None or memory.offload != "layerwise" or spec.world_size() <= 1:
        return []
    return [LAYERWISE_OFFLOAD_MULTI_DEVICE.problem(devices=spec.world_size())]


FP8_TENSOR_PARALLEL = define_rule(
    "memory.fp8_tensor_parallel", ("fp8", "tensor_parallel"),
    "tensor parallelism shards full-precision linears; FP8 replaces them with FP8 weights and scales the "
    "shards do not carry",
    first="Offload/FP8 (fp8 = {fp8})", second="Parallel Config (tensor_parallel = {degree})",
    reason="tensor parallelism shards each attention/MLP linear's full-precision weight across ranks, and FP8 "
           "replaces those same linears with FP8 weights and per-channel scales that its shards do not carry",
    fix="set fp8 = off with tensor parallelism, or keep FP8 and parallelize with ulysses/ring/cfg_parallel instead")


@rule
def fp8_not_with_tensor_parallel(spec) -> list[Problem]:
    memory, parallel = spec.memory, spec.parallel
    degree = getattr(parallel, "tensor_parallel", 1) if parallel is not None else 1
    if memory is None or memory.fp8 == "off" or degree <= 1:
        return []
    return [FP8_TENSOR_PARALLEL.problem(fp8=memory.fp8, degree=degree)]


@rule
def cache_fits_family(spec) -> list[Problem]:
    """TeaCache needs a per-family extractor; Cache-DiT needs blocks left over after Fn + Bn."""
    return spec.cache.problems(spec) if spec.cache is not None else []


@rule
def parallel_layout_fits(spec) -> list[Problem]:
    """Devices, heads, sequence-parallel plans and true CFG for the chosen Parallel Config."""
    return spec.parallel.problems(spec) if spec.parallel is not None else []
