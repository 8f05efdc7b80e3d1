"""Options only some models take, declared once: name, kind, range, default, tooltip.

A family lists the option groups it takes (`ModelFamily.option_groups`). Every entry point reads the
same declaration: the group's node (nodes/option_nodes.py builds one node per group, connected to
Sample's `options` input), the request check (`checked_options`: ranges, and a model refusing by name
an option it does not take), the Python API (`Omni.generate(**options)`) and the graph check (which
runs the option nodes like any value node).

The groups more than one family takes live here (video frames, reference images); a group of one
family lives in that family's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import OmniInputError
from .rules.checks import real_number, whole_number

OMNI_OPTIONS = "OMNI_OPTIONS"  # the ComfyUI type of the link from an option node to Sample
LINK_KINDS = ("IMAGE", "MASK")  # options that are connected, not typed in: no default, None when absent


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "INT", "FLOAT", "BOOLEAN", "COMBO" (widgets) or "IMAGE", "MASK" (links)
    tooltip: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()  # COMBO: the values; the widget shows them as text
    fix: str = ""  # what an out-of-range value's error suggests

    @property
    def is_link(self) -> bool:
        return self.kind in LINK_KINDS

    def check(self, value):
        """The value in the type the pipeline takes, or an error naming the option, the value and the fix."""
        if self.is_link or value is None and self.default is None:
            return value  # images and masks are checked with the image they belong to (request.py)
        if self.kind == "INT":
            return whole_number(self.name, value, self.low, self.high, fix=self.fix)
        if self.kind == "FLOAT":
            return real_number(self.name, value, self.low, self.high, fix=self.fix)
        if self.kind == "BOOLEAN":
            if not isinstance(value, bool):
                raise OmniInputError(self.name, value, "must be true or false", f"set {self.name} to true or false")
            return value
        for choice in self.choices:  # COMBO: the widget sends text ("640"), the API may send 640
            if value == choice or isinstance(value, str) and not isinstance(choice, str) and value == str(choice):
                return choice
        choices = " or ".join(map(str, self.choices))
        raise OmniInputError(self.name, value, f"must be {choices}", self.fix or f"use {choices}")

    def input_type(self) -> tuple:
        """The node input, as ComfyUI's INPUT_TYPES declares it."""
        if self.is_link:
            return (self.kind, {"tooltip": self.tooltip})
        if self.kind == "COMBO":
            return ([str(c) for c in self.choices], {"default": str(self.default), "tooltip": self.tooltip})
        settings = {"default": self.default, "tooltip": self.tooltip}
        settings.update({key: value for key, value in (("min", self.low), ("max", self.high), ("step", self.step))
                         if value is not None})
        if self.kind == "FLOAT":
            settings.setdefault("round", 0.01)
        return (self.kind, settings)


@dataclass(frozen=True)
class OptionGroup:
    key: str  # stable id, saved in requests' option values
    node_id: str  # the node that sets these options (ComfyUI class name)
    title: str  # the node's display name
    description: str
    options: tuple[Option, ...]

    def option(self, name: str) -> Option:
        return next(option for option in self.options if option.name == name)


@dataclass(frozen=True)
class ModelOptions:
    """What an option node passes to Sample: its group and the values set (links left out when absent)."""

    group: str
    title: str
    values: dict = field(default_factory=dict)


def options_by_name(groups) -> dict[str, Option]:
    """name -> Option for every option of the groups (a family's `option_groups`, or every family's)."""
    return {option.name: option for group in groups for option in group.options}


def checked_options(family, given: dict) -> dict:
    """`given` checked against the family's declarations and completed with the defaults of every option it
    takes. An option the family does not take is refused by name, whatever its value."""
    taken = options_by_name(family.option_groups)
    for name, value in given.items():
        if name not in taken:
            offered = ", ".join(taken) or "none"
            raise OmniInputError(name, _shown(value), f"{family.title} takes no option {name!r} (its options: "
                                 f"{offered})", f"disconnect {name}" if hasattr(value, "shape") else
                                 f"remove {name}: it belongs to other models")
    return {name: option.check(given.get(name, option.default)) for name, option in taken.items()}


def _shown(value):
    return type(value).__name__ if hasattr(value, "shape") else value


# ---- groups more than one family takes -------------------------------------------------------------
VIDEO = OptionGroup(
    key="video", node_id="OmniVideoOptions", title="Omni Video Options",
    description="Video models' options for Sample: how many frames, and for image-to-video the frame the video "
                "should end on. Connect its options output to Sample's options input.",
    options=(
        Option("frames", "INT", "Frames of the video (4*k+1: 81 is Wan2.2's native length, 5 or 9 a quick "
               "preview). Without this node a video model makes 1 frame.", default=1, low=1, high=1025, step=4),
        Option("last_image", "IMAGE", "Wan2.2 image-to-video: the frame the video should end on (Sample's image is "
               "the first). Text-to-video refuses it."),
    ))

REFERENCE_IMAGES = OptionGroup(
    key="reference-images", node_id="OmniReferenceImages", title="Omni Reference Images",
    description="More reference images for models that take several (up to three with Sample's image). "
                "Connect its options output to Sample's options input.",
    options=(
        Option("image2", "IMAGE", "A second reference image (Sample's image is the first)."),
        Option("image3", "IMAGE", "A third reference image."),
    ))
