"""A small LRU of loaded pipelines, keyed by what decides their weights.

Runtime settings (seed, prompt, cache thresholds, LoRA strengths) never enter the key, so changing
them never reloads. The cache is bounded because each entry holds a whole model's weights.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("omni_diffusion")


@dataclass
class LoadedPipeline:
    pipe: Any
    state: dict = field(default_factory=dict)  # feature-owned state that lives with the weights
    loads: int = 1


class PipelineCache:
    def __init__(self, max_entries: int = 1):
        self.max_entries = max(1, int(max_entries))
        self._entries: OrderedDict[tuple, LoadedPipeline] = OrderedDict()
        self.load_count = 0  # how many times weights were read from disk (tests assert on it)

    def get(self, key: tuple, load: Callable[[], Any]) -> LoadedPipeline:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        while len(self._entries) >= self.max_entries:
            self._evict_oldest()
        pipe = load()
        self.load_count += 1
        entry = LoadedPipeline(pipe=pipe)
        self._entries[key] = entry
        return entry

    def drop(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            _release(entry)

    def clear(self) -> None:
        while self._entries:
            self._evict_oldest()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[tuple]:
        return list(self._entries)

    def _evict_oldest(self) -> None:
        key, entry = self._entries.popitem(last=False)
        log.info("unloading %s", key[0])
        _release(entry)


def _release(entry: LoadedPipeline) -> None:
    for cleanup in entry.state.pop("cleanups", []):
        cleanup()
    entry.pipe = None
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
