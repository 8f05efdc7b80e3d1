"""The decoders: LATENT -> what the model makes, one node per output kind, so no output is ever blocked.

- VAE Decode Patch-Parallel: images, or a video's frames (one IMAGE per frame), optionally tiled and split
  over the Parallel Config's vae_patch_parallel ranks;
- Omni VAE Decode Audio: AUDIO, cut to the Omni Audio Window's seconds;
- Omni VAE Decode Layers: Qwen-Image-Layered's layers as IMAGE plus their transparency as MASK.

A model of another kind is refused with the node to use. `OmniVAEDecode` is the one decoder with all three
outputs that workflows saved before the split hold (linked by slot number): it stays loadable, blocks the
outputs the model does not make, and is hidden from the search.
"""

from __future__ import annotations

from omni_backend.engine import DecodeSettings, default_engine
from omni_backend.errors import OmniInputError
from omni_backend.run.decode import decode_to_audio, decode_to_images, split_alpha

from . import comfy_bridge
from .common import CATEGORY, OMNI_MODEL, host_interrupts

INPUTS = {
    "model": (OMNI_MODEL, {"tooltip": "The Omni model that made the samples: its VAE decodes them "
                                      "(and its Parallel Config's vae_patch_parallel ranks)."}),
    "samples": ("LATENT", {"tooltip": "The latents from Sample."}),
}
TILES = {
    "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 16,
                          "tooltip": "Pixels per tile; 0 = automatic (one piece up to 1024 px, 512 px tiles above)."}),
    "tile_overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 8,
                             "tooltip": "Pixels shared by neighbouring tiles, blended to hide seams."}),
}
# The decoder for each kind of output, by what the family makes.
DECODER_FOR = {"images": "VAE Decode Patch-Parallel", "audio": "Omni VAE Decode Audio",
               "layers": "Omni VAE Decode Layers"}


def output_kind(family) -> str:
    return "audio" if family.audio else "layers" if family.layered else "images"


class _Decoder:
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    KIND = ""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**INPUTS, **TILES}}

    @classmethod
    def check_inputs(cls, model, **_inputs):
        """The model makes what this node decodes (validators call this before anything runs)."""
        kind = output_kind(model.family) if hasattr(model, "family") else cls.KIND
        if kind != cls.KIND:
            raise OmniInputError("model", model.family.title, f"makes {kind}, which {DECODER_FOR[cls.KIND]} does "
                                 "not decode", f"decode with {DECODER_FOR[kind]} instead")

    def decode(self, model, samples, tile_size=0, tile_overlap=64):
        self.check_inputs(model)
        with host_interrupts():
            if self.KIND == "audio":
                audio, report = decode_to_audio(default_engine(), model, samples,
                                                DecodeSettings(tile_size, tile_overlap))
                return {"ui": {"text": [report.text()]}, "result": (audio,)}
            images, report = decode_to_images(default_engine(), model, samples,
                                              DecodeSettings(tile_size, tile_overlap))
        result = split_alpha(images) if self.KIND == "layers" else (images,)
        return {"ui": {"text": [report.text()]}, "result": tuple(result)}


class OmniVAEDecodeImages(_Decoder):
    DESCRIPTION = ("Decode an image or video model's latents with its VAE (a video gives one IMAGE per frame). "
                   "tile_size 0 decodes in one piece up to 1024 px and in 512 px tiles above that; the Parallel "
                   "Config's vae_patch_parallel splits the tiles over its ranks.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    KIND = "images"


class OmniVAEDecodeAudio(_Decoder):
    DESCRIPTION = "Decode an audio model's latents to AUDIO (cut to the Omni Audio Window's seconds)."
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    KIND = "audio"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": dict(INPUTS)}


class OmniVAEDecodeLayers(_Decoder):
    DESCRIPTION = ("Decode Qwen-Image-Layered's latents: every layer (the batch, in the pipeline's order) on images "
                   "and its transparency on masks (1 - alpha, as Load Image gives it). Join Image with Alpha makes "
                   "them RGBA for Save Image.")
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "masks")
    KIND = "layers"


class OmniVAEDecode:
    DESCRIPTION = ("The decoder with an images, an audio and a masks output, as workflows saved before the "
                   "decoders split hold it; the outputs the model does not make are blocked. New graphs use the "
                   "decoder of the model's kind.")
    CATEGORY = CATEGORY
    # Saved workflows link these by slot number: they never change.
    RETURN_TYPES = ("IMAGE", "AUDIO", "MASK")
    RETURN_NAMES = ("images", "audio", "masks")
    FUNCTION = "decode"
    DEPRECATED = True  # ComfyUI hides it from the node search; saved graphs still load it

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**INPUTS, **TILES}}

    def decode(self, model, samples, tile_size, tile_overlap):
        title, kind = model.family.title, output_kind(model.family)
        decoded = {"audio": OmniVAEDecodeAudio, "layers": OmniVAEDecodeLayers,
                   "images": OmniVAEDecodeImages}[kind]().decode(model, samples, tile_size, tile_overlap)
        outputs = {"images": comfy_bridge.blocked(f"{title} makes {kind}: connect the decode's {kind} output"),
                   "audio": comfy_bridge.blocked(f"{title} makes {kind}, not audio: connect the decode's images "
                                                 "output"),
                   "masks": comfy_bridge.blocked(f"{title} makes opaque {kind}, no masks: only layered models "
                                                 "(Qwen-Image-Layered) fill the decode's masks output")}
        if kind == "audio":
            outputs["audio"] = decoded["result"][0]
            outputs["masks"] = comfy_bridge.blocked(f"{title} makes audio, no masks: connect the decode's audio "
                                                    "output")
        else:
            outputs["images"] = decoded["result"][0]
            if kind == "layers":
                outputs["masks"] = decoded["result"][1]
        return {"ui": decoded["ui"], "result": (outputs["images"], outputs["audio"], outputs["masks"])}
