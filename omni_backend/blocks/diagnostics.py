"""Counting the transformer work a run really did: for the caches' run reports, tests and benchmarks.

A hook on a block (or on its attention module) still fires when a cache returns a stored output
in its place, so we count calls of the first linear layer inside each block's attention: that
layer runs only when the block truly computes. What an uncached run would have computed is counted
beside it: each call of a transformer would run every block of its block lists (a cache replaces
blocks' forwards, never the transformer's `__call__`, so the transformer's hook always fires).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field


@dataclass
class BlockWork:
    executed: int = 0  # block computations that really ran
    possible: int = 0  # block computations an uncached run of the same calls would have made
    per_transformer: dict = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.possible - self.executed

    def speedup(self) -> float:
        """Block computations an uncached run makes per one this run made (attention and MLP work)."""
        return self.possible / self.executed if self.executed else 1.0

    def text(self) -> str:
        if not self.possible:
            return "no transformer block ran"
        return (f"{self.executed}/{self.possible} block computations ran ({self.skipped / self.possible:.0%} "
                f"skipped, counted), transformer speedup about {self.speedup():.2f}x")


def attention_probe(block):
    import torch

    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear) and ("attn" in name or "attention" in name):
            return module
    raise ValueError(f"no attention projection found in {type(block).__name__}")


@contextlib.contextmanager
def count_block_work(pipe, family):
    work = BlockWork()
    handles = []

    def counter(component):
        def hook(*_):
            work.executed += 1
            work.per_transformer[component] = work.per_transformer.get(component, 0) + 1
        return hook

    def all_blocks_would_run(count):
        def hook(*_):
            work.possible += count
        return hook

    for component, transformer in family.transformers(pipe):
        block_lists = [blocks for _attr, blocks in family.block_lists(transformer)]
        handles.append(transformer.register_forward_pre_hook(all_blocks_would_run(sum(map(len, block_lists)))))
        for blocks in block_lists:
            for block in blocks:
                handles.append(attention_probe(block).register_forward_hook(counter(component)))
    try:
        yield work
    finally:
        for handle in handles:
            handle.remove()
