"""VAE Decode Patch-Parallel: LATENT -> IMAGE (video: one IMAGE per frame), optionally tiled."""

from __future__ import annotations

from omni_backend.decode import decode_to_images
from omni_backend.engine import DecodeSettings, default_engine

from .common import CATEGORY, OMNI_MODEL, host_interrupts


class OmniVAEDecode:
    DESCRIPTION = ("Decode latents with the model's VAE. tile_size 0 decodes in one piece up to 1024 px and "
                   "in 512 px tiles above that.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": "The Omni model that made the samples: its VAE decodes them "
                                              "(and its Parallel Config's vae_patch_parallel ranks)."}),
            "samples": ("LATENT", {"tooltip": "The latents from Sample."}),
            "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 16,
                                  "tooltip": "Pixels per tile; 0 = automatic."}),
            "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 8,
                                     "tooltip": "Pixels shared by neighbouring tiles, blended to hide seams."}),
        }}

    def decode(self, model, samples, tile_size, tile_overlap):
        with host_interrupts():
            images, report = decode_to_images(default_engine(), model, samples,
                                              DecodeSettings(tile_size, tile_overlap))
        return {"ui": {"text": [report.text()]}, "result": (images,)}
