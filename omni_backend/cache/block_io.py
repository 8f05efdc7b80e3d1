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
