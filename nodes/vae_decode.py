"""VAE Decode Patch-Parallel: LATENT -> IMAGE (video: one IMAGE per frame), optionally tiled; or AUDIO
for audio models; layered models (Qwen-Image-Layered) give their layers as IMAGE plus MASK
(1 - alpha). The output the model does not make is blocked: a node fed from it stops with a
message saying which output to use (ComfyUI's ExecutionBlocker)."""

from __future__ import annotations

from omni_backend.engine import DecodeSettings, default_engine
from omni_backend.run.decode import decode_to_audio, decode_to_images, split_alpha

from . import comfy_bridge
from .common import CATEGORY, OMNI_MODEL, host_interrupts


class OmniVAEDecode:
    DESCRIPTION = ("Decode latents with the model's VAE. tile_size 0 decodes in one piece up to 1024 px and "
                   "in 512 px tiles above that. Audio models give audio (cut to Sample's seconds) on the audio "
                   "output. Qwen-Image-Layered gives every layer (the batch, in the pipeline's order) on images and "
                   "its transparency on masks (1 - alpha, as Load Image gives it): Join Image with Alpha makes "
                   "them RGBA for Save Image.")
    CATEGORY = CATEGORY
    # Outputs only grow at the end: saved workflows link them by slot number.
    RETURN_TYPES = ("IMAGE", "AUDIO", "MASK")
    RETURN_NAMES = ("images", "audio", "masks")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (OMNI_MODEL, {"tooltip": "The Omni model that made the samples: its VAE decodes them "
                                              "(and its Parallel Config's vae_patch_parallel ranks)."}),
            "samples": ("LATENT", {"tooltip": "The latents from Sample."}),
            "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 16,
                                  "tooltip": "Pixels per tile; 0 = automatic (images and video only)."}),
            "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 8,
                                     "tooltip": "Pixels shared by neighbouring tiles, blended to hide seams."}),
        }}

    def decode(self, model, samples, tile_size, tile_overlap):
        title = model.family.title
        with host_interrupts():
            if model.family.audio:
                audio, report = decode_to_audio(default_engine(), model, samples, DecodeSettings(tile_size, tile_overlap))
                images = comfy_bridge.blocked(f"{title} makes audio: connect the decode's audio output (to Save Audio "
                                              "or Preview Audio), not its images output")
                masks = comfy_bridge.blocked(f"{title} makes audio, no masks: connect the decode's audio output")
                return {"ui": {"text": [report.text()]}, "result": (images, audio, masks)}
            images, report = decode_to_images(default_engine(), model, samples, DecodeSettings(tile_size, tile_overlap))
        audio = comfy_bridge.blocked(f"{title} makes images, not audio: connect the decode's images output")
        if model.family.layered:
            images, masks = split_alpha(images)
        else:
            masks = comfy_bridge.blocked(f"{title} makes opaque images, no masks: only layered models "
                                         "(Qwen-Image-Layered) fill the decode's masks output")
        return {"ui": {"text": [report.text()]}, "result": (images, audio, masks)}
