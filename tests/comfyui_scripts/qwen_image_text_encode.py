"""Run inside a ComfyUI checkout's interpreter: ComfyUI's own CLIP Loader (type qwen_image) and CLIP
Text Encode on a tiny Qwen2.5-VL text encoder, writing the CONDITIONING it gives to a safetensors file.

    python qwen_image_text_encode.py COMFYUI_PATH WEIGHTS.safetensors OUT.safetensors TEXT [TEXT ...]

ComfyUI builds Qwen-Image's text encoder from a fixed configuration, the 7B model's, whatever the
file holds, so a tiny file cannot load as it is: tiny_qwen_text_encoder/ (beside this script) shrinks
that configuration to the tiny model's sizes; the tokenizer, the chat template, the dropped template
tokens, the loader and the encoder are ComfyUI's own.
Test helper only (tests/comfyui/test_comfyui_text_encode.py); never imported by the pack.
"""

import json
import os
import sys

comfy_path, weights, output, *texts = sys.argv[1:]
sys.path.insert(0, comfy_path)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = [sys.argv[0], "--cpu", "--fp32-text-enc"]  # ComfyUI's CPU default is fp16 text encoders

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import tiny_qwen_text_encoder  # noqa: E402, F401  the tiny sizes (the real-ComfyUI tier's test pack)
import comfy.sd  # noqa: E402
import nodes  # noqa: E402  ComfyUI's core nodes
from safetensors.torch import save_file  # noqa: E402

clip = comfy.sd.load_clip(ckpt_paths=[weights], clip_type=comfy.sd.CLIPType.QWEN_IMAGE)
tensors, extras = {}, []
for index, text in enumerate(texts):
    (conditioning,) = nodes.CLIPTextEncode().encode(clip, text)
    assert len(conditioning) == 1
    embeds, extra = conditioning[0]
    tensors[f"embeds{index}"] = embeds.float().contiguous()
    if extra.get("attention_mask") is not None:
        tensors[f"mask{index}"] = extra["attention_mask"].contiguous()
    extras.append(sorted(key for key, value in extra.items() if value is not None))
save_file(tensors, output, metadata={"keys": json.dumps(extras), "class": type(clip.cond_stage_model).__name__})
