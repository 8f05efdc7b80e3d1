"""CFG-parallel: the positive and the negative branch of a step run on different ranks at once.

The diffusers pipelines stay untouched; we wrap the transformer's forward for the run.
- Pipelines that batch CFG into one call (SD3, Z-Image): each rank runs its half of the batch
  and the halves are all-gathered back in order.
- Pipelines that call the transformer twice per step (Qwen-Image, FLUX.2, Wan): the first call
  (inside `cache_context("cond")`, or whatever the family's `cfg_branch` reads from the call's
  inputs where the pipeline enters no context: GLM-Image) returns a buffer without computing; the second call runs both
  branches at once, rank 0 the positive with the first call's inputs and rank 1 the negative,
  all-gathers them, writes the positive result into the buffer the pipeline already holds and
  returns the negative. The pipelines read the first result only after the second call, so the
  guidance they compute is the sequential one, identically on every rank.
The wrapper is the outermost forward so caches inside the transformer see one call per step.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

COND, UNCOND = "cond", "uncond"


def _gather(tensor, group):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


class BatchSplitCFG:
    """One call holds both branches in the batch: split it across the two ranks."""

    def __init__(self, forward, group):
        self.forward, self.group = forward, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def __call__(self, *args, **kwargs):
        batch = _batch_size(args, kwargs)
        if batch is None or batch % self.world:
            return self.forward(*args, **kwargs)  # nothing to split (CFG off this step)
        args, kwargs = _map_batch((args, kwargs), batch, lambda x: _shard(x, self.rank, self.world))
        output = self.forward(*args, **kwargs)
        return _map_tensors(output, lambda t: torch.cat(_gather(t, self.group), dim=0),
                            lambda items: [piece for part in _gather_list(items, self.group) for piece in part])


class DeferredCondCFG:
    """Two calls per step: defer the positive one, run both branches together on the negative one."""

    def __init__(self, transformer, forward, group, family):
        self.transformer, self.forward, self.group, self.family = transformer, forward, group, family
        self.rank = dist.get_rank(group)
        self.branch = None  # the cache_context the pipeline entered for this call
        self.pending = None  # (args, kwargs, buffer, state restorer) of the deferred positive call

    def __call__(self, *args, **kwargs):
        branch = self.branch or self.family.cfg_branch(kwargs)
        if branch == COND:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            buffer = torch.empty_like(hidden)
            self.pending = (args, kwargs, buffer, self.family.cfg_deferred_call(kwargs))
            return (buffer,) if kwargs.get("return_dict") is False else _output_like(buffer)
        if branch != UNCOND or self.pending is None:
            return self.forward(*args, **kwargs)  # CFG off this step: every rank computes it
        cond_args, cond_kwargs, buffer, cond_state = self.pending
        self.pending = None
        mine = (cond_args, cond_kwargs) if self.rank == 0 else (args, kwargs)
        state = cond_state() if self.rank == 0 else contextlib.nullcontext()
        with self.transformer.cache_context(COND if self.rank == 0 else UNCOND), state:
            output = self.forward(*mine[0], **mine[1])
        sample = output[0] if isinstance(output, tuple) else output.sample
        cond, uncond = _gather(sample, self.group)
        # The buffer was shaped like the input; the output may have fewer channels (Wan I2V: 36 in, 16
        # out). The pipeline holds this very tensor: resize it in place.
        buffer.resize_(cond.shape).copy_(cond)
        return (uncond,) if isinstance(output, tuple) else _output_like(uncond)


@contextlib.contextmanager
def cfg_parallel_forward(transformer, group, batched: bool, family):
    """Install the wrapper as the transformer's outermost forward for one run."""
    previous = transformer.__dict__.get("forward")
    forward = transformer.forward
    if batched:
        wrapper = BatchSplitCFG(forward, group)
        transformer.forward = wrapper
        restore_context = None
    else:
        wrapper = DeferredCondCFG(transformer, forward, group, family)
        transformer.forward = wrapper
        restore_context = _track_branch(transformer, wrapper)
    try:
        yield wrapper
    finally:
        if previous is None:
            del transformer.forward
        else:
            transformer.forward = previous
        if restore_context is not None:
            restore_context()


def _track_branch(transformer, wrapper):
    original = transformer.cache_context

    @contextlib.contextmanager
    def cache_context(name, **kwargs):
        wrapper.branch = name
        try:
            with original(name, **kwargs):
                yield
        finally:
            wrapper.branch = None

    transformer.cache_context = cache_context

    def restore():
        del transformer.cache_context

    return restore


# ---- batch helpers -------------------------------------------------------------------------------
def _batch_size(args, kwargs):
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if isinstance(hidden, torch.Tensor):
        return hidden.shape[0]
    if isinstance(hidden, (list, tuple)):
        return len(hidden)
    return None


def _shard(value, rank, world):
    size = len(value) // world
    return value[rank * size:(rank + 1) * size]


def _map_batch(value, batch, shard):
    if isinstance(value, torch.Tensor):
        return shard(value) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, list) and len(value) == batch:
        return shard(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_batch(v, batch, shard) for v in value)
    if isinstance(value, dict):
        return {k: _map_batch(v, batch, shard) for k, v in value.items()}
    return value


def _map_tensors(output, on_tensor, on_list):
    if isinstance(output, torch.Tensor):
        return on_tensor(output)
    if isinstance(output, list) and output and all(isinstance(x, torch.Tensor) for x in output):
        return on_list(output)
    if isinstance(output, tuple):
        return tuple(_map_tensors(v, on_tensor, on_list) for v in output)
    if hasattr(output, "sample"):
        output.sample = _map_tensors(output.sample, on_tensor, on_list)
        return output
    return output


def _gather_list(items, group):
    stacked = torch.stack(items)
    return [list(part) for part in _gather(stacked, group)]


def _output_like(sample):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)
