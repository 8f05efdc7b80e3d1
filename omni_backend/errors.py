"""Errors the engine raises on purpose.

Every message names the input, the value it got and the way out, because in ComfyUI the message
is all the user sees (it is shown verbatim in the error dialog and in the API's execution_error).
"""

from __future__ import annotations


class OmniError(Exception):
    """Base for errors this pack raises deliberately (as opposed to bugs)."""


class OmniInputError(OmniError, ValueError):
    """Bad user input: which input, what value, how to fix it."""

    def __init__(self, input_name: str, value, problem: str, fix: str):
        self.input_name = input_name
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{input_name} = {_short(value)}: {problem}. Fix: {fix}")


class OmniIncompatibleError(OmniError, ValueError):
    """Two features (or a feature and a model family) that cannot run together."""

    def __init__(self, first: str, second: str, reason: str, fix: str, rule: str = ""):
        self.first = first
        self.second = second
        self.reason = reason
        self.fix = fix
        self.rule = rule  # the compat RuleDef id, so validators can tell rules apart without parsing text
        super().__init__(f"{first} cannot be combined with {second}: {reason}. Fix: {fix}")


class OmniInterrupted(OmniError):
    """The user asked the run to stop (ComfyUI's interrupt, Ctrl-C in the CLI)."""


class OmniWorkerError(OmniError, RuntimeError):
    """A multi-process worker failed or died; the worker group has been torn down."""


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
