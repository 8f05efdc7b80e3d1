"""Counting the transformer work a run really did, for tests and benchmarks.

A hook on a block (or on its attention module) still fires when a cache returns a stored output
in its place, so we count calls of the first linear layer inside each block's attention: that
layer runs only when the block truly computes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field


@dataclass
class BlockWork:
    executed: int = 0  # block computations that really ran
    per_transformer: dict = field(default_factory=dict)


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

    for component, transformer in family.transformers(pipe):
        for _attr, blocks in family.block_lists(transformer):
            for block in blocks:
                handles.append(attention_probe(block).register_forward_hook(counter(component)))
    try:
        yield work
    finally:
        for handle in handles:
            handle.remove()
