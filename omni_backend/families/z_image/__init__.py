"""Z-Image: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import ZImage

FAMILIES = (ZImage(),)
