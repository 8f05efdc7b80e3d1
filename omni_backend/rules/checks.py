"""Type and range checks shared by every entry point (nodes, the Python API, the CLI, the engine).

ComfyUI checks a node's declared min/max before it runs the node; a script calling `Omni(...)`
or the engine directly gets no such check. These helpers give every value that reaches a
feature config or a request the same refusal, naming the input, the value and the fix, instead of
a TypeError from deep inside torch or a silent NaN.
"""

from __future__ import annotations

import math
import numbers
import unicodedata

from ..errors import OmniInputError


def whole_number(name: str, value, low: int | None = None, high: int | None = None, fix: str = "") -> int:
    """An int (a bool is not one; 20.0 is accepted as 20), optionally within [low, high]."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OmniInputError(name, value, f"must be a whole number, not {type(value).__name__}",
                             fix or _range_fix(low, high, "a whole number"))
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise OmniInputError(name, value, f"must be {_range_text(low, high)}", fix or _range_fix(low, high, "a value"))
    return value


def real_number(name: str, value, low: float | None = None, high: float | None = None, fix: str = "") -> float:
    """A finite float (NaN and infinities are refused: they turn into silent 'off' or black images)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OmniInputError(name, value, f"must be a number, not {type(value).__name__}",
                             fix or _range_fix(low, high, "a number"))
    value = float(value)
    if not math.isfinite(value):
        raise OmniInputError(name, value, "must be a finite number", fix or _range_fix(low, high, "a number"))
    if (low is not None and value < low) or (high is not None and value > high):
        raise OmniInputError(name, value, f"must be {_range_text(low, high)}", fix or _range_fix(low, high, "a value"))
    return value


def prompt_text(name: str, value) -> str:
    """Text a tokenizer can take: lone surrogates (from a broken encoding) become U+FFFD and control
    characters other than tab and newline are dropped; anything that is not text is refused."""
    if not isinstance(value, str):
        raise OmniInputError(name, value, f"must be text, not {type(value).__name__}", f"pass {name} as a string")
    if _has_surrogates(value):  # through UTF-16: a split pair becomes its character, a lone half U+FFFD
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return "".join(c for c in value if c in "\t\n" or unicodedata.category(c) != "Cc")


MIN_IMAGE_SIDE = 8
# The most elongated image taken. The Qwen2-VL processor of the Qwen edit models refuses more than 200:1
# after the pipeline has resized the image to its working area (rounding the short side up to 32 px,
# which stretches the ratio further); 100:1 stays clear of that, and no model here was trained on such
# strips, so the limit holds for every family.
MAX_ASPECT = 100
# ComfyUI's IMAGE is 0..1. A bicubic or Lanczos resize (core Upscale Image) overshoots that a little at
# hard edges; up to this much beyond either end is clamped. Further out is another convention (0..255,
# -1..1) and is refused, as it would silently give a washed-out or black conditioning image.
RANGE_SLACK = 0.15


def check_image(name: str, image) -> None:
    """One ComfyUI IMAGE: a float tensor [1, H, W, 3] (or 4 with alpha) of finite values in 0..1 (see
    RANGE_SLACK), holding data (not on the meta device), at least MIN_IMAGE_SIDE pixels a side and at
    most MAX_ASPECT times as long as wide. A batch of several images is refused where one is expected."""
    import torch

    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim != 4 \
            or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise OmniInputError(name, shape, "expected a ComfyUI IMAGE ([batch, height, width, 3] floats 0..1)",
                             "connect a Load Image node (or any node that outputs IMAGE)")
    if image.shape[0] != 1:
        raise OmniInputError(name, f"a batch of {image.shape[0]} images", "this input takes one image",
                             "pick one image of the batch first (e.g. core Image From Batch)")
    height, width = int(image.shape[1]), int(image.shape[2])
    if min(height, width) < MIN_IMAGE_SIDE:
        raise OmniInputError(name, f"{width}x{height} px", f"an image needs at least "
                             f"{MIN_IMAGE_SIDE} pixels a side", "use a larger image")
    if max(width, height) > MAX_ASPECT * min(width, height):
        ratio = f"{width / height:.4g}:1" if width > height else f"1:{height / width:.4g}"
        raise OmniInputError(name, f"{width}x{height} px", f"the image is {ratio}; the models take at most "
                             f"{MAX_ASPECT}:1 (their image processors refuse longer strips)",
                             "crop or pad the image to a less elongated shape (core ImageCrop or Pad Image for "
                             "Outpainting)")
    if image.is_meta:
        raise OmniInputError(name, "a meta-device tensor", "the image holds no data (a tensor on the meta "
                             "device has a shape but no values)", "pass a real image, e.g. from a Load Image node")
    if not torch.isfinite(image).all():
        raise OmniInputError(name, "NaN/inf values", "the image holds values that are not finite numbers",
                             "check the node that made the image")
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        raise OmniInputError(name, f"values {low:.3g}..{high:.3g}", "a ComfyUI IMAGE holds floats in 0..1",
                             "divide 0..255 pixels by 255 (or map -1..1 with (x + 1) / 2) before passing the "
                             "image, or connect a Load Image node")


def in_image_range(image):
    """`image` (checked by check_image) with a resize's small overshoot clamped into 0..1."""
    if float(image.min()) >= 0 and float(image.max()) <= 1:
        return image
    return image.clamp(0, 1)


def check_mask(mask, image) -> None:
    """A ComfyUI MASK for `image`: float [1, H, W] (or [H, W]) in 0..1, the image's size. Core Load
    Image's 64x64 zeros for a file without alpha are taken as "opaque" whatever the image's size."""
    import torch

    from ..files.images import mask_is_opaque

    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point() or mask.ndim not in (2, 3) \
            or (mask.ndim == 3 and mask.shape[0] != 1):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise OmniInputError("mask", shape, "expected one ComfyUI MASK ([1, height, width] floats 0..1)",
                             "connect the MASK output of the Load Image node that gives the image")
    if mask.is_meta:
        raise OmniInputError("mask", "a meta-device tensor", "the mask holds no data",
                             "connect the MASK output of the Load Image node that gives the image")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise OmniInputError("mask", "values outside 0..1", "a mask holds 1 - alpha, between 0 and 1",
                             "check the node that made the mask")
    height, width = int(image.shape[1]), int(image.shape[2])
    if tuple(mask.shape[-2:]) != (height, width) and not mask_is_opaque(mask, height, width):
        raise OmniInputError("mask", f"{mask.shape[-1]}x{mask.shape[-2]} px", f"the image is {width}x{height} px: "
                             "the mask must have the same size", "connect the mask of the same Load Image node")


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _range_fix(low, high, what: str) -> str:
    if low is None and high is None:
        return f"use {what}"
    return f"use {what} {_range_text(low, high)}"
