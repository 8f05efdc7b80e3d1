"""Compatibility rules between features, and between features and model families.

One declaration form: every feature config (a field of ModelSpec) declares the rules it can break
as `RULES` (RuleDefs: id, the two things the rule is about, a one-line summary for the matrix in
docs/compatibility.md, message templates) and checks them in `problems(spec)`. A rule between two
features belongs to the one that comes later in a chain. `check_spec` asks each feature of a spec, so no
list of rule modules is kept anywhere; `spec.all_rules()` collects the declarations.

Nodes, the CLI validator and the browser extension (through the server's check route) all run
this same check: a message is written once, here and in the feature modules.

A fix never sends the user to another refusal. A problem carries its ways out as data
(`Problem.alternatives`: spec changes); a fix that offers something else instead (another method,
another degree) offers only what `ways_out` finds this same check accepts on this spec, and its words
are made from those. Fixes that only turn the refused choice down (off, 1, remove a node) carry it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass

from ..errors import OmniIncompatibleError


def features_of(between) -> set[str]:
    """The feature choices a rule is about, from its `between`. "family" and "machine" are none, and nor is
    "parallel" (any multi-device layout): a problem with the layout as a whole, such as too few devices,
    has its own fix and does not bar another problem's way out that keeps the layout."""
    return set(between) - {"family", "machine", "parallel"}


@dataclass(frozen=True)
class Alternative:
    """A way out of a problem: the ModelSpec fields it replaces (a feature config, or None to remove
    that feature), so tools and tests can apply a fix without reading its words."""

    changes: tuple[tuple[str, object], ...]

    def apply(self, spec):
        return dataclasses.replace(spec, **dict(self.changes))


def alternative(**fields) -> Alternative:
    return Alternative(tuple(fields.items()))


@dataclass(frozen=True)
class Problem:
    first: str
    second: str
    reason: str
    fix: str
    rule: str = ""  # the RuleDef id that worded it
    between: tuple[str, ...] = ()  # what that rule is about
    alternatives: tuple[Alternative, ...] = ()  # the fix's ways out, as spec changes

    def error(self) -> OmniIncompatibleError:
        return OmniIncompatibleError(self.first, self.second, self.reason, self.fix, rule=self.rule)


@dataclass(frozen=True)
class RuleDef:
    """What a rule is about and how it words a problem: str.format templates that name their values
    as {name}, filled by `problem(**values)`."""

    id: str
    between: tuple[str, str]  # feature keys (FEATURES in feature_matrix.py), "family" or "machine"
    summary: str  # why, in one line, without values (docs/compatibility.md's matrix and the web page)
    first: str
    second: str
    reason: str
    fix: str

    def problem(self, alternatives=(), **values) -> Problem:
        return Problem(self.first.format(**values), self.second.format(**values), self.reason.format(**values),
                       self.fix.format(**values), rule=self.id, between=self.between,
                       alternatives=tuple(alternatives))


def define_rule(id: str, between: tuple[str, str], summary: str, first: str, second: str, reason: str,
                fix: str) -> RuleDef:
    return RuleDef(id, between, summary, first, second, reason, fix)


def check_spec(spec) -> list[Problem]:
    """Every problem of the spec, feature by feature (memory, cache, parallel, then each LoRA)."""
    problems: list[Problem] = []
    for feature in (spec.memory, spec.cache, spec.parallel, *spec.loras, getattr(spec, "compile", None)):
        if feature is not None:
            problems.extend(feature.problems(spec))
    return problems


# While ways_out checks a candidate, only whether the candidate has problems counts, not their fixes:
# the fixes found then offer nothing else (so checking a candidate never checks candidates of its own).
_checking_candidates: ContextVar[bool] = ContextVar("omni_checking_candidates", default=False)


def ways_out(spec, rule: RuleDef, candidates: dict) -> dict:
    """The candidates ({words: Alternative}) the check accepts on `spec` as ways out of `rule`'s problem:
    each leaves no problem about the features that rule is about and adds none, so a fix made of them
    never sends the user to another refusal (problems about other features, which the spec already has,
    are told by their own fixes). In the order given."""
    if _checking_candidates.get():
        return {}
    token = _checking_candidates.set(True)
    try:
        about = features_of(rule.between)
        others = {p.rule for p in check_spec(spec) if p.rule != rule.id and not features_of(p.between) & about}
        return {words: way for words, way in candidates.items()
                if all(p.rule in others for p in check_spec(way.apply(spec)))}
    finally:
        _checking_candidates.reset(token)


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
