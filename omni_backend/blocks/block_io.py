"""Reading a transformer block's stream inputs and writing outputs in the block's own format.

diffusers already records, per block class, where hidden and encoder states sit in a block's
output tuple (hooks._helpers.TransformerBlockRegistry); we reuse that so a cache hook can stand
in for any block without knowing the family.
"""

from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def _parameters(block_class) -> tuple[str, ...]:
    return tuple(inspect.signature(block_class.forward).parameters)[1:]  # without self


@lru_cache(maxsize=None)
def _metadata(block_class):
    from diffusers.hooks._helpers import TransformerBlockRegistry

    return TransformerBlockRegistry.get(block_class)


def block_arguments(block, args, kwargs) -> dict:
    """All arguments of one block call by parameter name."""
    names = _parameters(type(block))
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def stream_inputs(block, args, kwargs):
    """(hidden_states, encoder_hidden_states or None) as the block received them."""
    names = _parameters(type(block))
    arguments = block_arguments(block, args, kwargs)
    hidden_name = "hidden_states" if "hidden_states" in names else names[0]  # Z-Image calls it `x`
    encoder = arguments.get("encoder_hidden_states") if _returns_encoder(block) else None
    return arguments[hidden_name], encoder


def stream_inputs_as_computed(block, args, kwargs):
    """stream_inputs after the block's own sequence-parallel split hooks, if any.

    Under sequence parallelism diffusers' `_cp_plan` splits the sequence in a hook on the first
    block, inside any cache hook wrapped around it. A cache that records the block's input (or
    returns in its place) must see the shard the block computes on, so replay that split here
    (cache-dit does the same for its Fn residual).
    """
    from diffusers.hooks.context_parallel import ContextParallelSplitHook

    hidden, encoder = stream_inputs(block, args, kwargs)
    registry = getattr(block, "_diffusers_hook", None)
    if registry is None:
        return hidden, encoder
    names = _parameters(type(block))
    hidden_name = "hidden_states" if "hidden_states" in names else names[0]
    for hook in registry.hooks.values():
        if not isinstance(hook, ContextParallelSplitHook):
            continue
        for name, plan in hook.metadata.items():
            if getattr(plan, "split_output", True):
                continue
            if name == hidden_name:
                hidden = hook._prepare_cp_input(hidden, plan)
            elif name == "encoder_hidden_states" and encoder is not None:
                encoder = hook._prepare_cp_input(encoder, plan)
    return hidden, encoder


def stream_outputs(block, output):
    """(hidden_states, encoder_hidden_states or None) from the block's return value."""
    meta = _metadata(type(block))
    if not isinstance(output, tuple):
        return output, None
    encoder = output[meta.return_encoder_hidden_states_index] if _returns_encoder(block) else None
    return output[meta.return_hidden_states_index], encoder


def make_output(block, hidden, encoder):
    """The value the block would return for these stream states."""
    meta = _metadata(type(block))
    if not _returns_encoder(block):
        return hidden
    values = [None, None]
    values[meta.return_hidden_states_index] = hidden
    values[meta.return_encoder_hidden_states_index] = encoder
    return tuple(values)


def _returns_encoder(block) -> bool:
    return _metadata(type(block)).return_encoder_hidden_states_index is not None
