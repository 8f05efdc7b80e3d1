"""Qwen-Image-Edit (QwenImageEditPipeline, one image to edit) and Qwen-Image-Edit-2509
(QwenImageEditPlusPipeline, up to three reference images), on Qwen-Image's transformer and VAE.

The pipeline encodes the image twice: through the Qwen2.5-VL text encoder with the prompt (the
processor turns it into image tokens) and through the VAE, whose latents join the sequence the
transformer denoises; it resizes the VAE image to about 1024x1024 px whatever the output size.
"""

from __future__ import annotations

from pathlib import Path

from ..images import one_pil
from .qwen_image import QwenImage
from .qwen_vl_processor import image_only_processor, load_processor, torchvision_available


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
    example_model = "Qwen-Image-Edit-2509"
    example_prompt = "picture 1 as a watercolor painting"

    def call_kwargs(self, pipe, request):
        kwargs = super().call_kwargs(pipe, request)
        kwargs["image"] = [one_pil(image) for image in request.images]
        return kwargs
