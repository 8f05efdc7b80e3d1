"""The Qwen2-VL processor of the Qwen edit pipelines, for machines without torchvision.

transformers builds `Qwen2VLProcessor` with a video processor, and refuses to build that without
torchvision (ComfyUI installs have it; the project's CPU machines cannot: PyPI's torchvision is
linked against CUDA torch). The edit pipelines only ever pass images, so this subclass declares the
image processor and the tokenizer alone and otherwise is Qwen2VLProcessor: the same prompt
expansion (one <|image_pad|> per merged patch) and the same pixel values.
"""

from __future__ import annotations

from pathlib import Path


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (CUDA build beside CPU torch) raises RuntimeError
        return False
    return True


def image_only_processor(image_processor, tokenizer, chat_template=None):
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def load_processor(folder: Path):
    """The folder's processor/ (image processor config + tokenizer files) without a video processor."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return image_only_processor(image_processor, tokenizer, getattr(tokenizer, "chat_template", None))
