"""Compatibility rules between features, and between features and model families.

One declaration form: every feature config (a field of ModelSpec) declares the rules it can break
as `RULES` (RuleDefs: id, the two things the rule is about, a one-line summary for the README's
matrix, message templates) and checks them in `problems(spec)`. A rule between two features
belongs to the one that comes later in a chain. `check_spec` asks each feature of a spec, so no
list of rule modules is kept anywhere; `spec.all_rules()` collects the declarations.

Nodes, the CLI validator and the browser extension (through the server's check route) all run
this same check: a message is written once, here and in the feature modules.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass

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
    """What a rule is about and how it words a problem: str.format templates that name their values
    as {name}, filled by `problem(**values)`."""

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
