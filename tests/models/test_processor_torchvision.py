"""The Qwen edit families' processor with and without torchvision gives the model the same inputs.

Where torchvision imports (every ComfyUI install), transformers builds the folder's full
Qwen2VLProcessor (with its video processor); where it does not (this project's CPU machines: PyPI's
torchvision is built for CUDA torch), the pack builds the image-only processor of
`families/qwen_vl_processor.py`. Both must give the same image tokens, pixel values and grid, hence
the same prompt embeddings. CI has no working torchvision, so this is skipped there; it ran in a
ComfyUI venv (torch 2.14.1, torchvision 0.29.1): `PYTHONPATH=. python -m pytest --noconftest
tests/models/test_processor_torchvision.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_backend.families.qwen_vl_processor import load_processor, torchvision_available

pytestmark = pytest.mark.skipif(not torchvision_available(), reason="torchvision does not import here")


def test_image_only_processor_equals_transformers_own(tmp_path: Path):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Qwen2VLProcessor

    from omni_backend.families import FAMILIES

    folder = FAMILIES["qwen-image-edit"].make_tiny(tmp_path / "edit")
    full = Qwen2VLProcessor.from_pretrained(folder / "processor", local_files_only=True)
    assert full.video_processor is not None, "transformers built its own processor, video part included"
    ours = load_processor(folder / "processor")
    pixels = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    text = "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>make the sky red<|im_end|>\n"
    theirs_out = full(text=[text], images=[image], padding=True, return_tensors="pt")
    ours_out = ours(text=[text], images=[image], padding=True, return_tensors="pt")
    assert set(theirs_out) == set(ours_out)
    for key in theirs_out:
        assert torch.equal(theirs_out[key], ours_out[key]), key
    assert int((ours_out["input_ids"] == ours.image_token_id).sum()) > 1, "the image expanded into its patches"

