"""Qwen-Image-Edit and Qwen-Image-Edit-2509: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import QwenImageEdit, QwenImageEditPlus

FAMILIES = (QwenImageEdit(), QwenImageEditPlus())
