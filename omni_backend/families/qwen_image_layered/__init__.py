"""Qwen-Image-Layered: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import QwenImageLayered

FAMILIES = (QwenImageLayered(),)
