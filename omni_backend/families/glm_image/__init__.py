"""GLM-Image (no ComfyUI single files): the family (family.py).
"""

from .family import GlmImage

FAMILIES = (GlmImage(),)
