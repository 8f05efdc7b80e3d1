"""Sample: run the denoiser and return a ComfyUI LATENT (raw VAE latents)."""

from __future__ import annotations

import logging

from omni_backend.engine import default_engine
from omni_backend.request import LIMITS, GenerationRequest, check_image_slots, check_model_options
from omni_backend.run.conditioning import check_conditioning
from omni_backend.run.sampling import RunControl

from . import comfy_bridge
from .common import CATEGORY, LINKED, OMNI_MODEL, host_interrupts
from .text_conditioning import text_embedding

log = logging.getLogger("omni_diffusion")


class OmniSample:
    DESCRIPTION = "Generate latents with the model and every feature applied to it upstream."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (OMNI_MODEL, {"tooltip": "The Omni model with every feature applied upstream "
                                                  "(caches, parallel, LoRAs, offload)."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What the image or video should show, in plain words. "
                                                 "Qwen-Image-Layered: the image's caption; left empty, the "
                                                 "pipeline captions the image with its own text encoder "
                                                 "(a second model run)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "Used when the model runs true CFG (guidance > 1)."}),
                "seed": ("INT", {"default": 0, "min": LIMITS["seed"][0], "max": LIMITS["seed"][1],
                                 "control_after_generate": True,
                                 "tooltip": "Starting noise: the same seed and settings give the same result."}),
                "steps": ("INT", {"default": 20, "min": LIMITS["steps"][0], "max": LIMITS["steps"][1],
                                  "tooltip": "Denoising steps: more is slower and finer (20 to 50 typical; "
                                             "distilled models need 4 to 8)."}),
                "guidance": ("FLOAT", {"default": 4.0, "min": LIMITS["guidance"][0], "max": LIMITS["guidance"][1],
                                       "step": 0.1, "round": 0.01,
                                       "tooltip": "True CFG scale, or the distilled guidance for FLUX.1-dev. "
                                                  "<= 1 turns CFG off."}),
                "width": ("INT", {"default": 1024, "min": LIMITS["size"][0], "max": LIMITS["size"][1], "step": 16,
                                  "tooltip": "Output width in pixels (multiple of 16; the model's native size, "
                                             "often 1024, works best). Not used by LongCat-Image-Edit and "
                                             "Qwen-Image-Layered: they size the output from the input image."}),
                "height": ("INT", {"default": 1024, "min": LIMITS["size"][0], "max": LIMITS["size"][1], "step": 16,
                                   "tooltip": "Output height in pixels (multiple of 16). Not used by "
                                              "LongCat-Image-Edit and Qwen-Image-Layered."}),
                "frames": ("INT", {"default": 1, "min": LIMITS["frames"][0], "max": LIMITS["frames"][1], "step": 4,
                                   "tooltip": "Video models only (4*k+1); images use 1."}),
                "batch_size": ("INT", {"default": 1, "min": LIMITS["batch_size"][0], "max": LIMITS["batch_size"][1],
                                       "tooltip": "Images (or videos) generated together, each from its own "
                                                  "noise; memory grows with it."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The image to edit (edit models), to start the video from "
                                               "(image-to-video) or to split into layers (Qwen-Image-Layered: "
                                               "RGB or RGBA). Text-only models refuse it."}),
                "image2": ("IMAGE", {"tooltip": "A second reference image (Qwen-Image-Edit-2509 takes up to three)."}),
                "image3": ("IMAGE", {"tooltip": "A third reference image (Qwen-Image-Edit-2509)."}),
                "last_image": ("IMAGE", {"tooltip": "Wan2.2 image-to-video: the frame the video should end on."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt encoded by ComfyUI (CLIP Text Encode with this "
                                                         "model's text encoder), used instead of the prompt text. "
                                                         "Qwen-Image, Z-Image, FLUX.2-klein and Wan2.2 take it."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt encoded by ComfyUI; needed with "
                                                         "positive when guidance > 1."}),
                "seconds": ("FLOAT", {"default": 0.0, "min": LIMITS["seconds"][0], "max": LIMITS["seconds"][1],
                                      "step": 0.1, "tooltip": "Audio models only: seconds of audio to keep (0 = the "
                                                              "model's whole window, 47.55 s for Stable Audio Open). "
                                                              "Image and video models need 0."}),
                "start": ("FLOAT", {"default": 0.0, "min": LIMITS["start"][0], "max": LIMITS["start"][1], "step": 0.1,
                                    "tooltip": "Audio models only: where the kept seconds start in the model's "
                                               "window. Image and video models need 0."}),
                "prompt_rewrite": ("BOOLEAN", {"default": False,
                                               "tooltip": "LongCat-Image: let its vision-language model rewrite the "
                                                          "prompt first (a second model run; the prompt used is "
                                                          "shown below the node). Other models refuse it."}),
                "cfg_renorm": ("BOOLEAN", {"default": True,
                                           "tooltip": "LongCat-Image: rescale the guided prediction to the norm of "
                                                      "the conditional one (diffusers' default: on)."}),
                "cfg_renorm_min": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                             "tooltip": "LongCat-Image: the lowest renorm scale (0 widest range, "
                                                        "1 turns renorm off)."}),
                "mask": ("MASK", {"tooltip": "Qwen-Image-Layered: the image's transparency (connect Load Image's "
                                             "MASK: 1 - alpha). Without it, a 4-channel image's alpha is used, "
                                             "else the image is opaque. Other models refuse it."}),
                "layers": ("INT", {"default": 4, "min": LIMITS["layers"][0], "max": LIMITS["layers"][1],
                                   "tooltip": "Qwen-Image-Layered: how many RGBA layers to split the image into "
                                              "(the decode gives them as an image batch plus their masks). "
                                              "Other models need the default."}),
                "resolution": (["640", "1024"], {"default": "640",
                                             "tooltip": "Qwen-Image-Layered: the size bucket (about 640x640 or "
                                                        "1024x1024 px at the image's aspect; 640 recommended). It "
                                                        "decides the output size: width/height are not used. "
                                                        "Other models need the default."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def check_inputs(cls, model, prompt, negative_prompt, seed, steps, guidance, width, height, frames, batch_size,
                     image=None, image2=None, image3=None, last_image=None, positive=None, negative=None,
                     seconds=0.0, start=0.0, prompt_rewrite=False, cfg_renorm=True, cfg_renorm_min=0.0,
                     mask=None, layers=4, resolution="640", **_hidden):
        """The request this node would send, checked against the model's family (validators call this,
        with LINKED for images only a run will produce)."""
        if model is LINKED:
            return None  # its model comes from something a validator cannot build: checked when it runs
        given = [value for value in (image, image2, image3) if value is not None]
        positive, negative = text_embedding(positive, "positive"), text_embedding(negative, "negative")
        request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                                    guidance=guidance, seed=seed, width=width, height=height, frames=frames,
                                    batch_size=batch_size, images=tuple(v for v in given if v is not LINKED),
                                    last_image=None if last_image is LINKED else last_image,
                                    positive=None if positive is LINKED else positive,
                                    negative=None if negative is LINKED else negative,
                                    seconds=seconds, start=start, prompt_rewrite=prompt_rewrite, cfg_renorm=cfg_renorm,
                                    cfg_renorm_min=cfg_renorm_min,
                                    mask=None if mask is LINKED else mask,
                                    layers=layers, resolution=_resolution(resolution))
        check_image_slots(model.family, len(given), last_image is not None, mask is not None)
        check_model_options(model.family, request)
        folder = model.model_folder
        check_conditioning(model.family, folder.transformer_config, folder.model_index, request.guidance,
                           positive, negative)
        return request.validate_model_inputs(model.family, folder)

    def sample(self, model, prompt, negative_prompt, seed, steps, guidance, width, height, frames, batch_size,
               image=None, image2=None, image3=None, last_image=None, positive=None, negative=None, seconds=0.0,
               start=0.0, prompt_rewrite=False, cfg_renorm=True, cfg_renorm_min=0.0, mask=None, layers=4,
               resolution="640", unique_id=None):
        request = self.check_inputs(model, prompt, negative_prompt, seed, steps, guidance, width, height, frames,
                                    batch_size, image, image2, image3, last_image, positive, negative, seconds, start,
                                    prompt_rewrite, cfg_renorm, cfg_renorm_min, mask, layers, resolution)
        control = RunControl(progress=comfy_bridge.Progress(steps, unique_id),
                             interrupted=comfy_bridge.interrupt_requested)
        engine = default_engine()
        if comfy_bridge.calibration_file() is not None:
            engine.calibrations.use_file(comfy_bridge.calibration_file())
        comfy_bridge.make_room(engine.bytes_to_load(model), model.device)
        with host_interrupts():
            result = engine.generate(model, request, control)
        report = result.report.text()
        if report:
            log.info("Omni Sample:\n%s", report)
        latent = result.latent(model)
        return {"ui": {"text": [report or "plain run"]}, "result": (latent,)}


def _resolution(value):
    """The combo's text ("640", "1024"; a combo of strings, as ComfyUI's frontend expects) as the number the
    pipeline takes; anything else is left for GenerationRequest to refuse by name."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value
