"""Qwen-Image-Edit (QwenImageEditPipeline, one image to edit) and Qwen-Image-Edit-2509
(QwenImageEditPlusPipeline, up to three reference images), on Qwen-Image's transformer and VAE.

The pipeline encodes the image twice: through the Qwen2.5-VL text encoder with the prompt (the
processor turns it into image tokens) and through the VAE, whose latents join the sequence the
transformer denoises; it resizes the VAE image to about 1024x1024 px whatever the output size.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
from pathlib import Path

from ...errors import OmniInputError
from ...files.images import one_pil
from ...options import REFERENCE_IMAGES
from ..qwen_image.family import QwenImage
from ..qwen_vl_processor import image_only_processor, load_processor, torchvision_available


# A folder's model_index.json may declare the area in pixels that QwenImageEditPipeline resizes the input
# image to (diffusers: about 1024x1024, a literal in its __call__). Only a small model trained at another
# size needs it: the reference edit model works at 64x64 px, as the text-to-image reference draws, where
# the 1 MP default would feed its 16-token scene to the transformer as 4096 tokens (seconds per call).
INPUT_AREA_KEY = "_omni_input_image_area"
_INPUT_AREA: contextvars.ContextVar[int | None] = contextvars.ContextVar("qwen_edit_input_area", default=None)


def _install_area_aware_dimensions() -> None:
    """Wrap the edit pipeline module's calculate_dimensions (the function its __call__ sizes the input
    image with) once, so that it takes the area of the run in progress where one is set. The wrapper
    reads a ContextVar: every other run, thread and pipeline keeps diffusers' own 1 MP."""
    module = importlib.import_module("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit")
    original = module.calculate_dimensions
    if getattr(original, "omni_area_aware", False):
        return

    def calculate_dimensions(target_area, ratio):
        return original(_INPUT_AREA.get() or target_area, ratio)

    calculate_dimensions.omni_area_aware = True
    module.calculate_dimensions = calculate_dimensions


@contextlib.contextmanager
def _input_area(area: int):
    _install_area_aware_dimensions()
    token = _INPUT_AREA.set(area)
    try:
        yield
    finally:
        _INPUT_AREA.reset(token)


class QwenImageEdit(QwenImage):
    key = "qwen-image-edit"
    title = "Qwen-Image-Edit"
    pipeline_classes = ("QwenImageEditPipeline",)
    image_inputs = 1
    requires_image = True
    example_model = "Qwen-Image-Edit"
    example_sample = dict(steps=20, guidance=4.0, width=768, height=768, negative_prompt=" ")
    example_prompt = "make the sky a warm sunset orange"
    # ComfyUI's TextEncodeQwenImageEdit(Plus) puts the picture into the conditioning itself: vision
    # tokens from its own resize of the image, and reference latents from its VAE at its own size rule.
    # The diffusers pipeline makes both from Sample's image by other resize rules, so the embeddings
    # would describe another version of the picture than the latents the edit starts from.
    conditioning_refusal = ("ComfyUI's TextEncodeQwenImageEdit encodes the input image into the conditioning "
                            "(vision tokens and reference latents) by its own resize rules, which the pipeline "
                            "does not share, so the result would not be the model's")

    def load_kwargs(self, folder) -> dict:
        if torchvision_available():
            return {}  # transformers builds the folder's own processor
        return {"processor": load_processor(Path(folder.path) / "processor")}

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs["image"] = one_pil(request.images[0])
        return kwargs

    def call_context(self, folder, request):
        area = folder.model_index.get(INPUT_AREA_KEY)
        if area is None:
            return contextlib.nullcontext()
        if folder.pipeline_class != "QwenImageEditPipeline":
            raise OmniInputError("model", folder.name, f"its model_index.json sets {INPUT_AREA_KEY}, which only "
                                 "QwenImageEditPipeline folders may set", f"remove {INPUT_AREA_KEY} from it")
        if not isinstance(area, int) or isinstance(area, bool) or area < 32 * 32:
            raise OmniInputError("model", folder.name, f"its model_index.json sets {INPUT_AREA_KEY} to {area!r}",
                                 "make it a whole number of pixels of at least 1024 (32x32), or remove it")
        return _input_area(area)

    def build_tiny(self):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

        base = super().build_tiny()
        tokenizer = base.tokenizer
        tokenizer.add_special_tokens({"additional_special_tokens": [
            "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
        config = base.text_encoder.config
        config.vision_start_token_id = tokenizer.convert_tokens_to_ids("<|vision_start|>")
        config.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        config.video_token_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
        torch.manual_seed(1)
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
        image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64, patch_size=14,
                                                merge_size=2, temporal_patch_size=2)
        processor = image_only_processor(image_processor, tokenizer, tokenizer.chat_template)
        pipeline_class = self.pipeline_class(self.pipeline_classes[0])
        return pipeline_class(scheduler=base.scheduler, vae=base.vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, processor=processor, transformer=base.transformer)

    def make_tiny(self, directory):
        """save_pretrained cannot write a processor without its video part: write its two halves."""
        import torch

        torch.manual_seed(0)
        pipe = self.build_tiny()
        directory = Path(directory)
        processor, pipe.processor = pipe.processor, None
        pipe.save_pretrained(directory, safe_serialization=True)
        processor.image_processor.save_pretrained(directory / "processor")
        processor.tokenizer.save_pretrained(directory / "processor")
        index = directory / "model_index.json"
        import json

        model_index = json.loads(index.read_text())
        model_index["processor"] = ["transformers", "Qwen2VLProcessor"]
        index.write_text(json.dumps(model_index, indent=2))
        return directory


class QwenImageEditPlus(QwenImageEdit):
    """Qwen-Image-Edit-2509: each image becomes "Picture i:" in the prompt (the VL model sees them at
    about 384x384 px) and its own VAE latents in the sequence (about 1024x1024 px each)."""

    key = "qwen-image-edit-2509"
    title = "Qwen-Image-Edit-2509"
    pipeline_classes = ("QwenImageEditPlusPipeline",)
    image_inputs = 3
    option_groups = (REFERENCE_IMAGES,)
    example_model = "Qwen-Image-Edit-2509"
    example_prompt = "picture 1 as a watercolor painting"

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs["image"] = [one_pil(image) for image in request.images]
        return kwargs
