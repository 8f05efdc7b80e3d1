"""Sample: run the denoiser and return a ComfyUI LATENT (raw VAE latents).

Sample shows what every model shares; what only some models take comes from the option node their
family declares (nodes/option_nodes.py), connected to its `options` input. Its node id is OmniSampleV2
because `OmniSample` is the Sample that workflows saved before that split hold (every option a widget of
its own, filled by position): it stays loadable, runs the same request and is hidden from the search.
"""

from __future__ import annotations

import dataclasses
import logging

from omni_backend.engine import default_engine
from omni_backend.errors import OmniInputError
from omni_backend.families import option_groups
from omni_backend.options import OMNI_OPTIONS, VIDEO, ModelOptions, checked_options, options_by_name
from omni_backend.request import LIMITS, GenerationRequest, check_image_slots
from omni_backend.run.conditioning import check_conditioning
from omni_backend.run.sampling import RunControl

from . import comfy_bridge
from .common import CATEGORY, LINKED, OMNI_MODEL, host_interrupts
from .text_conditioning import text_embedding

log = logging.getLogger("omni_diffusion")

SHARED_REQUIRED = {
    "model": (OMNI_MODEL, {"tooltip": "The Omni model with every feature applied upstream "
                                      "(caches, parallel, LoRAs, offload)."}),
    "prompt": ("STRING", {"multiline": True, "default": "",
                          "tooltip": "What the image, video or sound should show, in plain words. "
                                     "Qwen-Image-Layered: the image's caption; left empty, the pipeline "
                                     "captions the image with its own text encoder (a second model run)."}),
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
                           "tooltip": "True CFG scale, or the distilled guidance for FLUX.1-dev. <= 1 turns CFG off."}),
    "width": ("INT", {"default": 1024, "min": LIMITS["size"][0], "max": LIMITS["size"][1], "step": 16,
                      "tooltip": "Output width in pixels (multiple of 16; the model's native size, often 1024, "
                                 "works best). Not used by audio models, LongCat-Image-Edit and "
                                 "Qwen-Image-Layered (they size the output from the input image)."}),
    "height": ("INT", {"default": 1024, "min": LIMITS["size"][0], "max": LIMITS["size"][1], "step": 16,
                       "tooltip": "Output height in pixels (multiple of 16). Not used by audio models, "
                                  "LongCat-Image-Edit and Qwen-Image-Layered."}),
}
BATCH_SIZE = ("INT", {"default": 1, "min": LIMITS["batch_size"][0], "max": LIMITS["batch_size"][1],
                      "tooltip": "Images (or videos) generated together, each from its own noise; memory grows "
                                 "with it."})
IMAGE = ("IMAGE", {"tooltip": "The image to edit (edit models), to start the video from (image-to-video) or to "
                              "split into layers (Qwen-Image-Layered: RGB or RGBA). Text-only models refuse it."})
CONDITIONING = {
    "positive": ("CONDITIONING", {"tooltip": "The prompt encoded by ComfyUI (CLIP Text Encode with this model's "
                                             "text encoder), used instead of the prompt text. Qwen-Image, "
                                             "Z-Image, FLUX.2-klein and Wan2.2 take it."}),
    "negative": ("CONDITIONING", {"tooltip": "The negative prompt encoded by ComfyUI; needed with positive when "
                                             "guidance > 1."}),
}
SHARED_SETTINGS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "batch_size")


class OmniSampleV2:
    DESCRIPTION = ("Generate latents with the model and every feature applied to it upstream. Options only some "
                   "models take (video frames, more reference images, an audio window, layered or LongCat "
                   "options) come from that model's option node, connected to options.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {**SHARED_REQUIRED, "batch_size": BATCH_SIZE},
            "optional": {
                "image": IMAGE,
                **CONDITIONING,
                "options": (OMNI_OPTIONS, {"tooltip": "The model's own options, from its option node (Omni Video "
                                                      "Options, Omni Reference Images, Omni Audio Window, ...). A "
                                                      "model refuses an option node it does not take."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def check_inputs(cls, model, image=None, positive=None, negative=None, options=None, unique_id=None,
                     **settings):
        """The request this node would send, checked against the model's family (validators call this,
        with LINKED for what only a run produces)."""
        if model is LINKED:
            return None  # its model comes from something a validator cannot build: checked when it runs
        return checked_request(model, settings, image, positive, negative, option_values(model.family, options))

    def sample(self, model, image=None, positive=None, negative=None, options=None, unique_id=None, **settings):
        request = self.check_inputs(model, image, positive, negative, options, **settings)
        return run_sample(model, request, unique_id)


class OmniSample:
    """Sample as saved before the options moved to their nodes: the same request from one widget per option
    (saved workflows fill widgets by position, so its inputs never change)."""

    DESCRIPTION = ("Sample with every model's options as its own inputs, as workflows saved before the option "
                   "nodes hold it. New graphs use Sample with the model's option node.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "sample"
    DEPRECATED = True  # ComfyUI hides it from the node search; saved graphs still load it

    @classmethod
    def INPUT_TYPES(cls):
        declared = options_by_name(option_groups())
        legacy = ("image2", "image3", "last_image", "positive", "negative", "seconds", "start", "prompt_rewrite",
                  "cfg_renorm", "cfg_renorm_min", "mask", "layers", "resolution")
        optional = {"image": IMAGE}
        for name in legacy:
            optional[name] = CONDITIONING[name] if name in CONDITIONING else declared[name].input_type()
        return {
            "required": {**SHARED_REQUIRED, "frames": VIDEO.option("frames").input_type(), "batch_size": BATCH_SIZE},
            "optional": optional,
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def check_inputs(cls, model, image=None, positive=None, negative=None, unique_id=None, **inputs):
        if model is LINKED:
            return None
        settings = {name: inputs.pop(name) for name in SHARED_SETTINGS}
        return checked_request(model, settings, image, positive, negative, _set_options(inputs))

    def sample(self, model, image=None, positive=None, negative=None, unique_id=None, **inputs):
        return run_sample(model, self.check_inputs(model, image, positive, negative, **inputs), unique_id)


def option_values(family, options) -> dict:
    """The values of Sample's options link, after checking the model takes that option node."""
    if options is None or options is LINKED:
        return {}
    if not isinstance(options, ModelOptions):
        raise OmniInputError("options", type(options).__name__, "is not an Omni option node's output",
                             "connect an Omni option node (such as Omni Video Options) to options")
    taken = [group.title for group in family.option_groups]
    if options.group not in {group.key for group in family.option_groups}:
        raise OmniInputError("options", options.title, f"{family.title} takes no {options.title}",
                             f"disconnect it{'; this model takes ' + ' or '.join(taken) if taken else ''}")
    return dict(options.values)


def _set_options(inputs: dict) -> dict:
    """The old Sample's option widgets the user set: every link, and every value away from its default (a
    model refuses by name the options it does not take)."""
    declared = options_by_name(option_groups())
    values = {}
    for name, value in inputs.items():
        option = declared[name]
        default = str(option.default) if option.kind == "COMBO" else option.default
        if value is not None and value != default:
            values[name] = value
    return values


def checked_request(model, settings: dict, image, positive, negative, values: dict) -> GenerationRequest:
    """The request from Sample's shared settings, its image and the option values, checked against the model.
    A validator's LINKED images and masks are counted, not passed."""
    family, folder = model.family, model.model_folder
    values = dict(values)
    images = [value for value in (image, values.pop("image2", None), values.pop("image3", None)) if value is not None]
    frames = values.pop("frames", VIDEO.option("frames").default)  # a request field: every video model has it
    positive, negative = text_embedding(positive, "positive"), text_embedding(negative, "negative")
    request = GenerationRequest(**settings, frames=frames, images=tuple(v for v in images if v is not LINKED),
                                positive=None if positive is LINKED else positive,
                                negative=None if negative is LINKED else negative)
    options = checked_options(family, values)
    check_image_slots(family, len(images), options.get("last_image") is not None, options.get("mask") is not None)
    linked = LINKED in (*images, *options.values())
    request = dataclasses.replace(request, options={name: (None if value is LINKED else value)
                                                    for name, value in options.items()})
    if not linked:
        request = request.validate_images(family)
    check_conditioning(family, folder.transformer_config, folder.model_index, request.guidance, positive, negative)
    return request.validate_model_inputs(family, folder)


def run_sample(model, request: GenerationRequest, unique_id) -> dict:
    control = RunControl(progress=comfy_bridge.Progress(request.steps, unique_id),
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

