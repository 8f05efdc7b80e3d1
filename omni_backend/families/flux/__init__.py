"""FLUX.1-dev/-schnell: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import Flux

FAMILIES = (Flux(),)
