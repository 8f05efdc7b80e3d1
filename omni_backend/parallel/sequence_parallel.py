"""Sequence parallelism on a diffusers transformer: split the sequence per its `_cp_plan`, run our
sequence-parallel attention, gather the output.

The plans are diffusers' own (`Model._cp_plan`, or one a family supplies); the hooks are
diffusers' ContextParallelSplitHook/GatherHook with the sharding swapped for uneven shards that
gloo can gather (diffusers' "anything" gather hands gloo unequal tensors, which it refuses).
Attention goes through diffusers' dispatcher: processors pass their `_parallel_config` to whatever
backend they dispatch to, which we route to `sp_attention` when that config is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks.context_parallel import (
    ContextParallelGatherHook,
    ContextParallelSplitHook,
    _get_submodule_by_name,
)
from diffusers.hooks.hooks import HookRegistry
from diffusers.models._modeling_parallel import (
    ContextParallelInput,
    ContextParallelOutput,
)

from .sp_attention import all_gather_uneven, gather_sizes, sequence_parallel_attention

SPLIT_HOOK = "omni_sp_split::{}"
GATHER_HOOK = "omni_sp_gather::{}"


@dataclass
class SequenceParallelAttention:
    """Stands in for diffusers' ParallelConfig on attention processors: marks calls as ours."""

    ulysses_group: object
    ring_group: object
    sp_group: object

    def attend(self, backend, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, return_lse=False):
        """A marked call to diffusers' attention `backend` (its keyword arguments, already filtered by the
        dispatcher to what that backend takes)."""
        if is_causal or dropout_p or enable_gqa or return_lse:
            raise ValueError("sequence parallel attention supports plain bidirectional attention only")
        return sequence_parallel_attention(query, key, value, attn_mask, scale, ulysses_group=self.ulysses_group,
                                           ring_group=self.ring_group, backend=backend)


class _SplitHook(ContextParallelSplitHook):
    def __init__(self, metadata, group):
        super().__init__(metadata, parallel_config=None)
        self.group = group

    def _prepare_cp_input(self, x: torch.Tensor, cp_input: ContextParallelInput) -> torch.Tensor:
        if cp_input.expected_dims is not None and x.dim() != cp_input.expected_dims:
            return x
        world = torch.distributed.get_world_size(self.group)
        return x.tensor_split(world, dim=cp_input.split_dim)[torch.distributed.get_rank(self.group)]


class _GatherHook(ContextParallelGatherHook):
    def __init__(self, metadata, group):
        super().__init__(metadata, parallel_config=None)
        self.group = group

    def post_forward(self, module, output):
        single = isinstance(output, torch.Tensor)
        outputs = [output] if single else list(output)
        for index, plan in enumerate(self.metadata):
            if plan is None:
                continue
            shard = outputs[index]
            sizes = gather_sizes(shard.shape[plan.gather_dim], self.group, shard.device)
            outputs[index] = all_gather_uneven(shard, sizes, plan.gather_dim, self.group)
        return outputs[0] if single else tuple(outputs)


def apply_sequence_parallel(transformer, plan: dict, attention: SequenceParallelAttention) -> None:
    for module_id, entry in plan.items():
        modules = _get_submodule_by_name(transformer, module_id)
        for module in modules if isinstance(modules, list) else [modules]:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            if isinstance(entry, dict):
                registry.register_hook(_SplitHook(entry, attention.sp_group), SPLIT_HOOK.format(module_id))
            else:
                outputs = [entry] if isinstance(entry, ContextParallelOutput) else list(entry)
                registry.register_hook(_GatherHook(outputs, attention.sp_group), GATHER_HOOK.format(module_id))
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = attention
    route_attention_backends()


_ROUTED = False


def route_attention_backends() -> None:
    """Send diffusers' attention calls that carry our marker to sp_attention, whatever backend they
    were dispatched to (the active one, e.g. DIFFUSERS_ATTN_BACKEND=flash, or one set on the model).

    diffusers' backend names are an Enum, so a new backend cannot be registered; we wrap every registered
    one instead, and tell sp_attention which backend was asked for (Ulysses runs its local attention on
    it). Only worker processes ever call this, and calls without our marker are untouched.
    """
    global _ROUTED
    if _ROUTED:
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for name, backend_fn in list(_AttentionBackendRegistry._backends.items()):
        _AttentionBackendRegistry._backends[name] = _routed(name, backend_fn)
    _ROUTED = True


def _routed(name, backend_fn):
    def backend_or_sequence_parallel(*args, _parallel_config=None, **kwargs):
        if isinstance(_parallel_config, SequenceParallelAttention):
            return _parallel_config.attend(name, *args, **kwargs)
        return backend_fn(*args, _parallel_config=_parallel_config, **kwargs)

    return backend_or_sequence_parallel
