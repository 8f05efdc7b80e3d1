"""ComfyUI CONDITIONING -> the backend's TextEmbedding (Sample's positive / negative inputs).

A CONDITIONING is a list of [embedding [B, T, D], {"pooled_output": ..., "attention_mask": ...,
...}] pairs. Sample takes what one text-encode node gives: one pair, one prompt, with nothing that
asks the sampler for more than the text (an area, a mask, a time range, reference latents): those
are refused with their key's name, never dropped silently.
"""

from __future__ import annotations

from omni_backend.errors import OmniInputError
from omni_backend.run.conditioning import TextEmbedding

from .common import LINKED

# Keys a text-encode node writes that carry nothing Sample must apply: the pooled output (none of the
# families that take CONDITIONING read one) and the padding mask (TextEmbedding keeps it).
PLAIN_KEYS = {"pooled_output", "attention_mask"}
FIX = "connect the CONDITIONING output of one text-encode node (CLIP Text Encode) directly"


def text_embedding(value, role: str):
    """A TextEmbedding, None when not connected, LINKED when a validator cannot read it yet."""
    if value is None or value is LINKED:
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise OmniInputError(role, type(value).__name__, "is not a ComfyUI CONDITIONING", FIX)
    if len(value) != 1:
        raise OmniInputError(role, f"{len(value)} conditionings", "is a combination of several conditionings "
                             "(Conditioning Combine or a batch of prompts); Sample takes one prompt's encoding", FIX)
    entry = value[0]
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], dict):
        raise OmniInputError(role, type(entry).__name__, "is not a ComfyUI CONDITIONING entry [tensor, dict]", FIX)
    embeds, extra = entry
    others = sorted(key for key in extra if key not in PLAIN_KEYS)
    if others:
        raise OmniInputError(role, ", ".join(others), "asks the sampler for more than the prompt's text (set by a "
                             "node such as TextEncodeQwenImageEdit, Reference Latent or Conditioning Set Area); "
                             "Sample applies text embeddings only", FIX)
    return TextEmbedding(embeds=embeds, mask=extra.get("attention_mask"), role=role)
