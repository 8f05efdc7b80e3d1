"""One generation request: the per-run settings that never change weights.

LIMITS are the ranges Sample declares to ComfyUI (nodes/sample.py reads them from here), so the
Python API and the CLI refuse exactly what the node refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import OmniInputError
from .rules.checks import check_image, check_mask, in_image_range, prompt_text, real_number, whole_number
from .run.conditioning import TextEmbedding, check_conditioning

LIMITS = {
    "steps": (1, 1000),
    "guidance": (0.0, 30.0),
    "seed": (0, 2**64 - 1),
    "size": (16, 8192),  # width and height
    "frames": (1, 1025),
    "batch_size": (1, 64),
    "seconds": (0.0, 1000.0),  # audio models only (0: the model's whole window)
    "start": (0.0, 1000.0),
    "layers": (1, 20),  # Qwen-Image-Layered only: how many RGBA layers to split the image into
}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    steps: int = 28
    guidance: float = 4.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    frames: int = 1  # video families only
    batch_size: int = 1
    # Conditioning images (edit, image-to-video): ComfyUI IMAGE tensors [1, H, W, 3], float 0..1, in
    # the order of Sample's image inputs; `last_image` is image-to-video's optional last frame.
    images: tuple = ()
    last_image: Any = None
    # Prompt embeddings from ComfyUI's text-encode nodes (conditioning.TextEmbedding), used instead of
    # `prompt` / `negative_prompt` by families whose embeddings match ComfyUI's.
    positive: Any = None
    negative: Any = None
    # Audio models: how many seconds to keep and where they start in the model's window (0: all of it).
    seconds: float = 0.0
    start: float = 0.0
    # LongCat-Image's own options (see MODEL_OPTIONS): rewriting the prompt with its vision-language
    # model first is a second model run that changes the prompt, so it is off unless asked; CFG
    # renormalisation keeps diffusers' defaults (on, scale clamped to [cfg_renorm_min, 1]).
    prompt_rewrite: bool = False
    cfg_renorm: bool = True
    cfg_renorm_min: float = 0.0
    # Qwen-Image-Layered: the input image's transparency as a ComfyUI MASK [1, H, W] (1 - alpha, core Load
    # Image's convention; None: the image's fourth channel if it has one, else opaque), how many layers to
    # make, and the size bucket the pipeline works at (about resolution^2 pixels at the image's aspect).
    mask: Any = None
    layers: int = 4
    resolution: int = 640

    def __post_init__(self):
        checked = {
            "prompt": prompt_text("prompt", self.prompt),
            "negative_prompt": prompt_text("negative_prompt", self.negative_prompt),
            "steps": whole_number("steps", self.steps, *LIMITS["steps"]),
            "guidance": real_number("guidance", self.guidance, *LIMITS["guidance"],
                                    fix="use 0-1 to turn guidance off, or a value like 4.0 (at most 30)"),
            "seed": whole_number("seed", self.seed, *LIMITS["seed"], fix="pick a seed from 0 to 2^64-1"),
            "width": whole_number("width", self.width, *LIMITS["size"]),
            "height": whole_number("height", self.height, *LIMITS["size"]),
            "frames": whole_number("frames", self.frames, *LIMITS["frames"]),
            "batch_size": whole_number("batch_size", self.batch_size, *LIMITS["batch_size"]),
            "seconds": real_number("seconds", self.seconds, *LIMITS["seconds"],
                                   fix="use 0 (the model's whole window) or a length such as 10.0"),
            "start": real_number("start", self.start, *LIMITS["start"], fix="use 0.0 or a few seconds"),
        }
        for name in ("prompt_rewrite", "cfg_renorm"):
            if not isinstance(getattr(self, name), bool):
                raise OmniInputError(name, getattr(self, name), "must be true or false", f"set {name} to true or false")
        checked["cfg_renorm_min"] = real_number("cfg_renorm_min", self.cfg_renorm_min, 0.0, 1.0,
                                                fix="use 0.0 (widest renorm range) up to 1.0 (renorm off)")
        checked["layers"] = whole_number("layers", self.layers, *LIMITS["layers"],
                                         fix="use 4 (the model card's), or 2 to 8 layers")
        if self.resolution not in RESOLUTIONS or isinstance(self.resolution, bool):
            raise OmniInputError("resolution", self.resolution, "Qwen-Image-Layered works at 640 or 1024 px only",
                                 "use 640 (recommended by the model card) or 1024")
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "images", tuple(self.images))
        names = [f"image{index + 1 if index else ''}" for index in range(len(self.images))]
        for name, image in zip(names, self.images):
            check_image(name, image)
        object.__setattr__(self, "images", tuple(in_image_range(image) for image in self.images))
        if self.last_image is not None:
            check_image("last_image", self.last_image)
            object.__setattr__(self, "last_image", in_image_range(self.last_image))
        if self.mask is not None and self.images:  # a mask without its image: check_image_slots says so
            check_mask(self.mask, self.images[0])
        for role in ("positive", "negative"):
            embedding = getattr(self, role)
            if embedding is not None and not (isinstance(embedding, TextEmbedding) and embedding.role == role):
                raise OmniInputError(role, type(embedding).__name__, "is not a text embedding",
                                     f"pass {role} as TextEmbedding(embeds, mask, role={role!r})")

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the first conditioning image."""
        return int(self.images[0].shape[2]), int(self.images[0].shape[1])

    def validate_images(self, family) -> "GenerationRequest":
        check_image_slots(family, len(self.images), self.last_image is not None, self.mask is not None)
        check_model_options(family, self)
        return self

    def validate_conditioning(self, model_folder) -> "GenerationRequest":
        if "text_encoder" not in model_folder.components and self.positive is None:
            raise OmniInputError("positive", "not connected", "the model was loaded without its text encoder "
                                 "(text_encoder = none), so it cannot encode the prompt text",
                                 "connect CONDITIONING from a ComfyUI text encoder to Sample's positive (and "
                                 "negative), or choose the text encoder file in the loader")
        check_conditioning(model_folder.family, model_folder.transformer_config, model_folder.model_index,
                           self.guidance, self.positive, self.negative)
        return self

    def validate_model_inputs(self, family, folder) -> "GenerationRequest":
        """What depends on the model besides its input images: sizes and frames for image and video
        models, the audio window for audio models (`folder`: the ModelFolder, for its configs)."""
        if family.audio:
            return self.validate_audio(family, folder)
        for name, value in (("seconds", self.seconds), ("start", self.start)):
            if value:
                raise OmniInputError(name, value, f"{family.title} makes {'video' if family.video else 'images'}, "
                                     "not audio", f"set {name} to 0 (only audio models such as Stable-Audio-Open "
                                     "use it)")
        return self.validate(family.pixel_multiple, family.video)

    def validate_audio(self, family, folder) -> "GenerationRequest":
        """The asked seconds must lie inside the window the model generates (the pipeline always makes
        the whole window and cuts the asked part out: past its end there is nothing to cut)."""
        if self.frames != 1:
            raise OmniInputError("frames", self.frames, f"{family.title} makes audio, not video", "set frames to 1")
        longest = family.max_seconds(folder.transformer_config, folder.vae_config)
        rate = family.sample_rate(folder.vae_config)
        if self.seconds > longest:
            raise OmniInputError("seconds", self.seconds, f"{family.title} makes at most {longest:.2f} s of audio",
                                 f"use at most {longest:.2f} (0 = the whole window)")
        if self.seconds and self.start + self.seconds > longest:
            raise OmniInputError("start", self.start, f"start + seconds = {self.start + self.seconds:g} s runs past "
                                 f"the end of the model's {longest:.2f} s window",
                                 f"use start at most {longest - self.seconds:.2f}, or fewer seconds")
        if self.start >= longest:
            raise OmniInputError("start", self.start, f"starts past the model's {longest:.2f} s window",
                                 f"use start below {longest:.2f}")
        if self.seconds and int((self.start + self.seconds) * rate) <= int(self.start * rate):
            raise OmniInputError("seconds", self.seconds, f"is shorter than one sample at {rate} Hz",
                                 "use a longer length, e.g. 1.0, or 0 for the whole window")
        return self

    def validate(self, pixel_multiple: int, video: bool) -> "GenerationRequest":
        """What depends on the model: its size multiple, and frames for video models only."""
        for name, value in (("width", self.width), ("height", self.height)):
            if value < pixel_multiple or value % pixel_multiple:
                nearest = max(pixel_multiple, round(value / pixel_multiple) * pixel_multiple)
                raise OmniInputError(name, value, f"this model needs a multiple of {pixel_multiple} pixels",
                                     f"use {nearest}")
        if video:
            if (self.frames - 1) % 4:
                nearest = max(1, round((self.frames - 1) / 4) * 4 + 1)
                raise OmniInputError("frames", self.frames, "video models need 4*k+1 frames (1, 5, 9, ... 81)",
                                     f"use {nearest}")
        elif self.frames != 1:
            raise OmniInputError("frames", self.frames, "this is an image model", "set frames to 1")
        return self


def check_image_slots(family, images: int, last_image: bool, mask: bool = False) -> None:
    """The conditioning images the family takes: none for text-only models, the required one, at most
    `family.image_inputs`, a last frame only where the family has one. (Counts, so that a validator
    can check a graph whose images only a run will produce.)"""
    title = family.title
    if images and family.audio:
        raise OmniInputError("image", f"{images} image(s)", f"{title} makes audio from the prompt and takes no "
                             "input image", "disconnect the image inputs")
    if last_image and family.audio:
        raise OmniInputError("last_image", "an image", f"{title} makes audio and takes no video frame",
                             "disconnect last_image")
    if images and not family.image_inputs:
        raise OmniInputError("image", f"{images} image(s)", f"{title} takes no input image",
                             "disconnect the image, or load an edit / image-to-video model")
    if family.requires_image and not images:
        raise OmniInputError("image", None, f"{title} needs an input image to work from",
                             "connect a Load Image node to Sample's image input")
    if images > family.image_inputs:
        raise OmniInputError("image", f"{images} images", f"{title} takes at most {family.image_inputs} "
                             "image(s)", "disconnect the extra image inputs")
    if last_image and not family.takes_last_image:
        raise OmniInputError("last_image", "an image", f"{title} takes no last frame",
                             "disconnect last_image (only Wan2.2 image-to-video uses it)")
    if mask and not family.takes_mask:
        raise OmniInputError("mask", "a mask", f"{title} takes no mask (the image's transparency is used by "
                             "Qwen-Image-Layered only)", "disconnect the mask")
    if mask and not images:
        raise OmniInputError("mask", "a mask", "a mask needs the image it belongs to",
                             "connect the image too, or disconnect the mask")


# Options only some families take, with their defaults, and the model that takes them.
MODEL_OPTIONS = {"prompt_rewrite": False, "cfg_renorm": True, "cfg_renorm_min": 0.0, "layers": 4, "resolution": 640}
OPTION_OWNERS = {"prompt_rewrite": "LongCat-Image", "cfg_renorm": "LongCat-Image", "cfg_renorm_min": "LongCat-Image",
                 "layers": "Qwen-Image-Layered", "resolution": "Qwen-Image-Layered"}
RESOLUTIONS = (640, 1024)


def check_model_options(family, request) -> None:
    """A model option set away from its default on a family that does not take it is refused (it
    would silently do nothing)."""
    for name, default in MODEL_OPTIONS.items():
        value = getattr(request, name)
        if value != default and name not in family.model_options:
            raise OmniInputError(name, value, f"{family.title} has no such option ({OPTION_OWNERS[name]} only)",
                                 f"set {name} back to {default}")
