"""Tokenizers for tiny model folders, built in memory so nothing is downloaded.

transformers 5 tokenizer classes accept an in-memory vocabulary; these builders give each family
the tokenizer class its real checkpoint uses, small enough to save in a few kB.
"""

from __future__ import annotations

import string

# A small English corpus: enough for a byte-level BPE to merge common words into single tokens.
_CORPUS = [
    "a red circle at the top left on a blue background",
    "a green square at the bottom right on a white background",
    "a cat sitting on a windowsill, photo, detailed, high quality",
    "a yellow triangle in the center on a black background, blurry, low quality",
    "a small house by the lake at sunset, painting of a mountain and a dog",
]

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Z-Image calls apply_chat_template; a minimal Qwen-style template keeps its code path real.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]):
    """Train a byte-level BPE; returns (vocab dict, merges as tuples) for Qwen2Tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    model = tokenizer.get_vocab()
    import json

    state = json.loads(tokenizer.to_str())["model"]
    # Merges must be tuples: strings fail inside tokenizers' PyMerges conversion.
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return model, merges


def qwen_tokenizer(corpus: list[str] | None = None, vocab_size: int = 470):
    from transformers import Qwen2Tokenizer

    vocab, merges = train_byte_level_bpe(corpus or _CORPUS, vocab_size, QWEN_SPECIAL_TOKENS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def glm_image_tokenizer(chat_template: str):
    """GLM-Image's AR tokenizer: a byte-level BPE with the image and grid tokens its processor reads by
    name (`image_token`, `grid_bos_token`, `grid_eos_token`; the begin-of-image token is its bos)."""
    from transformers import Qwen2Tokenizer

    vocab, merges = train_byte_level_bpe(_CORPUS, 470, ["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, bos_token="<|begin_of_image|>", eos_token="<|end_of_image|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>"})
    tokenizer.chat_template = chat_template
    return tokenizer


def clip_tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    chars = list(string.printable.strip()) + [" "]
    vocab: dict[str, int] = {}
    for piece in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = 77
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return tokenizer


def t5_tokenizer(max_length: int = 512):
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += ["\u2581" + c for c in string.ascii_letters]
    vocab = [(p, -float(i)) for i, p in enumerate(dict.fromkeys(pieces))]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.model_max_length = max_length
    return tokenizer
