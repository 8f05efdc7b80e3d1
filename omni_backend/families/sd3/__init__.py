"""Stable Diffusion 3.5: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import StableDiffusion3

FAMILIES = (StableDiffusion3(),)
