"""Stable Audio Open: the family (family.py), ComfyUI's single files (single_file.py).
"""

from .family import StableAudio

FAMILIES = (StableAudio(),)
