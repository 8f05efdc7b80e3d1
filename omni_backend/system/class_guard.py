"""Runs that share a pipeline class, across engines and threads of one process.

cache-dit enables its cache by patching the pipeline's and the transformer's classes, not the one
instance it is given: while it is on, every other pipeline of that class in the process runs
through its patched forward. So a run that patches a class (a feature with `patches_classes`) runs
alone among the runs of that class; runs that patch nothing share it freely.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict


class _SharedOrAlone:
    """A readers-writer lock: many shared holders, or one holder alone (who waits for the others)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._shared = 0
        self._alone = False

    @contextlib.contextmanager
    def hold(self, alone: bool):
        with self._condition:
            if alone:
                self._condition.wait_for(lambda: not self._alone and self._shared == 0)
                self._alone = True
            else:
                self._condition.wait_for(lambda: not self._alone)
                self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                if alone:
                    self._alone = False
                else:
                    self._shared -= 1
                self._condition.notify_all()


_GUARDS: defaultdict[type, _SharedOrAlone] = defaultdict(_SharedOrAlone)
_GUARDS_LOCK = threading.Lock()


@contextlib.contextmanager
def class_guard(classes, patches: bool):
    """Hold the guard of every class (the pipeline's and its transformers'), in one global order so
    that two runs never wait on each other crosswise."""
    ordered = sorted(set(classes), key=lambda cls: (cls.__module__, cls.__qualname__, id(cls)))
    with _GUARDS_LOCK:
        guards = [_GUARDS[cls] for cls in ordered]
    with contextlib.ExitStack() as stack:
        for guard in guards:
            stack.enter_context(guard.hold(alone=patches))
        yield
