"""A test-only ComfyUI custom node pack (no nodes): ComfyUI's core Load CLIP builds Qwen-Image's text
encoder from a fixed configuration, the 7B model's (3584 wide, 28 layers), whatever the file holds. For
the real-ComfyUI tier's test servers this shrinks that configuration to the tiny stand-in's sizes
(512 wide, two layers, 4 heads of 128) and the vision tower to one layer, which text prompts never
run. ComfyUI's tokenizer, chat template, dropped template tokens, Load CLIP and CLIP Text Encode are
left as they are. Linked into the test servers' custom_nodes/ by tests/comfyui_host.py; never part of
the pack.
"""

import dataclasses
import functools

import comfy.text_encoders.llama as llama
import comfy.text_encoders.qwen_vl as qwen_vl


@dataclasses.dataclass
class TinyQwen25VLConfig(llama.Qwen25_7BVLI_Config):
    hidden_size: int = 512
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4


if not getattr(llama.Qwen25_7BVLI_Config, "_tiny", False):
    TinyQwen25VLConfig._tiny = True
    llama.Qwen25_7BVLI_Config = TinyQwen25VLConfig
    qwen_vl.Qwen2VLVisionTransformer = functools.partial(qwen_vl.Qwen2VLVisionTransformer, num_layers=1)

NODE_CLASS_MAPPINGS = {}
