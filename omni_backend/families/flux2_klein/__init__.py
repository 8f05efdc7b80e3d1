"""FLUX.2-klein: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import Flux2Klein

FAMILIES = (Flux2Klein(),)
