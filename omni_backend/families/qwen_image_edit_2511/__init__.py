"""Qwen-Image-Edit-2511: the family (family.py).
"""

from .family import QwenImageEdit2511

FAMILIES = (QwenImageEdit2511(),)
