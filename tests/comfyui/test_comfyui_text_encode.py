"""ComfyUI's own text encoding equals the diffusers pipeline's encode_prompt (Qwen-Image), the fact
Sample's positive / negative CONDITIONING inputs rest on.

Part of the real-ComfyUI tier (tests/comfyui_host.py): runs with COMFYUI_PATH, skipped without. ComfyUI encodes
with its CLIP Loader and CLIP Text Encode in that interpreter (tests/comfyui_scripts/); the same
weights encode here through QwenImagePipeline.encode_prompt with ComfyUI's bundled Qwen2.5 tokenizer
(the tiny stand-in's 1024-token vocabulary is not ComfyUI's: ComfyUI finds the template's end by
the real tokenizer's ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from comfyui_host import tier

SCRIPT = Path(__file__).resolve().parents[1] / "comfyui_scripts" / "qwen_image_text_encode.py"
TEXTS = ["a red circle on a blue background", " ", "Ein Fuchs im Schnee, 32 px, «quoted» text"]

pytestmark = tier


def tiny_qwen25_vl_text_encoder():
    """Qwen2.5-VL with the real vocabulary and head size (ComfyUI recognises Qwen-Image's encoder by its
    512-wide k_proj bias: 4 KV heads of 128) and two 512-wide layers."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=512, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default"}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=512),
        vocab_size=152064, hidden_size=512,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():  # random embeddings of a realistic scale (the default init is tiny)
        model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
    return model


def comfy_layout(model) -> dict:
    """The text encoder's weights under the keys of ComfyUI's text_encoders/ files ("model.layers...")."""
    prefix = "model.language_model."
    return {"model." + name[len(prefix):]: tensor.contiguous() for name, tensor in model.state_dict().items()
            if name.startswith(prefix)}


def test_comfyui_text_encode_equals_the_pipelines_encode_prompt(tmp_path, comfyui_code):
    from diffusers import QwenImagePipeline
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import Qwen2Tokenizer

    model = tiny_qwen25_vl_text_encoder()
    weights, output = tmp_path / "qwen_2.5_vl_tiny.safetensors", tmp_path / "conditioning.safetensors"
    save_file(comfy_layout(model), weights)
    run = comfyui_code.run(SCRIPT, str(comfyui_code.path), str(weights), str(output), *TEXTS)
    assert run.returncode == 0, run.stderr[-3000:]

    tokenizer = Qwen2Tokenizer.from_pretrained(comfyui_code.path / "comfy" / "text_encoders" / "qwen25_tokenizer")
    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer, transformer=None)
    with safe_open(output, "pt") as comfy:
        keys = json.loads(comfy.metadata()["keys"])
        for index, text in enumerate(TEXTS):
            with torch.inference_mode():
                expected, mask = pipe.encode_prompt(text, device=torch.device("cpu"))
            got = comfy.get_tensor(f"embeds{index}")
            assert mask is None and keys[index] == [], "one prompt: no padding and no mask on either side"
            assert got.shape == expected.shape, f"{text!r}: ComfyUI kept {got.shape[1]} tokens, diffusers {expected.shape[1]}"
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # seen: 5e-7 (float32)
