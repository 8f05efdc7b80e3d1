"""Wan2.2: text-to-video (A14B), image-to-video (A14B) and TI2V 5B: the family (family.py, image_to_video.py),
ComfyUI's single files (single_file.py).
"""

from .family import Wan
from .image_to_video import WanI2V, WanTI2V

FAMILIES = (Wan(), WanI2V(), WanTI2V())
