"""LongCat-Image and LongCat-Image-Edit: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import LongCatImage, LongCatImageEdit

FAMILIES = (LongCatImage(), LongCatImageEdit())
