"""The reference edit model's parts: QwenImageEditPipeline at the reference model's size.

The VAE and the DiT's shape are the text-to-image reference's (the DiT starts from its weights:
QwenImageEditPipeline feeds the input image's latents as more tokens of the same sequence, so the
architecture is unchanged). The text side is new, because the edit pipeline's prompt template
differs and reads the image: a tokenizer that also knows the vision markers, a frozen random
Qwen2.5-VL whose (tiny) vision tower turns the input image into 4 tokens, and the image-only
processor (families/qwen_vl_processor.py) that expands <|image_pad|> for them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import components
from .edit_dataset import instructions

# QwenImageEditPipeline drops the first 64 tokens of its template (the system prompt and the user turn's
# opening); the tokenizer must cut that prefix into exactly 64 tokens, or instruction tokens get dropped
# (or system tokens kept). `pipeline()` checks that the pipeline's template still starts with it.
TEMPLATE_PREFIX_TOKENS = 64
_TEMPLATE_PREFIX = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n")
_TEMPLATE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# The area (px) the pipeline resizes the input image to: the model's own 64x64 (see
# families/qwen_image_edit/family.py, INPUT_AREA_KEY).
INPUT_IMAGE_AREA = 64 * 64


def tokenizer():
    """Qwen2Tokenizer with the vision markers whose BPE makes every instruction and template word one token."""
    from transformers import Qwen2Tokenizer

    from omni_backend.tiny.tokenizers import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, train_byte_level_bpe

    texts = instructions() * 4 + [_TEMPLATE_PREFIX + _TEMPLATE_SUFFIX] * 100
    vocab, merges = train_byte_level_bpe(texts, vocab_size=2000, special_tokens=QWEN_SPECIAL_TOKENS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *VISION_TOKENS]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    prefix = len(tok(_TEMPLATE_PREFIX).input_ids)
    if prefix != TEMPLATE_PREFIX_TOKENS:
        raise RuntimeError(f"the edit template prefix is {prefix} tokens, QwenImageEditPipeline drops "
                           f"{TEMPLATE_PREFIX_TOKENS}")
    return tok


def text_encoder(tok):
    """The text-to-image reference's frozen Qwen2.5-VL recipe, with the vision markers of `tok`."""
    model = components.text_encoder(tok)
    config = model.config
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"))}
    for name, value in ids.items():
        setattr(config, name, value)
    # Built again from the changed config (same seed state as the caller gives), frozen like the original.
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(config).eval().requires_grad_(False)


def processor(tok):
    """Image-only Qwen2-VL processor: a 64 px image becomes 56x56 px, 4x4 patches, 4 merged tokens."""
    from transformers import Qwen2VLImageProcessor

    from omni_backend.families.qwen_vl_processor import image_only_processor

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    return image_only_processor(image_processor, tok, tok.chat_template)


def pipeline(vae_model, transformer_model, text_encoder_model, tokenizer_obj, processor_obj):
    from diffusers import QwenImageEditPipeline

    pipe = QwenImageEditPipeline(scheduler=components.scheduler(), vae=vae_model, text_encoder=text_encoder_model,
                                 tokenizer=tokenizer_obj, processor=processor_obj, transformer=transformer_model)
    if not pipe.prompt_template_encode.startswith(_TEMPLATE_PREFIX + "<|vision_start|>"):
        raise RuntimeError("QwenImageEditPipeline's prompt template changed; the tokenizer's 64-token prefix "
                           "no longer matches it")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save(pipe, out: Path, dtype, shared_vae: Path | None = None) -> None:
    """Cast `pipe` to `dtype` in place and write the folder. save_pretrained cannot write a processor
    without its video part, so the processor's two halves are written to processor/ (as the family's
    make_tiny does), and model_index.json gets the input image area (INPUT_IMAGE_AREA).

    `shared_vae`: the VAE folder of a model beside `out` that holds this pipeline's VAE unchanged; the
    folder then names it (model_index.json's `_omni_shared_components`) instead of a second copy."""
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(dtype)
    processor_obj, pipe.processor = pipe.processor, None
    try:
        pipe.save_pretrained(out, safe_serialization=True)
    finally:
        pipe.processor = processor_obj
    processor_obj.image_processor.save_pretrained(out / "processor")
    processor_obj.tokenizer.save_pretrained(out / "processor")
    from omni_backend.families.qwen_image_edit.family import INPUT_AREA_KEY
    from omni_backend.weights.model_folder import SHARED_COMPONENTS_KEY

    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index[INPUT_AREA_KEY] = INPUT_IMAGE_AREA
    if shared_vae is not None:
        shutil.rmtree(out / "vae")
        index[SHARED_COMPONENTS_KEY] = {"vae": Path(os.path.relpath(shared_vae, out)).as_posix()}
    index_file.write_text(json.dumps(index, indent=2) + "\n")
