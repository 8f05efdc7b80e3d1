"""Qwen-Image-Edit and -2509 from ComfyUI's files: Qwen-Image's DiT layout, text encoder and VAE
(`diffusion_models/qwen_image_edit_fp8_e4m3fn.safetensors`, `qwen_image_edit_2509_fp8_e4m3fn.safetensors`,
`text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors`,
`vae/qwen_image_vae.safetensors`).

Edit's and Edit-2509's DiTs have Qwen-Image's names and shapes, so the files cannot tell the three apart:
the loader's `family` input names the edit models ("auto" reads a Qwen-Image). They add the processor that turns the
input image into the text encoder's vision tokens: Qwen2VLImageProcessor with the released config (or
a `preprocessor_config.json` beside the tokenizer, where the tiny twins keep theirs) and the tokenizer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..qwen_image.single_file import PROFILE as QWEN_IMAGE

# Qwen-Image-Edit's (and Edit-2509's) processor/preprocessor_config.json.
IMAGE_PROCESSOR = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                       image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
PROCESSOR_FILE = "preprocessor_config.json"


def processor(tokenizer, tokenizer_folder: Path | None):
    from transformers import Qwen2VLImageProcessor

    from ..qwen_vl_processor import image_only_processor

    if tokenizer_folder is not None and (tokenizer_folder / PROCESSOR_FILE).is_file():
        image_processor = Qwen2VLImageProcessor.from_pretrained(tokenizer_folder, local_files_only=True)
    else:
        image_processor = Qwen2VLImageProcessor(**IMAGE_PROCESSOR)
    return image_only_processor(image_processor, tokenizer, getattr(tokenizer, "chat_template", None))


# auto_detect: a file alone reads as Qwen-Image's; the loader's family input names these.
EDIT = dataclasses.replace(
    QWEN_IMAGE, family_key="qwen-image-edit", auto_detect=False, pipeline_class="QwenImageEditPipeline", processor=processor,
    file_names={**QWEN_IMAGE.file_names, "diffusion_model": "qwen_image_edit_{weights}.safetensors"})
EDIT_2509 = dataclasses.replace(
    EDIT, family_key="qwen-image-edit-2509", pipeline_class="QwenImageEditPlusPipeline",
    file_names={**QWEN_IMAGE.file_names, "diffusion_model": "qwen_image_edit_2509_{weights}.safetensors"})
PROFILES = (EDIT, EDIT_2509)
