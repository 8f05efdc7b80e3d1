"""One generation request: the per-run settings that never change weights.

LIMITS are the ranges Sample declares to ComfyUI (nodes/sample.py reads them from here), so the
Python API and the CLI refuse exactly what the node refuses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import OmniInputError
from .options import VIDEO, checked_options
from .rules.checks import check_image, check_mask, in_image_range, prompt_text, real_number, whole_number
from .run.conditioning import TextEmbedding, check_conditioning

LIMITS = {
    "steps": (1, 1000),
    "guidance": (0.0, 30.0),
    "seed": (0, 2**64 - 1),
    "size": (16, 8192),  # width and height
    "batch_size": (1, 64),
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
    frames: int = 1  # video families only (declared with the video options: options.VIDEO)
    batch_size: int = 1
    # Conditioning images (edit, image-to-video): ComfyUI IMAGE tensors [1, H, W, 3], float 0..1: Sample's
    # image, then the reference images of options.REFERENCE_IMAGES.
    images: tuple = ()
    # Prompt embeddings from ComfyUI's text-encode nodes (conditioning.TextEmbedding), used instead of
    # `prompt` / `negative_prompt` by families whose embeddings match ComfyUI's.
    positive: Any = None
    negative: Any = None
    # The options only some families take (options.py declares them; each family lists its groups):
    # name -> value. Checked against the family when the model is known (validate_images), which also
    # fills in the defaults of every option the family takes, so family code reads options[name].
    options: dict = field(default_factory=dict)

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
            "frames": VIDEO.option("frames").check(self.frames),
            "batch_size": whole_number("batch_size", self.batch_size, *LIMITS["batch_size"]),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if not isinstance(self.options, dict) or not all(isinstance(name, str) for name in self.options):
            raise OmniInputError("options", type(self.options).__name__, "must map option names to values",
                                 "pass options as a dict, e.g. {'layers': 4}")
        object.__setattr__(self, "images", tuple(self.images))
        names = [f"image{index + 1 if index else ''}" for index in range(len(self.images))]
        for name, image in zip(names, self.images):
            check_image(name, image)
        object.__setattr__(self, "images", tuple(in_image_range(image) for image in self.images))
        for role in ("positive", "negative"):
            embedding = getattr(self, role)
            if embedding is not None and not (isinstance(embedding, TextEmbedding) and embedding.role == role):
                raise OmniInputError(role, type(embedding).__name__, "is not a text embedding",
                                     f"pass {role} as TextEmbedding(embeds, mask, role={role!r})")

    @classmethod
    def of(cls, **values) -> "GenerationRequest":
        """A request from flat keywords: its own fields, and any other name as a model option (layers=2)."""
        fields = {field.name for field in dataclasses.fields(cls)}
        options = {name: values.pop(name) for name in list(values) if name not in fields}
        return cls(**values, options={**values.pop("options", {}), **options})

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the first conditioning image."""
        return int(self.images[0].shape[2]), int(self.images[0].shape[1])

    def validate_images(self, family) -> "GenerationRequest":
        """The images and options against the family: the options checked by their declarations and
        completed with the family's defaults (family code reads options[name])."""
        options = checked_options(family, self.options)
        check_image_slots(family, len(self.images), options.get("last_image") is not None,
                          options.get("mask") is not None)
        if options.get("last_image") is not None:
            check_image("last_image", options["last_image"])
            options["last_image"] = in_image_range(options["last_image"])
        if options.get("mask") is not None:
            check_mask(options["mask"], self.images[0])
        return dataclasses.replace(self, options=options)

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
        return self.validate(family.pixel_multiple, family.video)

    def validate_audio(self, family, folder) -> "GenerationRequest":
        """The asked seconds must lie inside the window the model generates (the pipeline always makes
        the whole window and cuts the asked part out: past its end there is nothing to cut)."""
        if self.frames != 1:
            raise OmniInputError("frames", self.frames, f"{family.title} makes audio, not video", "set frames to 1")
        longest = family.max_seconds(folder.transformer_config, folder.vae_config)
        rate = family.sample_rate(folder.vae_config)
        seconds, start = self.options["seconds"], self.options["start"]
        if seconds > longest:
            raise OmniInputError("seconds", seconds, f"{family.title} makes at most {longest:.2f} s of audio",
                                 f"use at most {longest:.2f} (0 = the whole window)")
        if seconds and start + seconds > longest:
            raise OmniInputError("start", start, f"start + seconds = {start + seconds:g} s runs past "
                                 f"the end of the model's {longest:.2f} s window",
                                 f"use start at most {longest - seconds:.2f}, or fewer seconds")
        if start >= longest:
            raise OmniInputError("start", start, f"starts past the model's {longest:.2f} s window",
                                 f"use start below {longest:.2f}")
        if seconds and int((start + seconds) * rate) <= int(start * rate):
            raise OmniInputError("seconds", seconds, f"is shorter than one sample at {rate} Hz",
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
    if mask and not images:
        raise OmniInputError("mask", "a mask", "a mask needs the image it belongs to",
                             "connect the image too, or disconnect the mask")
