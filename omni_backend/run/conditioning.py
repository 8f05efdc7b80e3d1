"""Prompt embeddings made outside the pipeline: ComfyUI's CONDITIONING from its own text-encode nodes.

A family whose diffusers pipeline encodes prompts exactly as ComfyUI's text encoder does (same chat
template, same template tokens dropped, same hidden layer, no pooled output) can take ComfyUI's
embeddings as `prompt_embeds` and skip its own text encoder. The family says whether it can
(`ModelFamily.conditioning_refusal`) and turns a TextEmbedding into its pipeline's keywords
(`ModelFamily.embedding_kwargs`); this module holds the value and the checks that need no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import OmniInputError


@dataclass(frozen=True)
class TextEmbedding:
    """One prompt's text-encoder output: `embeds` [1, T, D] float, and `mask` [1, T] (1 = token,
    0 = padding) or None when every token counts. Crosses to worker processes as tensors."""

    embeds: Any
    mask: Any = None
    role: str = "positive"  # Sample's input it came from, for the error messages

    def __post_init__(self):
        import torch

        embeds, mask, role = self.embeds, self.mask, self.role
        if role not in ("positive", "negative"):
            raise OmniInputError("role", role, "must be positive or negative", "pass role='positive' or 'negative'")
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or not embeds.is_floating_point():
            raise OmniInputError(role, _describe(embeds), "is not a text embedding [batch, tokens, width]",
                                 "connect the CONDITIONING output of a text-encode node (CLIP Text Encode)")
        if embeds.shape[0] != 1 or embeds.shape[1] < 1:
            raise OmniInputError(role, _describe(embeds), "holds a batch of prompts or no tokens; Sample "
                                 "takes one prompt's embedding", "encode one prompt per CLIP Text Encode node")
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2])):
            raise OmniInputError(role, _describe(mask), f"attention mask does not match the embedding "
                                 f"{tuple(embeds.shape[:2])}", "connect the text-encode node's CONDITIONING unchanged")
        if embeds.is_meta or (mask is not None and mask.is_meta):
            raise OmniInputError(role, "a meta-device tensor", "the embedding holds no data (a tensor on the meta "
                                 "device has a shape but no values)", "connect a text-encode node's CONDITIONING")
        if mask is not None:
            check_attention_mask(role, mask)
        if not bool(torch.isfinite(embeds).all()):
            raise OmniInputError(role, _describe(embeds), "holds NaN or infinite values",
                                 "re-encode the prompt (the text encoder's weights or dtype may be broken)")

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def width(self) -> int:
        return int(self.embeds.shape[2])

    def kept(self):
        """[T', D] of the tokens the mask keeps (all tokens without a mask)."""
        if self.mask is None:
            return self.embeds[0]
        return self.embeds[0][self.mask[0].bool()]


def check_attention_mask(role: str, mask) -> None:
    """A text encoder's attention mask is 1 for a token and 0 for padding, with at least one token: other
    values (7, NaN) would weigh tokens wrongly, and a mask of zeros leaves the model no prompt at all."""
    ones = mask == 1
    if not bool((ones | (mask == 0)).all()):
        odd = mask[~(ones | (mask == 0))].flatten()[:3].tolist()
        raise OmniInputError(role, f"attention mask holding {odd}", "an attention mask holds 0 or 1 for each "
                             "token (1 = token, 0 = padding)", "connect the text-encode node's CONDITIONING unchanged")
    if not bool(ones.any()):
        raise OmniInputError(role, f"attention mask {tuple(mask.shape)} of zeros", "the mask keeps no token, so "
                             "the model would get no prompt at all", "connect the text-encode node's CONDITIONING "
                             "unchanged (its mask marks the prompt's tokens with 1)")


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor {tuple(shape)}" if shape is not None else type(value).__name__


def check_conditioning(family, transformer_config: dict, model_index: dict, guidance: float,
                       positive, negative) -> None:
    """What a model can refuse before any weights load. `positive`/`negative` are TextEmbeddings, None
    (not connected), or any other object standing for a link a validator cannot read yet."""
    if positive is None and negative is None:
        return
    if family.conditioning_refusal is not None:
        name = "positive" if positive is not None else "negative"
        raise OmniInputError(name, "CONDITIONING", f"{family.title} cannot take ComfyUI's text encoding: "
                             f"{family.conditioning_refusal}",
                             "disconnect positive/negative and type the prompt into Sample's prompt fields")
    if positive is None:
        raise OmniInputError("negative", "CONDITIONING", "is connected without positive",
                             "connect positive too (a CLIP Text Encode with the prompt), or disconnect negative")
    if negative is None and guidance > 1.0 and family.has_true_cfg(model_index):
        raise OmniInputError("negative", None, f"with positive CONDITIONING and guidance {guidance} the model "
                             "runs a negative branch, which then needs the negative CONDITIONING too",
                             "connect a CLIP Text Encode with the negative text (it may be empty) to negative, "
                             "or set guidance to 1")
    width = family.text_embedding_width(transformer_config)
    limit = family.text_tokens_max
    for name, embedding in (("positive", positive), ("negative", negative)):
        if not isinstance(embedding, TextEmbedding):
            continue  # linked: a run will check it
        if embedding.width != width:
            raise OmniInputError(name, f"embedding width {embedding.width}", f"{family.title} takes text "
                                 f"embeddings {width} wide: the text encoder in ComfyUI is not this model's",
                                 f"load {family.title}'s own text encoder in the CLIP loader")
        if limit is not None and embedding.tokens > limit:
            raise OmniInputError(name, f"{embedding.tokens} tokens", f"the diffusers pipeline reads at most "
                                 f"{limit} tokens and cuts longer prompts before encoding, which changes every "
                                 "token's embedding", "shorten the prompt, or type it into Sample's prompt field")
